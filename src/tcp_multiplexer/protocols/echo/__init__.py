"""echo: newline-delimited requests and answers."""

from __future__ import annotations

from typing import Any

from tcp_multiplexer.protocols.echo.framing import LineFramer
from tcp_multiplexer.protocols.echo.responder import EchoResponder
from tcp_multiplexer.protocols.passthrough import PassThroughCodec
from tcp_multiplexer.protocols.spec import EventCounts, ProtocolName, ProtocolSpec


def codec(options: Any = None, events: EventCounts | None = None) -> PassThroughCodec:
    """The echo codec, for clients and target alike."""
    return PassThroughCodec(ProtocolName.ECHO, LineFramer)


SPEC = ProtocolSpec(
    name=ProtocolName.ECHO,
    summary="bytes up to and including a newline",
    client_codec=codec,
    target_codec=codec,
    responder=EchoResponder,
)
