"""The vocabulary the core modules share, and the only thing they import from each other.

Session, dispatcher, upstream connection and pool never import one another: each
talks to the others through the small `typing.Protocol` interfaces below, so each can
be built and tested alone with a fake transport and a virtual clock. Protocol
knowledge reaches the core only through the codec and policy interfaces; nothing here
names a protocol.

The path of one request, and which interface each hop goes through::

    client bytes -> Framer (ClientCodec) -> Request -> Dispatch.submit
        -> Pool.available_connection -> TargetConnection.send -> TargetCodec.encode
    target bytes -> ResponseFramer (TargetCodec) -> TargetCodec.decode
        -> ConnectionSink.finish -> RequestOwner.request_done -> client bytes
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from enum import Enum, StrEnum
from typing import Final, Protocol

from tcp_multiplexer.core.timers import PreciseTimers


class FailureReason(StrEnum):
    """Why the multiplexer answers a request itself instead of the target."""

    UNAVAILABLE = "target unreachable"
    """No target connection could be established (Modbus 0x0A, HTTP 502)."""
    BUSY = "no free target connection in time"
    """The request waited longer than the timeout and was never sent (Modbus 0x06, HTTP 503)."""
    TIMEOUT = "target did not answer in time"
    """The request was sent but not answered in time (Modbus 0x0B, HTTP 504)."""
    BROKEN = "target connection failed before answering"
    """The request was sent, then the connection closed or sent garbage (Modbus 0x0B, HTTP 502)."""


class Correlation(Enum):
    """How answers are matched to the requests outstanding on a target connection."""

    FIFO = "fifo"
    """Answers come back in request order (pipelining allowed)."""
    BY_ID = "by-id"
    """Each request carries an id from the codec's id space, which the target echoes."""
    SOLE = "sole"
    """One request at a time, its answer recognised by the framer (Modbus RTU: a line
    with one master). A request that times out or is answered damaged fails alone; the
    connection stays, and the next request goes at once."""


# ---------------------------------------------------------------------------- framing


class Framer(Protocol):
    """Cuts one direction of a byte stream into messages (sans-IO)."""

    def feed(self, data: bytes) -> list[bytes]:
        """Add `data`; return every message now complete, in order ([] = need more).

        Raises:
            FramingError: the stream is malformed or a message exceeds the limit.
        """
        ...

    def feed_eof(self) -> list[bytes]:
        """The peer closed its side: return a close-delimited final message, if any.

        Raises:
            IncompleteMessage: part of a message is still buffered.
        """
        ...

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a complete message."""
        ...

    @property
    def closing_at(self) -> int:
        """Index, in what the last `feed` or `feed_eof` returned, of the first message
        that ends the connection (HTTP ``Connection: close``, HTTP/1.0, a close-delimited
        body); -1 if none does."""
        ...

    @property
    def offers_interim_replies(self) -> bool:
        """True if `take_interim_reply` can ever give something (the caller skips it
        otherwise)."""
        ...

    def take_interim_reply(self) -> bytes | None:
        """Bytes the multiplexer should send to this peer now, before any complete message.

        HTTP's ``100 Continue``: a client that sent ``Expect: 100-continue`` waits for it
        before sending the body, and the multiplexer forwards only complete requests, so
        it must answer that itself. None for every other protocol and state. Each reply is
        handed out once; call after `feed`.
        """
        ...


class ResponseFramer(Framer, Protocol):
    """A framer for target answers, told about each request before it is sent."""

    def expect_response(self, request: bytes) -> None:
        """Note that `request` (in the target's form) is about to be sent (HTTP needs
        the method for HEAD)."""
        ...


# ---------------------------------------------------------------------------- codecs


class SoleTargetCodec(Protocol):
    """What a codec of `Correlation.SOLE` also says: which requests get no answer."""

    @property
    def turnaround(self) -> float:
        """Seconds the line stays quiet after a request that gets no answer."""
        ...

    def answer_expected(self, wire: bytes) -> bool:
        """False for a request (in the target's form) nobody answers (a broadcast)."""
        ...


class ClientCodec(Protocol):
    """A protocol as the clients speak it: framing their requests, gateway answers."""

    @property
    def name(self) -> str: ...

    def request_framer(self) -> Framer:
        """A new framer for one client's request stream."""
        ...

    def gateway_answer(self, request: bytes, reason: FailureReason) -> bytes | None:
        """The multiplexer's own answer to `request`, or None to close the client instead."""
        ...

    @property
    def gateway_answers_close(self) -> bool:
        """True if every gateway answer ends the client's connection (HTTP's carry
        ``Connection: close``)."""
        ...


class TargetCodec(Protocol):
    """A protocol as the target speaks it: requests out, answers back in client form.

    The core and the gateway policies only ever see client-form messages; a target
    codec translates at the edge (Modbus puts its own transaction id on each request
    and restores the client's on the answer; RTU framing adds and removes the MBAP
    header).
    """

    @property
    def correlation(self) -> Correlation: ...

    @property
    def id_space(self) -> int:
        """How many distinct ids `encode` takes (BY_ID codecs; 0 for FIFO)."""
        ...

    @property
    def transparent(self) -> bool:
        """True if `encode` and `decode` return their input unchanged: the connection
        then calls neither."""
        ...

    @property
    def framing_needs_requests(self) -> bool:
        """True if the answer framer must see each request first (HTTP: no body after
        HEAD): the connection then calls `ResponseFramer.expect_response`."""
        ...

    def response_framer(self) -> ResponseFramer:
        """A new framer for one target connection's answer stream."""
        ...

    def encode(self, request: bytes, wire_id: int) -> bytes:
        """`request` (client form) as it goes to the target, carrying `wire_id` for BY_ID."""
        ...

    def decode(self, request: bytes, answer: bytes) -> bytes:
        """The target's `answer` to `request` (client form) made the client's own answer."""
        ...

    def answer_id(self, answer: bytes) -> int:
        """The id a framed answer carries (BY_ID codecs only)."""
        ...


class GatewayPolicy(Protocol):
    """Optional protocol-specific handling before and after a request is sent.

    The core calls it without knowing the protocol: it may answer locally (cached
    reads), name a key under which identical requests share one target round trip,
    and learn from every answer (cache fill and invalidation). Every message it sees is
    in client form.
    """

    @property
    def coalescing(self) -> bool:
        """True if requests with the same key share one round trip."""
        ...

    def admit(self, request: Request) -> bytes | None:
        """A local answer to `request`, or None to send it. Sets `request.coalesce_key`
        for requests that may share an answer (and `request.observed` for those whose
        answer `observe` must see)."""
        ...

    def share(self, request: bytes, answer: bytes) -> bytes:
        """`answer`, given to an identical request, made `request`'s own answer."""
        ...

    def observe(self, request: Request, answer: bytes) -> None:
        """Learn from the target's answer to a request that `admit` marked observed."""
        ...

    def observe_gateway_answer(self, request: bytes, answer: bytes | None) -> None:
        """The multiplexer answered `request` itself (`answer`; None = client closed)
        because the target could not: the request may or may not have reached it."""
        ...

    def fallback(self, request: Request, reason: FailureReason) -> bytes | None:
        """An answer to give `request` instead of the gateway answer for `reason` (Modbus:
        a stale read from the register image), or None."""
        ...


# ---------------------------------------------------------------------------- requests


class RequestState:
    """Where a request is: each moves forward only.

    Plain int class attributes, not an IntEnum: reading an enum member costs about
    100 ns, several times per request.
    """

    NEW: Final = 0
    WAITING: Final = 1
    """Queued for a free target connection."""
    SENT: Final = 2
    """Written to a target connection, answer outstanding."""
    FOLLOWING: Final = 3
    """Coalesced: rides on an identical request that is waiting or sent."""
    DONE: Final = 4


class Priority:
    """Which waiting request a free target connection takes first: the lowest number,
    round-robin between clients within one; each client's own requests stay in its
    order (a priority applies to the request at the head of a client's queue).

    Plain ints, as RequestState."""

    URGENT: Final = 0
    """Requests that must not wait behind others' reads (the gateway policy says which:
    Modbus writes)."""
    NORMAL: Final = 1
    """Clients' requests."""
    BACKGROUND: Final = 2
    """The bridge's own requests (Modbus polls): only when no client's request waits."""
    LEVELS: Final = 3


class RequestOwner(Protocol):
    """The client a request came from, as the dispatcher sees it."""

    @property
    def closed(self) -> bool:
        """True once the client's connection is gone."""
        ...

    def request_done(self, request: Request) -> None:
        """`request` has its answer (or the client must be closed)."""
        ...

    def pause_for_queue(self) -> None:
        """Stop reading: the wait queue is full."""
        ...

    def resume_for_queue(self) -> None:
        """The wait queue has room again."""
        ...


class Request:
    """A framed client request and, once known, the bytes that answer it.

    `answer` is meaningful once `state` is DONE, unless `close_client` is set: the
    protocol has no gateway answer and the client must be closed instead.
    """

    __slots__ = (
        "answer",
        "close_client",
        "closes_target",
        "coalesce_key",
        "deadline",
        "ends_connection",
        "followers",
        "observed",
        "owner",
        "payload",
        "priority",
        "state",
        "submitted_at",
        "wire_id",
    )

    def __init__(self, owner: RequestOwner, payload: bytes, now: float) -> None:
        self.owner = owner
        self.payload = payload
        self.submitted_at = now
        self.deadline = 0.0
        """When it is answered with the busy answer if still waiting; once written to a
        target connection, when it was written plus the answer timeout."""
        self.state: int = RequestState.NEW
        self.answer = b""
        self.close_client = False
        self.ends_connection = False
        """The answer ends the client's connection (HTTP `Connection: close`)."""
        self.closes_target = False
        """The target closes its connection after answering (HTTP `Connection: close`)."""
        self.coalesce_key: Hashable | None = None
        self.observed = False
        """The gateway policy wants to see this request's answer."""
        self.followers: list[Request] | None = None
        self.wire_id = 0
        self.priority: int = Priority.NORMAL
        """Which waiting request goes first (`Priority`); the gateway policy may raise it."""

    @property
    def abandoned(self) -> bool:
        """True if nobody is waiting for this request's answer any more."""
        return self.owner.closed and not self.followers


# ---------------------------------------------------------------------------- the loop


class TimerHandle(Protocol):
    def cancel(self) -> None: ...

    def when(self) -> float: ...


class Clock(Protocol):
    """The part of the event loop the callback path uses: asyncio's loop, or a virtual
    clock in unit tests."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandle: ...

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandle: ...

    def call_at_precise(self, when: float, callback: Callable[[], object]) -> TimerHandle:
        """`call_at` to within tens of microseconds where the platform allows (the
        loop's own timers count milliseconds); never before `when`."""
        ...

    def call_soon(self, callback: Callable[[], object]) -> object: ...

    def create_future(self) -> asyncio.Future[None]: ...


def after_io(clock: Clock, callback: Callable[[], object]) -> None:
    """Run `callback` once the loop has polled for I/O again.

    Deadline timers go through this: after a stall of the loop (thousands of clients
    accepted at once, a slow host), a timer can fire while the answer that would have
    met its deadline already waits in a socket. Two ready rounds put the callback
    after the next poll on asyncio's loop and on uvloop's (which runs callbacks queued
    by a timer before it polls).
    """
    clock.call_soon(lambda: clock.call_soon(callback))


class Poller(Protocol):
    """Told of every burst of I/O (see core.poller)."""

    def touch(self, now: float) -> None: ...


# ---------------------------------------------------------------------------- the hops


class Dispatch(Protocol):
    """Where a session hands its requests."""

    def submit(self, request: Request) -> None:
        """Take a new request: answer it locally, coalesce it, send it, or queue it."""
        ...

    def answer_here(self, request: Request, answer: bytes) -> None:
        """Answer `request` with `answer` without the target (a refused write),
        counted and recorded as a local answer."""
        ...

    def adopt(self, request: Request) -> None:
        """Serve a request another dispatch took in and never sent (a reload that
        switched its target), with its deadline, without counting it again."""
        ...

    def begin_batch(self) -> None:
        """Several requests follow: hold their writes per connection until end_batch()."""
        ...

    def end_batch(self) -> None:
        """Write what begin_batch() held, one write per target connection."""
        ...

    def owner_closed(self, owner: RequestOwner) -> None:
        """A client left: its waiting requests are dropped, never sent."""
        ...


class TargetConnection(Protocol):
    """One target connection, as the dispatcher and the pool see it."""

    @property
    def can_send(self) -> bool:
        """True if a request could be written now."""
        ...

    @property
    def pipelined(self) -> bool:
        """More than one request may be outstanding at once."""
        ...

    def send(self, request: Request, now: float) -> None:
        """Write `request` at clock time `now` (the caller's, to spare a clock read);
        the caller checked `can_send`."""
        ...

    def cork(self) -> None: ...

    def uncork(self) -> None: ...


class ConnectionSink(Protocol):
    """What a target connection reports to (the dispatcher)."""

    def finish(self, request: Request, answer: bytes, now: float, ends_connection: bool) -> None:
        """The target answered `request` (`answer` in client form) at loop time `now`."""
        ...

    def fail(self, request: Request, reason: FailureReason) -> None:
        """`request` gets the gateway answer for `reason`."""
        ...

    def connection_available(self, connection: TargetConnection, now: float) -> None:
        """`connection` can take another request at clock time `now` (the caller
        checked `can_send`)."""
        ...


class PoolEvents(ConnectionSink, Protocol):
    """What the pool reports to (the dispatcher), besides what its connections do."""

    def target_unreachable(self) -> None:
        """No target connection is up and connecting failed: answer all waiting now."""
        ...


class Pool(Protocol):
    """The target connections, as the dispatcher sees them."""

    @property
    def unreachable(self) -> bool:
        """No connection is up and the last attempt to open one failed."""
        ...

    def available_connection(self) -> TargetConnection | None:
        """A connection that can take a request now, or None."""
        ...

    @property
    def can_open_more(self) -> bool:
        """True if `demand()` could open another connection (a slot is unused)."""
        ...

    def demand(self, waiting: int = 1) -> None:
        """`waiting` requests wait: open more connections while slots are free and
        fewer are on their way than requests wait, and try again now if the target is
        down and the last attempt is old enough."""
        ...


Recorder = Callable[["Request", bytes | None, str, float], None]
"""Told how each request was answered: (request, answer or None, outcome, loop time);
outcomes are ``answer``, ``local``, ``gateway: <reason>``, ``closed: <reason>`` and
``dropped``. The capture is one."""

PoolFactory = Callable[[PoolEvents], Pool]
"""Builds the pool a dispatcher serves from, given the dispatcher to report to."""


class Connector(Protocol):
    """Opens target connections: TCP today; TLS and serial lines plug in the same way."""

    @property
    def target(self) -> str:
        """What it connects to, for logs (``192.168.1.22:502``)."""
        ...

    async def connect(
        self, protocol_factory: Callable[[], asyncio.Protocol]
    ) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
        """Open one connection (bounded by its own timeout).

        Raises:
            OSError, TimeoutError: the target cannot be reached now.
        """
        ...


class TaskSpawner(Protocol):
    """Starts long-lived tasks under supervision (see supervise.py)."""

    def spawn(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run `run()` until it returns or is cancelled, restarting it after an
        unexpected exception."""
        ...


class ClientConnection(RequestOwner, Protocol):
    """A client session, as its bridge sees it."""

    origin: object
    """Which of the bridge's listeners accepted it (the bridge's tag)."""

    @property
    def name(self) -> str:
        """``client #N HOST:PORT``, for logs."""
        ...

    @property
    def peer(self) -> object:
        """The client's address as the socket gives it."""
        ...

    @property
    def transport(self) -> asyncio.BaseTransport | None:
        """Its connection, once made."""
        ...

    def refresh(self) -> None:
        """Take the bridge's settings again (a reload), for the next request."""
        ...

    def close(self) -> None:
        """Close after the answers already written (shutdown, drain)."""
        ...


class RequestFilter(Protocol):
    """What one client may ask: a request it may not is answered by the multiplexer."""

    def refusal(self, request: bytes) -> bytes | None:
        """The answer refusing `request` (it is never sent), or None to let it through."""
        ...


class LatencyObserver(Protocol):
    def observe(self, seconds: float) -> None: ...


class ClientCounters(Protocol):
    """What a session counts for its client's address, while observability is on."""

    connections: int
    requests: int
    errors: int
    refused: int
    last_seen: float

    @property
    def latency(self) -> LatencyObserver | None:
        """Submit-to-answer times, if kept per client."""
        ...


class SessionHost(Protocol):
    """What a client session needs from the bridge that accepted it."""

    @property
    def codec(self) -> ClientCodec: ...

    @property
    def dispatch(self) -> Dispatch: ...

    @property
    def client_backlog(self) -> int:
        """Requests one client may have outstanding before it is not read from."""
        ...

    @property
    def client_idle_timeout(self) -> float:
        """Close a client that sends nothing this long (0: never)."""
        ...

    @property
    def poller(self) -> Poller: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """The bridge's logger: its lines name the bridge."""
        ...

    def client_connected(self, session: ClientConnection, transport: asyncio.BaseTransport) -> bool:
        """A client connected: set its socket up and say whether it may stay (False:
        refused, the session closes at once and reads nothing)."""
        ...

    def client_disconnected(self, session: ClientConnection) -> None:
        """A client's connection is gone."""
        ...

    def counters_for(self, peer: object) -> ClientCounters | None:
        """Where a session from `peer` counts what it does (None: nowhere)."""
        ...

    def filter_for(self, transport: asyncio.BaseTransport) -> RequestFilter | None:
        """What the client on `transport` may not ask (None: it may ask anything)."""
        ...


class PooledConnection(TargetConnection, Protocol):
    """A target connection as its pool sees it (an asyncio.Protocol as well)."""

    name: str
    """``target #N HOST:PORT``, for logs; the pool names it once it is connected."""

    @property
    def closed(self) -> asyncio.Future[None]:
        """Done once the connection is gone."""
        ...

    @property
    def answers(self) -> int:
        """Answers received on it: a connection that answered had a live target."""
        ...

    @property
    def closed_as_expected(self) -> bool:
        """It ended as planned (after an answer that said so, idle, shutdown)."""
        ...

    @property
    def closed_for_idle(self) -> bool:
        """It was closed for being idle, to be reopened when requests come."""
        ...

    @property
    def retired(self) -> bool:
        """The multiplexer closed it because of the target (a timeout, a malformed or
        unasked-for answer), rather than the target closing it."""
        ...

    def mark_ready(self) -> None:
        """It may carry requests now (after the post-connect delay)."""
        ...

    def close(self) -> None: ...


class LoopClock:
    """The event loop's timers with a precise clock: a `Clock` for production.

    uvloop's own `time()` moves in millisecond steps, which would round every latency
    to 0 or 1 ms. `time.monotonic` is the same clock, to the nanosecond; timers are still
    the loop's. (The loop's time is never ahead of it, so a timer set for a monotonic
    time fires no earlier.) The methods are the loop's and the clock's own bound
    callables, so a call costs what calling the loop does.
    """

    __slots__ = ("_loop", "_precise", "call_at", "call_later", "call_soon", "create_future", "time")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._precise: PreciseTimers | None = None
        """Made on first use (a serial line's pauses): a timerfd on Linux."""
        self.time: Callable[[], float] = time.monotonic
        self.call_at: Callable[[float, Callable[[], object]], TimerHandle] = loop.call_at
        self.call_later: Callable[[float, Callable[[], object]], TimerHandle] = loop.call_later
        self.call_soon: Callable[[Callable[[], object]], object] = loop.call_soon
        self.create_future: Callable[[], asyncio.Future[None]] = loop.create_future

    def call_at_precise(self, when: float, callback: Callable[[], object]) -> TimerHandle:
        """`call_at`, to within the loop's wake-up latency (see core/timers.py)."""
        precise = self._precise
        if precise is None:
            precise = self._precise = PreciseTimers(self._loop)
        return precise.call_at(when, callback)

    def close(self) -> None:
        """Release what the precise timers hold (their timerfd)."""
        if self._precise is not None:
            self._precise.close()
            self._precise = None
