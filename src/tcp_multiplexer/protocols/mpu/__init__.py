"""mpu: 4 ASCII decimal digits of length, then that many bytes."""

from __future__ import annotations

from typing import Any

from tcp_multiplexer.protocols.length_prefix import mpu_framer
from tcp_multiplexer.protocols.mpu.responder import MpuResponder
from tcp_multiplexer.protocols.passthrough import PassThroughCodec
from tcp_multiplexer.protocols.spec import EventCounts, ProtocolName, ProtocolSpec


def codec(options: Any = None, events: EventCounts | None = None) -> PassThroughCodec:
    """The MPU codec, for clients and target alike."""
    return PassThroughCodec(ProtocolName.MPU, mpu_framer)


SPEC = ProtocolSpec(
    name=ProtocolName.MPU,
    summary="4 ASCII decimal digits of length, then that many bytes",
    client_codec=codec,
    target_codec=codec,
    responder=MpuResponder,
)
