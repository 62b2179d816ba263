"""Pure pieces: the reconnect backoff policy and the latency histogram."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tcp_multiplexer.core.backoff import Backoff
from tcp_multiplexer.core.interfaces import FailureReason
from tcp_multiplexer.observability.metrics import (
    LATENCY_BUCKETS_S,
    BridgeMetrics,
    ClientMetrics,
    LatencyHistogram,
    TargetMetrics,
)


def test_backoff_doubles_from_the_initial_delay_within_half_jitter() -> None:
    backoff = Backoff(1.0, 30.0, random.Random(7))
    for attempt in range(5):
        base = 2.0**attempt
        assert base / 2 <= backoff.next_delay() <= base
    assert backoff.attempts == 5


def test_backoff_is_capped() -> None:
    backoff = Backoff(1.0, 30.0, random.Random(1))
    delays = [backoff.next_delay() for _ in range(100)]
    assert max(delays) <= 30.0
    assert min(delays[10:]) >= 15.0  # past the cap, still jittered in [cap/2, cap]


def test_backoff_jitter_spreads_the_delays() -> None:
    delays = {Backoff(1.0, 30.0, random.Random(seed)).next_delay() for seed in range(20)}
    assert len(delays) == 20


def test_backoff_reset_starts_over() -> None:
    backoff = Backoff(0.5, 30.0, random.Random(3))
    for _ in range(6):
        backoff.next_delay()
    backoff.reset()
    assert backoff.attempts == 0
    assert 0.25 <= backoff.next_delay() <= 0.5


def test_backoff_rejects_negative_delays() -> None:
    with pytest.raises(ValueError, match="negative"):
        Backoff(-1.0, 30.0)


def test_latency_percentiles_come_from_the_buckets() -> None:
    histogram = LatencyHistogram()
    assert histogram.mean() == 0.0
    assert histogram.percentile(0.99) == 0.0
    for _ in range(98):
        histogram.observe(0.001)
    histogram.observe(0.5)
    histogram.observe(0.5)
    assert histogram.mean() == pytest.approx((98 * 0.001 + 1.0) / 100)
    assert histogram.percentile(0.5) == 0.001
    assert histogram.percentile(0.99) == 0.5
    histogram.observe(1000.0)  # beyond the last bucket
    assert histogram.percentile(1.0) == LATENCY_BUCKETS_S[-1]


def test_quantiles_are_interpolated_within_their_bucket() -> None:
    histogram = LatencyHistogram()
    assert histogram.quantile(0.99) == 0.0
    for _ in range(100):
        histogram.observe(0.0018)  # in the bucket (1.5 ms, 2 ms]
    assert histogram.percentile(0.5) == 0.002, "the bound: at most"
    assert histogram.quantile(0.5) == pytest.approx(0.00175)
    assert 0.0015 < histogram.quantile(0.01) < histogram.quantile(0.99) <= 0.002
    histogram.observe(1000.0)
    assert histogram.quantile(1.0) == LATENCY_BUCKETS_S[-1]


def test_a_quantile_never_reads_above_the_slowest_answer() -> None:
    """Interpolation alone put p99 at 4.94 s when the slowest answer took 3.0 s: a
    bucket of 3 to 5 s holds it."""
    histogram = LatencyHistogram()
    for _ in range(99):
        histogram.observe(0.02)
    histogram.observe(3.0004)
    assert LATENCY_BUCKETS_S[LATENCY_BUCKETS_S.index(3.0) + 1] == 5.0
    assert histogram.quantile(0.999) == pytest.approx(3.0004)
    assert histogram.quantile(0.99) <= 3.0004
    earlier = histogram.copy()
    histogram.observe(3.0002)
    window = histogram.since(earlier)
    assert window.count == 1
    assert window.quantile(0.99) <= 3.0004, "a window reads no higher than the slowest yet"
    target = TargetMetrics(Counter())
    for elapsed in (0.02, 3.0001):
        target.latency.observe(elapsed)
    line = bridge_metrics(target).snapshot().log_line()
    assert "p99=3000.10ms" in line, line


def bridge_metrics(target: TargetMetrics) -> BridgeMetrics:
    return BridgeMetrics(
        ClientMetrics(accepted=1),
        [target],
        clients_now=lambda: 1,
        connections_now=lambda: 1,
        waiting_now=lambda: 0,
    )


def test_metrics_snapshot_line_and_latency_window() -> None:
    target = TargetMetrics()
    metrics = bridge_metrics(target)
    target.requests = 3
    target.answers = 2
    target.count_gateway(FailureReason.TIMEOUT)
    target.coalesced += 2
    target.latency.observe(0.002)
    window = metrics.snapshot()
    line = window.log_line()
    assert "requests=3" in line
    assert "replies=3" in line
    assert "failures=[timeout=1]" in line
    assert "coalesced=2" in line
    assert "p99=2.00ms" in line
    assert metrics.snapshot().since(window).latency_p99_s == 0.0


def test_counters_only_grow_and_windows_are_differences() -> None:
    target = TargetMetrics()
    metrics = bridge_metrics(target)
    target.requests = 10
    target.latency.observe(0.5)
    first = metrics.snapshot()
    target.requests = 25
    target.latency.observe(0.001)
    target.count_gateway(FailureReason.BUSY)
    second = metrics.snapshot()
    window = second.since(first)
    assert (window.requests, window.failures) == (15, {"busy": 1})
    assert window.latency.count == 1
    assert window.latency_mean_s == pytest.approx(0.001)
    assert second.latency.count == 2, "the lifetime histogram keeps every answer"
    line = second.interval_line(first, 5.0)
    assert "requests=25" in line, "the periodic line gives lifetime counts"
    assert "rate=3.0/s" in line
    assert "mean=1.00ms" in line, "and the latency of the window"


def test_events_start_at_zero_but_only_those_that_happened_are_shown() -> None:
    target = TargetMetrics(Counter({"image_answers": 0, "writes_refused": 0}))
    metrics = bridge_metrics(target)
    assert not metrics.events
    target.events["image_answers"] += 1
    assert metrics.events == {"image_answers": 1}
    assert set(target.events) == {"image_answers", "writes_refused"}


def test_device_answers_and_gateway_answers_are_timed_apart() -> None:
    target = TargetMetrics()
    target.latency.observe(0.020)
    target.gateway_latency.observe(0.0001)
    snapshot = bridge_metrics(target).snapshot()
    assert snapshot.latency_mean_s == pytest.approx(0.020), "an outage does not lower it"
    assert snapshot.gateway_latency.mean() == pytest.approx(0.0001)
