"""Home Assistant MQTT discovery: the retained config messages that make each bridge a
device and each of its points an entity.

    PREFIX/sensor/NODE/POINT/config        a number or text that is only read
    PREFIX/binary_sensor/NODE/POINT/config a truth that is only read
    PREFIX/number/NODE/POINT/config        a writable number (min, max, step)
    PREFIX/switch/NODE/POINT/config        a writable truth (a coil)

NODE is BASE_BRIDGE made a slug, and an entity's unique id NODE_POINT: both depend only
on the base topic and the names in the config, so they stay the same across restarts
and Home Assistant keeps its history and settings. Point entities are available while
BASE/BRIDGE/availability says online (the bridge's target answers; the MQTT connection's
last will says offline). The bridge's own health (target up, clients, answers per
minute) are diagnostic entities that expire when not refreshed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from tcp_multiplexer import __version__
from tcp_multiplexer.protocols.spec import PointInfo
from tcp_multiplexer.publishing.settings import MqttSettings

ONLINE: Final = "online"
OFFLINE: Final = "offline"
ON: Final = "ON"
OFF: Final = "OFF"
UNKNOWN: Final = "None"
"""The state payload of an unknown value: Home Assistant's MQTT entities read "None" as
unknown."""
HEALTH_EVERY: Final = 30.0
"""Seconds between the health states (they expire after four times as long)."""
HEALTH: Final = "_bridge"
"""The topic level under BASE/BRIDGE of the health states (no point name starts with _)."""
NUMBER_LIMIT: Final = 1e9
"""A writable number's range in Home Assistant when its point gives none."""
_SLUG: Final = re.compile(r"[^a-z0-9_]+")


def slug(text: str) -> str:
    return _SLUG.sub("_", text.lower()).strip("_")


class Topics:
    """The topics of one bridge."""

    def __init__(self, settings: MqttSettings, bridge: str) -> None:
        self.base = f"{settings.base_topic}/{bridge}"
        self.availability = f"{self.base}/availability"
        self.commands = f"{self.base}/+/set"
        self.node = slug(f"{settings.base_topic}_{bridge}")
        self.prefix = settings.discovery_prefix

    def state(self, point: str) -> str:
        return f"{self.base}/{point}"

    def command(self, point: str) -> str:
        return f"{self.base}/{point}/set"

    def health(self, name: str) -> str:
        return f"{self.base}/{HEALTH}/{name}"

    def point_of(self, command_topic: str) -> str | None:
        """The point a BASE/BRIDGE/POINT/set topic commands, if it is one."""
        head, _, point = command_topic.removesuffix("/set").rpartition("/")
        if not command_topic.endswith("/set") or head != self.base or not point:
            return None
        return point


def component(info: PointInfo) -> str:
    """The Home Assistant component a point is."""
    if info.kind == "bool":
        return "switch" if info.writable else "binary_sensor"
    if info.kind == "number" and info.writable:
        return "number"
    return "sensor"


def device_block(
    topics: Topics, bridge: str, device: Mapping[str, str], target: str
) -> dict[str, Any]:
    """The bridge as a device: what the device says it is (SunSpec's common model), or
    the multiplexer's bridge to `target`."""
    block: dict[str, Any] = {
        "identifiers": [topics.node],
        "name": bridge,
        "manufacturer": device.get("manufacturer", "tcp-multiplexer"),
        "model": device.get("model", f"device at {target}"),
    }
    for key in ("serial_number", "sw_version"):
        if key in device:
            block[key] = device[key]
    return block


def discovery_messages(
    settings: MqttSettings,
    bridge: str,
    infos: Sequence[PointInfo],
    device: Mapping[str, str],
    target: str,
) -> dict[str, dict[str, Any]]:
    """Every discovery config of one bridge, by topic."""
    topics = Topics(settings, bridge)
    block = device_block(topics, bridge, device, target)
    origin = {"name": "tcp-multiplexer", "sw_version": __version__}
    availability = [{"topic": topics.availability}]
    messages: dict[str, dict[str, Any]] = {}
    for info in infos:
        kind = component(info)
        config: dict[str, Any] = {
            "name": info.label,
            "unique_id": f"{topics.node}_{info.name}",
            "state_topic": topics.state(info.name),
            "availability": availability,
            "device": block,
            "origin": origin,
        }
        if kind in ("sensor", "number"):
            if info.unit_of_measurement is not None:
                config["unit_of_measurement"] = info.unit_of_measurement
            if info.device_class is not None:
                config["device_class"] = info.device_class
        if kind == "sensor" and info.state_class is not None and info.kind == "number":
            config["state_class"] = info.state_class
        if kind == "binary_sensor":
            config.update(payload_on=ON, payload_off=OFF)
            if info.device_class is not None:
                config["device_class"] = info.device_class
        if kind == "switch":
            config.update(
                command_topic=topics.command(info.name),
                payload_on=ON,
                payload_off=OFF,
                state_on=ON,
                state_off=OFF,
            )
        if kind == "number":
            config.update(
                command_topic=topics.command(info.name),
                min=info.minimum if info.minimum is not None else -NUMBER_LIMIT,
                max=info.maximum if info.maximum is not None else NUMBER_LIMIT,
                step=info.step or 0.001,
                mode="box",
            )
        messages[f"{topics.prefix}/{kind}/{topics.node}/{info.name}/config"] = config
    health: list[tuple[str, str, dict[str, Any]]] = [
        (
            "binary_sensor",
            "target_up",
            {
                "name": "Target up",
                "device_class": "connectivity",
                "payload_on": ON,
                "payload_off": OFF,
            },
        ),
        ("sensor", "clients", {"name": "Clients", "state_class": "measurement"}),
        (
            "sensor",
            "answers_per_minute",
            {
                "name": "Answers per minute",
                "state_class": "measurement",
                "unit_of_measurement": "answers/min",
            },
        ),
    ]
    for kind, name, extra in health:
        messages[f"{topics.prefix}/{kind}/{topics.node}/{HEALTH}_{name}/config"] = {
            **extra,
            "unique_id": f"{topics.node}_{HEALTH}_{name}",
            "state_topic": topics.health(name),
            "entity_category": "diagnostic",
            "expire_after": int(HEALTH_EVERY * 4),
            "device": block,
            "origin": origin,
        }
    return messages


def state_text(value: object) -> str:
    """A value as a state payload: numbers and text as they are, truths ON or OFF,
    unknown as "None"."""
    if value is None:
        return UNKNOWN
    if isinstance(value, bool):
        return ON if value else OFF
    return str(value)
