"""The MPU target: every message (4 ASCII digits of length, then the body) comes back unchanged."""

from __future__ import annotations

from tcp_multiplexer.errors import FramingError
from tcp_multiplexer.framing.base import Framer, ProtocolName
from tcp_multiplexer.framing.length_prefix import mpu_framer
from tcp_multiplexer.targets.base import Answer


class MpuResponder:
    """Echoes each MPU message, length prefix included."""

    __slots__ = ()

    @property
    def name(self) -> ProtocolName:
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
