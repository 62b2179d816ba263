"""The Prometheus exposition: a collector that reads every bridge when scraped.

Nothing is counted for Prometheus on the request path: the bridges keep their
cumulative counters anyway (observability/metrics.py), and this collector turns them
into metric families at scrape time. Names follow Prometheus conventions:
`tcp_multiplexer_` prefix, `_total` for counters, seconds for durations. Every series
has a `bridge` label; those of a target also `target`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Final, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from tcp_multiplexer import __version__
from tcp_multiplexer.observability.metrics import LatencyHistogram
from tcp_multiplexer.observability.status import target_state

if TYPE_CHECKING:
    from tcp_multiplexer.bridge import Bridge

PREFIX: Final = "tcp_multiplexer_"
EXPORTED_BUCKETS: Final = (
    0.0002,
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
)
"""Latency bucket bounds in /metrics: a subset of the kept bounds (so exact), from
200 µs to 30 s: what a dashboard needs, a quarter of the series."""


class AppView(Protocol):
    """What the collector reads of the process."""

    @property
    def bridges(self) -> dict[str, Bridge]: ...

    @property
    def task_restarts(self) -> dict[str, int]: ...

    @property
    def reload_counts(self) -> tuple[int, int]:
        """(reloads applied, reloads that failed)."""
        ...

    @property
    def per_client(self) -> bool: ...

    def now(self) -> float:
        """Loop time, to age the last answers."""
        ...


def _histogram(name: str, documentation: str, labels: Sequence[str]) -> HistogramMetricFamily:
    return HistogramMetricFamily(PREFIX + name, documentation, labels=list(labels))


def _add_histogram(
    family: HistogramMetricFamily, labels: Sequence[str], histogram: LatencyHistogram
) -> None:
    cumulative = histogram.cumulative(EXPORTED_BUCKETS)
    buckets = [(f"{bound:g}", float(count)) for bound, count in cumulative]
    buckets.append(("+Inf", float(histogram.count)))
    family.add_metric(list(labels), buckets, histogram.total)


class BridgeCollector(Collector):
    """Every bridge's metrics, read when Prometheus scrapes (see the module docstring)."""

    def __init__(self, app: AppView) -> None:
        self._app = app

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: the families depend on the bridges running when scraped."""
        return []

    def collect(self) -> Iterator[Metric]:
        app = self._app
        bridges = list(app.bridges.values())
        now = app.now()
        info = GaugeMetricFamily(PREFIX + "info", "The running version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info

        clients = GaugeMetricFamily(PREFIX + "clients", "Clients connected now.", labels=["bridge"])
        accepted = CounterMetricFamily(
            PREFIX + "clients_accepted", "Client connections accepted.", labels=["bridge"]
        )
        refused = CounterMetricFamily(
            PREFIX + "clients_refused",
            "Client connections closed at once, by reason.",
            labels=["bridge", "reason"],
        )
        client_errors = CounterMetricFamily(
            PREFIX + "client_errors",
            "Client connections closed for misbehaving, by kind.",
            labels=["bridge", "kind"],
        )
        for bridge in bridges:
            side = bridge.clients
            clients.add_metric([bridge.name], bridge.metrics.clients)
            accepted.add_metric([bridge.name], side.accepted)
            for reason, count in sorted(side.refused.items()):
                refused.add_metric([bridge.name, reason], count)
            for kind, count in sorted(side.errors.items()):
                client_errors.add_metric([bridge.name, kind], count)
        yield from (clients, accepted, refused, client_errors)
        yield from self._targets(bridges, now)
        if app.per_client:
            yield from self._per_client(bridges)

        restarts = CounterMetricFamily(
            PREFIX + "task_restarts",
            "Long-lived tasks restarted after an unexpected exception, by task.",
            labels=["task"],
        )
        for task, count in sorted(app.task_restarts.items()):
            restarts.add_metric([task], count)
        yield restarts
        applied, failed = app.reload_counts
        yield CounterMetricFamily(PREFIX + "reloads", "Reloads applied.", value=applied)
        yield CounterMetricFamily(
            PREFIX + "reload_failures", "Reloads refused (the file did not validate).", value=failed
        )

    def _targets(self, bridges: Sequence[Bridge], now: float) -> Iterator[Metric]:
        labels = ["bridge", "target"]

        def counter(
            name: str, documentation: str, extra: Sequence[str] = ()
        ) -> CounterMetricFamily:
            return CounterMetricFamily(PREFIX + name, documentation, labels=[*labels, *extra])

        def gauge(name: str, documentation: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(PREFIX + name, documentation, labels=labels)

        up = gauge(
            "target_up",
            "1 while the target is reachable (a connection up, idle, or a "
            "good answer within the bridge's timeout), else 0.",
        )
        connections = gauge("target_connections", "Target connections up now.")
        attempts = counter("target_connect_attempts", "Attempts to open a target connection.")
        failures = counter("target_connect_failures", "Attempts that failed.")
        opened = counter("target_connections_opened", "Target connections opened.")
        reconnects = counter(
            "target_reconnects", "Target connections lost unexpectedly (not closed as planned)."
        )
        requests = counter("requests", "Requests from clients.")
        answers = counter("answers", "Answers from the target.")
        local = counter(
            "local_answers",
            "Answers given without the target (register image, stale, refused writes).",
        )
        gateway = counter(
            "gateway_answers",
            "Requests the multiplexer answered itself (or closed the client) because the "
            "target could not, by reason.",
            ["reason"],
        )
        depth = gauge("queue_depth", "Requests waiting for a free target connection now.")
        queued = counter("queued_requests", "Requests that had to wait for a free connection.")
        waited = counter("queue_wait_seconds", "Time those requests waited, together.")
        age = gauge(
            "last_answer_age_seconds", "Seconds since the target's last answer (NaN: none yet)."
        )
        events = counter(
            "events",
            "Protocol and gateway events (coalesced, image answers, poll reads...), by name.",
            ["event"],
        )
        point = GaugeMetricFamily(
            PREFIX + "point_value",
            "The bridges' named values (Modbus points), scaled; the unit label is each "
            "one's unit of measurement (empty: none). Unknown values are left out.",
            labels=["bridge", "point", "unit"],
        )
        held = gauge(
            "image_values",
            "Registers, coils and inputs held in the target's register image now (Modbus "
            "with --cache-ttl or --serve-stale).",
        )
        latency = _histogram(
            "answer_latency_seconds", "Request to answer, for answers from the target.", labels
        )
        gateway_latency = _histogram(
            "gateway_latency_seconds", "Request to gateway answer.", labels
        )
        for bridge in bridges:
            for target in bridge.targets:
                key = [bridge.name, target.name]
                metrics = target.metrics
                state = target_state(target, now)
                up.add_metric(key, 1.0 if state.healthy else 0.0)
                connections.add_metric(key, target.pool.connections)
                attempts.add_metric(key, metrics.connect_attempts)
                failures.add_metric(key, metrics.connect_failures)
                opened.add_metric(key, metrics.connections_made)
                reconnects.add_metric(key, metrics.reconnects)
                requests.add_metric(key, metrics.requests)
                answers.add_metric(key, metrics.answers)
                local.add_metric(key, metrics.local_answers)
                for reason, count in sorted(metrics.gateway.items()):
                    gateway.add_metric([*key, reason], count)
                depth.add_metric(key, target.dispatcher.waiting)
                queued.add_metric(key, metrics.queued)
                waited.add_metric(key, metrics.queue_wait_seconds)
                last = metrics.last_answer_at
                age.add_metric(key, math.nan if last is None else max(0.0, now - last))
                named = {
                    **metrics.events,
                    "coalesced": metrics.coalesced,
                    "ids_dropped": metrics.ids_dropped,
                    "unexpected_answers": metrics.unexpected_answers,
                    "damaged_answers": metrics.damaged_answers,
                }
                for event, count in sorted(named.items()):
                    events.add_metric([*key, event], count)
                _add_histogram(latency, key, metrics.latency)
                _add_histogram(gateway_latency, key, metrics.gateway_latency)
                background = target.background
                if background is not None:
                    image = background.gauges(now).get("image_values")
                    if image is not None:
                        held.add_metric(key, image)
                    for name, reading in sorted(background.readings(now).items()):
                        value = reading.value
                        if isinstance(value, int | float) and not isinstance(value, bool):
                            unit = reading.unit_of_measurement or ""
                            point.add_metric([bridge.name, name, unit], float(value))
                        elif isinstance(value, bool):
                            point.add_metric([bridge.name, name, ""], float(value))
        yield from (up, connections, attempts, failures, opened, reconnects, requests, answers)
        yield from (local, gateway, depth, queued, waited, age, events, held, point)
        yield from (latency, gateway_latency)

    def _per_client(self, bridges: Sequence[Bridge]) -> Iterator[Metric]:
        labels = ["bridge", "client"]
        requests = CounterMetricFamily(
            PREFIX + "client_requests", "Requests per client address.", labels=labels
        )
        errors = CounterMetricFamily(
            PREFIX + "client_request_errors",
            "Connections of a client address closed for sending what cannot be framed.",
            labels=labels,
        )
        connected = GaugeMetricFamily(
            PREFIX + "client_connections", "Connections open now per client address.", labels=labels
        )
        refused = CounterMetricFamily(
            PREFIX + "client_requests_refused",
            "Requests per client address refused by the write rules.",
            labels=labels,
        )
        latency = _histogram(
            "client_latency_seconds", "Request to answer, per client address.", labels
        )
        for bridge in bridges:
            if bridge.client_directory is None:
                continue
            for client in bridge.client_directory:
                key = [bridge.name, client.address]
                requests.add_metric(key, client.requests)
                errors.add_metric(key, client.errors)
                refused.add_metric(key, client.refused)
                connected.add_metric(key, client.connections)
                if client.latency is not None:
                    _add_histogram(latency, key, client.latency)
        yield from (requests, errors, refused, connected, latency)
