"""The named values the bridges publish (Modbus points), as the JSON API gives them.

    GET /api/values                  {"bridges": {BRIDGE: {"points": {POINT: {...}}}}}
    GET /api/values/BRIDGE           {"points": {POINT: {...}}}
    GET /api/values/BRIDGE/POINT     {"value": 1234.5, "unit-of-measurement": "W",
                                      "age": 0.8, "quality": "fresh"}

`quality` is ``fresh`` (younger than the bridge's cache TTL), ``stale`` (older, still
held) or ``unknown`` (never read, no longer held, or a value the device marks as not
implemented: `value` is then null). Read from the register image when asked; nothing
here asks the device.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tcp_multiplexer.protocols.spec import Reading

if TYPE_CHECKING:
    from tcp_multiplexer.bridge import Bridge


def bridge_readings(bridge: Bridge, now: float) -> dict[str, Reading]:
    """Every named value of `bridge`, from each of its targets."""
    readings: dict[str, Reading] = {}
    for target in bridge.targets:
        if target.background is not None:
            readings.update(target.background.readings(now))
    return readings


def reading_document(reading: Reading) -> dict[str, Any]:
    return {
        "value": reading.value,
        "unit-of-measurement": reading.unit_of_measurement,
        "age": None if reading.age is None else round(reading.age, 3),
        "quality": reading.quality,
    }


def values_document(bridges: Mapping[str, Bridge], now: float) -> dict[str, Any]:
    """/api/values: every bridge's points (bridges without points included, empty)."""
    return {
        "bridges": {
            name: {"points": _points(bridge_readings(bridge, now))}
            for name, bridge in bridges.items()
        }
    }


def _points(readings: Mapping[str, Reading]) -> dict[str, Any]:
    return {name: reading_document(reading) for name, reading in sorted(readings.items())}


def values_answer(bridges: Mapping[str, Bridge], path: str, now: float) -> tuple[int, Any]:
    """(status, document) for a path under /api/values: 404 naming what exists."""
    parts = [part for part in path.removeprefix("/api/values").split("/") if part]
    if not parts:
        return 200, values_document(bridges, now)
    bridge = bridges.get(parts[0])
    if bridge is None:
        return 404, {"error": f"no bridge {parts[0]!r}", "bridges": sorted(bridges)}
    readings = bridge_readings(bridge, now)
    if len(parts) == 1:
        return 200, {"points": _points(readings)}
    reading = readings.get(parts[1])
    if len(parts) > 2 or reading is None:
        return 404, {"error": f"no point {'/'.join(parts[1:])!r}", "points": sorted(readings)}
    return 200, reading_document(reading)
