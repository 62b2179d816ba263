"""Sans-IO framing for every supported protocol, and the name -> codec registry."""

from __future__ import annotations

from dataclasses import dataclass

from tcp_multiplexer.framing.base import (
    Codec,
    Correlation,
    FailureReason,
    Framer,
    GatewayPolicy,
    ProtocolName,
    ResponseFramer,
)
from tcp_multiplexer.framing.codecs import echo_codec, iso8583_codec, mpu_codec
from tcp_multiplexer.framing.http1 import HttpCodec
from tcp_multiplexer.framing.modbus import ModbusCodec

__all__ = [
    "Codec",
    "CodecOptions",
    "Correlation",
    "FailureReason",
    "Framer",
    "GatewayPolicy",
    "ProtocolName",
    "ResponseFramer",
    "make_codec",
    "protocol_names",
]


@dataclass(frozen=True, slots=True)
class CodecOptions:
    """Protocol options that change framing or correlation."""

    lenient_ids: bool = False
    """Modbus: match answers in order instead of by transaction id."""


def protocol_names() -> list[str]:
    """Every protocol name, sorted (what `tcp-multiplexer list` prints)."""
    return sorted(name.value for name in ProtocolName)


def make_codec(name: ProtocolName, options: CodecOptions | None = None) -> Codec:
    """The codec for protocol `name`.

    Raises:
        ValueError: `name` is not a protocol name.
    """
    options = options or CodecOptions()
    match name:
        case ProtocolName.ECHO:
            return echo_codec()
        case ProtocolName.ISO8583:
            return iso8583_codec()
        case ProtocolName.MPU:
            return mpu_codec()
        case ProtocolName.MODBUS:
            return ModbusCodec(lenient_ids=options.lenient_ids)
        case ProtocolName.HTTP:
            return HttpCodec()
    # Unreachable for a ProtocolName, but a plain string that is none (say from an
    # unchecked config path) must not fall through to an implicit None.
    raise ValueError(f"unknown protocol {name!r}")
