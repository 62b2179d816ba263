"""Multiplexer: the listener, the sessions, the pool, and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
from typing import Final

from tcp_multiplexer.config import ServerConfig
from tcp_multiplexer.dispatch import Dispatcher
from tcp_multiplexer.framing import CodecOptions, make_codec
from tcp_multiplexer.framing.base import Codec, GatewayPolicy, ProtocolName
from tcp_multiplexer.metrics import Metrics
from tcp_multiplexer.modbus.gateway import ModbusGatewayPolicy
from tcp_multiplexer.pool import UpstreamPool
from tcp_multiplexer.session import ClientSession
from tcp_multiplexer.spin import Spinner

logger = logging.getLogger(__name__)

LISTEN_BACKLOG: Final = 4096
"""Pending connections the kernel queues (capped by net.core.somaxconn): bursts of
thousands of clients connecting at once must not be refused."""


def raise_file_limit() -> tuple[int, int]:
    """Raise the soft open-file limit to the hard limit; return (old, new) soft limits.

    Every client and target connection is a file descriptor; the usual soft limit of
    1024 would cap the multiplexer near a thousand clients.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            return soft, wanted
    return soft, soft


def make_policy(config: ServerConfig, metrics: Metrics, codec: Codec) -> GatewayPolicy | None:
    """The protocol's gateway policy, if it has one."""
    if config.protocol is ProtocolName.MODBUS:
        return ModbusGatewayPolicy(config.modbus, metrics, codec)
    return None


class Multiplexer:
    """Accepts clients and serves their requests over the target connection pool."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.codec: Codec = make_codec(
            config.protocol, CodecOptions(lenient_ids=config.modbus.lenient_ids)
        )
        self._sessions: set[ClientSession] = set()
        self._session_count = 0
        self._server: asyncio.Server | None = None
        self._metrics_task: asyncio.Task[None] | None = None
        self._dispatcher: Dispatcher | None = None
        self._pool: UpstreamPool | None = None
        self._spinner: Spinner | None = None

    @property
    def dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:
            raise RuntimeError("start() first")
        return self._dispatcher

    @property
    def spinner(self) -> Spinner:
        if self._spinner is None:
            raise RuntimeError("start() first")
        return self._spinner

    @property
    def pool(self) -> UpstreamPool:
        if self._pool is None:
            raise RuntimeError("start() first")
        return self._pool

    @property
    def port(self) -> int:
        """The port actually listened on (useful with port 0)."""
        if self._server is None:
            raise RuntimeError("start() first")
        sock: socket.socket = self._server.sockets[0]
        port: int = sock.getsockname()[1]
        return port

    async def start(self) -> None:
        """Connect to the target (in the background) and start listening."""
        config = self.config
        old_limit, new_limit = raise_file_limit()
        if new_limit != old_limit:
            logger.info("raised the open-file limit from %d to %d", old_limit, new_limit)
        self._spinner = Spinner(config.busy_poll)
        policy = make_policy(config, self.metrics, self.codec)
        self._dispatcher = Dispatcher(
            self.codec,
            self.metrics,
            timeout=config.timeout,
            queue_size=config.queue_size,
            policy=policy,
            coalesce=config.modbus.coalesce,
        )
        self._pool = UpstreamPool(config, self.codec, self._dispatcher, self.metrics, self._spinner)
        self._dispatcher.attach_pool(self._pool)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._new_session,
            config.listen.host or None,
            config.listen.port,
            backlog=LISTEN_BACKLOG,
            reuse_address=True,
        )
        self._pool.start()
        if config.metrics_interval > 0:
            self._metrics_task = loop.create_task(self._log_metrics(), name="metrics")
        logger.warning(
            "listening on %s (%s), target %s, up to %d target connection(s)",
            ", ".join(_socket_name(sock) for sock in self._server.sockets),
            config.protocol,
            config.target,
            config.max_connections,
        )

    def _new_session(self) -> ClientSession:
        self._session_count += 1
        return ClientSession(self, self._session_count)

    def session_opened(self, session: ClientSession) -> None:
        self._sessions.add(session)
        self.metrics.clients += 1
        self.metrics.clients_total += 1

    def session_closed(self, session: ClientSession) -> None:
        if session in self._sessions:
            self._sessions.discard(session)
            self.metrics.clients -= 1

    async def _log_metrics(self) -> None:
        while True:
            await asyncio.sleep(self.config.metrics_interval)
            logger.info("metrics: %s", self.metrics.snapshot(reset_latency=True).log_line())

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish within `grace`, close all."""
        if self._server is not None:
            self._server.close()
        dispatcher = self._dispatcher
        if dispatcher is not None and dispatcher.unanswered:
            logger.warning(
                "shutting down: waiting up to %.3gs for %d request(s) in flight",
                grace,
                dispatcher.unanswered,
            )
            try:
                async with asyncio.timeout(grace):
                    await dispatcher.wait_drained()
            except TimeoutError:
                logger.warning("%d request(s) still unanswered at shutdown", dispatcher.unanswered)
        for session in list(self._sessions):
            session.close()
        if self._metrics_task is not None:
            self._metrics_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._metrics_task
        if self._pool is not None:
            await self._pool.close()
        if dispatcher is not None:
            dispatcher.close()
        if self._server is not None:
            # Client transports were closed above; wait_closed() waits for them in 3.12+.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._server.wait_closed()
        logger.warning("stopped after %s", self.metrics.snapshot().log_line())


def _socket_name(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
