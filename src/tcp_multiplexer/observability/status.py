"""What /healthz and /api/status say about each bridge, and a short history for charts.

A target is healthy while it is reachable: a connection is up, or the pool closed an
idle one on purpose, or it gave a good answer within its bridge's timeout. States:
``up`` (a connection is up), ``idle`` (closed for idleness, reopened on demand),
``connecting`` (none yet, nothing failed), ``down`` (the last attempt failed).

`/api/status` is part of the interface (documented in docs/monitoring.md):

    {"version": "0.2.0", "uptime_seconds": 12.5, "ready": true,
     "bridges": [{"name", "protocol", "listen": [...], "target", "state", "healthy",
                  "target_connections", "max_connections", "last_answer_age_seconds",
                  "last_error", "targets": [{"target", "units", "state", "healthy",
                  "target_connections", "last_answer_age_seconds", "last_error"}],
                  "clients_connected", "clients_accepted", "requests",
                  "answers", "local_answers", "gateway_answers": {reason: count},
                  "events": {name: count},
                  "latency_ms": {"mean", "p50", "p99"}  (the last HISTORY_STEP seconds;
                                null when nothing was answered in it),
                  "clients": [{"address", "connections", "requests", "errors",
                               "last_seen_seconds_ago"}],
                  "history": [{"age_seconds", "requests_per_second", "p50_ms", "p99_ms",
                               "mean_ms", "gateway_answers"}]}]}

A bridge routed to several targets (Modbus routes) lists each in "targets", with the
unit ids it serves ("units": a text such as "2, 10-12", or "others" for the bridge's
own target). The bridge is healthy while every one of them is; "target" and
"target_connections" are its first's (its own target, or the first route's), "state"
is the first's while all are healthy and otherwise the state of the first one that is
not, and the counts (gateway answers included) add up all of them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from tcp_multiplexer import __version__
from tcp_multiplexer.observability.metrics import MetricsSnapshot
from tcp_multiplexer.observability.values import reading_document

if TYPE_CHECKING:
    from tcp_multiplexer.bridge import Bridge
    from tcp_multiplexer.target_paths import TargetView

HISTORY_STEP: Final = 5.0
"""Seconds between two points of a bridge's chart."""
HISTORY_POINTS: Final = 120
"""Points kept: ten minutes."""
CLIENT_ROWS: Final = 200
"""Client addresses listed per bridge on the status page (the most recently seen)."""


@dataclass(frozen=True, slots=True)
class TargetState:
    state: str
    healthy: bool
    last_answer_age: float | None
    last_error: str | None


def target_state(target: TargetView, now: float) -> TargetState:
    """How one target is doing (see the module docstring)."""
    pool = target.pool
    last = target.metrics.last_answer_at
    age = None if last is None else max(0.0, now - last)
    recent = age is not None and age <= target.timeout
    if pool.connections:
        state = "up"
    elif pool.unreachable:
        state = "down"
    elif target.metrics.connections_made:
        state = "idle"
    else:
        state = "connecting"
    healthy = state in ("up", "idle") or recent
    return TargetState(state, healthy, age, pool.last_error)


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


class History:
    """Every bridge's recent rate and latency, one point per HISTORY_STEP (a sampler)."""

    def __init__(self, bridges: Callable[[], dict[str, Bridge]]) -> None:
        self._bridges = bridges
        self._points: dict[str, deque[dict[str, Any]]] = {}
        self._last: dict[str, tuple[float, MetricsSnapshot]] = {}

    def begin(self, name: str, bridge: Bridge, now: float) -> None:
        """A bridge (re)started: its first point counts from now, not from the next
        sample (nor from the bridge it replaced)."""
        self._last[name] = (now, bridge.metrics.snapshot())

    def sample(self, now: float) -> None:
        bridges = self._bridges()
        for name in list(self._points):
            if name not in bridges:
                del self._points[name]
                self._last.pop(name, None)
        for name, bridge in bridges.items():
            snapshot = bridge.metrics.snapshot()
            earlier = self._last.get(name)
            self._last[name] = (now, snapshot)
            if earlier is None:
                continue
            then, before = earlier
            window = snapshot.since(before)
            seconds = max(now - then, 1e-9)
            latency = window.latency
            answered = latency.count > 0  # a quiet window has no latency, not 0 ms
            self._points.setdefault(name, deque(maxlen=HISTORY_POINTS)).append(
                {
                    "at": now,
                    "requests_per_second": round(window.requests / seconds, 2),
                    "p50_ms": round(latency.quantile(0.5) * 1e3, 3) if answered else None,
                    "p99_ms": round(latency.quantile(0.99) * 1e3, 3) if answered else None,
                    "mean_ms": round(latency.mean() * 1e3, 3) if answered else None,
                    "gateway_answers": sum(window.failures.values()),
                }
            )

    def points(self, name: str, now: float) -> list[dict[str, Any]]:
        return [
            {
                **{k: v for k, v in point.items() if k != "at"},
                "age_seconds": round(now - point["at"], 1),
            }
            for point in self._points.get(name, ())
        ]

    def latest(self, name: str) -> dict[str, Any] | None:
        points = self._points.get(name)
        return points[-1] if points else None

    async def run(self, clock_time: Callable[[], float]) -> None:
        while True:
            self.sample(clock_time())
            await asyncio.sleep(HISTORY_STEP)


def _targets(bridge: Bridge, now: float) -> list[tuple[TargetView, TargetState]]:
    return [(target, target_state(target, now)) for target in bridge.targets]


def _summary(states: list[tuple[TargetView, TargetState]]) -> tuple[TargetState, bool]:
    """(the state that speaks for the bridge, whether every target is healthy)."""
    healthy = all(state.healthy for _target, state in states)
    first = states[0][1]
    if healthy:
        return first, True
    return next(state for _target, state in states if not state.healthy), False


def _target_rows(
    states: list[tuple[TargetView, TargetState]], now: float | None = None
) -> list[dict[str, Any]]:
    """Each target's state; with `now`, also what its background work holds and does
    (Modbus: the register image and its polls)."""
    rows = []
    for target, state in states:
        row: dict[str, Any] = {
            "target": target.name,
            "units": target.units,
            "state": state.state,
            "healthy": state.healthy,
            "target_connections": target.pool.connections,
            "last_answer_age_seconds": _round(state.last_answer_age),
            "last_error": state.last_error,
        }
        background = target.background
        if now is not None and background is not None:
            row.update(background.gauges(now))
            row["polls"] = background.rows(now)
            row["points"] = {
                name: reading_document(reading)
                for name, reading in sorted(background.readings(now).items())
            }
        rows.append(row)
    return rows


def bridge_health(bridge: Bridge, now: float) -> dict[str, Any]:
    """One bridge's part of /healthz."""
    states = _targets(bridge, now)
    state, healthy = _summary(states)
    first = bridge.targets[0]
    return {
        "state": state.state,
        "healthy": healthy,
        "target": first.name,
        "target_connections": first.pool.connections,
        "last_answer_age_seconds": _round(state.last_answer_age),
        "last_error": state.last_error,
        "targets": _target_rows(states),
    }


def health(bridges: dict[str, Bridge], now: float) -> tuple[bool, dict[str, Any]]:
    """(every bridge healthy?, the /healthz body)."""
    body = {name: bridge_health(bridge, now) for name, bridge in bridges.items()}
    healthy = all(part["healthy"] for part in body.values())
    return healthy, {"healthy": healthy, "bridges": body}


def status_document(
    bridges: dict[str, Bridge], history: History, *, now: float, uptime: float, ready: bool
) -> dict[str, Any]:
    """The /api/status document (see the module docstring)."""
    out = []
    for name, bridge in bridges.items():
        target = bridge.targets[0]
        states = _targets(bridge, now)
        state, healthy = _summary(states)
        snapshot = bridge.metrics.snapshot()
        gateway: dict[str, int] = {}
        for each in bridge.targets:
            for reason, count in each.metrics.gateway.items():
                gateway[reason] = gateway.get(reason, 0) + count
        latest = history.latest(name)
        out.append(
            {
                "name": name,
                "protocol": bridge.config.protocol,
                "listen": bridge.sockets,
                "target": target.name,
                "state": state.state,
                "healthy": healthy,
                "target_connections": target.pool.connections,
                "max_connections": target.max_connections,
                "last_answer_age_seconds": _round(state.last_answer_age),
                "last_error": state.last_error,
                "targets": _target_rows(states, now),
                "clients_connected": snapshot.clients,
                "clients_accepted": snapshot.clients_total,
                "requests": snapshot.requests,
                "answers": snapshot.answers,
                "local_answers": snapshot.local_answers,
                "gateway_answers": dict(sorted(gateway.items())),
                "events": dict(sorted(snapshot.events.items())),
                "held": dict(sorted(snapshot.held.items())),
                "latency_ms": {
                    "mean": latest["mean_ms"] if latest else None,
                    "p50": latest["p50_ms"] if latest else None,
                    "p99": latest["p99_ms"] if latest else None,
                },
                "clients": _clients(bridge, now),
                "history": history.points(name, now),
            }
        )
    return {
        "version": __version__,
        "uptime_seconds": round(uptime, 1),
        "ready": ready,
        "bridges": out,
    }


def _clients(bridge: Bridge, now: float) -> list[dict[str, Any]]:
    directory = bridge.client_directory
    if directory is None:
        return []
    rows = sorted(directory, key=lambda client: client.last_seen, reverse=True)[:CLIENT_ROWS]
    return [
        {
            "address": client.address,
            "connections": client.connections,
            "requests": client.requests,
            "errors": client.errors,
            "last_seen_seconds_ago": round(max(0.0, now - client.last_seen), 1),
        }
        for client in rows
    ]
