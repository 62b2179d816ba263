"""UpstreamPool: up to N target connections, each kept up by its own slot task.

A slot connects through the connector (TCP, TLS, a serial line: the pool does not
know), waits the post-connect delay, then offers its connection to the dispatcher;
when the connection goes, the slot reconnects with exponential backoff. While clients
ask and the target is down, a request cuts a slot's backoff short once its last attempt
is older than the first backoff step (`reconnect_backoff`, 1 s by default): a device
that comes back after a long outage is served again within about a second, and with
nobody asking the backoff grows to its cap as before. Slot 0
connects at start; further slots start when requests have to wait, one for each
waiting request that no connection on its way will take (a burst of three opens two
more at once), so `--max-connections N` opens only what the load needs. Serving happens in callbacks
(upstream.py), never in these tasks. Slot tasks are started through the task spawner,
which restarts one that fails unexpectedly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, cast

from tcp_multiplexer.core.backoff import MAX_RECONNECT_BACKOFF, Backoff
from tcp_multiplexer.core.interfaces import (
    Clock,
    Connector,
    PooledConnection,
    PoolEvents,
    TaskSpawner,
)
from tcp_multiplexer.logs import NOTICE, format_peer
from tcp_multiplexer.observability.metrics import TargetMetrics

HEALTHY_CONNECTION_S: Final = 10.0
"""A connection that lived this long (or answered at all) resets the backoff: the
target was fine, so the next connect is immediate."""
CLOSE_WAIT_S: Final = 1.0
"""How long closing waits for a connection's transport to finish: it writes what it
holds first, which takes milliseconds unless the target has stopped reading."""
REFUSED_WITHIN_S: Final = 1.0
"""A connection the target closes this soon, before any answer, is a refusal: a device
that is away behind a host that still accepts, or whose one slot is taken."""


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """What the pool and its connections run with (from the bridge's config)."""

    max_connections: int
    timeout: float
    """Longest wait for an answer on a connection."""
    reconnect_backoff: float
    delay: float = 0.0
    """Pause after each connect before its first request."""
    max_inflight: int = 1
    request_gap: float = 0.0
    max_idle: float = 0.0


class _Slot:
    __slots__ = (
        "backing_off",
        "index",
        "kick",
        "last_attempt",
        "serving",
        "task",
        "wanted",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.wanted = asyncio.Event()
        self.serving = False
        """Its connection is up and offered to requests."""
        self.task: asyncio.Task[None] | None = None
        self.kick = asyncio.Event()
        """Set to end a backoff wait early (a request came while the target is down)."""
        self.backing_off = False
        self.last_attempt = float("-inf")
        """Loop time the slot's last connect attempt began."""


class UpstreamPool:
    """N slots, the connections they hold, and whether the target is reachable."""

    def __init__(
        self,
        events: PoolEvents,
        connector: Connector,
        make_connection: Callable[[], PooledConnection],
        settings: PoolSettings,
        metrics: TargetMetrics,
        *,
        clock: Clock,
        spawner: TaskSpawner,
        log: logging.LoggerAdapter[logging.Logger],
        name: str = "",
    ) -> None:
        self._events = events
        self._connector = connector
        self._make_connection = make_connection
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._spawner = spawner
        self._log = log
        self._name = name
        """Prefix of the slot task names (the bridge's name)."""
        self._slots = [_Slot(index) for index in range(settings.max_connections)]
        self._unwanted_slots = len(self._slots)
        """Slots not asked to hold a connection (none: demand() has nothing to do)."""
        self.can_open_more = True
        """A slot is unused and the pool is open (plain attribute: read per request)."""
        self._connections: list[PooledConnection] = []
        self._next = 0
        self._last_attempt_failed = False
        self._was_up = False
        """A connection was up once (a target coming back is "reachable again")."""
        self.unreachable = False
        """No connection is up and the last attempt to open one failed (a plain
        attribute, kept by the slots: it is read for every request that waits)."""
        self._closing = False
        self._serial = 0
        self.last_error: str | None = None
        """Why the last connect attempt failed (cleared once a connection is up)."""

    @property
    def connections(self) -> int:
        """Target connections currently up and offered to requests."""
        return len(self._connections)

    @property
    def closing(self) -> bool:
        """True once close() has begun: slots stop reconnecting."""
        return self._closing

    @property
    def target(self) -> str:
        return self._connector.target

    def start(self) -> None:
        """Start every slot's task; slot 0 connects at once."""
        for slot in self._slots:
            slot.task = self._spawner.spawn(
                f"{self._name} target slot {slot.index}".strip(),
                lambda slot=slot: self._run_slot(slot),  # type: ignore[misc]
            )
        if not self._slots[0].wanted.is_set():  # requests that waited may have asked
            self._want(self._slots[0])

    def available_connection(self) -> PooledConnection | None:
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

    def demand(self, waiting: int = 1) -> None:
        """`waiting` requests wait for a connection: open more, one per request that no
        connection being opened will take, while slots are free; if the target is down,
        try again now where a slot's last attempt is old enough."""
        if self.unreachable and not self._closing:
            now = self._clock.time()
            for slot in self._slots:
                if slot.backing_off and now - slot.last_attempt >= self._settings.reconnect_backoff:
                    slot.kick.set()
        if self._closing or not self._unwanted_slots:
            # Called for every queued request: with every slot in use, nothing to do.
            return
        opening = 0
        for slot in self._slots:
            if slot.wanted.is_set() and not slot.serving:
                opening += 1
        if opening >= waiting:
            return  # the connections on their way will take every waiting request
        for slot in self._slots:
            if not slot.wanted.is_set():
                self._want(slot)
                return

    def _want(self, slot: _Slot) -> None:
        slot.wanted.set()
        self._unwanted_slots -= 1
        self.can_open_more = self._unwanted_slots > 0 and not self._closing

    async def _run_slot(self, slot: _Slot) -> None:
        settings = self._settings
        backoff = Backoff(settings.reconnect_backoff, MAX_RECONNECT_BACKOFF)
        metrics = self._metrics
        try:
            while not self._closing:
                await slot.wanted.wait()
                slot.last_attempt = self._clock.time()
                metrics.connect_attempts += 1
                connection = self._make_connection()
                try:
                    transport, _protocol = await self._connector.connect(
                        # The connection is the asyncio protocol of its transport.
                        lambda connection=connection: cast(asyncio.Protocol, connection)  # type: ignore[misc]
                    )
                except (OSError, TimeoutError) as exc:
                    delay = backoff.next_delay()
                    self._attempt_failed(exc, delay, first=backoff.attempts == 1)
                    await self._back_off(slot, delay)
                    continue
                # Numbered per connection made, not per attempt.
                self._serial += 1
                connection.name = f"target #{self._serial} {self.target}"
                metrics.connections_made += 1
                connected_at = self._clock.time()
                if settings.delay:
                    await asyncio.sleep(settings.delay)
                if not connection.closed.done():
                    slot.serving = True
                    self._connection_up(connection, transport)
                    try:
                        await connection.closed
                    finally:
                        slot.serving = False
                        self._connection_down(connection)
                if self.closing:
                    return
                if connection.closed_for_idle:
                    slot.wanted.clear()
                    self._unwanted_slots += 1
                    self.can_open_more = True
                    backoff.reset()
                    continue
                if connection.closed_as_expected:
                    # Closed after an answer that said so (some targets close after
                    # every answer): the target is fine, reconnect at once.
                    backoff.reset()
                    continue
                metrics.reconnects += 1
                if connection.answers or self._clock.time() - connected_at >= HEALTHY_CONNECTION_S:
                    backoff.reset()
                    self._log.info("%s closed; reconnecting", connection.name)
                else:
                    delay = backoff.next_delay()
                    lived = self._clock.time() - connected_at
                    if not connection.retired and lived < REFUSED_WITHIN_S:
                        # The target closed it at once, unasked: as good as a refusal.
                        self._attempt_failed(
                            ConnectionResetError(f"{connection.name} closed by the target at once"),
                            delay,
                            first=backoff.attempts == 1,
                        )
                    else:
                        self._log.info(
                            "%s closed soon after connecting; reconnecting in %.2fs",
                            connection.name,
                            delay,
                        )
                    await self._back_off(slot, delay)
        finally:
            slot.serving = False

    async def _back_off(self, slot: _Slot, delay: float) -> None:
        """Wait `delay` before the next attempt, or less if `demand()` says to."""
        slot.kick.clear()
        slot.backing_off = True
        try:
            async with asyncio.timeout(delay):
                await slot.kick.wait()
        except TimeoutError:
            pass
        finally:
            slot.backing_off = False

    def _attempt_failed(self, exc: BaseException, delay: float, *, first: bool) -> None:
        self._metrics.connect_failures += 1
        self._last_attempt_failed = True
        self.last_error = str(exc) or type(exc).__name__
        if not self._connections:
            self.unreachable = True
        reason = str(exc) or type(exc).__name__
        self._log.log(
            logging.WARNING if first else logging.INFO,
            "cannot connect to target %s: %s; %s",
            self.target,
            reason,
            self._next_attempt_text(delay),
            extra={"target": self.target, "reason": reason},
        )
        if not self._connections:
            self._events.target_unreachable()

    def _next_attempt_text(self, delay: float) -> str:
        """When the next attempt is really due: a request brings a long backoff forward
        (see `demand`), so past the first step the log says so."""
        step = self._settings.reconnect_backoff
        if delay <= step:
            return f"retrying in {delay:.2f}s"
        return f"retrying on the next request (at most every {step:g}s), else in {delay:.2f}s"

    def _connection_up(
        self, connection: PooledConnection, transport: asyncio.BaseTransport
    ) -> None:
        if self._last_attempt_failed and not self._connections:
            # Shown by default, as the failure was: a quiet log must not end on an error.
            self._log.log(
                NOTICE,
                "target %s is reachable again" if self._was_up else "target %s is reachable",
                self.target,
                extra={"target": self.target},
            )
        self._was_up = True
        self._last_attempt_failed = False
        self.unreachable = False
        self.last_error = None
        self._connections.append(connection)
        local = transport.get_extra_info("sockname")
        if local is None:  # a serial line has no socket address
            self._log.info("new target connection: %s", connection.name)
        else:
            self._log.info("new target connection: %s <-> %s", format_peer(local), connection.name)
        connection.mark_ready()
        if connection.can_send:
            self._events.connection_available(connection, self._clock.time())

    def _connection_down(self, connection: PooledConnection) -> None:
        self._connections.remove(connection)
        if self._last_attempt_failed and not self._connections:
            self.unreachable = True
        self._log.info("target connection closed: %s", connection.name)

    async def close(self) -> None:
        """Stop reconnecting and close every target connection; return once they are
        closed (at most CLOSE_WAIT_S), so the next connection to the device (a reload's
        switch-over) never meets this one still open."""
        self._closing = True
        self.can_open_more = False
        connections = list(self._connections)
        for connection in connections:
            connection.close()
        if connections:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT_S):
                    await asyncio.gather(
                        *(asyncio.shield(connection.closed) for connection in connections)
                    )
        tasks = [slot.task for slot in self._slots if slot.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
