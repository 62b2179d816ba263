"""What a protocol plugs into the multiplexer: its spec.

Each protocol package exports one `ProtocolSpec`: its name, its options (with their
command-line flags and config keys), a client codec (frames what clients send, builds
gateway answers), a target codec (encodes requests for the target, frames and decodes
its answers, says how they are matched), an optional gateway policy and background work
per target (Modbus: the register image and its polls), the names of the events it
counts, and the example responder `example-server` serves. The registry
(protocols/__init__.py) is the one list behind `tcp-multiplexer list`, the server and
`example-server`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Protocol

from tcp_multiplexer.core.interfaces import (
    ClientCodec,
    Clock,
    Dispatch,
    GatewayPolicy,
    RequestFilter,
    TargetCodec,
)
from tcp_multiplexer.options import Option
from tcp_multiplexer.protocols.responder import Responder
from tcp_multiplexer.target import Target, TargetPlan, single_target

EventCounts = Counter[str]
"""A protocol's event counters by name; every declared name starts at 0."""


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """Who a client is, as far as the multiplexer can tell: its address and, with mutual
    TLS, its certificate's names and Modbus/TCP Security roles."""

    address: IPv4Address | IPv6Address | None
    names: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()


class ProtocolName(StrEnum):
    """The protocols this package brings (`tcp-multiplexer list`)."""

    ECHO = "echo"
    HTTP = "http"
    ISO8583 = "iso8583"
    MODBUS = "modbus"
    MPU = "mpu"


@dataclass(frozen=True, slots=True)
class PolicyContext:
    """What a gateway policy for one target is built with, besides the options."""

    events: EventCounts
    clock: Clock
    log: logging.LoggerAdapter[logging.Logger]
    plan: TargetPlan
    """The target it serves: its route's keys and settings."""
    timeout: float = 0.0
    """The target's answer timeout: a request sent was sent at its deadline minus it."""
    previous: GatewayPolicy | None = None
    """The policy it replaces (a reload), whose state it may carry on."""


class PoolState(Protocol):
    """What background work asks of a target's pool."""

    @property
    def connections(self) -> int:
        """Target connections up now."""
        ...

    @property
    def closing(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class BackgroundContext:
    """What a target's background work is built with, besides the options."""

    policy: GatewayPolicy | None
    dispatch: Dispatch
    """The target's own dispatcher (not the bridge's router)."""
    pool: PoolState
    events: EventCounts
    clock: Clock
    log: logging.LoggerAdapter[logging.Logger]
    plan: TargetPlan


@dataclass(frozen=True, slots=True)
class Reading:
    """A named value as it stands: what it is, in what unit, how old, and how good."""

    value: int | float | bool | str | None
    """None: unknown (never read, no longer held, or the device says it has none)."""
    unit_of_measurement: str | None
    age: float | None
    """Seconds since the device was asked for it (None: never)."""
    quality: str
    """``fresh`` (younger than the cache TTL), ``stale`` (older, still held) or
    ``unknown``."""


@dataclass(frozen=True, slots=True)
class PointInfo:
    """What a named value is, for those who publish it (Home Assistant discovery)."""

    name: str
    label: str
    kind: str
    """``number``, ``bool`` or ``text``."""
    unit_of_measurement: str | None = None
    device_class: str | None = None
    state_class: str | None = None
    every: float = 5.0
    writable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    step: float = 1.0
    """The smallest change a command can make (the scale, for a scaled number)."""


class Background(Protocol):
    """A target's own work besides its clients' requests (Modbus: polls), and what it
    holds, for observability."""

    def start(self) -> None:
        """Begin, once the target's pool has started."""
        ...

    def stop(self) -> None:
        """End (a reload that replaces it, shutdown); requests on their way still end."""
        ...

    def gauges(self, now: float) -> Mapping[str, float]:
        """What it holds now, by name (Modbus: ``values_held``)."""
        ...

    def rows(self, now: float) -> list[dict[str, Any]]:
        """One row per thing it does (Modbus: each polled range), for the status page."""
        ...

    def readings(self, now: float) -> dict[str, Reading]:
        """Its named values by name (Modbus: the points), as they stand at `now`."""
        ...

    def point_infos(self) -> list[PointInfo]:
        """What each of its named values is."""
        ...

    def device_info(self) -> Mapping[str, str]:
        """What the device says it is: ``manufacturer``, ``model``, ``serial_number``,
        ``sw_version``, as far as it says (Modbus: SunSpec's common model)."""
        ...

    def command(self, name: str, text: str, now: float) -> bytes | str:
        """The request (in client form) that sets the named value `name` to `text`,
        or why it cannot be set (unknown, not writable, out of range, not a number)."""
        ...

    def command_refusal(self, answer: bytes) -> str:
        """ "" if `answer` confirms a command's request, else why it does not."""
        ...


def no_options(values: Mapping[str, Any]) -> None:
    """The options object of a protocol without options."""
    return None


@dataclass(frozen=True, slots=True)
class ProtocolSpec:
    """Everything the multiplexer needs to carry one protocol (see the module docstring)."""

    name: str
    summary: str
    """One line for --help: what a message is."""
    client_codec: Callable[[Any], ClientCodec]
    """Given the options object."""
    target_codec: Callable[[Any, EventCounts], TargetCodec]
    """Given the options object and the event counters of the target it serves."""
    responder: Callable[[], Responder]
    options: tuple[Option, ...] = ()
    make_options: Callable[[Mapping[str, Any]], Any] = no_options
    """Builds the (frozen, validated) options object from every option's value by field
    name; raises ConfigError."""
    gateway_policy: Callable[[Any, PolicyContext], GatewayPolicy | None] | None = None
    """A gateway policy for one target of the plan."""
    background: Callable[[Any, BackgroundContext], Background | None] | None = None
    """Background work for one target of the plan, started with its pool."""
    events: tuple[str, ...] = ()
    option_values: Callable[[Any], Mapping[str, Any]] = lambda options: {}
    """The options object's settings by option key, as `make_options` takes them
    (check-config prints them)."""
    client_filter: Callable[[Any, ClientIdentity, EventCounts], RequestFilter | None] | None = None
    """What a client may ask (write rules): a filter per client, or None for all."""
    plan_targets: Callable[[Any, Target | None], list[TargetPlan]] = single_target
    """The targets a bridge sends to, from its options and its own target (the default
    target, first); raises ConfigError. Without routes: the one TCP target."""
    target_codec_for: Callable[[Any, EventCounts, TargetPlan], TargetCodec] | None = None
    """A target codec for one target of the plan (its framing, its key map); None: the
    plain `target_codec` for every target."""
    route_key: Callable[[bytes], int] | None = None
    """What a request is routed by (Modbus: its unit id); None: no routes."""
    framed_client: (
        Callable[[asyncio.Protocol, str, frozenset[int] | None, float], asyncio.Protocol] | None
    ) = None
    """Puts a client connection that speaks another framing (a listener's ``rtu``,
    ``auto`` or ``serial``, with the units a serial line's slave answers and the line's
    silence between frames) in front of its session, which speaks the protocol's own;
    None: the protocol has no other framing."""
    connection_options: Callable[[Any], object] = lambda options: options
    """The part of the options a target connection depends on (its codec's): a reload
    that changes it opens new target connections, one that changes only the rest (the
    gateway policy's, the write rules) keeps them. Default: all of them."""

    def default_options(self) -> Any:
        """The options object with every option at its default."""
        return self.make_options(
            {option.field: option.read(option.default) for option in self.options}
        )

    def new_events(self) -> EventCounts:
        """Event counters for one target, every declared name at 0."""
        return Counter(dict.fromkeys(self.events, 0))
