"""The Modbus options: what the command line and a bridge's config table may set."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.options import Option, duration_value
from tcp_multiplexer.protocols.modbus.access import WriteRule, rules_toml, rules_value

GROUP: Final = "modbus gateway"


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

    def __post_init__(self) -> None:
        if self.cache_ttl < 0:
            raise ConfigError("must not be negative", key="cache-ttl")


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
    )


def option_values(options: ModbusOptions) -> dict[str, Any]:
    """`options` by option key (the inverse of `make_options`)."""
    return {
        "lenient-ids": options.lenient_ids,
        "no-coalesce": not options.coalesce,
        "cache-ttl": options.cache_ttl,
        "read-only": options.read_only,
        "write-rules": options.write_rules,
    }
