"""The post-I/O poller on a virtual clock: it polls under load and stays quiet at home."""

from __future__ import annotations

from tcp_multiplexer.core.poller import MAX_QUIET, Poller
from tcp_multiplexer.testing import VirtualClock

WINDOW = 0.0002


def poller() -> tuple[Poller, VirtualClock]:
    clock = VirtualClock()
    return Poller(clock, WINDOW), clock


def test_a_sparse_event_starts_no_polling() -> None:
    poll, clock = poller()
    for _ in range(10):
        poll.touch(clock.time())
        assert not poll.polling
        clock.advance(0.020)  # a device answering in 20 ms


def test_dense_events_keep_the_loop_polling_until_a_window_after_the_last() -> None:
    poll, clock = poller()
    poll.touch(clock.time())
    clock.advance(0.00003)
    poll.touch(clock.time())
    assert poll.polling
    for _ in range(20):
        clock.advance(0.00005)
        poll.touch(clock.time())  # caught in later rounds: polling pays
    assert poll.polling
    clock.advance(WINDOW + 0.00001)
    clock.run_ready()
    assert not poll.polling


def burst(poll: Poller, clock: VirtualClock) -> None:
    """Three events read in one loop round (one time), then nothing."""
    for _ in range(3):
        poll.touch(clock.time())
    clock.advance(WINDOW * 2)


def test_polls_that_catch_nothing_are_made_rarer_up_to_a_limit() -> None:
    poll, clock = poller()
    burst(poll, clock)  # polled once, caught nothing
    burst(poll, clock)
    assert not poll.polling
    assert clock.pending_timers == 0
    started = []
    for _ in range(2000):  # 2000 bursts, 10 ms apart: 20 s
        clock.advance(0.010)
        poll.touch(clock.time())
        poll.touch(clock.time())
        started.append(poll.polling)
        clock.advance(WINDOW * 2)
    # The pause doubles from the window to MAX_QUIET within the first seconds; then at
    # most one wasted poll per MAX_QUIET is left.
    assert sum(started[1000:]) <= 10 / MAX_QUIET + 1
    assert sum(started) < 0.02 * len(started)


def test_a_poll_that_catches_an_event_starts_the_backoff_over() -> None:
    poll, clock = poller()
    for _ in range(5):
        burst(poll, clock)
        clock.advance(MAX_QUIET)
    poll.touch(clock.time())
    poll.touch(clock.time())
    assert poll.polling
    clock.advance(0.0001)
    poll.touch(clock.time())  # a later round: caught
    clock.advance(WINDOW * 2)
    poll.touch(clock.time())
    poll.touch(clock.time())
    assert poll.polling, "right away again"


def test_a_zero_window_never_polls() -> None:
    clock = VirtualClock()
    poll = Poller(clock, 0.0)
    for _ in range(5):
        poll.touch(clock.time())
    assert not poll.polling
