"""Stand-ins for sockets and time, for the core's unit tests and bench/hotpath.py.

- `MemoryTransport`: just enough of an asyncio transport; keeps what is written.
- `MemoryConnector`: a connector whose connections are memory transports, so a real
  pool and real target connections run with no socket.
- `VirtualClock`: the event loop's timers on a clock that moves only when told, so a
  test can step through timeouts without waiting for them.

Nothing here listens or connects; it is shipped with the package so that tests and
benchmarks import the same thing.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Callable
from typing import Any

from tcp_multiplexer.core.interfaces import TimerHandle


class MemoryTransport:
    """A transport that keeps what is written, counts writes and notes pauses.

    `close()` and `abort()` tell the protocol `connection_lost` (at once, or through
    `schedule` when one is given, as asyncio does on the next loop round).
    """

    def __init__(
        self,
        protocol: asyncio.BaseProtocol | None = None,
        *,
        peer: tuple[str, int] = ("127.0.0.1", 40000),
        on_write: Callable[[], None] | None = None,
        schedule: Callable[[Callable[[], object]], object] | None = None,
        record: bool = True,
    ) -> None:
        """`record`: keep every write in `written` (a benchmark keeps only `last`)."""
        self.protocol = protocol
        self._record = record
        self.peer = peer
        self.written: list[bytes] = []
        self.last = b""
        self.writes = 0
        self.reading = True
        self.closed = False
        self.aborted = False
        self._on_write = on_write
        self._schedule = schedule

    @property
    def data(self) -> bytes:
        """Everything written, joined."""
        return b"".join(self.written)

    def take(self) -> bytes:
        """Everything written since the last take()."""
        data = b"".join(self.written)
        self.written.clear()
        return data

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self._record:
            self.written.append(data)
        self.last = data
        self.writes += 1
        if self._on_write is not None:
            self._on_write()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self.peer
        if name == "sockname":
            return ("127.0.0.1", 8000)
        return default

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self._lose()

    def abort(self) -> None:
        self.aborted = True
        self._lose()

    def _lose(self) -> None:
        if self.closed:
            return
        self.closed = True
        protocol = self.protocol
        if protocol is None:
            return
        if self._schedule is None:
            protocol.connection_lost(None)
        else:
            self._schedule(lambda: protocol.connection_lost(None))


class MemoryConnector:
    """Connects protocols to memory transports at once; keeps every one it made."""

    def __init__(self, target: str = "memory:1", *, fail: int = 0, record: bool = True) -> None:
        self._target = target
        self._record = record
        self.connections: list[tuple[MemoryTransport, asyncio.Protocol]] = []
        self.attempts = 0
        self._fail = fail
        """Attempts to refuse first (ConnectionRefusedError)."""

    @property
    def target(self) -> str:
        return self._target

    async def connect(
        self, protocol_factory: Callable[[], asyncio.Protocol]
    ) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
        self.attempts += 1
        if self._fail:
            self._fail -= 1
            raise ConnectionRefusedError(f"{self._target} refused (on purpose)")
        protocol = protocol_factory()
        loop = asyncio.get_running_loop()
        transport = MemoryTransport(protocol, schedule=loop.call_soon, record=self._record)
        protocol.connection_made(transport)  # type: ignore[arg-type]
        self.connections.append((transport, protocol))
        return transport, protocol  # type: ignore[return-value]

    @property
    def last(self) -> tuple[MemoryTransport, asyncio.Protocol]:
        return self.connections[-1]


class _VirtualTimer:
    __slots__ = ("_callback", "_cancelled", "_when")

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self._when = when
        self._callback = callback
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    def cancelled(self) -> bool:
        return self._cancelled

    def when(self) -> float:
        return self._when

    def run(self) -> None:
        if not self._cancelled:
            self._callback()


class VirtualClock:
    """The loop's clock and timers, moved by `advance()` only.

    The loop is modelled in rounds: each round runs the `call_soon` callbacks queued
    before it; while callbacks are queued, the next round comes ROUND later (a loop
    that keeps polling), otherwise time jumps to the next timer. Timers run in the order
    of their times, each with `time()` at its own. Futures come from the running asyncio
    loop, so async tests can await them.
    """

    ROUND = 0.00001
    """Virtual time one busy loop round takes."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._timers: list[tuple[float, int, _VirtualTimer]] = []
        self._ready: deque[Callable[[], object]] = deque()
        self._order = itertools.count()

    def time(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandle:
        timer = _VirtualTimer(when, callback)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandle:
        return self.call_at(self._now + delay, callback)

    def call_at_precise(self, when: float, callback: Callable[[], object]) -> TimerHandle:
        return self.call_at(when, callback)

    def call_soon(self, callback: Callable[[], object]) -> object:
        self._ready.append(callback)
        return None

    def create_future(self) -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()

    def run_ready(self) -> None:
        """One loop round: the call_soon callbacks queued so far (not those they queue)."""
        for _ in range(len(self._ready)):
            self._ready.popleft()()

    def advance(self, seconds: float = 0.0) -> None:
        """Move the clock `seconds` on, running rounds and timers on the way, in order."""
        end = self._now + seconds
        while True:
            self.run_ready()
            if self._ready:
                upto = self._now + self.ROUND
            elif self._timers:
                upto = self._timers[0][0]
            else:
                break
            if upto > end:
                break
            self._now = max(self._now, upto)
            while self._timers and self._timers[0][0] <= self._now:
                _when, _order, timer = heapq.heappop(self._timers)
                timer.run()
        self._now = max(self._now, end)

    @property
    def pending_timers(self) -> int:
        """Timers scheduled and not cancelled."""
        return sum(1 for _when, _order, timer in self._timers if not timer.cancelled())
