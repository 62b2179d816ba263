"""Dispatch: from a client's request to a target connection and back.

Requests that find no free target connection wait in a fair queue: one FIFO per
client, served round-robin between clients, so a client that pipelines many
requests cannot starve the others. The request at the head of each client's queue
says which round it waits in (`Priority`): urgent ones (writes, as the gateway policy
says) go before normal ones, and the bridge's own background requests only when no
client's request waits; a client's own requests never overtake each other. The
dispatcher owns every wait queue (a session only hands requests in), so one listener
can feed several dispatchers, one per target. The queue is bounded (`queue_size`):
when it is full the clients that add to it are no longer read from, and TCP pushes
back on them until room frees. A request that waits longer than `timeout` is answered
with the protocol's busy answer and never sent.

Identical requests may share one target round trip (coalescing) when the gateway
policy names a key for them; each client still gets its own answer.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_left
from collections import deque
from collections.abc import Hashable

from tcp_multiplexer.core.interfaces import (
    ClientCodec,
    Clock,
    FailureReason,
    GatewayPolicy,
    Pool,
    PoolFactory,
    Priority,
    Recorder,
    Request,
    RequestOwner,
    RequestState,
    TargetConnection,
    TimerHandle,
    after_io,
)
from tcp_multiplexer.observability.metrics import LATENCY_BUCKETS_S, TargetMetrics


class Dispatcher:
    """The fair wait queue, coalescing and delivery of answers to their clients."""

    # Slots: attributes read on every request.
    __slots__ = (
        "_batch",
        "_clock",
        "_coalesce",
        "_codec",
        "_drained",
        "_leaders",
        "_log",
        "_metrics",
        "_paused",
        "_policy",
        "_pool",
        "_queue_size",
        "_queue_timer",
        "_queues",
        "_record",
        "_rings",
        "_timeout",
        "_waiting",
        "unanswered",
    )

    def __init__(
        self,
        codec: ClientCodec,
        metrics: TargetMetrics,
        pool: PoolFactory,
        *,
        clock: Clock,
        log: logging.LoggerAdapter[logging.Logger],
        timeout: float,
        queue_size: int,
        policy: GatewayPolicy | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        """`recorder`, if given, is told how every request was answered (a capture)."""
        self._codec = codec
        self._record = recorder
        self._metrics = metrics
        self._clock = clock
        self._log = log
        self._timeout = timeout
        self._queue_size = queue_size
        self._policy = policy
        self._coalesce = policy is not None and policy.coalescing
        self._queues: dict[RequestOwner, deque[Request]] = {}
        """Each client's waiting requests, oldest first."""
        self._rings: tuple[deque[RequestOwner], ...] = tuple(
            deque() for _ in range(Priority.LEVELS)
        )
        """Clients with waiting requests, in round-robin order, by the priority of the
        request at the head of each one's queue."""
        self._waiting = 0
        self._queue_timer: TimerHandle | None = None
        self._paused: set[RequestOwner] = set()
        """Clients not read from because the queue was full when they added to it."""
        self._leaders: dict[Hashable, Request] = {}
        self.unanswered = 0
        """Requests submitted and not yet answered (or dropped with their client)."""
        self._drained: asyncio.Future[None] | None = None
        self._batch: list[TargetConnection] | None = None
        """Connections corked while a client's several requests are submitted."""
        self._pool: Pool = pool(self)

    @property
    def pool(self) -> Pool:
        return self._pool

    @property
    def policy(self) -> GatewayPolicy | None:
        return self._policy

    @property
    def waiting(self) -> int:
        """Requests in the wait queue."""
        return self._waiting

    @property
    def metrics(self) -> TargetMetrics:
        return self._metrics

    # ------------------------------------------------------------------ requests in

    def submit(self, request: Request) -> None:
        """Take a new request: answer it locally, coalesce it, send it, or queue it."""
        self.unanswered += 1
        metrics = self._metrics
        metrics.requests += 1
        policy = self._policy
        if policy is not None:
            local = policy.admit(request)
            if local is not None:
                metrics.local_answers += 1
                if self._record is not None:
                    self._record(request, local, "local", request.submitted_at)
                self._deliver(request, local, False)
                return
            key = request.coalesce_key
            if key is not None and self._coalesce:
                # One dict lookup: this request leads unless an identical one does.
                leader = self._leaders.setdefault(key, request)
                if leader is not request:
                    if leader.followers is None:
                        leader.followers = []
                    leader.followers.append(request)
                    request.state = RequestState.FOLLOWING
                    metrics.coalesced += 1
                    return
        pool = self._pool
        if not self._waiting:
            connection = pool.available_connection()
            if connection is not None:
                if self._batch is not None and connection not in self._batch:
                    connection.cork()
                    self._batch.append(connection)
                connection.send(request, request.submitted_at)
                return
        if pool.unreachable:
            self.fail(request, FailureReason.UNAVAILABLE)
            pool.demand()  # someone is asking: the pool may try again sooner
            return
        # Queue it (inlined: this runs for most requests under load).
        owner = request.owner
        request.state = RequestState.WAITING
        request.deadline = request.submitted_at + self._timeout
        queue = self._queues.get(owner)
        if queue is None:
            queue = self._queues[owner] = deque()
        if not queue:
            self._rings[request.priority].append(owner)
        queue.append(request)
        self._waiting += 1
        if self._queue_timer is None:
            self._queue_timer = self._clock.call_at(request.deadline, self._queue_deadline)
        # A full queue stops reading from clients that add a second waiting request:
        # each client may always queue one, so a crowd of clients that each wait for
        # one answer is never paused (pausing them would only cost system calls), and
        # the queue holds at most `queue_size` requests plus one per client.
        if self._waiting >= self._queue_size and len(queue) > 1 and owner not in self._paused:
            self._paused.add(owner)
            owner.pause_for_queue()
        if pool.can_open_more:
            pool.demand(self._waiting)

    def configure(self, *, queue_size: int, policy: GatewayPolicy | None) -> None:
        """Take a reload's queue bound and gateway policy, for the next request."""
        self._queue_size = queue_size
        self._policy = policy
        self._coalesce = policy is not None and policy.coalescing
        self._resume_paused()

    def take_waiting(self) -> list[Request]:
        """Give up every waiting request (never sent), oldest turn first, to another
        dispatcher (`adopt`): a reload that switches to a new target connection.
        Requests in flight stay and are answered here."""
        taken: list[Request] = []
        while self._waiting:
            request = self._next_waiting()
            if request is None:
                break
            if request.coalesce_key is not None:
                self._release_leader(request)
            self.unanswered -= 1 + len(request.followers or ())
            taken.append(request)
        if self._queue_timer is not None:
            self._queue_timer.cancel()
            self._queue_timer = None
        self._resume_paused()
        if not self.unanswered and self._drained is not None:
            self._drained.set_result(None)
            self._drained = None
        return taken

    def adopt(self, request: Request) -> None:
        """Serve a request another dispatcher took in and never sent (`take_waiting`),
        with its deadline: sent at once if a connection is free, else queued; neither
        counted nor shown to the gateway policy again."""
        self.unanswered += 1 + len(request.followers or ())
        pool = self._pool
        if not self._waiting:
            connection = pool.available_connection()
            if connection is not None:
                connection.send(request, self._clock.time())
                return
        if pool.unreachable:
            self.fail(request, FailureReason.UNAVAILABLE)
            return
        request.state = RequestState.WAITING
        owner = request.owner
        queue = self._queues.setdefault(owner, deque())
        if not queue:
            self._rings[request.priority].append(owner)
        queue.append(request)
        self._waiting += 1
        timer = self._queue_timer
        if timer is None or request.deadline < timer.when():
            if timer is not None:
                timer.cancel()
            self._queue_timer = self._clock.call_at(request.deadline, self._queue_deadline)
        if pool.can_open_more:
            pool.demand(self._waiting)

    def begin_batch(self) -> None:
        """Several requests follow: hold their writes per connection until end_batch()."""
        self._batch = []

    def end_batch(self) -> None:
        """Write what begin_batch() held, one write per target connection."""
        batch = self._batch
        self._batch = None
        if batch:
            for connection in batch:
                connection.uncork()

    def _next_waiting(self) -> Request | None:
        """The next request to send: from the first client in the ring of the highest
        priority that has one; that client then queues again by its next request."""
        rings = self._rings
        urgent, normal, background = rings
        while True:
            ring = urgent or normal or background
            if not ring:
                return None
            owner = ring.popleft()
            queue = self._queues[owner]
            request = queue.popleft()
            if queue:
                rings[queue[0].priority].append(owner)
            elif owner.closed:
                del self._queues[owner]
            self._waiting -= 1
            if request.owner.closed and not request.followers:  # abandoned
                self._drop(request)
                continue
            return request

    def connection_available(self, connection: TargetConnection, now: float) -> None:
        """`connection` can take another request (callers checked `can_send`): give it
        waiting ones while it can."""
        if self._waiting:
            if connection.pipelined:
                self._send_waiting_batch(connection, now)
            else:
                # One request at a time (the default): a single write, nothing to gather.
                request = self._next_waiting()
                if request is not None:
                    connection.send(request, now)
            if self._paused:
                self._resume_paused()

    def _send_waiting_batch(self, connection: TargetConnection, now: float) -> None:
        """Send waiting requests while `connection` takes them, in one write."""
        connection.cork()
        try:
            while self._waiting and connection.can_send:
                request = self._next_waiting()
                if request is None:
                    break
                connection.send(request, now)
        finally:
            connection.uncork()

    def _resume_paused(self) -> None:
        """Read again from clients paused by a full queue, once it has room."""
        if self._paused and self._waiting < self._queue_size:
            paused = self._paused
            self._paused = set()
            for owner in paused:
                owner.resume_for_queue()

    def _queue_deadline(self) -> None:
        """The oldest waiting request's deadline: expire what is due once the loop has
        read what arrived meanwhile (the answer that frees a connection may be waiting).
        The fired timer stays in `_queue_timer` until then, so none is armed twice."""
        after_io(self._clock, self._expire_waiting)

    def _expire_waiting(self) -> None:
        """Answer every request that waited past its deadline with the busy answer."""
        self._queue_timer = None
        now = self._clock.time()
        expired: list[Request] = []
        next_deadline: float | None = None
        for level, ring in enumerate(self._rings):
            for owner in list(ring):
                queue = self._queues[owner]
                while queue and queue[0].deadline <= now:
                    expired.append(queue.popleft())
                if not queue:
                    ring.remove(owner)
                    continue
                if queue[0].priority != level:
                    ring.remove(owner)
                    self._rings[queue[0].priority].append(owner)
                if next_deadline is None or queue[0].deadline < next_deadline:
                    next_deadline = queue[0].deadline
        self._waiting -= len(expired)
        if next_deadline is not None:
            self._queue_timer = self._clock.call_at(next_deadline, self._queue_deadline)
        for request in expired:
            if request.abandoned:
                self._drop(request)
            else:
                self.fail(request, FailureReason.BUSY)
        self._resume_paused()
        if expired:
            self._log.warning(
                "%d request(s) waited longer than %.3gs for a free target connection",
                len(expired),
                self._timeout,
            )

    def target_unreachable(self) -> None:
        """No target connection is up and connecting failed: answer all waiting now."""
        while self._waiting:
            request = self._next_waiting()
            if request is None:
                break
            self.fail(request, FailureReason.UNAVAILABLE)
        self._resume_paused()

    def answer_here(self, request: Request, answer: bytes) -> None:
        """Answer `request` with `answer` without the target (a refused write),
        counted and recorded as a local answer."""
        self.unanswered += 1
        metrics = self._metrics
        metrics.requests += 1
        metrics.local_answers += 1
        if self._record is not None:
            self._record(request, answer, "local", request.submitted_at)
        self._deliver(request, answer, False)

    def owner_closed(self, owner: RequestOwner) -> None:
        """A client left: its waiting requests are dropped, never sent.

        A waiting request that others are coalesced onto stays queued for them.
        """
        self._paused.discard(owner)
        queue = self._queues.get(owner)
        if queue is None:
            return
        if not queue:
            del self._queues[owner]
            return
        ring = self._rings[queue[0].priority]
        kept = [request for request in queue if request.followers]
        for request in queue:
            if not request.followers:
                self._drop(request)
        self._waiting -= len(queue) - len(kept)
        queue.clear()
        queue.extend(kept)
        if not kept:
            ring.remove(owner)
            del self._queues[owner]
        elif self._rings[kept[0].priority] is not ring:
            ring.remove(owner)
            self._rings[kept[0].priority].append(owner)

    # ------------------------------------------------------------------ answers out

    def finish(self, request: Request, answer: bytes, now: float, ends_connection: bool) -> None:
        """The target answered `request` (`answer` in client form) at loop time `now`:
        deliver the answer to it and to its followers. `ends_connection`: the answer
        ends the client's connection (the codec's framer said so)."""
        metrics = self._metrics
        metrics.last_answer_at = now
        policy = self._policy
        if request.observed and policy is not None:
            policy.observe(request, answer)
        key = request.coalesce_key
        if key is not None:
            leader = self._leaders.pop(key, None)
            if leader is not request and leader is not None:
                self._leaders[key] = leader  # another leads under that key now
        # The latency histogram's observe() and _deliver(), inlined: this runs for
        # every answer.
        latency = metrics.latency
        counts = latency.counts
        elapsed = now - request.submitted_at
        counts[bisect_left(LATENCY_BUCKETS_S, elapsed)] += 1
        latency.total += elapsed
        if elapsed > latency.maximum:
            latency.maximum = elapsed
        metrics.answers += 1
        if self._record is not None:
            self._record(request, answer, "answer", now)
        request.state = RequestState.DONE
        request.answer = answer
        if ends_connection:
            request.ends_connection = True
        self.unanswered -= 1
        if not self.unanswered and self._drained is not None:
            self._drained.set_result(None)
            self._drained = None
        request.owner.request_done(request)
        followers = request.followers
        if followers and policy is not None:
            share = policy.share
            for follower in followers:
                elapsed = now - follower.submitted_at
                counts[bisect_left(LATENCY_BUCKETS_S, elapsed)] += 1
                latency.total += elapsed
                if elapsed > latency.maximum:
                    latency.maximum = elapsed
                metrics.answers += 1
                shared = share(follower.payload, answer)
                if self._record is not None:
                    self._record(follower, shared, "answer", now)
                self._deliver(follower, shared, ends_connection)

    def fail(self, request: Request, reason: FailureReason) -> None:
        """Answer `request` (and its followers) with the gateway answer for `reason`."""
        if request.coalesce_key is not None:
            self._release_leader(request)
        codec = self._codec
        policy = self._policy
        metrics = self._metrics
        now = self._clock.time()
        ends = codec.gateway_answers_close
        for failed in (request, *(request.followers or ())):
            if policy is not None:
                fallback = policy.fallback(failed, reason)
                if fallback is not None:
                    metrics.local_answers += 1
                    if self._record is not None:
                        self._record(failed, fallback, "local", now)
                    self._deliver(failed, fallback, False)
                    continue
            metrics.count_gateway(reason)
            metrics.gateway_latency.observe(now - failed.submitted_at)
            answer = codec.gateway_answer(failed.payload, reason)
            if policy is not None:
                policy.observe_gateway_answer(failed.payload, answer)
            if self._record is not None:
                outcome = "gateway" if answer is not None else "closed"
                self._record(failed, answer, f"{outcome}: {reason.name.lower()}", now)
            if answer is None:
                failed.close_client = True
                self._deliver(failed, b"", False)
            else:
                self._deliver(failed, answer, ends)

    def _release_leader(self, request: Request) -> None:
        if self._leaders.get(request.coalesce_key) is request:
            del self._leaders[request.coalesce_key]

    def _deliver(self, request: Request, answer: bytes, ends_connection: bool) -> None:
        request.state = RequestState.DONE
        request.answer = answer
        if ends_connection:
            request.ends_connection = True
        self.unanswered -= 1
        if not self.unanswered and self._drained is not None:
            self._drained.set_result(None)
            self._drained = None
        request.owner.request_done(request)

    def _drop(self, request: Request) -> None:
        """Forget a request nobody waits for any more."""
        if self._record is not None:
            self._record(request, None, "dropped", self._clock.time())
        request.state = RequestState.DONE
        if request.coalesce_key is not None:
            self._release_leader(request)
        self.unanswered -= 1
        if not self.unanswered and self._drained is not None:
            self._drained.set_result(None)
            self._drained = None

    async def wait_drained(self) -> None:
        """Return once every submitted request has been answered or dropped."""
        if not self.unanswered:
            return
        if self._drained is None:
            self._drained = self._clock.create_future()
        await asyncio.shield(self._drained)

    def close(self) -> None:
        if self._queue_timer is not None:
            self._queue_timer.cancel()
            self._queue_timer = None
