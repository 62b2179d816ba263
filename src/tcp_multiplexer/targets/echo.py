"""The echo target: every line comes back unchanged, newline included."""

from __future__ import annotations

from tcp_multiplexer.errors import FramingError
from tcp_multiplexer.framing.base import Framer, ProtocolName
from tcp_multiplexer.framing.line import LineFramer
from tcp_multiplexer.targets.base import Answer


class EchoResponder:
    """Answers each ``\\n``-terminated line with itself."""

    __slots__ = ()

    @property
    def name(self) -> ProtocolName:
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
