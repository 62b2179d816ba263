"""The protocols the multiplexer knows: the one list behind `tcp-multiplexer list`,
the server and `example-server`."""

from __future__ import annotations

from typing import Final

from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.protocols import echo, http, iso8583, modbus, mpu
from tcp_multiplexer.protocols.spec import ProtocolSpec

SPECS: Final[dict[str, ProtocolSpec]] = {
    spec.name: spec for spec in (echo.SPEC, http.SPEC, iso8583.SPEC, modbus.SPEC, mpu.SPEC)
}


def protocol_names() -> list[str]:
    """Every protocol name, sorted (what `tcp-multiplexer list` prints)."""
    return sorted(SPECS)


def get_spec(name: str) -> ProtocolSpec:
    """The spec of protocol `name` (any case).

    Raises:
        ConfigError: no protocol has that name.
    """
    spec = SPECS.get(name.strip().lower())
    if spec is None:
        raise ConfigError(f"unknown protocol {name!r} (choose from {', '.join(protocol_names())})")
    return spec
