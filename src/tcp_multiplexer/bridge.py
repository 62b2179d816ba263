"""A bridge: one listener set, its client sessions, its targets, its metrics.

Its targets (a connector, pool and dispatcher for each, and the router over them) are
built by target_paths.py.

A bridge is built whole in its constructor from its `BridgeConfig` and the services of
the process it runs in (the clock, the poller, the task spawner); `start()` opens its
listeners and its pool, `drain()` stops it. Several bridges run side by side in one
process, each started and drained on its own, so a reload can add, remove or replace
one without touching the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import replace
from typing import Final, Protocol

from tcp_multiplexer.config.model import BridgeConfig, serial_units
from tcp_multiplexer.core.interfaces import (
    ClientCodec,
    ClientConnection,
    Clock,
    Connector,
    Dispatch,
    Poller,
    RequestFilter,
    TaskSpawner,
)
from tcp_multiplexer.core.session import ClientSession
from tcp_multiplexer.logs import BridgeLog, format_peer
from tcp_multiplexer.observability.capture import CaptureRing
from tcp_multiplexer.observability.clients import ClientDirectory, ClientStats
from tcp_multiplexer.observability.metrics import BridgeMetrics, ClientMetrics
from tcp_multiplexer.options import Address, client_address
from tcp_multiplexer.protocols.modbus.serial_listen import parse_serial_listen
from tcp_multiplexer.protocols.registry import get_spec
from tcp_multiplexer.protocols.spec import ClientIdentity
from tcp_multiplexer.target import TargetPlan
from tcp_multiplexer.target_paths import (
    PathServices,
    TargetPath,
    build_background,
    build_path,
    build_policy,
    build_router,
    keys_text,
    path_identity,
)
from tcp_multiplexer.transports.listeners import ListenerSet, released
from tcp_multiplexer.transports.serial import SerialListener
from tcp_multiplexer.transports.tcp import (
    TcpConnector,
    configure_keepalive,
)
from tcp_multiplexer.transports.tls import (
    TlsServerProtocol,
    client_context,
    peer_identity,
    server_context,
)

logger = logging.getLogger("tcp_multiplexer.bridge")

REFUSAL_LOG_EVERY: Final = 60.0
"""Seconds between two warnings about refused clients of one reason."""


class BridgeServices(Protocol):
    """What the process lends every bridge."""

    @property
    def clock(self) -> Clock: ...

    @property
    def poller(self) -> Poller: ...

    @property
    def spawner(self) -> TaskSpawner: ...

    @property
    def names_bridges(self) -> bool:
        """True if plain log lines should start with the bridge's name (several bridges)."""
        ...

    @property
    def observing(self) -> bool:
        """True if clients' addresses are counted (a metrics listener is on)."""
        ...

    @property
    def per_client_latency(self) -> bool:
        """True if each client address's latency is timed too (--metrics-per-client)."""
        ...

    @property
    def capture_size(self) -> int:
        """Transactions each bridge keeps for /capture (0: none)."""
        ...


class Bridge:
    """Accepts clients and serves their requests over its target connection pool."""

    def __init__(
        self,
        config: BridgeConfig,
        services: BridgeServices,
        *,
        connector: Connector | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.log = BridgeLog(logger, config.name, prefix=services.names_bridges)
        self._clock = services.clock
        self._poller = services.poller
        spec = self._spec = get_spec(config.protocol)
        options = config.protocol_options
        self._codec: ClientCodec = spec.client_codec(options)
        events = self._events = spec.new_events()
        self._server_tls = (
            server_context(config.tls_cert, config.tls_key, config.tls_client_ca)
            if config.tls_cert is not None and config.tls_key is not None
            else None
        )
        self.capture = (
            CaptureRing(config.name, services.capture_size, services.clock.time)
            if services.capture_size
            else None
        )
        self.client_directory = (
            ClientDirectory(timed=services.per_client_latency) if services.observing else None
        )
        self._path_services = PathServices(
            services.clock,
            services.poller,
            services.spawner,
            spec,
            self._codec,
            self.log,
            self.capture,
        )
        plans = config.targets()
        self._paths = [
            build_path(
                config,
                plan,
                self._path_services,
                events if index == 0 else spec.new_events(),
                connector if index == 0 else None,
                _units(plans, plan),
            )
            for index, plan in enumerate(plans)
        ]
        self._dispatch: Dispatch = self._take_paths(plans)
        self._retiring: list[TargetPath] = []
        """Paths a reload replaced, finishing their requests in flight."""
        self._switching: asyncio.Task[None] | None = None
        """The last reload's switch-over to new target connections, while it runs."""
        self.clients = ClientMetrics()
        self._sessions: set[ClientConnection] = set()
        self.metrics = BridgeMetrics(
            self.clients,
            [path.view.metrics for path in self._paths],
            clients_now=lambda: len(self._sessions),
            connections_now=lambda: sum(
                path.pool.connections for path in (*self._paths, *self._retiring)
            ),
            waiting_now=lambda: sum(path.dispatcher.waiting for path in self._paths),
            held_now=self._held_now,
        )
        self._session_count = 0
        self._refusals_logged: dict[str, float] = {}
        self._listeners = ListenerSet(self._new_session, self._open_line)
        self._draining = False

    def _held_now(self) -> dict[str, float]:
        """What the targets' background work holds now, summed by name."""
        held: dict[str, float] = {}
        now = self._clock.time()
        for path in self._paths:
            if path.background is not None:
                for name, value in path.background.gauges(now).items():
                    held[name] = held.get(name, 0.0) + value
        return held

    def _take_paths(self, plans: list[TargetPlan]) -> Dispatch:
        """Make `self._paths` the bridge's targets; returns where requests go: the one
        dispatcher, or a router over them."""
        paths = self._paths
        first = paths[0]
        self.connector: Connector = first.connector
        self.pool = first.pool
        self.dispatcher = first.dispatcher
        """The bridge's own target's (the first route's, without one)."""
        self._events = first.view.metrics.events
        self.targets = tuple(path.view for path in paths)
        """Every target the bridge serves from (one per route)."""
        # One target that takes every key needs no router (nor its cost per request).
        if len(paths) == 1 and plans[0].keys is None:
            return first.dispatcher
        return build_router(self._spec, self._codec, self._events, plans, paths)

    # ------------------------------------------------------------------ SessionHost

    @property
    def codec(self) -> ClientCodec:
        return self._codec

    @property
    def dispatch(self) -> Dispatch:
        return self._dispatch

    @property
    def client_backlog(self) -> int:
        return self.config.client_backlog

    @property
    def client_idle_timeout(self) -> float:
        return self.config.client_idle_timeout

    @property
    def poller(self) -> Poller:
        return self._poller

    @property
    def clock(self) -> Clock:
        return self._clock

    def client_connected(self, session: ClientConnection, transport: asyncio.BaseTransport) -> bool:
        refusal = self._refusal(transport.get_extra_info("peername"))
        if refusal is not None:
            self.clients.refused[refusal] += 1
            self._log_refusal(session.name, refusal)
            return False
        configure_keepalive(transport, self.config.health_check_interval)
        self._sessions.add(session)
        self.clients.accepted += 1
        return True

    def _refusal(self, peer: object) -> str | None:
        """Why a client from `peer` may not stay (None: it may)."""
        if self._not_allowed(peer):
            return "not-allowed"
        limit = self.config.max_clients
        if limit is not None and len(self._sessions) >= limit:
            return "max-clients"
        return None

    def _not_allowed(self, peer: object) -> bool:
        """True if the allow list leaves out a client from `peer`."""
        allow = self.config.allow
        if not allow:
            return False
        address = client_address(peer)
        return address is None or not any(address in network for network in allow)

    def _log_refusal(self, name: str, reason: str, detail: str = "") -> None:
        """A warning, at most one per reason a minute: a scan must not flood the log."""
        now = self._clock.time()
        if now - self._refusals_logged.get(reason, float("-inf")) < REFUSAL_LOG_EVERY:
            return
        self._refusals_logged[reason] = now
        why = {
            "not-allowed": "its address is not allowed",
            "max-clients": "too many clients",
            "tls": f"TLS handshake failed: {detail}",
        }[reason]
        self.log.warning(
            "refused %s: %s (further refusals counted, logged again in a minute)",
            name,
            why,
            extra={"client": name.split(" ", 2)[-1], "reason": reason},
        )

    def client_disconnected(self, session: ClientConnection) -> None:
        self._sessions.discard(session)

    def counters_for(self, peer: object) -> ClientStats | None:
        if self.client_directory is None:
            return None
        host = peer[0] if isinstance(peer, tuple) and peer else str(peer)
        return self.client_directory.stats_for(str(host))

    @property
    def sessions(self) -> list[ClientConnection]:
        """The clients connected now."""
        return list(self._sessions)

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        """The port of the first listener (useful with port 0).

        Raises:
            RuntimeError: the bridge is not listening.
        """
        port = self._listeners.port
        if port is None:
            raise RuntimeError(f"bridge {self.name!r} is not listening")
        return port

    @property
    def sockets(self) -> list[str]:
        """Every address listened on, as HOST:PORT."""
        return self._listeners.sockets

    async def start(self) -> None:
        """Listen on every address, and connect to the target (in the background).

        Raises:
            OSError: an address cannot be listened on; nothing is left open.
        """
        await self._listeners.open(self.config.listen)
        for path in self._paths:
            path.pool.start()
            if path.background is not None:
                path.background.start()
        config = self.config
        security = ""
        if config.tls_cert is not None:
            security = ", mutual TLS" if config.tls_client_ca is not None else ", TLS"
        if self._dispatch is self.dispatcher:  # one target for every unit: no routes
            self.log.notice(
                "listening on %s (%s%s), target %s%s, up to %d target connection(s)",
                ", ".join(self.sockets),
                config.protocol,
                security,
                self.connector.target,
                " over TLS" if config.target_tls else "",
                config.max_connections,
            )
            return
        routes = "; ".join(self._route_text(plan) for plan in config.targets())
        self.log.notice(
            "listening on %s (%s%s), routing %s",
            ", ".join(self.sockets),
            config.protocol,
            security,
            routes,
        )

    @staticmethod
    def _route_text(plan: TargetPlan) -> str:
        keys = "other units" if plan.keys is None else f"units {keys_text(plan.keys)}"
        mapped = ", ".join(f"{c}->{d}" for c, d in sorted(plan.key_map.items()))
        return f"{keys} to {plan.target}" + (f" (unit map {mapped})" if mapped else "")

    def _new_session(self, address: Address) -> asyncio.Protocol:
        self._session_count += 1
        session = ClientSession(self, self._session_count)
        session.origin = address
        framed_client = self._spec.framed_client
        if address.framing and framed_client is not None:
            if address.framing != "serial":
                return framed_client(session, address.framing, None, 0.0)
            listen = parse_serial_listen(address.host)
            units = serial_units(self.config, listen.units)
            return framed_client(session, address.framing, units, listen.line.silence)
        if self._server_tls is None:
            return session
        return TlsServerProtocol(
            self._server_tls,
            session,
            precheck=self._tls_precheck,
            on_failure=self._tls_failed,
        )

    async def _open_line(self, address: Address) -> SerialListener:
        """Open a serial listener's line: the bridge is a slave on it.

        Raises:
            OSError: the port cannot be opened.
        """
        listen = parse_serial_listen(address.host)
        listener = SerialListener(listen.line, lambda: self._new_session(address))
        await listener.start()
        return listener

    def _tls_precheck(self, peer: object) -> bool:
        """Before the handshake: refuse at once what the address alone rules out."""
        refusal = self._refusal(peer)
        if refusal is None:
            return True
        self.clients.refused[refusal] += 1
        self._log_refusal(f"client {format_peer(peer)}", refusal)
        return False

    def _tls_failed(self, peer: object, reason: str) -> None:
        self.clients.refused["tls"] += 1
        self._log_refusal(f"client {format_peer(peer)}", "tls", reason)

    def filter_for(self, transport: asyncio.BaseTransport) -> RequestFilter | None:
        tls = peer_identity(transport.get_extra_info("ssl_object"))
        identity = ClientIdentity(
            client_address(transport.get_extra_info("peername")), tls.names, tls.roles
        )
        return self.filter_for_identity(identity)

    def filter_for_identity(self, identity: ClientIdentity) -> RequestFilter | None:
        """What a client who is `identity` may ask (None: anything); also for the
        bridge's internal clients (MQTT commands, as the client named ``mqtt``)."""
        spec = self._spec
        if spec.client_filter is None:
            return None
        return spec.client_filter(self.config.protocol_options, identity, self._events)

    def reload_tls(self) -> None:
        """Reread the certificates and keys (a reload); a bad one keeps the old, logged."""
        config = self.config
        try:
            if config.tls_cert is not None and config.tls_key is not None:
                self._server_tls = server_context(
                    config.tls_cert, config.tls_key, config.tls_client_ca
                )
            self._reread_target_tls()
        except (OSError, ssl.SSLError) as exc:
            self.log.error(
                "reload: cannot reread the certificates (%s); keeping the ones in use", exc
            )

    def _reread_target_tls(self) -> None:
        """Give every TLS target connector the certificates as the files hold them now
        (the next connection uses them).

        Raises:
            OSError, ssl.SSLError: a file cannot be read or used.
        """
        config = self.config
        if not config.target_tls:
            return
        context = client_context(config.target_ca, config.target_cert, config.target_key)
        for path in self._paths:
            if isinstance(path.connector, TcpConnector):
                path.connector.ssl = context

    def stop_accepting(self) -> None:
        """Close the listeners; clients connected stay."""
        self._listeners.close()

    async def wait_stopped_accepting(self) -> None:
        """Return once the listening sockets closed by `stop_accepting` are released."""
        await released()

    async def resume_accepting(self) -> None:
        """Listen again on every address, after `stop_accepting` (a reload that could
        not put a new bridge in this one's place).

        Raises:
            OSError: an address cannot be listened on any more.
        """
        await self._listeners.reopen()
        self.log.notice("listening again on %s", ", ".join(self.sockets))

    # ------------------------------------------------------------------ a reload

    async def apply(self, config: BridgeConfig, connector: Connector | None = None) -> bool:
        """Take a reload's `config` (same name, same protocol) in place: the listeners
        and client connections stay.

        Listen addresses gone close their clients; new ones open. A target whose
        connections the change leaves alone (`path_identity`) keeps them, and its
        dispatcher takes the new queue bound and gateway policy for the next request.
        Any other target is switched over: its waiting requests move to the new
        connections, and those open (after their post-connect delay) only once the
        old ones have answered what they carried and closed, so the device never sees
        two at once. Every client then asks through the new targets and rules; one the
        new allow list or TLS settings refuse is closed, logged. `connector`: the way
        to the first target, if not the config's (tests).

        Returns False, with nothing changed, if a new address cannot be listened on or
        the new certificates cannot be used (each logged).
        """
        old = self.config
        try:
            server_tls = (
                server_context(config.tls_cert, config.tls_key, config.tls_client_ca)
                if config.tls_cert is not None and config.tls_key is not None
                else None
            )
        except (OSError, ssl.SSLError) as exc:
            self.log.error("reload: cannot use the certificates (%s); nothing changed", exc)
            return False
        try:
            gone = await self._listeners.change(config.listen)
        except OSError as exc:
            self.log.error(
                "reload: cannot listen on the new address: %s; nothing changed",
                exc.strerror or exc,
            )
            return False
        self.config = config
        self._server_tls = server_tls
        spec = self._spec
        self._codec = spec.client_codec(config.protocol_options)
        self._path_services = replace(self._path_services, codec=self._codec)
        retired, fresh = self._replan(old, config, connector)
        try:
            self._reread_target_tls()  # kept connections' next connect
        except (OSError, ssl.SSLError) as exc:
            self.log.error("reload: cannot reread the target certificates (%s)", exc)
        for session in list(self._sessions):
            why = self._now_refused(session, old, gone)
            if why is not None:
                self.log.notice("reload: closing %s: %s", session.name, why)
                session.close()
            else:
                session.refresh()
        if retired or fresh:
            self._switch_over(retired, fresh)
        return True

    def _replan(
        self, old: BridgeConfig, config: BridgeConfig, connector: Connector | None
    ) -> tuple[list[TargetPath], list[TargetPath]]:
        """Build the targets of `config`, keeping every path whose identity it keeps;
        returns the paths to retire and the new ones to start once they have."""
        spec = self._spec
        services = self._path_services
        plans = config.targets()
        available = list(self._paths)
        paths: list[TargetPath] = []
        fresh: list[TargetPath] = []
        options_changed = old.protocol_options != config.protocol_options
        for index, plan in enumerate(plans):
            identity = path_identity(config, plan, spec)
            kept = next((path for path in available if path.identity == identity), None)
            if kept is not None:
                available.remove(kept)
                events = kept.view.metrics.events
                background = kept.background
                if options_changed:
                    policy = build_policy(config, plan, services, events, kept.dispatcher.policy)
                    kept.dispatcher.configure(queue_size=config.queue_size, policy=policy)
                    if background is not None:
                        background.stop()
                    background = build_background(
                        config, plan, services, kept.dispatcher, kept.pool
                    )
                    if background is not None:
                        background.start()
                else:
                    kept.dispatcher.configure(
                        queue_size=config.queue_size, policy=kept.dispatcher.policy
                    )
                view = replace(kept.view, units=_units(plans, plan), background=background)
                paths.append(replace(kept, view=view))
                continue
            same_target = next((path for path in available if path.target == plan.target), None)
            path = build_path(
                config,
                plan,
                services,
                spec.new_events(),
                connector if index == 0 else None,
                _units(plans, plan),
                metrics=None if same_target is None else same_target.view.metrics,
            )
            paths.append(path)
            fresh.append(path)
        retired = available
        for path in retired:
            if path.background is not None:
                path.background.stop()
        waiting = [request for path in retired for request in path.dispatcher.take_waiting()]
        self._paths = paths
        self._dispatch = self._take_paths(plans)
        self.metrics.set_targets([path.view.metrics for path in paths])
        for request in waiting:
            self._dispatch.adopt(request)
        return retired, fresh

    def _now_refused(
        self, session: ClientConnection, old: BridgeConfig, gone: list[Address]
    ) -> str | None:
        """Why a connected client may not stay after a reload (None: it may)."""
        config = self.config
        if session.origin in gone:
            return f"it came in on {session.origin}, which is no longer listened on"
        if self._not_allowed(session.peer):
            return "its address is no longer allowed"
        transport = session.transport
        tls = transport.get_extra_info("ssl_object") if transport is not None else None
        if tls is None and config.tls_cert is not None:
            return "the bridge now requires TLS"
        if (
            tls is not None
            and config.tls_client_ca is not None
            and config.tls_client_ca != old.tls_client_ca
        ):
            return "its certificate was checked against another client CA"
        return None

    def _switch_over(self, retired: list[TargetPath], fresh: list[TargetPath]) -> None:
        """Release `retired` once their requests in flight are answered, then start
        `fresh` (after any earlier switch-over has finished)."""
        self._retiring.extend(retired)
        previous = self._switching
        task = asyncio.get_running_loop().create_task(
            self._release_then_start(previous, retired, fresh), name=f"{self.name} switch-over"
        )
        self._switching = task
        task.add_done_callback(self._switched)

    def _switched(self, task: asyncio.Task[None]) -> None:
        if self._switching is task:
            self._switching = None
        if not task.cancelled() and task.exception() is not None:
            self.log.error("reload: the switch-over failed: %s", task.exception())

    async def _release_then_start(
        self,
        previous: asyncio.Task[None] | None,
        retired: list[TargetPath],
        fresh: list[TargetPath],
    ) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        if retired:
            unanswered = sum(path.dispatcher.unanswered for path in retired)
            if unanswered:
                self.log.info(
                    "reload: %d request(s) in flight on the old target connection(s)", unanswered
                )
                grace = max(path.view.timeout for path in retired)
                try:
                    async with asyncio.timeout(grace):
                        for path in retired:
                            await path.dispatcher.wait_drained()
                except TimeoutError:
                    pass  # each request's own timeout has answered it meanwhile
            for path in retired:
                await path.pool.close()
                path.dispatcher.close()
                self._retiring.remove(path)
            self.log.info(
                "reload: released the old target connection(s) to %s",
                ", ".join(dict.fromkeys(path.view.name for path in retired)),
            )
        for path in fresh:
            if not path.pool.closing:
                path.pool.start()
                if path.background is not None:
                    path.background.start()
        if fresh:
            self.log.notice(
                "reload: now serving from %s",
                ", ".join(f"{path.view.name} (units {path.view.units})" for path in fresh)
                if len(self._paths) > 1
                else fresh[0].view.name,
            )

    # ------------------------------------------------------------------ shutdown

    async def drain(self, grace: float) -> None:
        """Stop accepting, let requests in flight finish within `grace`, close all."""
        self._draining = True
        self.stop_accepting()
        paths = [*self._paths, *self._retiring]
        for path in paths:
            if path.background is not None:
                path.background.stop()
        dispatchers = [path.dispatcher for path in paths]
        unanswered = sum(dispatcher.unanswered for dispatcher in dispatchers)
        if unanswered:
            self.log.notice(
                "shutting down: waiting up to %.3gs for %d request(s) in flight",
                grace,
                unanswered,
            )
            try:
                async with asyncio.timeout(grace):
                    for dispatcher in dispatchers:
                        await dispatcher.wait_drained()
            except TimeoutError:
                self.log.warning(
                    "%d request(s) still unanswered at shutdown",
                    sum(dispatcher.unanswered for dispatcher in dispatchers),
                )
        switching = self._switching
        if switching is not None:
            switching.cancel()
            await asyncio.wait([switching])
        for session in list(self._sessions):
            session.close()
        for path in paths:
            await path.pool.close()
        for dispatcher in dispatchers:
            dispatcher.close()
        for server in self._listeners.servers:
            # Client transports were closed above; wait_closed() waits for them in 3.12+.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await server.wait_closed()
        self.log.notice("stopped after %s", self.metrics.snapshot().log_line())


def _units(plans: list[TargetPlan], plan: TargetPlan) -> str:
    """The units a target serves, for observability (``all`` without routes)."""
    return "all" if len(plans) == 1 and plan.keys is None else keys_text(plan.keys)
