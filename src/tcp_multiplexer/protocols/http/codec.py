"""The HTTP/1.1 codec: framing both ways, and the gateway's own answers.

Answers come back in request order (RFC 9112 section 9.3.2) and travel unchanged, so
one object serves as both the client codec and the target codec. The framers tell the
core which messages end a connection (`Connection: close`, HTTP/1.0, close-delimited
bodies); the codec adds the gateway answers: 502 when the target cannot be reached or
breaks, 503 when no connection came free in time, 504 when it did not answer.
"""

from __future__ import annotations

from typing import Any, Final

from tcp_multiplexer.core.interfaces import Correlation, FailureReason
from tcp_multiplexer.protocols.http.framing import HttpRequestFramer, HttpResponseFramer
from tcp_multiplexer.protocols.spec import EventCounts, ProtocolName

_GATEWAY_STATUS: Final = {
    FailureReason.UNAVAILABLE: (502, "Bad Gateway"),
    FailureReason.BUSY: (503, "Service Unavailable"),
    FailureReason.TIMEOUT: (504, "Gateway Timeout"),
    FailureReason.BROKEN: (502, "Bad Gateway"),
}


def _gateway_answer(reason: FailureReason, *, with_body: bool) -> bytes:
    status, phrase = _GATEWAY_STATUS[reason]
    body = f"{phrase}: {reason.value}\n".encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\n"
        "Content-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
        "\r\n"
    ).encode()
    return head + body if with_body else head


_GATEWAY_ANSWERS: Final = {
    (reason, with_body): _gateway_answer(reason, with_body=with_body)
    for reason in FailureReason
    for with_body in (False, True)
}


class HttpCodec:
    """HTTP/1.1 for clients and targets alike (see the module docstring)."""

    __slots__ = ()

    correlation: Final = Correlation.FIFO
    id_space: Final = 0
    transparent: Final = True
    framing_needs_requests: Final = True
    """A response to HEAD has no body whatever its headers say."""
    gateway_answers_close: Final = True
    """Every gateway answer carries ``Connection: close``."""

    @property
    def name(self) -> str:
        return ProtocolName.HTTP

    def request_framer(self) -> HttpRequestFramer:
        return HttpRequestFramer()

    def response_framer(self) -> HttpResponseFramer:
        return HttpResponseFramer()

    def gateway_answer(self, request: bytes, reason: FailureReason) -> bytes:
        """502 (unreachable, broken), 503 (busy) or 504 (no answer), `Connection: close`.

        A short text/plain body says why; an answer to HEAD keeps its Content-Length but
        has no body, as RFC 9110 section 9.3.2 requires.
        """
        return _GATEWAY_ANSWERS[reason, not request.startswith(b"HEAD ")]

    def encode(self, request: bytes, wire_id: int) -> bytes:
        return request

    def decode(self, request: bytes, answer: bytes) -> bytes:
        return answer

    def answer_id(self, answer: bytes) -> int:
        raise NotImplementedError("http answers are matched in order, not by id")


def codec(options: Any = None, events: EventCounts | None = None) -> HttpCodec:
    """The HTTP codec (it has no options)."""
    return HttpCodec()
