"""The codec of protocols that need nothing but framing: echo, ISO-8583 and MPU.

Requests and answers are framed alike, travel unchanged and are answered in order; the
multiplexer has no answer of its own for them, so a client whose request fails has its
connection closed. One object serves as both the client codec and the target codec.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from tcp_multiplexer.core.interfaces import Correlation, FailureReason, ResponseFramer


class PassThroughCodec:
    """A FIFO codec whose requests and answers share one framing and pass unchanged."""

    __slots__ = ("_make_framer", "_name")

    correlation: Final = Correlation.FIFO
    id_space: Final = 0
    transparent: Final = True
    framing_needs_requests: Final = False
    gateway_answers_close: Final = False

    def __init__(self, name: str, make_framer: Callable[[], ResponseFramer]) -> None:
        self._name = name
        self._make_framer = make_framer

    @property
    def name(self) -> str:
        return self._name

    def request_framer(self) -> ResponseFramer:
        return self._make_framer()

    def response_framer(self) -> ResponseFramer:
        return self._make_framer()

    def gateway_answer(self, request: bytes, reason: FailureReason) -> bytes | None:
        """None: these protocols have no gateway answer, so the client is closed."""
        return None

    def encode(self, request: bytes, wire_id: int) -> bytes:
        return request

    def decode(self, request: bytes, answer: bytes) -> bytes:
        return answer

    def answer_id(self, answer: bytes) -> int:
        raise NotImplementedError(f"{self._name} answers are matched in order, not by id")
