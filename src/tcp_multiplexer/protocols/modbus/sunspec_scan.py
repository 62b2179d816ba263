"""A SunSpec scan through a target's dispatcher: the bridge's own reads, one at a time.

`SunSpecScan` drives a `ScanWalk` (sunspec.py): it submits each read the walk asks for
as a request of its own (a `RequestOwner`, like the poller), in the dispatcher's
background round unless told otherwise, and hands the walk each answer. When the walk
is over it calls `done` with the device found, or None and why not. A bridge with
`sunspec` set scans this way once its target answers (polling.py); `tcp-multiplexer
sunspec scan` does the same through a bridge that listens nowhere (sunspec_cli.py).
"""

from __future__ import annotations

from collections.abc import Callable

from tcp_multiplexer.core.interfaces import Clock, Dispatch, Priority, Request
from tcp_multiplexer.protocols.modbus.mbap import (
    EXCEPTION_FLAG,
    EXCEPTION_NAMES,
    NOT_ANSWERED,
    ExceptionCode,
    read_request,
)
from tcp_multiplexer.protocols.modbus.sunspec import ScanWalk, SunSpecDevice

ScanDone = Callable[[SunSpecDevice | None, str], None]
"""Called once a scan is over: the device (None if none was found) and why not."""


class SunSpecScan:
    """One scan of one unit (see the module docstring)."""

    closed = False
    """Never closed: a `RequestOwner` that is always there for its answers."""

    def __init__(
        self,
        dispatch: Dispatch,
        clock: Clock,
        unit: int,
        done: ScanDone,
        *,
        priority: int = Priority.BACKGROUND,
    ) -> None:
        self._dispatch = dispatch
        self._clock = clock
        self._walk = ScanWalk(unit)
        self._done = done
        self._priority = priority
        self.reads = 0
        """Reads submitted so far."""
        self.unanswered = False
        """The scan ended because a read got no answer (worth trying again later)."""
        self.running = False

    @property
    def unit(self) -> int:
        return self._walk.unit

    def start(self) -> None:
        if not self.running:
            self.running = True
            self._next()

    def stop(self) -> None:
        """Give up (a reload, shutdown): `done` is not called; answers on their way are
        dropped."""
        self.running = False

    def _next(self) -> None:
        read = self._walk.next_read()
        if read is None:
            self.running = False
            self._done(self._walk.device, self._walk.error)
            return
        address, count = read
        payload = read_request(0, self._walk.unit, address, count)
        request = Request(self, payload, self._clock.time())
        request.priority = self._priority
        self.reads += 1
        self._dispatch.submit(request)

    # ------------------------------------------------------------------ RequestOwner

    def request_done(self, request: Request) -> None:
        if not self.running:
            return
        answer = request.answer
        if request.close_client or len(answer) < 9:
            self._fail("no answer")
        elif answer[7] & EXCEPTION_FLAG:
            code = answer[8]
            if code == ExceptionCode.GATEWAY_PATH_UNAVAILABLE:
                self._fail("the target cannot be reached (exception 0x0a)")
            elif code in NOT_ANSWERED:
                self._fail(f"no answer (exception 0x{code:02x}, {EXCEPTION_NAMES.get(code)})")
            else:
                self._walk.refused()
        else:
            self._walk.answered(answer[9 : 9 + answer[8]])
        self._next()

    def _fail(self, reason: str) -> None:
        self.unanswered = True
        self._walk.failed(reason)

    def pause_for_queue(self) -> None:
        """Nothing to pause: one read at a time."""

    def resume_for_queue(self) -> None:
        """Nothing to resume."""
