"""The example target server: one listener, any protocol, scriptable misbehaviour.

`TargetServer` serves a `Responder` (echo, HTTP, ISO-8583, MPU or a Modbus device) on
a TCP port and can misbehave on purpose, per request (`Fault`) or per connection
(connection limit, accept-and-reset, forced close after a while, outages). Tests drive
it from the same event loop and synchronize on its live `stats` with `wait_for`;
`tcp-multiplexer example-server` runs it from the command line.

Requests on one connection are answered in order. With a delay each waits for the one
before it, like a device that handles one request at a time, while the connection keeps
reading pipelined requests (up to `MAX_PENDING_PER_CONNECTION`, then TCP pushes back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from types import TracebackType
from typing import Final, Self, cast

from tcp_multiplexer.errors import ConfigError, FramingError
from tcp_multiplexer.options import Address
from tcp_multiplexer.protocols.modbus.mbap import exception_response
from tcp_multiplexer.protocols.registry import get_spec
from tcp_multiplexer.protocols.responder import Answer, Responder
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets.faults import ID_FAULTS, Fault, FaultPlan, check_faults

logger = logging.getLogger(__name__)

DEFAULT_TARGET_HOST: Final = "127.0.0.1"
DEFAULT_LATE_DELAY: Final = 1.0
MAX_PENDING_PER_CONNECTION: Final = 1024
"""Requests held unanswered per connection before it is no longer read (bounds memory)."""
DEFAULT_WAIT_TIMEOUT: Final = 5.0

_LINGER_RESET: Final = struct.pack("ii", 1, 0)
"""SO_LINGER on with a 0 s timeout: close() sends RST instead of FIN."""


class OverLimit(StrEnum):
    """What happens to a connection beyond --max-connections."""

    CLOSE = "close"
    """Accepted and closed at once."""
    HANG = "hang"
    """Accepted, read and never answered (a device with one TCP slot that accepts more)."""


def make_responder(protocol: str) -> Responder:
    """A fresh responder for `protocol` (a new Modbus device has fresh memory)."""
    return get_spec(protocol).responder()


@dataclass(frozen=True, slots=True)
class TargetConfig:
    """How an example target serves and misbehaves. Durations are seconds; 0 = off."""

    protocol: ProtocolName = ProtocolName.ECHO
    host: str = DEFAULT_TARGET_HOST
    port: int = 0
    """0 = any free port (read `TargetServer.port` after start)."""
    delay: float = 0.0
    """Time each request takes; a connection's requests are handled one after another."""
    max_connections: int = 0
    """Connections served at once (0 = unlimited); the rest are handled per `over_limit`."""
    over_limit: OverLimit = OverLimit.CLOSE
    faults: tuple[tuple[Fault, float], ...] = ()
    """(fault, fraction of requests) pairs; fractions add up to 1 or less."""
    seed: int = 0
    """Seed of the fault draws and garbage bytes."""
    late_delay: float = DEFAULT_LATE_DELAY
    """Extra time taken by a request hit by the `late` fault."""
    close_after: float = 0.0
    """Close every served connection this long after it was accepted."""
    accept_close: bool = False
    """Accept every connection and reset it at once."""
    outage_every: float = 0.0
    """Go down (no listener, connections dropped) this long after each (re)start..."""
    outage_for: float = 0.0
    """...and come back on the same port after this long."""
    connect_quiet: float = 0.0
    """Answer nothing on a connection until this long after it was accepted (a Huawei
    SDongle)."""
    min_gap: float = 0.0
    """Modbus: answer exception 0x06 (busy) to a request closer than this to the last
    answer (a device that needs a pause between requests)."""
    max_read: int = 0
    """Modbus: answer exception 0x03 to a read of more than this many registers or bits
    (0: the protocol's limit)."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is outside 0..65535")
        for name, value in (
            ("--delay", self.delay),
            ("--late-delay", self.late_delay),
            ("--close-after", self.close_after),
            ("--outage-every", self.outage_every),
            ("--outage-for", self.outage_for),
            ("--connect-quiet", self.connect_quiet),
            ("--min-gap", self.min_gap),
            ("--max-read", self.max_read),
        ):
            if value < 0:
                raise ConfigError(f"{name} must not be negative")
        if self.max_connections < 0:
            raise ConfigError("--max-connections must not be negative (0 = unlimited)")
        if (self.outage_every > 0) != (self.outage_for > 0):
            raise ConfigError("--outage-every and --outage-for go together")
        check_faults(self.faults)
        if self.protocol != ProtocolName.MODBUS and (self.min_gap or self.max_read):
            raise ConfigError("--min-gap and --max-read are modbus quirks")
        if self.protocol != ProtocolName.MODBUS:
            for fault, _fraction in self.faults:
                if fault in ID_FAULTS:
                    raise ConfigError(f"fault {fault} needs request ids: modbus only")


def _modbus_quirk(config: TargetConfig, request: bytes, since_answer: float) -> bytes | None:
    """The exception a quirky Modbus device answers `request` with (--min-gap: 0x06
    when it comes too soon after the last answer; --max-read: 0x03 for a read above the
    limit), or None."""
    if config.protocol != ProtocolName.MODBUS or len(request) < 12:
        return None
    if config.min_gap and since_answer < config.min_gap:
        return exception_response(request, 0x06)
    if config.max_read and request[7] in (1, 2, 3, 4):
        (count,) = struct.unpack_from(">H", request, 10)
        if count > config.max_read:
            return exception_response(request, 0x03)
    return None


def _zero_faults() -> dict[Fault, int]:
    return dict.fromkeys(Fault, 0)


@dataclass(slots=True)
class TargetStats:
    """Live counters of a `TargetServer` (read them; the server updates them)."""

    listening: bool = False
    accepted: int = 0
    """Connections accepted, whatever happened to them next."""
    rejected: int = 0
    """Accepted connections not served: over the limit (closed or hanging) or --accept-close."""
    open_connections: int = 0
    """Connections being served now."""
    max_open_connections: int = 0
    hanging: int = 0
    """Over-limit connections held open unanswered now."""
    requests: int = 0
    """Requests received (framed)."""
    answers: int = 0
    """Requests answered with a whole answer (a doubled, late or wrong-id one included)."""
    in_progress: int = 0
    """Requests received and not finished: not yet answered, dropped or lost with their
    connection. A request hit by no-answer or garbage counts as finished when it is due."""
    max_concurrent: int = 0
    """The highest `in_progress` seen."""
    max_pipelined: int = 0
    """The most requests seen outstanding at once on a single connection."""
    faults: dict[Fault, int] = field(default_factory=_zero_faults)
    """How often each fault has fired (counted when it happens)."""
    framing_errors: int = 0
    """Connections closed because their request stream could not be framed."""
    read_pauses: int = 0
    """Times a connection stopped reading: its answers backed up (the client does not
    read) or `MAX_PENDING_PER_CONNECTION` requests were waiting."""
    closed_after: int = 0
    """Connections closed by --close-after."""
    outages: int = 0
    """Outages begun by --outage-every (not `go_down()` calls)."""


class _Role(Enum):
    SERVING = "serving"
    HANGING = "hanging"
    REFUSED = "refused"


def _reset(transport: asyncio.Transport) -> None:
    """Close `transport` with RST: what a crashing device or a full backlog looks like."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


class TargetServer:
    """An example target on a TCP port (see the module docstring).

    Use as ``async with TargetServer(config) as target:`` or with `start()` / `stop()`.
    """

    def __init__(
        self,
        config: TargetConfig,
        responder: Responder | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`ssl_context`: serve over TLS (a device speaking Modbus/TCP Security)."""
        self.config: Final = config
        self._ssl = ssl_context
        self.responder: Final = (
            responder if responder is not None else make_responder(config.protocol)
        )
        """The protocol logic; for modbus a `ModbusDevice` whose memory tests may read."""
        self.stats: Final = TargetStats()
        self._plan = FaultPlan(config.faults, config.seed)
        self._port = config.port
        self._listener: asyncio.Server | None = None
        self._connections: set[_TargetConnection] = set()
        self._waiters: list[tuple[Callable[[TargetStats], bool], asyncio.Future[None]]] = []
        self._outage_task: asyncio.Task[None] | None = None
        self._started = False
        self.last_answer_at = float("-inf")
        """Loop time of the last answer on any connection (--min-gap)."""
        self.resetting = False
        """Accept every connection and reset it at once, as `accept_close` does, while
        True: a device that is away but whose host still answers; tests count the
        attempts in `stats.rejected`."""

    @property
    def port(self) -> int:
        """The bound port (fixed at the first start, kept across outages)."""
        if self._port == 0:
            raise RuntimeError("the target has not been started")
        return self._port

    @property
    def address(self) -> Address:
        """Host and bound port, for ``-t`` of the multiplexer."""
        return Address(self.config.host, self.port)

    @property
    def is_listening(self) -> bool:
        return self._listener is not None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen, and begin the outage cycle if configured.

        Raises:
            OSError: the address cannot be bound.
            RuntimeError: already started.
        """
        if self._started:
            raise RuntimeError("the target is already started")
        self._started = True
        await self._listen()
        if self.config.outage_every > 0:
            self._outage_task = asyncio.create_task(self._run_outages())

    async def stop(self) -> None:
        """Stop the outage cycle, stop listening and close every connection."""
        task, self._outage_task = self._outage_task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        await self.go_down()

    async def go_down(self) -> None:
        """Stop listening (new connects are refused) and drop every connection (FIN)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        await self.drop_connections()
        if listener is not None:
            await listener.wait_closed()
            self.stats.listening = False
            logger.info("%s target on port %d is down", self.config.protocol, self._port)
            self._notify()

    async def come_up(self) -> None:
        """Listen again on the same port (no-op while listening).

        Raises:
            OSError: the port was taken meanwhile.
        """
        if self._listener is None:
            await self._listen()

    async def drop_connections(self, *, reset: bool = False) -> None:
        """Close every connection now (with RST if `reset`), unsent data discarded."""
        connections = list(self._connections)
        for connection in connections:
            connection.drop(reset=reset)
        if connections:
            await asyncio.wait([connection.closed for connection in connections])

    async def wait_for(
        self,
        predicate: Callable[[TargetStats], bool],
        # A built-in bound, so a test's forgotten condition fails fast instead of hanging.
        timeout: float = DEFAULT_WAIT_TIMEOUT,  # noqa: ASYNC109
    ) -> None:
        """Return once `predicate(self.stats)` is true (checked on every change).

        Raises:
            TimeoutError: it did not become true within `timeout` seconds.
        """
        if predicate(self.stats):
            return
        waiter = (predicate, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await waiter[1]
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _notify(self) -> None:
        if not self._waiters:
            return
        for predicate, future in self._waiters:
            if future.done():
                continue
            try:
                ready = predicate(self.stats)
            except Exception as exc:  # the test's own predicate failed: hand it to the test
                future.set_exception(exc)
                continue
            if ready:
                future.set_result(None)

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(
            lambda: _TargetConnection(self), self.config.host or None, self._port, ssl=self._ssl
        )
        if self._port == 0:
            self._port = listener.sockets[0].getsockname()[1]
        self._listener = listener
        self.stats.listening = True
        logger.info("%s target listening on %s", self.config.protocol, self.address)
        self._notify()

    async def _run_outages(self) -> None:
        config = self.config
        while True:
            await asyncio.sleep(config.outage_every)
            self.stats.outages += 1
            await self.go_down()
            await asyncio.sleep(config.outage_for)
            while True:
                try:
                    await self.come_up()
                    break
                except OSError as exc:
                    logger.warning("cannot listen on port %d again: %s", self._port, exc)
                    await asyncio.sleep(config.outage_for)


class _TargetConnection(asyncio.Protocol):
    """One accepted connection: frames requests, answers them in order, injects faults."""

    def __init__(self, server: TargetServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._framer = server.responder.request_framer()
        self._role = _Role.REFUSED
        self._pending: deque[tuple[bytes, Fault | None]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        """Runs while the oldest pending request is being 'processed' (delay, late)."""
        self._head_due = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._eof = False
        self._reading_paused = False
        self._writing_paused = False
        self._accepted_at = 0.0
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        self._accepted_at = asyncio.get_running_loop().time()
        server = self._server
        stats = server.stats
        config = server.config
        if not server.is_listening:
            # Accepted just before the listener closed: the host is down now.
            self._closing = True
            _reset(transport)
            return
        server._connections.add(self)
        stats.accepted += 1
        peer = transport.get_extra_info("peername")
        if config.accept_close or server.resetting:
            stats.rejected += 1
            self._closing = True
            logger.debug("accepted %s and reset it (--accept-close)", peer)
            _reset(transport)
        elif config.max_connections and stats.open_connections >= config.max_connections:
            stats.rejected += 1
            if config.over_limit is OverLimit.HANG:
                self._role = _Role.HANGING
                stats.hanging += 1
                logger.debug("over the limit: %s left hanging", peer)
            else:
                self._closing = True
                logger.debug("over the limit: %s closed", peer)
                transport.close()
        else:
            self._role = _Role.SERVING
            stats.open_connections += 1
            stats.max_open_connections = max(stats.max_open_connections, stats.open_connections)
            if config.close_after > 0:
                self._close_timer = asyncio.get_running_loop().call_later(
                    config.close_after, self._close_after
                )
            logger.debug("serving %s", peer)
        server._notify()

    def connection_lost(self, exc: Exception | None) -> None:
        server = self._server
        stats = server.stats
        self._closing = True
        for timer in (self._timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        stats.in_progress -= len(self._pending)
        self._pending.clear()
        if self._role is _Role.SERVING:
            stats.open_connections -= 1
        elif self._role is _Role.HANGING:
            stats.hanging -= 1
        server._connections.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)
        server._notify()

    def data_received(self, data: bytes) -> None:
        if self._role is not _Role.SERVING or self._closing:
            return  # hanging connections are read and ignored, so their close is noticed
        try:
            requests = self._framer.feed(data)
        except FramingError as exc:
            self._reject(exc)
            return
        if requests:
            self._add_requests(requests)

    def eof_received(self) -> bool | None:
        if self._role is not _Role.SERVING or self._closing:
            return None
        self._eof = True
        try:
            requests = self._framer.feed_eof()
        except FramingError:
            requests = []  # a partial request at EOF is never answered
        if requests:
            self._add_requests(requests)
        # Keep the transport open to answer what is still pending; `_serve` closes it.
        return True if self._pending else None

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    def drop(self, *, reset: bool) -> None:
        """Close at once, discarding unsent data (with RST if `reset`)."""
        self._closing = True
        if self._transport is not None:
            if reset:
                _reset(self._transport)
            else:
                self._transport.abort()

    def _add_requests(self, requests: list[bytes]) -> None:
        server = self._server
        stats = server.stats
        plan = server._plan
        pending = self._pending
        for request in requests:
            pending.append((request, plan.choose()))
        stats.requests += len(requests)
        stats.in_progress += len(requests)
        stats.max_concurrent = max(stats.max_concurrent, stats.in_progress)
        stats.max_pipelined = max(stats.max_pipelined, len(pending))
        if self._timer is None:
            self._serve()
        self._update_reading()
        server._notify()

    def _serve(self) -> None:
        """Answer pending requests in order until one must wait (delay, late) or none is left."""
        server = self._server
        config = server.config
        pending = self._pending
        while pending and not self._closing:
            request, fault = pending[0]
            if not self._head_due:
                wait = config.delay + (config.late_delay if fault is Fault.LATE else 0.0)
                if wait > 0:
                    self._timer = asyncio.get_running_loop().call_later(wait, self._head_ready)
                    return
            self._head_due = False
            pending.popleft()
            server.stats.in_progress -= 1
            self._answer(request, fault)
        if not pending and self._eof and not self._closing:
            self._close()

    def _head_ready(self) -> None:
        self._timer = None
        self._head_due = True
        self._serve()
        self._update_reading()
        self._server._notify()

    def _answer(self, request: bytes, fault: Fault | None) -> None:
        server = self._server
        stats = server.stats
        transport = self._transport
        if transport is None:
            raise RuntimeError("request before connection_made")
        config = server.config
        now = asyncio.get_running_loop().time()
        if config.connect_quiet and now - self._accepted_at < config.connect_quiet:
            return  # --connect-quiet: nothing answered yet on this connection
        quirk = _modbus_quirk(config, request, now - server.last_answer_at)
        answer = Answer(quirk) if quirk is not None else server.responder.answer(request)
        server.last_answer_at = now
        data = answer.data
        if fault is not None:
            stats.faults[fault] += 1
        match fault:
            case None | Fault.LATE:
                transport.write(data)
                stats.answers += 1
            case Fault.NO_ANSWER:
                pass
            case Fault.ANSWER_TWICE:
                transport.write(data)
                transport.write(data)
                stats.answers += 1
            case Fault.WRONG_ID:
                transport.write(server.responder.with_wrong_id(data))
                stats.answers += 1
            case Fault.GARBAGE:
                transport.write(server._plan.garbage(len(data)))
            case Fault.HALF_ANSWER_CLOSE:
                transport.write(data[: len(data) // 2])
                self._close()
                return
            case Fault.RESET:
                transport.write(data[: len(data) // 2])
                self._closing = True
                _reset(transport)
                return
        if answer.close:
            self._close()

    def _reject(self, error: FramingError) -> None:
        self._server.stats.framing_errors += 1
        logger.debug("closing a connection: %s", error)
        reply = self._server.responder.reject(error)
        if reply and self._transport is not None:
            self._transport.write(reply)
        self._close()

    def _close_after(self) -> None:
        self._close_timer = None
        self._server.stats.closed_after += 1
        self._close()
        self._server._notify()

    def _close(self) -> None:
        """Close after flushing what was written (FIN); pending requests are dropped."""
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or self._closing:
            return
        pause = self._writing_paused or len(self._pending) >= MAX_PENDING_PER_CONNECTION
        if pause != self._reading_paused:
            self._reading_paused = pause
            if pause:
                self._server.stats.read_pauses += 1
                transport.pause_reading()
            else:
                transport.resume_reading()
