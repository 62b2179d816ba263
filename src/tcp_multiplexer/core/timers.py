"""Timers to within tens of microseconds, for the pauses a serial line needs.

The event loop's timers count whole milliseconds (uvloop's can even fire up to a
millisecond early: its start time is truncated), while a Modbus line above 19,200 baud
needs 1.75 ms of silence between frames, and 115,200 baud carries a transaction in
6.65 ms: a timer that fires half a millisecond late on average costs 7 % of the line.

`PreciseTimers` keeps its own heap of deadlines behind one Linux timerfd, set to the
earliest with nanosecond resolution and watched by the loop like any file
descriptor, so a deadline is met within the loop's wake-up latency. Each timer also
has a loop timer as a backstop, a millisecond after its time: if the timerfd ever
misbehaves, nothing waits longer than a plain loop timer would. Where there is no
timerfd (not Linux, or a 32-bit C library whose time_t this cannot be sure of), timers
are the loop's own, never armed shorter than their millisecond. Callbacks never run
before their time (`time.monotonic`, the loop's clock).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import heapq
import itertools
import os
import sys
import time
from collections.abc import Callable
from typing import Final

LOOP_RESOLUTION: Final = 0.001
"""The event loop's timers count whole milliseconds."""
_CLOCK_MONOTONIC: Final = 1
_TFD_NONBLOCK: Final = 0o4000
_TFD_CLOEXEC: Final = 0o2000000
_TFD_TIMER_ABSTIME: Final = 1


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


def _timerfd_library() -> ctypes.CDLL | None:
    """The C library's timerfd calls, where their struct layout is certain."""
    if not sys.platform.startswith("linux") or ctypes.sizeof(ctypes.c_long) != 8:
        return None  # time_t is long on 64-bit Linux; on 32-bit it may not be
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.timerfd_create.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.timerfd_settime.argtypes = (
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(_Itimerspec),
            ctypes.c_void_p,
        )
    except (OSError, AttributeError):
        return None
    return libc


class PreciseTimer:
    """One deadline; `cancel()` it, or ask `when()`."""

    __slots__ = ("_backstop", "_callback", "_when", "cancelled")

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self._when = when
        self._callback = callback
        self._backstop: asyncio.TimerHandle | None = None
        self.cancelled = False

    def when(self) -> float:
        return self._when

    def cancel(self) -> None:
        self.cancelled = True
        if self._backstop is not None:
            self._backstop.cancel()
            self._backstop = None

    def fire(self) -> None:
        if self.cancelled:
            return
        self.cancel()
        self._callback()


class PreciseTimers:
    """`call_at(when, callback)` to within the loop's wake-up latency (see the module
    docstring); `close()` releases the timerfd."""

    __slots__ = ("_armed", "_fd", "_heap", "_libc", "_loop", "_order")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, PreciseTimer]] = []
        self._order = itertools.count()
        self._armed: float | None = None
        self._libc = _timerfd_library()
        self._fd = -1
        if self._libc is not None:
            fd = self._libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
            if fd >= 0:
                self._fd = fd
                loop.add_reader(fd, self._expired)

    @property
    def precise(self) -> bool:
        """True if a timerfd keeps the time (False: the loop's own timers)."""
        return self._fd >= 0

    def call_at(self, when: float, callback: Callable[[], object]) -> PreciseTimer:
        timer = PreciseTimer(when, callback)
        delay = when - time.monotonic()
        if self._fd < 0:
            timer._backstop = self._loop.call_later(max(delay, LOOP_RESOLUTION), self._check, timer)
            return timer
        heapq.heappush(self._heap, (when, next(self._order), timer))
        if self._armed is None or when < self._armed:
            self._arm(when)
        timer._backstop = self._loop.call_later(delay + LOOP_RESOLUTION, self._check, timer)
        return timer

    def _check(self, timer: PreciseTimer) -> None:
        """A loop timer fired for `timer`: run it if its time has come, else wait on."""
        timer._backstop = None
        if timer.cancelled:
            return
        left = timer.when() - time.monotonic()
        if left > 0:
            timer._backstop = self._loop.call_later(max(left, LOOP_RESOLUTION), self._check, timer)
            return
        timer.fire()

    def _arm(self, when: float) -> None:
        libc = self._libc
        if libc is None:
            return
        seconds, fraction = divmod(when, 1.0)
        nanoseconds = int(fraction * 1e9) + 1  # rounded up: never before `when`
        if nanoseconds >= 1_000_000_000:
            seconds, nanoseconds = seconds + 1, nanoseconds - 1_000_000_000
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(int(seconds), nanoseconds))
        if libc.timerfd_settime(self._fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None):
            self._armed = None  # the backstops keep the time
            return
        self._armed = when

    def _expired(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            os.read(self._fd, 8)
        self._armed = None
        now = time.monotonic()
        heap = self._heap
        due: list[PreciseTimer] = []
        while heap and (heap[0][0] <= now or heap[0][2].cancelled):
            _when, _order, timer = heapq.heappop(heap)
            if not timer.cancelled:
                due.append(timer)
        if heap:
            self._arm(heap[0][0])
        for timer in due:
            timer.fire()

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(ValueError, RuntimeError):
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
        for _when, _order, timer in self._heap:
            timer.cancel()
        self._heap.clear()
