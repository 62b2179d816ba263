"""Cumulative counters and latency histograms, read from the side.

Everything here only ever grows: counters count from the start, histograms keep every
observation. Whoever wants a rate or a window (the periodic log line, Prometheus)
takes two snapshots and subtracts; nobody resets anything, so several readers can
look at once. Gauges (clients connected, target connections up, requests waiting)
are not kept here at all: they are read from their owners when a snapshot is taken.

On the request path this costs integer increments and one bisect per answer;
formatting happens only when a snapshot is read.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from tcp_multiplexer.core.interfaces import FailureReason

LATENCY_BUCKETS_S: Final = tuple(
    base * scale
    for scale in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
    for base in (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
)
"""Upper bounds from 10 µs to 70 s, about 1.5x apart: quantiles within that error."""

REASON_NAMES: Final = {reason: reason.name.lower() for reason in FailureReason}
"""Gateway answer reasons as metric labels: unavailable, busy, timeout, broken."""


class LatencyHistogram:
    """Counts of latencies per bucket (the last one: beyond 70 s), their sum, and the
    largest latency observed (a quantile never reads above it)."""

    __slots__ = ("counts", "maximum", "total")

    def __init__(
        self, counts: Sequence[int] | None = None, total: float = 0.0, maximum: float = 0.0
    ) -> None:
        self.counts = list(counts) if counts is not None else [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.total = total
        self.maximum = maximum

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.total += seconds
        if seconds > self.maximum:
            self.maximum = seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def mean(self) -> float:
        count = self.count
        return self.total / count if count else 0.0

    def percentile(self, fraction: float) -> float:
        """The bound of the bucket below which `fraction` of the observations fall: the
        quantile is at most this (0 if none)."""
        index = self._bucket_of(fraction)
        if index is None:
            return 0.0
        return LATENCY_BUCKETS_S[min(index, len(LATENCY_BUCKETS_S) - 1)]

    def quantile(self, fraction: float) -> float:
        """The `fraction` quantile, interpolated linearly within its bucket (0 if none),
        and never above the largest latency observed (interpolation alone would read
        4.9 s from a bucket of 3 to 5 s whose slowest answer took 3.0 s).

        Beyond the last bound (70 s) the last bound is returned.
        """
        index = self._bucket_of(fraction)
        if index is None:
            return 0.0
        if index >= len(LATENCY_BUCKETS_S):
            return LATENCY_BUCKETS_S[-1]
        below = sum(self.counts[:index])
        lower = LATENCY_BUCKETS_S[index - 1] if index else 0.0
        upper = LATENCY_BUCKETS_S[index]
        share = (fraction * self.count - below) / self.counts[index]
        value = lower + (upper - lower) * min(1.0, max(0.0, share))
        return min(value, self.maximum) if self.maximum else value

    def _bucket_of(self, fraction: float) -> int | None:
        count = self.count
        if not count:
            return None
        rank = fraction * count
        seen = 0
        for index, bucket_count in enumerate(self.counts):
            seen += bucket_count
            if bucket_count and seen >= rank:
                return index
        return len(self.counts) - 1

    def copy(self) -> LatencyHistogram:
        return LatencyHistogram(self.counts, self.total, self.maximum)

    def since(self, earlier: LatencyHistogram) -> LatencyHistogram:
        """What was observed after `earlier` (a copy of this histogram) was taken.

        Its `maximum` is the largest observed so far, before `earlier` too: the largest
        of a window alone is not kept (it would cost the request path a second one).
        """
        return LatencyHistogram(
            [now - then for now, then in zip(self.counts, earlier.counts, strict=True)],
            self.total - earlier.total,
            self.maximum,
        )

    def cumulative(self, bounds: Iterable[float]) -> list[tuple[float, int]]:
        """(bound, observations <= bound) for each of `bounds`, which must be bucket
        bounds: any subset of them gives an exact Prometheus histogram."""
        result = []
        running = 0
        index = 0
        for bound in bounds:
            while index < len(LATENCY_BUCKETS_S) and LATENCY_BUCKETS_S[index] <= bound * 1.000001:
                running += self.counts[index]
                index += 1
            result.append((bound, running))
        return result


class TargetMetrics:
    """The counters of one target (a dispatcher, its pool and its connections).

    Attributes are incremented directly on the request path.
    """

    __slots__ = (
        "answers",
        "coalesced",
        "connect_attempts",
        "connect_failures",
        "connections_made",
        "damaged_answers",
        "events",
        "gateway",
        "gateway_latency",
        "ids_dropped",
        "last_answer_at",
        "latency",
        "local_answers",
        "queue_wait_seconds",
        "queued",
        "reconnects",
        "requests",
        "unexpected_answers",
    )

    def __init__(self, events: Counter[str] | None = None) -> None:
        self.requests = 0
        """Requests submitted (followers and locally answered ones included)."""
        self.answers = 0
        """Client answers that came from the target (a coalesced answer counts per client)."""
        self.local_answers = 0
        """Answers the gateway policy gave without the target (cache hits, refused writes)."""
        self.gateway: Counter[str] = Counter(dict.fromkeys(REASON_NAMES.values(), 0))
        """Gateway answers (or closed clients) because the target could not, by reason."""
        self.events: Counter[str] = events if events is not None else Counter()
        """The protocol's own events, each declared name from 0."""
        self.latency = LatencyHistogram()
        """Submit to answer, for answers that came from the target."""
        self.gateway_latency = LatencyHistogram()
        """Submit to gateway answer."""
        self.queued = 0
        """Requests that had to wait for a free target connection."""
        self.queue_wait_seconds = 0.0
        """How long they waited, all together."""
        self.coalesced = 0
        self.ids_dropped = 0
        self.unexpected_answers = 0
        self.damaged_answers = 0
        """Answers that arrived damaged (RTU: a bad CRC), each failing its request."""
        self.connect_attempts = 0
        self.connect_failures = 0
        self.connections_made = 0
        self.reconnects = 0
        """Target connections lost unexpectedly (not closed by an answer that said so,
        for being idle, or at shutdown)."""
        self.last_answer_at: float | None = None
        """Loop time of the last answer from the target."""

    def count_gateway(self, reason: FailureReason) -> None:
        self.gateway[REASON_NAMES[reason]] += 1


@dataclass(slots=True)
class ClientMetrics:
    """The counters of a bridge's client side."""

    accepted: int = 0
    """Client connections accepted (and kept: refused ones are not counted here)."""
    refused: Counter[str] = field(default_factory=Counter)
    """Client connections closed at once, by reason (allow list, max clients)."""
    errors: Counter[str] = field(default_factory=Counter)
    """Client connections closed for misbehaving, by kind (bad request, ...)."""


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """A bridge's counters at one moment (cumulative), and its gauges then.

    `since(earlier)` gives what happened in between; the gauges stay as they are now.
    """

    clients: int
    clients_total: int
    target_connections: int
    waiting: int
    requests: int
    answers: int
    local_answers: int
    failures: dict[str, int]
    reconnects: int
    events: dict[str, int]
    latency: LatencyHistogram
    gateway_latency: LatencyHistogram
    held: dict[str, float] = field(default_factory=dict)
    """What the bridge's targets hold now, by name (Modbus: ``image_values``)."""

    @property
    def replies(self) -> int:
        """Every answer a client got: the target's, local ones and gateway answers."""
        return self.answers + self.local_answers + sum(self.failures.values())

    @property
    def latency_mean_s(self) -> float:
        return self.latency.mean()

    @property
    def latency_p99_s(self) -> float:
        return self.latency.quantile(0.99)

    def since(self, earlier: MetricsSnapshot) -> MetricsSnapshot:
        """The counts between `earlier` and this snapshot; gauges as of this one."""
        return MetricsSnapshot(
            clients=self.clients,
            clients_total=self.clients_total - earlier.clients_total,
            target_connections=self.target_connections,
            waiting=self.waiting,
            requests=self.requests - earlier.requests,
            answers=self.answers - earlier.answers,
            local_answers=self.local_answers - earlier.local_answers,
            failures=_difference(self.failures, earlier.failures),
            reconnects=self.reconnects - earlier.reconnects,
            events=_difference(self.events, earlier.events),
            latency=self.latency.since(earlier.latency),
            gateway_latency=self.gateway_latency.since(earlier.gateway_latency),
            held=self.held,
        )

    def log_line(self) -> str:
        """One line, lifetime figures: counts, the latency of target answers (mean and
        p99 interpolated within its bucket), then protocol events that are not zero."""
        return self._line(self.latency, "")

    def interval_line(self, earlier: MetricsSnapshot, seconds: float) -> str:
        """The periodic line: lifetime counts as in `log_line`, but the latency of the
        answers since `earlier` (taken `seconds` before), and their rate."""
        window = self.since(earlier)
        rate = window.requests / seconds if seconds > 0 else 0.0
        return self._line(window.latency, f" rate={rate:.1f}/s")

    def _line(self, latency: LatencyHistogram, extra: str) -> str:
        failures = " ".join(f"{key}={value}" for key, value in sorted(self.failures.items()))
        events = " ".join(f"{key}={value}" for key, value in sorted(self.events.items()))
        held = " ".join(f"{key}={value:g}" for key, value in sorted(self.held.items()))
        if held:
            events = f"{events} {held}" if events else held
        return (
            f"clients={self.clients} (total {self.clients_total}) "
            f"target_connections={self.target_connections} requests={self.requests} "
            f"replies={self.replies} failures=[{failures}] reconnects={self.reconnects} "
            f"latency mean={latency.mean() * 1e3:.2f}ms p99={latency.quantile(0.99) * 1e3:.2f}ms"
            + extra
            + (f" {events}" if events else "")
        )


def _difference(now: dict[str, int], then: dict[str, int]) -> dict[str, int]:
    """Per-key growth, keys that did not grow left out."""
    return {key: value - then.get(key, 0) for key, value in now.items() if value > then.get(key, 0)}


def _nonzero(counts: Counter[str]) -> dict[str, int]:
    return {key: value for key, value in counts.items() if value}


class BridgeMetrics:
    """A bridge's metrics as one view: its client counters, its targets' counters
    summed, and its gauges read from their owners."""

    __slots__ = (
        "_clients_now",
        "_connections_now",
        "_counted",
        "_held_now",
        "_targets",
        "_waiting_now",
        "clients_side",
    )

    def __init__(
        self,
        clients_side: ClientMetrics,
        targets: Sequence[TargetMetrics],
        *,
        clients_now: Callable[[], int],
        connections_now: Callable[[], int],
        waiting_now: Callable[[], int],
        held_now: Callable[[], dict[str, float]] = dict,
    ) -> None:
        """`held_now`: what the targets hold now, by name (Modbus: ``image_values``)."""
        self.clients_side = clients_side
        self._targets = tuple(targets)
        self._counted = self._targets
        """Every target's counters the bridge ever had (a reload may retire some): the
        bridge's totals keep what they counted, so they only grow."""
        self._clients_now = clients_now
        self._connections_now = connections_now
        self._waiting_now = waiting_now
        self._held_now = held_now

    @property
    def targets(self) -> tuple[TargetMetrics, ...]:
        return self._targets

    def set_targets(self, targets: Sequence[TargetMetrics]) -> None:
        """The bridge's targets after a reload; retired ones still count in its totals."""
        self._targets = tuple(targets)
        self._counted = (
            *(target for target in self._counted if target not in self._targets),
            *self._targets,
        )

    @property
    def clients(self) -> int:
        """Clients connected now."""
        return self._clients_now()

    @property
    def clients_total(self) -> int:
        return self.clients_side.accepted

    @property
    def target_connections(self) -> int:
        """Target connections up now."""
        return self._connections_now()

    @property
    def waiting(self) -> int:
        """Requests waiting for a free target connection now."""
        return self._waiting_now()

    @property
    def requests(self) -> int:
        return sum(target.requests for target in self._counted)

    @property
    def replies(self) -> int:
        return sum(
            target.answers + target.local_answers + sum(target.gateway.values())
            for target in self._counted
        )

    @property
    def reconnects(self) -> int:
        return sum(target.reconnects for target in self._counted)

    @property
    def failures(self) -> dict[str, int]:
        """Gateway answers by reason, reasons that never happened left out."""
        total: Counter[str] = Counter()
        for target in self._counted:
            total.update(target.gateway)
        return _nonzero(total)

    @property
    def events(self) -> Counter[str]:
        """The core's and the protocol's events that happened (zero ones left out)."""
        total: Counter[str] = Counter()
        for target in self._counted:
            total.update(target.events)
            total.update(
                coalesced=target.coalesced,
                ids_dropped=target.ids_dropped,
                unexpected_answers=target.unexpected_answers,
            )
        return Counter(_nonzero(total))

    def latency(self) -> LatencyHistogram:
        """Target answers' latency, all targets together (a copy)."""
        return _merged(target.latency for target in self._counted)

    def snapshot(self) -> MetricsSnapshot:
        return MetricsSnapshot(
            clients=self.clients,
            clients_total=self.clients_total,
            target_connections=self.target_connections,
            waiting=self.waiting,
            requests=self.requests,
            answers=sum(target.answers for target in self._counted),
            local_answers=sum(target.local_answers for target in self._counted),
            failures=self.failures,
            reconnects=self.reconnects,
            events=dict(self.events),
            latency=self.latency(),
            gateway_latency=_merged(target.gateway_latency for target in self._counted),
            held=self._held_now(),
        )


def _merged(histograms: Iterable[LatencyHistogram]) -> LatencyHistogram:
    merged = LatencyHistogram()
    for histogram in histograms:
        merged.counts = [
            mine + theirs for mine, theirs in zip(merged.counts, histogram.counts, strict=True)
        ]
        merged.total += histogram.total
        merged.maximum = max(merged.maximum, histogram.maximum)
    return merged
