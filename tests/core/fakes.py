"""Fakes for driving the core's modules alone: owners, connections, pools, hosts.

Each fake implements one interface of core/interfaces.py and records what was done
to it; the clock is `tcp_multiplexer.testing.VirtualClock`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

from tcp_multiplexer.core.interfaces import (
    ClientCodec,
    ClientConnection,
    Dispatch,
    FailureReason,
    PoolEvents,
    Request,
    RequestOwner,
    RequestState,
    TargetCodec,
    TargetConnection,
)
from tcp_multiplexer.core.poller import Poller
from tcp_multiplexer.core.upstream import UpstreamConnection
from tcp_multiplexer.logs import BridgeLog
from tcp_multiplexer.observability.metrics import TargetMetrics
from tcp_multiplexer.testing import MemoryTransport, VirtualClock

LOG = BridgeLog(logging.getLogger("tests.core"), "unit", prefix=False)


class FakeOwner:
    """A client as the dispatcher sees it: notes its answers and its pauses."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False
        self.answers: list[Request] = []
        self.paused = False
        self.pauses = 0

    def request_done(self, request: Request) -> None:
        self.answers.append(request)

    def pause_for_queue(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_for_queue(self) -> None:
        self.paused = False

    def __repr__(self) -> str:
        return f"FakeOwner({self.name})"


class FakeConnection:
    """A target connection that takes one request at a time when free."""

    pipelined = False

    def __init__(self) -> None:
        self.free = True
        self.sent: list[Request] = []

    @property
    def can_send(self) -> bool:
        return self.free

    def send(self, request: Request, now: float) -> None:
        assert self.free, "sent to a busy connection"
        self.free = False
        self.sent.append(request)

    def cork(self) -> None: ...

    def uncork(self) -> None: ...


class FakePool:
    """The dispatcher's pool: one fake connection, or none (down)."""

    def __init__(self, events: PoolEvents) -> None:
        self.events = events
        self.connection = FakeConnection()
        self.unreachable = False
        self.can_open_more = True
        self.demands = 0

    def available_connection(self) -> TargetConnection | None:
        return self.connection if self.connection.can_send else None

    def demand(self, waiting: int = 1) -> None:
        self.demands += 1

    def free(self) -> None:
        """The connection's answer came: it can take the next request."""
        self.connection.free = True
        self.events.connection_available(self.connection, 0.0)


@dataclass
class FakeSink:
    """What a target connection reports to, recorded."""

    finished: list[tuple[Request, bytes, bool]] = field(default_factory=list)
    failed: list[tuple[Request, FailureReason]] = field(default_factory=list)
    available: int = 0

    def finish(self, request: Request, answer: bytes, now: float, ends_connection: bool) -> None:
        self.finished.append((request, answer, ends_connection))

    def fail(self, request: Request, reason: FailureReason) -> None:
        self.failed.append((request, reason))

    def connection_available(self, connection: TargetConnection, now: float) -> None:
        self.available += 1


class RecordingDispatch:
    """A session's dispatch that answers nothing by itself: the test does."""

    def __init__(self) -> None:
        self.submitted: list[Request] = []
        self.answered_here: list[Request] = []
        self.closed_owners: list[RequestOwner] = []

    def submit(self, request: Request) -> None:
        self.submitted.append(request)

    def answer_here(self, request: Request, answer: bytes) -> None:
        self.answered_here.append(request)
        request.state = RequestState.DONE
        request.answer = answer
        request.owner.request_done(request)

    def begin_batch(self) -> None: ...

    def end_batch(self) -> None: ...

    def owner_closed(self, owner: RequestOwner) -> None:
        self.closed_owners.append(owner)


class FakeHost:
    """A session's bridge."""

    def __init__(self, codec: ClientCodec, clock: VirtualClock, *, backlog: int = 16) -> None:
        self.codec = codec
        self.clock = clock
        self.client_backlog = backlog
        self.client_idle_timeout = 0.0
        self.dispatch: Dispatch = RecordingDispatch()
        self.poller = Poller(clock, 0.0)
        self.log = LOG
        self.connected: list[ClientConnection] = []
        self.refuse = False

    def client_connected(self, session: ClientConnection, transport: Any) -> bool:
        self.connected.append(session)
        return not self.refuse

    def client_disconnected(self, session: ClientConnection) -> None:
        if session in self.connected:
            self.connected.remove(session)

    def counters_for(self, peer: object) -> None:
        return None

    def filter_for(self, transport: Any) -> None:
        return None


class UpstreamRig:
    """One target connection alone, on a memory transport and a virtual clock, ready,
    reporting to a FakeSink."""

    def __init__(
        self,
        codec: TargetCodec,
        *,
        name: str = "target #1",
        timeout: float = 2.0,
        max_inflight: int = 1,
        gap: float = 0.0,
        recycle_after: int = 3,
        max_age: float = 0.0,
    ) -> None:
        self.clock = VirtualClock()
        self.sink = FakeSink()
        self.metrics = TargetMetrics(Counter())
        self.connection = UpstreamConnection(
            name,
            codec,
            self.sink,
            self.metrics,
            Poller(self.clock, 0.0),
            clock=self.clock,
            log=LOG,
            timeout=timeout,
            max_inflight=max_inflight,
            request_gap=gap,
            recycle_after=recycle_after,
            max_age=max_age,
        )
        self.transport = MemoryTransport(self.connection)
        self.connection.connection_made(cast(asyncio.Transport, self.transport))
        self.connection.mark_ready()
        self.owner = FakeOwner("client")

    def is_open(self) -> bool:
        return not (self.transport.closed or self.transport.aborted)

    def send(self, payload: bytes) -> Request:
        request = Request(self.owner, payload, self.clock.time())
        assert self.connection.can_send
        self.connection.send(request, self.clock.time())
        return request
