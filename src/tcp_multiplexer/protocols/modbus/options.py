"""The Modbus options: what the command line and a bridge's config table may set."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.options import Option, duration_value
from tcp_multiplexer.protocols.modbus.access import WriteRule, rules_toml, rules_value
from tcp_multiplexer.protocols.modbus.routes import (
    Route,
    check_routes,
    parse_route,
    routes_toml,
    unit_map_toml,
    unit_pair,
)

GROUP: Final = "modbus gateway"
ROUTE_GROUP: Final = "modbus devices: serial, RTU over TCP, routing by unit id"


@dataclass(frozen=True, slots=True)
class ModbusOptions:
    """Modbus gateway policy and answer matching."""

    lenient_ids: bool = False
    coalesce: bool = True
    cache_ttl: float = 0.0
    read_only: bool = False
    write_rules: tuple[WriteRule, ...] = ()
    """Who may write what, first match wins (config file only); empty: `read_only`
    for everyone."""
    routes: tuple[Route, ...] = ()
    """Unit ids sent to targets of their own (protocols/modbus/routes.py)."""
    unit_map: tuple[tuple[int, int], ...] = ()
    """(client unit, device unit): rewritten on the way to the device and back."""

    def __post_init__(self) -> None:
        if self.cache_ttl < 0:
            raise ConfigError("must not be negative", key="cache-ttl")
        check_routes(self.routes, self.unit_map)


OPTIONS: Final = (
    Option(
        "lenient-ids",
        "for gateways that do not echo transaction ids: match answers in order and "
        "reconnect after a timeout",
        None,
        False,
        group=GROUP,
    ),
    Option(
        "no-coalesce",
        "send every read to the device, even when an identical one is already waiting or in flight",
        None,
        False,
        group=GROUP,
    ),
    Option(
        "cache-ttl",
        "answer reads from a cache of device answers this young; writes drop what they "
        "overlap (default: 0 = off)",
        duration_value,
        0.0,
        metavar="DURATION",
        group=GROUP,
    ),
    Option(
        "read-only",
        "refuse writes (function codes 5, 6, 15, 16, 22, 23) with exception 0x01",
        None,
        False,
        group=GROUP,
    ),
    Option(
        "write-rules",
        "who may write what, matched on the client's address or certificate, first match "
        "wins (config file only; see docs/security.md)",
        rules_value,
        (),
        group=GROUP,
        command_line_too=False,
        render=rules_toml,
    ),
    Option(
        "route",
        "send requests for these unit ids to their own target: UNITS=TARGET, such as "
        "2=serial:///dev/ttyUSB0 or 3-4=rtu+tcp://192.168.1.40:502; repeat it for several "
        "(units without a route go to --target, or get 0x0B without one)",
        parse_route,
        None,
        metavar="UNITS=TARGET",
        repeatable=True,
        group=ROUTE_GROUP,
        render=routes_toml,
    ),
    Option(
        "unit-map",
        "rewrite a client's unit id for its device and back: CLIENT=DEVICE, such as 1=3; "
        "repeat it for several (one-to-one on each target)",
        unit_pair,
        None,
        metavar="CLIENT=DEVICE",
        repeatable=True,
        group=ROUTE_GROUP,
        render=unit_map_toml,
    ),
)


def make_options(values: Mapping[str, Any]) -> ModbusOptions:
    """ModbusOptions from option values by field name.

    Raises:
        ConfigError: a value is out of range.
    """
    return ModbusOptions(
        lenient_ids=values["lenient_ids"],
        coalesce=not values["no_coalesce"],
        cache_ttl=values["cache_ttl"],
        read_only=values["read_only"],
        write_rules=values["write_rules"],
        routes=values["route"],
        unit_map=values["unit_map"],
    )


def option_values(options: ModbusOptions) -> dict[str, Any]:
    """`options` by option key (the inverse of `make_options`)."""
    return {
        "lenient-ids": options.lenient_ids,
        "no-coalesce": not options.coalesce,
        "cache-ttl": options.cache_ttl,
        "read-only": options.read_only,
        "write-rules": options.write_rules,
        "route": options.routes,
        "unit-map": options.unit_map,
    }
