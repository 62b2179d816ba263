"""Plain counters and a latency histogram, with a one-line summary for the log.

Everything here is an integer increment or a bisect on the hot path; formatting
happens only when a summary is asked for.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass
from typing import Final

from tcp_multiplexer.framing.base import FailureReason

LATENCY_BUCKETS_S: Final = tuple(
    base * scale
    for scale in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
    for base in (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
)
"""Upper bounds from 10 µs to 70 s, about 1.5x apart: percentiles within that error."""


class LatencyHistogram:
    """Counts of latencies per bucket; mean and percentiles from the counts."""

    __slots__ = ("count", "counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.count += 1
        self.total += seconds

    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def percentile(self, fraction: float) -> float:
        """The bucket bound below which `fraction` of the observations fall (0 if none)."""
        if not self.count:
            return 0.0
        rank = fraction * self.count
        seen = 0
        for index, bucket_count in enumerate(self.counts):
            seen += bucket_count
            if seen >= rank:
                return LATENCY_BUCKETS_S[min(index, len(LATENCY_BUCKETS_S) - 1)]
        return LATENCY_BUCKETS_S[-1]


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """The counters at one moment, and latency over the last interval."""

    clients: int
    clients_total: int
    target_connections: int
    requests: int
    replies: int
    failures: dict[str, int]
    reconnects: int
    events: dict[str, int]
    latency_mean_s: float
    latency_p99_s: float

    def log_line(self) -> str:
        failures = " ".join(f"{key}={value}" for key, value in sorted(self.failures.items()))
        events = " ".join(f"{key}={value}" for key, value in sorted(self.events.items()))
        return (
            f"clients={self.clients} (total {self.clients_total}) "
            f"target_connections={self.target_connections} requests={self.requests} "
            f"replies={self.replies} failures=[{failures}] reconnects={self.reconnects} "
            f"latency mean={self.latency_mean_s * 1e3:.2f}ms p99={self.latency_p99_s * 1e3:.2f}ms"
            + (f" {events}" if events else "")
        )


class Metrics:
    """Process-wide counters. Attributes are incremented directly on the hot path."""

    __slots__ = (
        "clients",
        "clients_total",
        "events",
        "failures",
        "latency",
        "reconnects",
        "replies",
        "requests",
        "target_connections",
    )

    def __init__(self) -> None:
        self.clients = 0
        self.clients_total = 0
        self.target_connections = 0
        self.requests = 0
        self.replies = 0
        self.reconnects = 0
        self.failures: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        """Named protocol events: ids dropped, coalesced, cache hits, writes refused..."""
        self.latency = LatencyHistogram()

    def count_failure(self, reason: FailureReason) -> None:
        self.failures[reason.name.lower()] += 1

    def snapshot(self, *, reset_latency: bool = False) -> MetricsSnapshot:
        """The counters now; with `reset_latency` the latency window starts over."""
        latency = self.latency
        snapshot = MetricsSnapshot(
            clients=self.clients,
            clients_total=self.clients_total,
            target_connections=self.target_connections,
            requests=self.requests,
            replies=self.replies,
            failures=dict(self.failures),
            reconnects=self.reconnects,
            events=dict(self.events),
            latency_mean_s=latency.mean(),
            latency_p99_s=latency.percentile(0.99),
        )
        if reset_latency:
            self.latency = LatencyHistogram()
        return snapshot
