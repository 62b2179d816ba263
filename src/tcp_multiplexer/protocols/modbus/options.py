"""The Modbus options: what the command line and a bridge's config table may set."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.options import Option, count_value, duration_value
from tcp_multiplexer.protocols.modbus.access import (
    DENY,
    WriteRule,
    read_only_toml,
    read_only_value,
    rules_toml,
    rules_value,
)
from tcp_multiplexer.protocols.modbus.points import (
    Point,
    PointMap,
    check_points,
    load_map,
    map_toml,
    points_toml,
    points_value,
)
from tcp_multiplexer.protocols.modbus.polls import (
    DEFAULT_MAX_REGISTERS,
    DEFAULT_MERGE_GAP,
    Poll,
    check_polls,
    parse_poll,
    polls_toml,
)
from tcp_multiplexer.protocols.modbus.routes import (
    Route,
    check_routes,
    parse_route,
    routes_toml,
    unit_map_toml,
    unit_pair,
)
from tcp_multiplexer.protocols.modbus.sunspec import (
    PUBLISH_EXTRA,
    units_toml,
    units_value,
)
from tcp_multiplexer.protocols.modbus.sunspec import available as sunspec_available

GROUP: Final = "modbus gateway"
IMAGE_GROUP: Final = "modbus register image: read the device once for every client"
ROUTE_GROUP: Final = "modbus devices: serial, RTU over TCP, routing by unit id"


@dataclass(frozen=True, slots=True)
class ModbusOptions:
    """Modbus gateway policy and answer matching."""

    lenient_ids: bool = False
    coalesce: bool = True
    cache_ttl: float = 0.0
    """Answer reads from one device answer this young (the register image); 0: off."""
    serve_stale: float = 0.0
    """While the target cannot answer, answer reads from answers this young; 0: off."""
    read_only: str = ""
    """``deny`` (refuse writes), ``ignore`` (acknowledge them unsent), or "" (off)."""
    poll: tuple[Poll, ...] = ()
    """What the bridge reads on its own to keep the image fresh."""
    poll_merge_gap: int = DEFAULT_MERGE_GAP
    poll_max_registers: int = DEFAULT_MAX_REGISTERS
    point: tuple[Point, ...] = ()
    """Named values the bridge reads and publishes (config file only)."""
    map: PointMap | None = None
    """A map file of points."""
    sunspec: tuple[int, ...] = ()
    """Units to scan for SunSpec models at start, and publish what they hold."""
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
        if not 1 <= self.poll_max_registers <= DEFAULT_MAX_REGISTERS:
            raise ConfigError(
                f"{self.poll_max_registers} is outside 1..{DEFAULT_MAX_REGISTERS} (the protocol's "
                "limit for one read)",
                key="poll-max-registers",
            )
        check_routes(self.routes, self.unit_map)
        if self.sunspec:
            self._check_sunspec()
        bridge_points = self.points
        check_points([*bridge_points, *(point for route in self.routes for point in _own(route))])
        routed = {unit for route in self.routes for unit in route.units}
        check_polls((poll for poll in self.poll if poll.unit not in routed), self.cache_ttl)
        check_polls(
            (point.poll() for point in bridge_points if point.unit not in routed),
            self.cache_ttl,
            "point",
        )
        for route in self.routes:
            ttl = route.settings.get("cache_ttl", self.cache_ttl)
            where = f"to {route.target}: "
            own = route.settings.get("poll", ())
            for unit, what in [
                *((poll.unit, f"poll {poll}") for poll in own),
                *((point.unit, f"point {point.name!r}") for point in _own(route)),
            ]:
                if unit not in route.units:
                    raise ConfigError(
                        f"{where}{what}: unit {unit} is not one of the route's", key="route"
                    )
            check_polls(own, ttl, "route", f"{where}poll ")
            check_polls((point.poll() for point in _own(route)), ttl, "route", where)
            check_polls((poll for poll in self.poll if poll.unit in route.units), ttl)
            check_polls(
                (point.poll() for point in bridge_points if point.unit in route.units),
                ttl,
                "point",
            )

    def _check_sunspec(self) -> None:
        if not sunspec_available():
            raise ConfigError(f"needs pysunspec2: {PUBLISH_EXTRA}", key="sunspec")
        for unit in self.sunspec:
            route = next((route for route in self.routes if unit in route.units), None)
            ttl = (
                self.cache_ttl if route is None else route.settings.get("cache_ttl", self.cache_ttl)
            )
            if not ttl:
                raise ConfigError(
                    f"unit {unit}: its models are read into the register image: set cache-ttl "
                    "too (10s, say)",
                    key="sunspec",
                )

    @property
    def points(self) -> tuple[Point, ...]:
        """The bridge's own points: its map file's, then its table's."""
        return (*(self.map.points if self.map is not None else ()), *self.point)


def _own(route: Route) -> tuple[Point, ...]:
    """A route's own points: its map file's, then its table's."""
    points = route.settings.get("map")
    return (*(points.points if points is not None else ()), *route.settings.get("point", ()))


PATH_FIELDS: Final = (
    "cache_ttl",
    "serve_stale",
    "read_only",
    "poll",
    "poll_merge_gap",
    "poll_max_registers",
    "point",
    "map",
)
"""What a route may set for its own target besides timing (routes.SETTINGS)."""


def path_options(
    options: ModbusOptions, keys: frozenset[int] | None, settings: Mapping[str, Any]
) -> ModbusOptions:
    """The options one target runs with: its route's `settings` over the bridge's, and
    the polls and points of the units it serves (`keys`; None: every unit no route
    takes), each point's poll among the polls."""
    routed = {unit for route in options.routes for unit in route.units}
    polls = tuple(
        poll
        for poll in options.poll
        if (poll.unit in keys if keys is not None else poll.unit not in routed)
    )
    own = {name: settings[name] for name in PATH_FIELDS if name in settings}
    if "read_only" not in own and options.read_only == DENY:
        own["read_only"] = ""  # the bridge's refusal is its clients' write filter's
    points = tuple(
        point
        for point in options.points
        if (point.unit in keys if keys is not None else point.unit not in routed)
    )
    own_map = settings.get("map")
    points += (*(own_map.points if own_map is not None else ()), *settings.get("point", ()))
    own["point"] = points
    own["map"] = None
    own["poll"] = polls + tuple(settings.get("poll", ())) + tuple(point.poll() for point in points)
    own["sunspec"] = tuple(
        unit
        for unit in options.sunspec
        if (unit in keys if keys is not None else unit not in routed)
    )
    return replace(options, routes=(), **own)


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
        "keep a register image: answer a read from one device answer this young that "
        "holds its whole range; writes drop what they overlap (default: 0 = off)",
        duration_value,
        0.0,
        metavar="DURATION",
        group=IMAGE_GROUP,
    ),
    Option(
        "serve-stale",
        "while the target cannot be reached or does not answer, answer reads from device "
        "answers up to this old instead of with 0x0A/0x0B (default: 0 = off)",
        duration_value,
        0.0,
        metavar="DURATION",
        group=IMAGE_GROUP,
    ),
    Option(
        "poll",
        "read this range in the background to keep the image fresh: "
        "UNIT:TABLE:ADDRESS:COUNT:EVERY, such as 1:holding:40000:50:5s (TABLE: holding, "
        "input, coils, discrete; EVERY shorter than --cache-ttl); repeat it for several",
        parse_poll,
        None,
        metavar="POLL",
        repeatable=True,
        group=IMAGE_GROUP,
        render=polls_toml,
    ),
    Option(
        "poll-merge-gap",
        "read polls of one unit and table this many registers apart or closer together "
        f"(default: {DEFAULT_MERGE_GAP})",
        count_value(0),
        DEFAULT_MERGE_GAP,
        metavar="N",
        group=IMAGE_GROUP,
    ),
    Option(
        "poll-max-registers",
        "at most this many registers in one poll read, 16 times as many coils or inputs "
        f"(default: {DEFAULT_MAX_REGISTERS}, the protocol's limit)",
        count_value(1),
        DEFAULT_MAX_REGISTERS,
        metavar="N",
        group=IMAGE_GROUP,
    ),
    Option(
        "read-only",
        "never send writes (function codes 5, 6, 15, 16, 22, 23): alone or =deny, refuse "
        "them with exception 0x01; =ignore, answer 5, 6, 15 and 16 as the device would "
        "(for masters that break on 0x01) and refuse 22 and 23",
        read_only_value,
        "",
        metavar="deny|ignore",
        bare=DENY,
        group=GROUP,
        render=read_only_toml,
    ),
    Option(
        "point",
        "named values the bridge reads and publishes: [[bridge.point]] tables (config file "
        "only; see docs/publishing.md)",
        points_value,
        (),
        group=IMAGE_GROUP,
        command_line_too=False,
        render=points_toml,
    ),
    Option(
        "map",
        "a TOML file of [[point]] tables (named values; in a config file relative to it)",
        load_map,
        None,
        metavar="FILE",
        group=IMAGE_GROUP,
        render=map_toml,
    ),
    Option(
        "sunspec",
        "scan these units for SunSpec models once the target answers (alone: unit 1; "
        "or UNITS such as 1,240) and publish their values as points (needs --cache-ttl "
        f"and the publish extra: {PUBLISH_EXTRA})",
        units_value,
        (),
        metavar="UNITS",
        bare="1",
        group=IMAGE_GROUP,
        render=units_toml,
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
        serve_stale=values["serve_stale"],
        read_only=values["read_only"],
        poll=values["poll"],
        poll_merge_gap=values["poll_merge_gap"],
        poll_max_registers=values["poll_max_registers"],
        point=values["point"],
        map=values["map"],
        sunspec=values["sunspec"],
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
        "serve-stale": options.serve_stale,
        "read-only": options.read_only,
        "poll": options.poll,
        "poll-merge-gap": options.poll_merge_gap,
        "poll-max-registers": options.poll_max_registers,
        "point": options.point,
        "map": options.map,
        "sunspec": options.sunspec,
        "write-rules": options.write_rules,
        "route": options.routes,
        "unit-map": options.unit_map,
    }
