"""UpstreamPool: up to N target connections, each kept up by its own slot task.

A slot connects (bounded by the connect timeout), waits the post-connect delay,
then offers its connection to the dispatcher; when the connection goes, the slot
reconnects with exponential backoff. Slot 0 connects at start; further slots start
when requests have to wait, so `--max-connections N` opens only what the load needs.
Serving happens in callbacks (upstream.py), never in these tasks.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from tcp_multiplexer.backoff import Backoff
from tcp_multiplexer.config import MAX_RECONNECT_BACKOFF, ServerConfig
from tcp_multiplexer.dispatch import Dispatcher
from tcp_multiplexer.framing.base import Codec
from tcp_multiplexer.keepalive import configure_keepalive
from tcp_multiplexer.logtext import format_peer
from tcp_multiplexer.metrics import Metrics
from tcp_multiplexer.spin import Spinner
from tcp_multiplexer.upstream import UpstreamConnection

logger = logging.getLogger(__name__)

HEALTHY_CONNECTION_S: Final = 10.0
"""A connection that lived this long (or answered at all) resets the backoff: the
target was fine, so the next connect is immediate."""


class _Slot:
    __slots__ = ("busy_connecting", "index", "task", "wanted")

    def __init__(self, index: int) -> None:
        self.index = index
        self.wanted = asyncio.Event()
        self.busy_connecting = False
        self.task: asyncio.Task[None] | None = None


class UpstreamPool:
    """N slots, the connections they hold, and whether the target is reachable."""

    def __init__(
        self,
        config: ServerConfig,
        codec: Codec,
        dispatcher: Dispatcher,
        metrics: Metrics,
        spinner: Spinner,
    ) -> None:
        self._spinner = spinner
        self._config = config
        self._codec = codec
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._loop = asyncio.get_running_loop()
        self._slots = [_Slot(index) for index in range(config.max_connections)]
        self._unwanted_slots = len(self._slots)
        """Slots not asked to hold a connection (none: demand() has nothing to do)."""
        self._connections: list[UpstreamConnection] = []
        self._next = 0
        self._last_attempt_failed = False
        self._closing = False
        self._serial = 0

    @property
    def connections(self) -> int:
        """Target connections currently up and offered to requests."""
        return len(self._connections)

    @property
    def closing(self) -> bool:
        """True once close() has begun: slots stop reconnecting."""
        return self._closing

    @property
    def unreachable(self) -> bool:
        """No connection is up and the last attempt to open one failed."""
        return self._last_attempt_failed and not self._connections

    def start(self) -> None:
        for slot in self._slots:
            slot.task = self._loop.create_task(
                self._run_slot(slot), name=f"target-slot-{slot.index}"
            )
        self._want(self._slots[0])

    def available_connection(self) -> UpstreamConnection | None:
        """A connection that can take a request now, round-robin among the ready ones."""
        connections = self._connections
        count = len(connections)
        if count == 1:
            connection = connections[0]
            return connection if connection.can_send else None
        for step in range(count):
            connection = connections[(self._next + step) % count]
            if connection.can_send:
                self._next = (self._next + step + 1) % count
                return connection
        return None

    def demand(self) -> None:
        """Requests are waiting: open one more connection if a slot is free for it."""
        if self._closing or not self._unwanted_slots:
            # Called for every queued request: with every slot in use, nothing to do.
            return
        for slot in self._slots:
            if slot.busy_connecting:
                return
        for slot in self._slots:
            if not slot.wanted.is_set():
                self._want(slot)
                return

    def _want(self, slot: _Slot) -> None:
        slot.wanted.set()
        self._unwanted_slots -= 1

    async def _run_slot(self, slot: _Slot) -> None:
        config = self._config
        target = config.target
        backoff = Backoff(config.reconnect_backoff, MAX_RECONNECT_BACKOFF)
        while not self._closing:
            await slot.wanted.wait()
            slot.busy_connecting = True
            self._serial += 1
            name = f"target #{self._serial} {target}"
            try:
                async with asyncio.timeout(config.connect_timeout):
                    transport, connection = await self._loop.create_connection(
                        lambda name=name: UpstreamConnection(  # type: ignore[misc]
                            name,
                            self._codec,
                            self._dispatcher,
                            self._metrics,
                            self._spinner,
                            timeout=config.timeout,
                            max_inflight=config.max_inflight,
                            request_gap=config.request_gap,
                            max_idle=config.max_idle,
                        ),
                        target.host,
                        target.port,
                    )
            except (OSError, TimeoutError) as exc:
                slot.busy_connecting = False
                delay = backoff.next_delay()
                self._attempt_failed(exc, delay, first=backoff.attempts == 1)
                await asyncio.sleep(delay)
                continue
            configure_keepalive(transport, config.health_check_interval)
            connected_at = self._loop.time()
            if config.delay:
                await asyncio.sleep(config.delay)
            slot.busy_connecting = False
            if not connection.closed.done():
                self._connection_up(connection, transport)
                try:
                    await connection.closed
                finally:
                    self._connection_down(connection)
            if self.closing:
                return
            if connection.closed_for_idle:
                slot.wanted.clear()
                self._unwanted_slots += 1
                backoff.reset()
                continue
            self._metrics.reconnects += 1
            if connection.answers or self._loop.time() - connected_at >= HEALTHY_CONNECTION_S:
                # The target was alive (HTTP/1.0 targets close after every answer).
                backoff.reset()
                logger.info("%s closed; reconnecting", name)
            else:
                delay = backoff.next_delay()
                logger.info("%s closed soon after connecting; reconnecting in %.2fs", name, delay)
                await asyncio.sleep(delay)

    def _attempt_failed(self, exc: BaseException, delay: float, *, first: bool) -> None:
        self._last_attempt_failed = True
        reason = str(exc) or type(exc).__name__
        if first:
            logger.warning(
                "cannot connect to target %s: %s; retrying in %.2fs",
                self._config.target,
                reason,
                delay,
            )
        else:
            logger.info(
                "cannot connect to target %s: %s; retrying in %.2fs",
                self._config.target,
                reason,
                delay,
            )
        if not self._connections:
            self._dispatcher.target_unreachable()

    def _connection_up(
        self, connection: UpstreamConnection, transport: asyncio.BaseTransport
    ) -> None:
        if self._last_attempt_failed and not self._connections:
            # The failure was a warning; so is the recovery, or a quiet log ends on an error.
            logger.warning("target %s is reachable again", self._config.target)
        self._last_attempt_failed = False
        self._connections.append(connection)
        self._metrics.target_connections += 1
        logger.info(
            "new target connection: %s <-> %s",
            format_peer(transport.get_extra_info("sockname")),
            connection.name,
        )
        connection.mark_ready()
        if connection.can_send:
            self._dispatcher.connection_available(connection)

    def _connection_down(self, connection: UpstreamConnection) -> None:
        self._connections.remove(connection)
        self._metrics.target_connections -= 1
        logger.info("target connection closed: %s", connection.name)

    async def close(self) -> None:
        """Stop reconnecting and close every target connection."""
        self._closing = True
        for connection in list(self._connections):
            connection.close()
        tasks = [slot.task for slot in self._slots if slot.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
