"""Precise timers on a real event loop: never early, late by at most the loop's
wake-up latency, cancellable; and without a timerfd, the loop's timers, armed no
shorter than their millisecond (so nothing spins)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tcp_multiplexer.core.timers import LOOP_RESOLUTION, PreciseTimers


async def fire_times(timers: PreciseTimers, delays: list[float]) -> list[tuple[float, float]]:
    """(due, fired) for a timer per delay, set one after the other."""
    loop = asyncio.get_running_loop()
    out = []
    for delay in delays:
        fired = loop.create_future()
        due = time.monotonic() + delay
        timers.call_at(due, lambda f=fired: f.set_result(time.monotonic()))
        out.append((due, await asyncio.wait_for(fired, 2.0)))
    return out


@pytest.mark.parametrize("precise", [True, False], ids=["timerfd", "loop-timers"])
async def test_a_timer_never_fires_early(precise: bool) -> None:
    timers = PreciseTimers(asyncio.get_running_loop())
    if not precise:
        timers.close()  # from now on without a timerfd: the loop's own timers
    try:
        results = await fire_times(timers, [0.0002, 0.0005, 0.00175, 0.0013, 0.004] * 4)
    finally:
        timers.close()
    assert all(fired >= due for due, fired in results)


async def test_without_a_timerfd_a_short_pause_is_one_loop_timer_not_a_spin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A loop timer under a millisecond fires at once: re-armed that way, a pause
    would spin the loop until it is over (a serial line's silence did, 16 times)."""
    loop = asyncio.get_running_loop()
    timers = PreciseTimers(loop)
    timers.close()
    delays: list[float] = []
    call_later = loop.call_later

    def counted(delay: float, *args: Any) -> asyncio.TimerHandle:
        delays.append(delay)
        return call_later(delay, *args)

    monkeypatch.setattr(loop, "call_later", counted)
    await fire_times(timers, [0.0003] * 10)
    assert min(delays) >= LOOP_RESOLUTION
    assert len(delays) <= 30, f"{len(delays)} loop timers for 10 pauses"


async def test_with_a_timerfd_a_short_pause_is_kept_to_well_under_a_millisecond() -> None:
    timers = PreciseTimers(asyncio.get_running_loop())
    if not timers.precise:
        timers.close()
        pytest.skip("no timerfd on this platform")
    try:
        results = await fire_times(timers, [0.00175] * 40)
    finally:
        timers.close()
    lateness = sorted(fired - due for due, fired in results)
    assert lateness[len(lateness) // 2] < LOOP_RESOLUTION / 2, "the median, on a busy machine"


async def test_a_cancelled_timer_does_not_fire_and_others_do() -> None:
    loop = asyncio.get_running_loop()
    timers = PreciseTimers(loop)
    fired: list[str] = []
    done = loop.create_future()
    try:
        now = time.monotonic()
        timers.call_at(now + 0.002, lambda: fired.append("cancelled")).cancel()
        timers.call_at(now + 0.003, lambda: fired.append("second"))
        timers.call_at(now + 0.001, lambda: fired.append("first"))
        timers.call_at(now + 0.004, lambda: done.set_result(None))
        await asyncio.wait_for(done, 2.0)
        await asyncio.sleep(0.005)  # the backstops of the ones that fired: nothing more
    finally:
        timers.close()
    assert fired == ["first", "second"]
