"""The MPU target: every message (4 ASCII digits of length, then the body) comes back unchanged."""

from __future__ import annotations

from tcp_multiplexer.core.interfaces import Framer
from tcp_multiplexer.errors import FramingError
from tcp_multiplexer.protocols.length_prefix import mpu_framer
from tcp_multiplexer.protocols.responder import Answer
from tcp_multiplexer.protocols.spec import ProtocolName


class MpuResponder:
    """Echoes each MPU message, length prefix included."""

    __slots__ = ()

    @property
    def name(self) -> str:
        return ProtocolName.MPU

    def request_framer(self) -> Framer:
        return mpu_framer()

    def answer(self, request: bytes) -> Answer:
        return Answer(request)

    def reject(self, error: FramingError) -> bytes:
        """Nothing: a bad length prefix just closes the connection."""
        return b""

    def with_wrong_id(self, answer: bytes) -> bytes:
        raise NotImplementedError("mpu has no request ids")
