"""Pure pieces: the reconnect backoff policy and the latency histogram."""

from __future__ import annotations

import random

import pytest

from tcp_multiplexer.backoff import Backoff
from tcp_multiplexer.framing.base import FailureReason
from tcp_multiplexer.metrics import LATENCY_BUCKETS_S, LatencyHistogram, Metrics


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


def test_metrics_snapshot_line_and_latency_window() -> None:
    metrics = Metrics()
    metrics.requests = 3
    metrics.replies = 3
    metrics.count_failure(FailureReason.TIMEOUT)
    metrics.events["coalesced"] += 2
    metrics.latency.observe(0.002)
    line = metrics.snapshot(reset_latency=True).log_line()
    assert "requests=3" in line
    assert "failures=[timeout=1]" in line
    assert "coalesced=2" in line
    assert "p99=2.00ms" in line
    assert metrics.snapshot().latency_p99_s == 0.0
