"""Dispatch: from a client's request to a target connection and back.

Requests that find no free target connection wait in a fair queue: one FIFO per
client, served round-robin between clients, so a client that pipelines many
requests cannot starve the others. The queue is bounded (`queue_size`): when it is
full the clients that add to it are no longer read from, and TCP pushes back on
them until room frees. A request that waits longer than `timeout` is answered with
the protocol's busy answer and never sent.

Identical requests may share one target round trip (coalescing) when the codec's
gateway policy names a key for them; each client still gets its own answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Hashable
from typing import TYPE_CHECKING

from tcp_multiplexer.framing.base import Codec, FailureReason, GatewayPolicy
from tcp_multiplexer.metrics import Metrics
from tcp_multiplexer.request import Request, RequestState

if TYPE_CHECKING:
    from tcp_multiplexer.pool import UpstreamPool
    from tcp_multiplexer.session import ClientSession
    from tcp_multiplexer.upstream import UpstreamConnection

logger = logging.getLogger(__name__)


class Dispatcher:
    """The fair wait queue, coalescing and delivery of answers to sessions."""

    # Slots: attributes read on every request.
    __slots__ = (
        "_batch",
        "_coalesce",
        "_codec",
        "_drained",
        "_leaders",
        "_loop",
        "_metrics",
        "_paused",
        "_policy",
        "_pool",
        "_queue_size",
        "_queue_timer",
        "_ring",
        "_timeout",
        "_waiting",
        "unanswered",
    )

    def __init__(
        self,
        codec: Codec,
        metrics: Metrics,
        *,
        timeout: float,
        queue_size: int,
        policy: GatewayPolicy | None = None,
        coalesce: bool = False,
    ) -> None:
        self._codec = codec
        self._metrics = metrics
        self._timeout = timeout
        self._queue_size = queue_size
        self._policy = policy
        self._coalesce = coalesce and policy is not None
        self._loop = asyncio.get_running_loop()
        self._pool: UpstreamPool | None = None
        self._ring: deque[ClientSession] = deque()
        """Sessions with waiting requests, in round-robin order."""
        self._waiting = 0
        self._queue_timer: asyncio.TimerHandle | None = None
        self._paused: set[ClientSession] = set()
        """Sessions not read from because the queue was full when they added to it."""
        self._leaders: dict[Hashable, Request] = {}
        self.unanswered = 0
        """Requests submitted and not yet answered (or dropped with their client)."""
        self._drained: asyncio.Future[None] | None = None
        self._batch: list[UpstreamConnection] | None = None
        """Connections corked while a client's several requests are submitted."""

    def attach_pool(self, pool: UpstreamPool) -> None:
        self._pool = pool

    @property
    def waiting(self) -> int:
        """Requests in the wait queue."""
        return self._waiting

    # ------------------------------------------------------------------ requests in

    def submit(self, request: Request) -> None:
        """Take a new request: answer it locally, coalesce it, send it, or queue it."""
        self.unanswered += 1
        self._metrics.requests += 1
        policy = self._policy
        if policy is not None:
            local = policy.local_reply(request.payload)
            if local is not None:
                self._deliver(
                    request, local, request.submitted_at, self._codec.reply_ends_connection(local)
                )
                return
            key = policy.coalesce_key(request.payload)
            if key is not None:
                request.coalesce_key = key
                if self._coalesce:
                    leader = self._leaders.get(key)
                    if leader is not None:
                        if leader.followers is None:
                            leader.followers = []
                        leader.followers.append(request)
                        request.state = RequestState.FOLLOWING
                        self._metrics.events["coalesced"] += 1
                        return
                    self._leaders[key] = request
        pool = self._pool
        if pool is None:
            raise RuntimeError("attach_pool() before submit()")
        if not self._waiting:
            connection = pool.available_connection()
            if connection is not None:
                if self._batch is not None and connection not in self._batch:
                    connection.cork()
                    self._batch.append(connection)
                connection.send(request)
                return
        if pool.unreachable:
            self.fail(request, FailureReason.UNAVAILABLE)
            return
        self._enqueue(request)
        pool.demand()

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

    def _enqueue(self, request: Request) -> None:
        session = request.session
        request.state = RequestState.WAITING
        request.deadline = request.submitted_at + self._timeout
        if not session.waiting:
            self._ring.append(session)
        session.waiting.append(request)
        self._waiting += 1
        if self._queue_timer is None:
            self._queue_timer = self._loop.call_at(request.deadline, self._expire_waiting)
        # A full queue stops reading from clients that add a second waiting request:
        # each client may always queue one, so a crowd of clients that each wait for
        # one answer is never paused (pausing them would only cost system calls), and
        # the queue holds at most `queue_size` requests plus one per client.
        if (
            self._waiting >= self._queue_size
            and len(session.waiting) > 1
            and session not in self._paused
        ):
            self._paused.add(session)
            session.pause_for_queue()

    def _next_waiting(self) -> Request | None:
        ring = self._ring
        while ring:
            session = ring.popleft()
            request = session.waiting.popleft()
            if session.waiting:
                ring.append(session)
            self._waiting -= 1
            if request.abandoned:
                self._drop(request)
                continue
            return request
        return None

    def connection_available(self, connection: UpstreamConnection) -> None:
        """`connection` can take another request (callers checked `can_send`): give it
        waiting ones while it can."""
        if self._waiting:
            if connection.pipelined:
                self._send_waiting_batch(connection)
            else:
                # One request at a time (the default): a single write, nothing to gather.
                request = self._next_waiting()
                if request is not None:
                    connection.send(request)
        self._resume_paused()

    def _send_waiting_batch(self, connection: UpstreamConnection) -> None:
        """Send waiting requests while `connection` takes them, in one write."""
        connection.cork()
        try:
            while self._waiting and connection.can_send:
                request = self._next_waiting()
                if request is None:
                    break
                connection.send(request)
        finally:
            connection.uncork()

    def _resume_paused(self) -> None:
        """Read again from clients paused by a full queue, once it has room."""
        if self._paused and self._waiting < self._queue_size:
            paused = self._paused
            self._paused = set()
            for session in paused:
                session.resume_for_queue()

    def _expire_waiting(self) -> None:
        """Answer every request that waited past its deadline with the busy answer."""
        self._queue_timer = None
        now = self._loop.time()
        expired: list[Request] = []
        next_deadline: float | None = None
        for session in list(self._ring):
            waiting = session.waiting
            while waiting and waiting[0].deadline <= now:
                expired.append(waiting.popleft())
            if not waiting:
                self._ring.remove(session)
            elif next_deadline is None or waiting[0].deadline < next_deadline:
                next_deadline = waiting[0].deadline
        self._waiting -= len(expired)
        if next_deadline is not None:
            self._queue_timer = self._loop.call_at(next_deadline, self._expire_waiting)
        for request in expired:
            if request.abandoned:
                self._drop(request)
            else:
                self.fail(request, FailureReason.BUSY)
        self._resume_paused()
        if expired:
            logger.warning(
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

    def session_closed(self, session: ClientSession) -> None:
        """A client left: its waiting requests are dropped, never sent.

        A waiting request that others are coalesced onto stays queued for them.
        """
        self._paused.discard(session)
        waiting = session.waiting
        if not waiting:
            return
        kept = [request for request in waiting if request.followers]
        for request in waiting:
            if not request.followers:
                self._drop(request)
        self._waiting -= len(waiting) - len(kept)
        waiting.clear()
        waiting.extend(kept)
        if not kept:
            self._ring.remove(session)

    # ------------------------------------------------------------------ answers out

    def finish(
        self, request: Request, reply: bytes, now: float, *, ends_connection: bool = False
    ) -> None:
        """The target answered `request` (ids as on the wire) at loop time `now`:
        deliver the answer to it and to its followers. `ends_connection`: the codec
        said the reply ends the connection."""
        codec = self._codec
        key = request.coalesce_key
        if key is not None:
            self._release_leader(request)
        if self._policy is not None:
            self._policy.observe(request.payload, reply, key)
        self._deliver(request, codec.restore_reply(request.payload, reply), now, ends_connection)
        followers = request.followers
        if followers:
            for follower in followers:
                self._deliver(
                    follower, codec.restore_reply(follower.payload, reply), now, ends_connection
                )

    def fail(self, request: Request, reason: FailureReason) -> None:
        """Answer `request` (and its followers) with the gateway answer for `reason`."""
        if request.coalesce_key is not None:
            self._release_leader(request)
        codec = self._codec
        policy = self._policy
        for failed in (request, *(request.followers or ())):
            self._metrics.count_failure(reason)
            reply = codec.error_reply(failed.payload, reason)
            if policy is not None:
                policy.observe_gateway_reply(failed.payload, reply)
            self._deliver(
                failed,
                reply,
                self._loop.time(),
                reply is not None and codec.reply_ends_connection(reply),
            )

    def _release_leader(self, request: Request) -> None:
        if self._leaders.get(request.coalesce_key) is request:
            del self._leaders[request.coalesce_key]
        request.coalesce_key = None

    def _deliver(
        self, request: Request, reply: bytes | None, now: float, ends_connection: bool
    ) -> None:
        request.state = RequestState.DONE
        request.ends_connection = ends_connection
        if reply is None:
            request.close_client = True
        else:
            request.reply = reply
        self._metrics.replies += 1
        self._metrics.latency.observe(now - request.submitted_at)
        self._count_answered()
        request.session.request_done(request)

    def _drop(self, request: Request) -> None:
        """Forget a request nobody waits for any more."""
        request.state = RequestState.DONE
        if request.coalesce_key is not None:
            self._release_leader(request)
        self._count_answered()

    def _count_answered(self) -> None:
        self.unanswered -= 1
        if not self.unanswered and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def wait_drained(self) -> None:
        """Return once every submitted request has been answered or dropped."""
        if not self.unanswered:
            return
        self._drained = self._loop.create_future()
        await self._drained

    def close(self) -> None:
        if self._queue_timer is not None:
            self._queue_timer.cancel()
            self._queue_timer = None
