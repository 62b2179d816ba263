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
from typing import Final, Protocol

from tcp_multiplexer.config.model import BridgeConfig
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
from tcp_multiplexer.options import client_address
from tcp_multiplexer.protocols.registry import get_spec
from tcp_multiplexer.protocols.spec import ClientIdentity
from tcp_multiplexer.target import TargetPlan
from tcp_multiplexer.target_paths import (
    PathServices,
    build_path,
    build_router,
    keys_text,
)
from tcp_multiplexer.transports.tcp import (
    TcpConnector,
    configure_keepalive,
    open_listener,
    socket_name,
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
        plans = config.targets()
        path_services = PathServices(
            services.clock,
            services.poller,
            services.spawner,
            spec,
            self._codec,
            self.log,
            self.capture,
        )
        paths = [
            build_path(
                config,
                plan,
                path_services,
                events if index == 0 else spec.new_events(),
                connector if index == 0 else None,
                "all" if len(plans) == 1 and plan.keys is None else keys_text(plan.keys),
            )
            for index, plan in enumerate(plans)
        ]
        self._paths = paths
        first = paths[0]
        self.connector: Connector = first.connector
        self.pool = first.pool
        self.dispatcher = first.dispatcher
        """The bridge's own target's (the first route's, without one)."""
        # One target that takes every key needs no router (nor its cost per request).
        self._dispatch: Dispatch = (
            first.dispatcher
            if len(paths) == 1 and plans[0].keys is None
            else build_router(spec, self._codec, events, plans, paths)
        )
        self.clients = ClientMetrics()
        self._sessions: set[ClientConnection] = set()
        self.metrics = BridgeMetrics(
            self.clients,
            [path.view.metrics for path in paths],
            clients_now=lambda: len(self._sessions),
            connections_now=lambda: sum(path.pool.connections for path in self._paths),
            waiting_now=lambda: sum(path.dispatcher.waiting for path in self._paths),
        )
        self.targets = tuple(path.view for path in paths)
        """Every target the bridge serves from (one per route)."""
        self._session_count = 0
        self._refusals_logged: dict[str, float] = {}
        self._servers: list[asyncio.Server] = []
        self._draining = False

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
        allow = self.config.allow
        if allow:
            address = client_address(peer)
            if address is None or not any(address in network for network in allow):
                return "not-allowed"
        limit = self.config.max_clients
        if limit is not None and len(self._sessions) >= limit:
            return "max-clients"
        return None

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
        if not self._servers:
            raise RuntimeError(f"bridge {self.name!r} is not listening")
        port: int = self._servers[0].sockets[0].getsockname()[1]
        return port

    @property
    def sockets(self) -> list[str]:
        """Every address listened on, as HOST:PORT."""
        return [socket_name(sock) for server in self._servers for sock in server.sockets]

    async def start(self) -> None:
        """Listen on every address, and connect to the target (in the background).

        Raises:
            OSError: an address cannot be listened on; nothing is left open.
        """
        try:
            for address in self.config.listen:
                self._servers.append(await open_listener(self._new_session, address))
        except OSError:
            for server in self._servers:
                server.close()
            self._servers.clear()
            raise
        for path in self._paths:
            path.pool.start()
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

    def _new_session(self) -> asyncio.Protocol:
        self._session_count += 1
        session = ClientSession(self, self._session_count)
        if self._server_tls is None:
            return session
        return TlsServerProtocol(
            self._server_tls,
            session,
            precheck=self._tls_precheck,
            on_failure=self._tls_failed,
        )

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
        spec = self._spec
        if spec.client_filter is None:
            return None
        tls = peer_identity(transport.get_extra_info("ssl_object"))
        identity = ClientIdentity(
            client_address(transport.get_extra_info("peername")), tls.names, tls.roles
        )
        return spec.client_filter(self.config.protocol_options, identity, self._events)

    def reload_tls(self) -> None:
        """Reread the certificates and keys (a reload); a bad one keeps the old, logged."""
        config = self.config
        try:
            if config.tls_cert is not None and config.tls_key is not None:
                self._server_tls = server_context(
                    config.tls_cert, config.tls_key, config.tls_client_ca
                )
            if config.target_tls:
                context = client_context(config.target_ca, config.target_cert, config.target_key)
                for path in self._paths:
                    if isinstance(path.connector, TcpConnector):
                        path.connector.ssl = context
        except (OSError, ssl.SSLError) as exc:
            self.log.error(
                "reload: cannot reread the certificates (%s); keeping the ones in use", exc
            )

    def stop_accepting(self) -> None:
        """Close the listeners; clients connected stay."""
        for server in self._servers:
            server.close()

    async def wait_stopped_accepting(self) -> None:
        """Return once the listening sockets closed by `stop_accepting` are released."""
        # Both loops close a listening socket at once; uvloop finishes it a round later.
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    async def resume_accepting(self) -> None:
        """Listen again on every address, after `stop_accepting` (a reload that could
        not put a new bridge in this one's place).

        Raises:
            OSError: an address cannot be listened on any more.
        """
        self._servers.clear()
        for address in self.config.listen:
            self._servers.append(await open_listener(self._new_session, address))
        self.log.notice("listening again on %s", ", ".join(self.sockets))

    async def drain(self, grace: float) -> None:
        """Stop accepting, let requests in flight finish within `grace`, close all."""
        self._draining = True
        self.stop_accepting()
        dispatchers = [path.dispatcher for path in self._paths]
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
        for session in list(self._sessions):
            session.close()
        for path in self._paths:
            await path.pool.close()
        for dispatcher in dispatchers:
            dispatcher.close()
        for server in self._servers:
            # Client transports were closed above; wait_closed() waits for them in 3.12+.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await server.wait_closed()
        self.log.notice("stopped after %s", self.metrics.snapshot().log_line())
