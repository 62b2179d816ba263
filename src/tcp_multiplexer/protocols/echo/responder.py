"""The echo target: every line comes back unchanged, newline included."""

from __future__ import annotations

from tcp_multiplexer.core.interfaces import Framer
from tcp_multiplexer.errors import FramingError
from tcp_multiplexer.protocols.echo.framing import LineFramer
from tcp_multiplexer.protocols.responder import Answer
from tcp_multiplexer.protocols.spec import ProtocolName


class EchoResponder:
    """Answers each ``\\n``-terminated line with itself."""

    __slots__ = ()

    @property
    def name(self) -> str:
        return ProtocolName.ECHO

    def request_framer(self) -> Framer:
        return LineFramer()

    def answer(self, request: bytes) -> Answer:
        return Answer(request)

    def reject(self, error: FramingError) -> bytes:
        """Nothing: an oversized line just closes the connection."""
        return b""

    def with_wrong_id(self, answer: bytes) -> bytes:
        raise NotImplementedError("echo has no request ids")
