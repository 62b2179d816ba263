"""The targets of a bridge: for each target of its plan, the connector, pool, dispatcher
and counters that serve it (a `TargetPath`), and the router over them.

A bridge has one path per target of its plan (its own target, and one per route). A
path is built whole from the bridge's config and one `TargetPlan`; nothing in it reads
the bridge back. `path_identity` says what a path's connections depend on, so a reload
can keep a path whose identity it does not change. It never imports the bridge.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from tcp_multiplexer.config.model import BridgeConfig
from tcp_multiplexer.core.dispatch import Dispatcher
from tcp_multiplexer.core.interfaces import (
    ClientCodec,
    Clock,
    Connector,
    Dispatch,
    GatewayPolicy,
    Poller,
    PoolEvents,
    TaskSpawner,
)
from tcp_multiplexer.core.pool import PoolSettings, UpstreamPool
from tcp_multiplexer.core.router import KEYS, Router
from tcp_multiplexer.core.upstream import UpstreamConnection
from tcp_multiplexer.observability.capture import CaptureRing, Endpoint
from tcp_multiplexer.observability.metrics import TargetMetrics
from tcp_multiplexer.options import Address
from tcp_multiplexer.protocols.modbus.routes import units_text
from tcp_multiplexer.protocols.spec import (
    Background,
    BackgroundContext,
    EventCounts,
    PolicyContext,
    ProtocolSpec,
)
from tcp_multiplexer.target import Target, TargetPlan
from tcp_multiplexer.transports.serial import SerialConnector
from tcp_multiplexer.transports.tcp import TcpConnector
from tcp_multiplexer.transports.tls import client_context

ROUTE_SETTINGS: Final = (
    "timeout",
    "connect_timeout",
    "delay",
    "request_gap",
    "max_idle",
    "recycle_after_timeouts",
    "max_connection_age",
    "reconnect_backoff",
    "max_connections",
    "max_inflight",
)
"""What a route may set for its own target (else the bridge's value)."""


def _endpoint(address: Address) -> Endpoint:
    return address.host, address.port


def keys_text(keys: Iterable[int] | None) -> str:
    """The route keys a target serves, as a person reads them (``others`` for the
    bridge's own target beside routes)."""
    return "others" if keys is None else units_text(keys)


@dataclass(frozen=True, slots=True)
class TargetView:
    """One target of a bridge as observability reads it: its name, counters, pool and
    queue, and how long an answer may take."""

    name: str
    metrics: TargetMetrics
    pool: UpstreamPool
    dispatcher: Dispatcher
    timeout: float
    max_connections: int
    units: str = "all"
    """The route keys it serves (Modbus unit ids, as ``2,10-12``), ``others`` for the
    bridge's own target beside routes, ``all`` without routes."""
    background: Background | None = None
    """Its background work (Modbus: the poller and the register image), if any."""


@dataclass(frozen=True, slots=True)
class TargetPath:
    """Everything one target of a bridge has to itself."""

    connector: Connector
    pool: UpstreamPool
    dispatcher: Dispatcher
    view: TargetView
    target: Target
    identity: object
    """What its connections depend on (`path_identity`)."""

    @property
    def background(self) -> Background | None:
        return self.view.background


@dataclass(frozen=True, slots=True)
class PathServices:
    """What the paths of one bridge are built with: the process's clock, poller and
    task spawner, and the bridge's protocol, client codec, log and capture."""

    clock: Clock
    poller: Poller
    spawner: TaskSpawner
    spec: ProtocolSpec
    codec: ClientCodec
    log: logging.LoggerAdapter[logging.Logger]
    capture: CaptureRing | None


def path_settings(config: BridgeConfig, plan: TargetPlan) -> dict[str, Any]:
    """The settings one target runs with: its route's, else the bridge's; a serial line
    gets one connection and its line's silence between frames."""
    values: dict[str, Any] = {
        name: plan.settings.get(name, getattr(config, name)) for name in ROUTE_SETTINGS
    }
    if plan.target.is_serial:
        # One master on a line: one connection, and the line's silence between frames.
        values["max_connections"] = 1
        values["request_gap"] = max(values["request_gap"], plan.target.silence)
    return values


def path_identity(config: BridgeConfig, plan: TargetPlan, spec: ProtocolSpec) -> object:
    """What a target's connections depend on: the target, how requests are rewritten
    for it, its connection and timing settings, target TLS and keep-alive, and the
    protocol's connection options. Two configs with the same identity can share one
    path: a reload keeps it, and its connections stay up."""
    return (
        plan.target,
        tuple(sorted(plan.key_map.items())),
        tuple(sorted(path_settings(config, plan).items())),
        config.health_check_interval,
        (config.target_tls, config.target_ca, config.target_cert, config.target_key),
        spec.connection_options(config.protocol_options),
    )


def connector_for(config: BridgeConfig, target: Target, connect_timeout: float) -> Connector:
    """How the bridge reaches `target`: a serial line, or TCP (with TLS if asked)."""
    if target.is_serial:
        return SerialConnector(target, connect_timeout=connect_timeout)
    if target.address is None:
        raise ValueError(f"{target} has no address")
    return TcpConnector(
        target.address,
        name=str(target),
        connect_timeout=connect_timeout,
        keepalive_idle=config.health_check_interval,
        ssl=client_context(config.target_ca, config.target_cert, config.target_key)
        if config.target_tls
        else None,
    )


def build_policy(
    config: BridgeConfig,
    plan: TargetPlan,
    services: PathServices,
    events: EventCounts,
    previous: GatewayPolicy | None = None,
) -> GatewayPolicy | None:
    """The protocol's gateway policy for one target (None: it has none); `previous`:
    the one it replaces in a reload."""
    spec = services.spec
    if spec.gateway_policy is None:
        return None
    timeout = path_settings(config, plan)["timeout"]
    context = PolicyContext(events, services.clock, services.log, plan, timeout, previous)
    return spec.gateway_policy(config.protocol_options, context)


def build_background(
    config: BridgeConfig,
    plan: TargetPlan,
    services: PathServices,
    dispatcher: Dispatcher,
    pool: UpstreamPool,
) -> Background | None:
    """The protocol's background work for one target (None: it has none)."""
    spec = services.spec
    if spec.background is None:
        return None
    context = BackgroundContext(
        dispatcher.policy,
        dispatcher,
        pool,
        dispatcher.metrics.events,
        services.clock,
        services.log,
        plan,
    )
    return spec.background(config.protocol_options, context)


def build_path(
    config: BridgeConfig,
    plan: TargetPlan,
    services: PathServices,
    events: EventCounts,
    connector: Connector | None,
    units: str,
    *,
    metrics: TargetMetrics | None = None,
) -> TargetPath:
    """The connector, pool, dispatcher and counters of one target of the plan.

    `metrics`: counters to go on with (a reload that switches a target over keeps its
    counts); their events replace `events`.
    """
    spec = services.spec
    options = config.protocol_options
    values = path_settings(config, plan)
    target = plan.target
    if metrics is None:
        metrics = TargetMetrics(events)
    else:
        events = metrics.events
    codec = (
        spec.target_codec_for(options, events, plan)
        if spec.target_codec_for is not None
        else spec.target_codec(options, events)
    )
    policy = build_policy(config, plan, services, events)
    if connector is None:
        connector = connector_for(config, target, values["connect_timeout"])
    settings = PoolSettings(
        max_connections=values["max_connections"],
        timeout=values["timeout"],
        reconnect_backoff=values["reconnect_backoff"],
        delay=values["delay"],
        max_inflight=values["max_inflight"],
        request_gap=values["request_gap"],
        max_idle=values["max_idle"],
    )
    pools: list[UpstreamPool] = []
    name = connector.target
    connection_name = name if spec.route_key and len(config.targets()) > 1 else "target"
    log = services.log

    def make_pool(sink: PoolEvents) -> UpstreamPool:
        def make_connection() -> UpstreamConnection:
            return UpstreamConnection(
                connection_name,
                codec,
                sink,
                metrics,
                services.poller,
                clock=services.clock,
                log=log,
                timeout=values["timeout"],
                max_inflight=values["max_inflight"],
                request_gap=values["request_gap"],
                max_idle=values["max_idle"],
                recycle_after=values["recycle_after_timeouts"],
                max_age=values["max_connection_age"],
            )

        pool = UpstreamPool(
            sink,
            connector,
            make_connection,
            settings,
            metrics,
            clock=services.clock,
            spawner=services.spawner,
            log=log,
            name=config.name,
        )
        pools.append(pool)
        return pool

    address = target.address
    capture = services.capture
    recorder = (
        capture.recorder(None if address is None else _endpoint(address))
        if capture is not None
        else None
    )
    dispatcher = Dispatcher(
        services.codec,
        metrics,
        make_pool,
        clock=services.clock,
        log=log,
        timeout=values["timeout"],
        queue_size=config.queue_size,
        policy=policy,
        recorder=recorder,
    )
    (pool,) = pools
    view = TargetView(
        name,
        metrics,
        pool,
        dispatcher,
        values["timeout"],
        values["max_connections"],
        units,
        build_background(config, plan, services, dispatcher, pool),
    )
    return TargetPath(connector, pool, dispatcher, view, target, path_identity(config, plan, spec))


def build_router(
    spec: ProtocolSpec,
    codec: ClientCodec,
    events: EventCounts,
    plans: list[TargetPlan],
    paths: list[TargetPath],
) -> Router:
    """Each route key to the dispatcher of its target; keys no plan serves to the
    one that serves every other key (the bridge's own target), or to none."""
    key = spec.route_key
    if key is None:
        raise ValueError(f"{spec.name} has no routes")
    table: list[Dispatch | None] = [None] * KEYS
    for plan, path in zip(plans, paths, strict=True):
        if plan.keys is None:
            table = [path.dispatcher] * KEYS
    for plan, path in zip(plans, paths, strict=True):
        for unit in plan.keys or ():
            table[unit] = path.dispatcher
    return Router(key, table, codec, events)
