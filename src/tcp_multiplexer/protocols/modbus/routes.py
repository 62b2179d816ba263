"""Several Modbus devices behind one listener: routes by unit id, and unit remapping.

    --route 1=192.168.1.22:502                 unit 1: the inverter, Modbus/TCP
    --route 2-3=serial:///dev/ttyUSB0          units 2 and 3: meters on an RS-485 bus
    --unit-map 2=1                             client unit 2 is unit 1 on its device

Each distinct target gets its own connection, queue, counters and settings; routes to
the same target (two meters on one bus) share it, one request at a time. A unit with no
route goes to the bridge's target, if it has one, and is answered 0x0B (gateway target
failed to respond) if not. In a config file a route may be a table that also sets the
target's own timing, and a profile:

    route = [
      "1=192.168.1.22:502",
      { units = "2-3", target = "serial:///dev/ttyUSB0?parity=N", profile = "rs485-meter" },
    ]

`unit-map` rewrites the unit id on the way to the device and back (the client always
sees its own). The map must be one-to-one on each target: two client units may not
reach one device unit through the same connection.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.options import count_value, duration_value, format_duration
from tcp_multiplexer.profiles import get_profile
from tcp_multiplexer.protocols.modbus.access import read_only_toml, read_only_value
from tcp_multiplexer.protocols.modbus.points import load_map, map_toml, points_toml, points_value
from tcp_multiplexer.protocols.modbus.polls import polls_toml, setting_value
from tcp_multiplexer.target import Target, TargetPlan, target_url_value

UNIT_IDS: Final = range(256)
SETTINGS: Final = {
    "timeout": duration_value,
    "connect-timeout": duration_value,
    "delay": duration_value,
    "request-gap": duration_value,
    "max-idle": duration_value,
    "recycle-after-timeouts": count_value(0),
    "max-connection-age": duration_value,
    "reconnect-backoff": duration_value,
    "max-connections": count_value(1),
    "max-inflight": count_value(1),
    "cache-ttl": duration_value,
    "serve-stale": duration_value,
    "read-only": read_only_value,
    "poll": setting_value,
    "poll-merge-gap": count_value(0),
    "poll-max-registers": count_value(1),
    "point": points_value,
    "map": load_map,
}
"""What a route's table may set for its target (else the bridge's value)."""
_ROUTE_KEYS: Final = frozenset({"units", "target", "unit-map", "profile", *SETTINGS})


def parse_units(text: object) -> frozenset[int]:
    """Unit ids: ``3``, ``1-4``, ``1,3,5-7`` (0 to 255).

    Raises:
        ConfigError: not unit ids.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"expected unit ids such as 3, 1-4 or 1,3,5-7, got {text!r}")
    units: set[int] = set()
    for part in text.replace(" ", "").split(","):
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ConfigError(f"{part!r} is not a unit id or a range of them (such as 1-4)")
        first, last = int(low), int(high) if dash else int(low)
        if not 0 <= first <= last <= 255:
            raise ConfigError(f"unit ids {part!r} are outside 0..255 or backwards")
        units.update(range(first, last + 1))
    return frozenset(units)


@dataclass(frozen=True, slots=True)
class Route:
    """Client unit ids to one target, and what the route sets for that target."""

    units: frozenset[int]
    target: Target
    settings: Mapping[str, Any] = field(default_factory=dict)
    """Option values by field name (``request_gap``), from the table and its profile."""
    unit_map: tuple[tuple[int, int], ...] = ()

    def __hash__(self) -> int:
        return hash((self.units, self.target, tuple(sorted(self.settings.items()))))


def parse_unit_map(values: object) -> tuple[tuple[int, int], ...]:
    """`unit-map` entries ``CLIENT=DEVICE`` (a string, or a list of them).

    Raises:
        ConfigError: not ``CLIENT=DEVICE``, an id outside 0..255, or a client unit given
            twice.
    """
    if isinstance(values, tuple) and all(isinstance(item, tuple) for item in values):
        return values
    items = values if isinstance(values, list | tuple) else [values]
    pairs: dict[int, int] = {}
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"a unit-map entry is CLIENT=DEVICE, such as 1=3, got {item!r}")
        client, equals, device = item.strip().partition("=")
        if not equals or not client.strip().isdigit() or not device.strip().isdigit():
            raise ConfigError(f"{item!r}: a unit-map entry is CLIENT=DEVICE, such as 1=3")
        client_unit, device_unit = int(client), int(device)
        if client_unit > 255 or device_unit > 255:
            raise ConfigError(f"{item!r}: unit ids are 0..255")
        if client_unit in pairs and pairs[client_unit] != device_unit:
            raise ConfigError(f"client unit {client_unit} is mapped twice")
        pairs[client_unit] = device_unit
    return tuple(sorted(pairs.items()))


def _route_table(value: Mapping[str, Any]) -> Route:
    unknown = set(value) - _ROUTE_KEYS
    if unknown:
        raise ConfigError(
            f"unknown key {sorted(unknown)[0]!r} in a route (use {', '.join(sorted(_ROUTE_KEYS))})"
        )
    if "units" not in value or "target" not in value:
        raise ConfigError("a route table needs units and a target")
    settings: dict[str, Any] = {}
    if "profile" in value:
        profile = get_profile(value["profile"])
        for key, setting in profile.settings.items():
            if key in SETTINGS:
                settings[key.replace("-", "_")] = SETTINGS[key](setting)
    for key, parse in SETTINGS.items():
        if key in value:
            try:
                settings[key.replace("-", "_")] = parse(value[key])
            except ConfigError as exc:
                raise ConfigError(f"{key}: {exc.message}") from None
    return Route(
        parse_units(value["units"]),
        target_url_value(value["target"]),
        settings,
        parse_unit_map(value.get("unit-map", [])),
    )


def parse_route(value: object) -> Route:
    """One route: ``UNITS=TARGET``, or a table (see the module docstring).

    Raises:
        ConfigError: a bad unit list, target URL or setting.
    """
    if isinstance(value, Route):
        return value
    if isinstance(value, Mapping):
        return _route_table(value)
    if not isinstance(value, str):
        raise ConfigError(f"a route is UNITS=TARGET, such as 2=serial:///dev/ttyUSB0: {value!r}")
    units, equals, target = value.partition("=")
    if not equals or not target.strip():
        raise ConfigError(f"{value!r}: a route is UNITS=TARGET, such as 2=192.168.1.30:502")
    return Route(parse_units(units), target_url_value(target))


def unit_pair(value: object) -> tuple[int, int]:
    """One `unit-map` entry, ``CLIENT=DEVICE``."""
    (pair,) = parse_unit_map(value if isinstance(value, str) else [value])
    return pair


def check_routes(routes: Sequence[Route], unit_map: Sequence[tuple[int, int]]) -> None:
    """Each unit routed once, each client unit mapped once.

    Raises:
        ConfigError: naming the option.
    """
    seen: set[int] = set()
    for route in routes:
        twice = seen & route.units
        if twice:
            raise ConfigError(f"unit {min(twice)} is routed twice", key="route")
        seen |= route.units
    mapped: set[int] = set()
    for client_unit, _device_unit in unit_map:
        if client_unit in mapped:
            raise ConfigError(f"client unit {client_unit} is mapped twice", key="unit-map")
        mapped.add(client_unit)


# ---------------------------------------------------------------------------- the plan


def plan_targets(
    default: Target | None,
    routes: Sequence[Route],
    unit_map: Iterable[tuple[int, int]],
) -> list[TargetPlan]:
    """The targets of a bridge, its default target (if any) first.

    Raises:
        ConfigError: two routes to one target that set it differently, or a unit map
            that is not one-to-one on a target.
    """
    maps = dict(unit_map)
    for route in routes:
        for client_unit, device_unit in route.unit_map:
            if maps.get(client_unit, device_unit) != device_unit:
                raise ConfigError(f"client unit {client_unit} is mapped twice", key="unit-map")
            maps[client_unit] = device_unit
    grouped: dict[Target, tuple[set[int], dict[str, Any]]] = {}
    order: list[Target] = []
    if default is not None:
        grouped[default] = (set(), {})
        order.append(default)
    for route in routes:
        if route.target not in grouped:
            grouped[route.target] = (set(), dict(route.settings))
            order.append(route.target)
        units, settings = grouped[route.target]
        if dict(route.settings) != settings and route.settings:
            raise ConfigError(
                f"two routes to {route.target} set it differently: give the settings once",
                key="route",
            )
        units.update(route.units)
    routed = {unit for units, _settings in grouped.values() for unit in units}
    plans = []
    for target in order:
        units, settings = grouped[target]
        served: frozenset[int] | None = frozenset(units)
        if target == default:
            served = None  # its own routes and every unit without one
        mine = {
            client: device
            for client, device in maps.items()
            if (client in units) or (served is None and client not in routed)
        }
        devices = list(mine.values())
        if len(set(devices)) != len(devices):
            raise ConfigError(
                f"two client units reach one device unit on {target}: the map must be one-to-one",
                key="unit-map",
            )
        plans.append(TargetPlan(target, served, mine, settings))
    if not plans:
        raise ConfigError("every bridge needs a target, or routes", key="target")
    return plans


# ---------------------------------------------------------------------------- writing back


def units_text(units: Iterable[int]) -> str:
    """Unit ids as ``1,3,5-7``."""
    ordered = sorted(units)
    parts: list[str] = []
    start = previous = -2
    for unit in [*ordered, -1]:
        if unit == previous + 1:
            previous = unit
            continue
        if start >= 0:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = unit
    return ",".join(parts)


def _setting_toml(key: str, value: Any) -> str:
    if key == "poll":
        return polls_toml(value)
    if key == "point":
        return points_toml(value)
    if key == "map":
        return map_toml(value)
    if key == "read-only":
        return read_only_toml(value)
    if SETTINGS[key] is duration_value:
        return json.dumps(format_duration(float(value)))
    return str(int(value))


def routes_toml(routes: tuple[Route, ...]) -> str:
    """The `route` option as TOML that reads back as the same routes (check-config)."""
    items = []
    for route in routes:
        units = units_text(route.units)
        if not route.settings and not route.unit_map:
            items.append(json.dumps(f"{units}={route.target}"))
            continue
        parts = [f"units = {json.dumps(units)}", f"target = {json.dumps(str(route.target))}"]
        if route.unit_map:
            entries = ", ".join(json.dumps(f"{c}={d}") for c, d in route.unit_map)
            parts.append(f"unit-map = [{entries}]")
        for key in SETTINGS:
            field_name = key.replace("-", "_")
            if field_name in route.settings:
                parts.append(f"{key} = {_setting_toml(key, route.settings[field_name])}")
        items.append("{ " + ", ".join(parts) + " }")
    return "[" + ", ".join(items) + "]"


def unit_map_toml(pairs: tuple[tuple[int, int], ...]) -> str:
    return "[" + ", ".join(json.dumps(f"{client}={device}") for client, device in pairs) + "]"
