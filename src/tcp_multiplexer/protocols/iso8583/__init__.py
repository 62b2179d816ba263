"""iso8583: a 2-byte big-endian length, then that many bytes."""

from __future__ import annotations

from typing import Any

from tcp_multiplexer.protocols.iso8583.responder import Iso8583Responder
from tcp_multiplexer.protocols.length_prefix import iso8583_framer
from tcp_multiplexer.protocols.passthrough import PassThroughCodec
from tcp_multiplexer.protocols.spec import EventCounts, ProtocolName, ProtocolSpec


def codec(options: Any = None, events: EventCounts | None = None) -> PassThroughCodec:
    """The ISO-8583 codec, for clients and target alike."""
    return PassThroughCodec(ProtocolName.ISO8583, iso8583_framer)


SPEC = ProtocolSpec(
    name=ProtocolName.ISO8583,
    summary="2-byte big-endian length, then that many bytes",
    client_codec=codec,
    target_codec=codec,
    responder=Iso8583Responder,
)
