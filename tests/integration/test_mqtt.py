"""MQTT end to end: Debian's mosquitto broker (started here, on 127.0.0.1 and a free
port), the example Modbus device and the SunSpec device, a paho-mqtt subscriber.

- Every discovery config is what Home Assistant's MQTT discovery requires of its
  component (keys, unique ids, the device block, availability); states are the
  device's scaled values; the SunSpec common model names the device.
- A set command reaches the device's register; one out of range, one the write rules
  refuse and one for a point that is not writable leave it, and the old state is
  published again.
- The broker stopped and started again: the multiplexer reconnects and values flow
  again (announced anew to a broker that forgot them); Modbus clients never notice.
- The target down: the bridge's availability goes offline, and online again after.
- The multiplexer killed: the broker publishes its last will, offline.
- The password never shows in the log or in check-config.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import pytest

from tcp_multiplexer.app import App
from tcp_multiplexer.config.file import load_config
from tcp_multiplexer.protocols.modbus.device import (
    ModbusDevice,
    coil_value,
    holding_register_value,
    input_register_value,
)
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets.server import TargetConfig, TargetServer
from tests.helpers import LOOPBACK, CliProcess, eventually, run_cli
from tests.mqtt_peers import Broker, Subscriber, needs_mosquitto, running_broker, subscribed
from tests.peers import pymodbus_client
from tests.sunspec_device import port_of, sunspec_server

pytestmark = needs_mosquitto
TEST_TIMEOUT: Final = 45.0
BASE: Final = "tcp-multiplexer"

# What Home Assistant's MQTT discovery takes for each component we announce: the keys
# it requires, and every key it knows (a key outside these is an error in its schema).
COMMON_KEYS: Final = {
    "name",
    "unique_id",
    "state_topic",
    "availability",
    "availability_mode",
    "device",
    "origin",
    "entity_category",
    "expire_after",
    "icon",
    "object_id",
}
COMPONENT_KEYS: Final = {
    "sensor": ({"state_topic"}, {"unit_of_measurement", "device_class", "state_class"}),
    "binary_sensor": ({"state_topic"}, {"payload_on", "payload_off", "device_class"}),
    "number": (
        {"command_topic"},
        {"min", "max", "step", "mode", "unit_of_measurement", "device_class"},
    ),
    "switch": (
        {"command_topic"},
        {"payload_on", "payload_off", "state_on", "state_off", "device_class"},
    ),
}
DEVICE_KEYS: Final = {"identifiers", "name", "manufacturer", "model", "serial_number", "sw_version"}
SENSOR_CLASSES: Final = {
    "power",
    "energy",
    "energy_storage",
    "apparent_power",
    "reactive_power",
    "current",
    "voltage",
    "frequency",
    "temperature",
    "duration",
    "battery",
    "power_factor",
    "irradiance",
}


def check_discovery(topic: str, config: dict[str, Any]) -> str:
    """Fail unless `config` is a valid Home Assistant discovery config; its component."""
    prefix, kind, node, object_id, tail = topic.split("/")
    assert prefix == "homeassistant"
    assert tail == "config"
    required, known = COMPONENT_KEYS[kind]
    assert required <= set(config), (topic, required - set(config))
    allowed = COMMON_KEYS | required | known
    assert set(config) <= allowed, (topic, set(config) - allowed)
    assert config["unique_id"] == f"{node}_{object_id}"
    device = config["device"]
    assert set(device) <= DEVICE_KEYS
    assert device["identifiers"] == [node]
    assert device["name"]
    if "device_class" in config and kind == "sensor":
        assert config["device_class"] in SENSOR_CLASSES
    if config.get("state_class") == "total_increasing":
        assert config.get("device_class") in (None, "energy")
    if "availability" in config:
        assert all(set(entry) == {"topic"} for entry in config["availability"])
    if kind == "number":
        assert config["min"] < config["max"]
        assert config["step"] > 0
    return kind


def site(device_port: int, broker: Broker, extra: str = "") -> str:
    return f"""\
[mqtt]
url = "{broker.url}"

[[bridge]]
name = "heatpump"
protocol = "modbus"
listen = ["{LOOPBACK}:0"]
target = "{LOOPBACK}:{device_port}"
cache-ttl = "2s"
timeout = "1s"
write-rules = [
  {{ names = ["mqtt"], writes = ["unit 1 holding 100-109"] }},
  {{ access = "read-only" }},
]

[[bridge.point]]
name = "setpoint"
label = "Flow temperature setpoint"
address = 100
type = "i16"
scale = 0.1
unit-of-measurement = "°C"
device-class = "temperature"
every = "200ms"
writable = true
min = 20
max = 60

[[bridge.point]]
name = "limit"
address = 120
every = "200ms"
writable = true
min = 0
max = 100

[[bridge.point]]
name = "pump"
table = "coils"
address = 3
every = "200ms"

[[bridge.point]]
name = "energy"
table = "input"
address = 10
type = "u32"
unit-of-measurement = "kWh"
device-class = "energy"
state-class = "total_increasing"
every = "200ms"
{extra}"""


@contextlib.asynccontextmanager
async def mqtt_site(folder: Path, broker: Broker) -> AsyncIterator[tuple[App, TargetServer]]:
    """The example Modbus device and an App publishing its points to `broker`."""
    async with TargetServer(TargetConfig(protocol=ProtocolName.MODBUS, host=LOOPBACK)) as device:
        path = folder / "site.toml"
        path.write_text(site(device.port, broker))
        app = App(load_config(path))
        await app.start()
        try:
            yield app, device
        finally:
            await app.stop(grace=1.0)


def memory(server: TargetServer) -> ModbusDevice:
    device = server.responder
    assert isinstance(device, ModbusDevice)
    return device


def configs(subscriber: Subscriber) -> dict[str, dict[str, Any]]:
    return {
        topic: json.loads(payload)
        for topic, payload in dict(subscriber.last).items()
        if topic.startswith("homeassistant/") and payload
    }


async def wait(subscriber: Subscriber, condition: Any, what: str, within: float = 10.0) -> None:
    await asyncio.to_thread(subscriber.wait, condition, within, what)


async def test_points_are_announced_to_home_assistant_and_published(tmp_path: Path) -> None:
    with running_broker(tmp_path) as broker, subscribed(broker.port, "#") as subscriber:
        async with asyncio.timeout(TEST_TIMEOUT), mqtt_site(tmp_path, broker):
            topic = f"{BASE}/heatpump"
            await wait(
                subscriber,
                lambda: (
                    subscriber.last.get(f"{topic}/energy") not in (None, b"None")
                    and len(configs(subscriber)) == 7
                ),
                "states and 7 discovery configs",
            )
            found = configs(subscriber)
            kinds = {topic: check_discovery(topic, config) for topic, config in found.items()}
            node = "tcp_multiplexer_heatpump"
            assert kinds[f"homeassistant/number/{node}/setpoint/config"] == "number"
            assert kinds[f"homeassistant/number/{node}/limit/config"] == "number"
            assert kinds[f"homeassistant/binary_sensor/{node}/pump/config"] == "binary_sensor"
            assert kinds[f"homeassistant/sensor/{node}/energy/config"] == "sensor"
            assert kinds[f"homeassistant/binary_sensor/{node}/_bridge_target_up/config"]
            setpoint = found[f"homeassistant/number/{node}/setpoint/config"]
            assert setpoint["name"] == "Flow temperature setpoint"
            assert setpoint["command_topic"] == f"{topic}/setpoint/set"
            assert setpoint["step"] == 0.1
            assert (setpoint["min"], setpoint["max"]) == (20, 60)
            assert setpoint["availability"] == [{"topic": f"{topic}/availability"}]
            energy = found[f"homeassistant/sensor/{node}/energy/config"]
            assert energy["state_class"] == "total_increasing"
            assert energy["unit_of_measurement"] == "kWh"

            assert subscriber.text(f"{topic}/availability") == "online"
            raw = holding_register_value(1, 100)
            signed = raw - 0x10000 if raw >= 0x8000 else raw
            assert subscriber.text(f"{topic}/setpoint") == str(round(signed * 0.1, 1))
            assert subscriber.text(f"{topic}/pump") == ("ON" if coil_value(1, 3) else "OFF")
            expected = input_register_value(1, 10) << 16 | input_register_value(1, 11)
            assert subscriber.text(f"{topic}/energy") == str(expected)
            retained = {t for t, _payload, flag in subscriber.messages if flag}
            assert f"{topic}/energy" not in retained  # live, not (yet) retained replays
            await wait(
                subscriber,
                lambda: subscriber.last.get(f"{topic}/_bridge/target_up") == b"ON",
                "the bridge's health",
            )
    # A new subscriber to the same broker would get the states retained: checked in
    # the broker restart test, where the multiplexer announces everything anew.


async def test_a_set_command_writes_the_register_and_a_refused_one_leaves_it(
    tmp_path: Path,
) -> None:
    with running_broker(tmp_path) as broker, subscribed(broker.port, f"{BASE}/#") as subscriber:
        async with asyncio.timeout(TEST_TIMEOUT), mqtt_site(tmp_path, broker) as (app, server):
            device = memory(server)
            topic = f"{BASE}/heatpump"
            await wait(subscriber, lambda: f"{topic}/setpoint" in subscriber.last, "a state")
            publisher = app.publishing.publishers["heatpump"] if app.publishing else None
            assert publisher is not None

            subscriber.publish(f"{topic}/setpoint/set", "42.5")
            await eventually(lambda: device.holding_register(1, 100) == 425, within=10.0)
            await wait(subscriber, lambda: subscriber.text(f"{topic}/setpoint") == "42.5", "42.5")

            before = device.holding_register(1, 100)
            for payload, why in (
                ("75", "above its max"),
                ("warm", "not a number"),
            ):
                count = len(publisher.commands)
                subscriber.publish(f"{topic}/setpoint/set", payload)
                await eventually(lambda count=count: len(publisher.commands) > count)
                assert why in publisher.commands[-1][2]
                assert device.holding_register(1, 100) == before
            # The write rules give the client mqtt holding 100-109 only: 120 is refused.
            limit = device.holding_register(1, 120)
            count = len(publisher.commands)
            subscriber.publish(f"{topic}/limit/set", "7")
            await eventually(lambda: len(publisher.commands) > count)
            assert "write rules" in publisher.commands[-1][2]
            assert device.holding_register(1, 120) == limit
            # Not writable: the pump coil.
            count = len(publisher.commands)
            subscriber.publish(f"{topic}/pump/set", "ON")
            await eventually(lambda: len(publisher.commands) > count)
            assert "not writable" in publisher.commands[-1][2]
            # The old state was published again after each refusal.
            assert subscriber.text(f"{topic}/setpoint") == "42.5"


async def test_a_broker_restart_is_survived_and_costs_the_modbus_clients_nothing(
    tmp_path: Path,
) -> None:
    broker = Broker(tmp_path)
    broker.start()
    try:
        async with asyncio.timeout(TEST_TIMEOUT), mqtt_site(tmp_path, broker) as (app, _server):
            with subscribed(broker.port, "#") as first:
                await wait(first, lambda: len(configs(first)) == 7, "discovery")
            assert app.publishing is not None
            publisher = app.publishing.publishers["heatpump"]
            bridge = app.bridges["heatpump"]
            port = bridge.port
            broker.stop()
            await eventually(lambda: not publisher.connected, within=10.0)
            # Modbus clients go on while the broker is away.
            async with pymodbus_client(port) as client:
                for _ in range(5):
                    answer = await client.read_holding_registers(100, count=2, device_id=1)
                    assert not answer.isError()
            broker.start()  # the same port, and it forgot every retained message
            with subscribed(broker.port, "#") as second:
                await wait(
                    second,
                    lambda: (
                        len(configs(second)) == 7
                        and second.text(f"{BASE}/heatpump/availability") == "online"
                        and f"{BASE}/heatpump/energy" in second.last
                    ),
                    "everything announced and published again",
                    within=40.0,
                )
            assert publisher.connections >= 2
    finally:
        broker.stop()


async def test_availability_follows_the_target_and_the_last_will(tmp_path: Path) -> None:
    with running_broker(tmp_path) as broker, subscribed(broker.port, f"{BASE}/#") as subscriber:
        async with asyncio.timeout(TEST_TIMEOUT), sunspec_server() as device:
            config = tmp_path / "sunspec.toml"
            config.write_text(
                f'[mqtt]\nurl = "{broker.url}"\n\n[[bridge]]\nname = "inverter"\n'
                f'protocol = "modbus"\nlisten = ["{LOOPBACK}:0"]\n'
                f'target = "{LOOPBACK}:{port_of(device)}"\ncache-ttl = "2s"\nsunspec = true\n'
                'timeout = "1s"\nreconnect-backoff = "200ms"\n'
            )
            process = CliProcess(["server", "--config", str(config), "-v"])
            try:
                topic = f"{BASE}/inverter"
                await wait(
                    subscriber,
                    lambda: (
                        subscriber.text(f"{topic}/m103_w") == "2500"
                        and subscriber.text(f"{topic}/availability") == "online"
                    ),
                    "the inverter's power",
                    within=20.0,
                )
                assert subscriber.text(f"{topic}/m103_aphc") == "None"  # not implemented
                assert subscriber.text(f"{topic}/m103_hz") == "50.01"
                with subscribed(broker.port, "homeassistant/#") as discovery:
                    await wait(
                        discovery,
                        lambda: any("m103_w" in t for t in discovery.last),
                        "the inverter's discovery",
                    )
                    config_text = next(
                        v for t, v in discovery.last.items() if t.endswith("/m103_w/config")
                    )
                found = json.loads(config_text)
                assert found["device"]["manufacturer"] == "ExampleSolar"
                assert found["device"]["model"] == "Hybrid 5000"
                assert found["device"]["serial_number"] == "SN0001"
                assert found["device_class"] == "power"
                process.stop(signal.SIGKILL)
                await wait(
                    subscriber,
                    lambda: subscriber.text(f"{topic}/availability") == "offline",
                    "the last will",
                    within=60.0,
                )
            finally:
                process.stop()
    assert "secret" not in process.output()


async def test_the_target_down_makes_the_bridge_unavailable(tmp_path: Path) -> None:
    with running_broker(tmp_path) as broker, subscribed(broker.port, f"{BASE}/#") as subscriber:
        async with asyncio.timeout(TEST_TIMEOUT), mqtt_site(tmp_path, broker) as (_app, server):
            topic = f"{BASE}/heatpump/availability"
            await wait(subscriber, lambda: subscriber.text(topic) == "online", "online")
            await server.go_down()  # the device goes away: connections closed, refused
            await wait(subscriber, lambda: subscriber.text(topic) == "offline", "offline")
            await server.come_up()
            await wait(subscriber, lambda: subscriber.text(topic) == "online", "online again")


async def test_the_password_is_never_shown(tmp_path: Path) -> None:
    secret = "s3cret-Pa55"  # noqa: S105 - a password made up for the test
    (tmp_path / "password").write_text(secret + "\n")
    config = tmp_path / "site.toml"
    config.write_text(
        '[mqtt]\nurl = "mqtt://127.0.0.1:1"\nusername = "inverter"\npassword-file = "password"\n'
        f'\n[[bridge]]\nname = "meter"\nprotocol = "modbus"\nlisten = ["{LOOPBACK}:0"]\n'
        f'target = "{LOOPBACK}:1"\n'
    )
    result = await asyncio.to_thread(run_cli, "check-config", str(config))
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout + result.stderr
    assert "password-file" in result.stdout
    process = CliProcess(["server", "--config", str(config), "-d"])
    try:
        await asyncio.to_thread(process.wait_for_line, r"MQTT: broker mqtt://127\.0\.0\.1:1")
    finally:
        process.stop()
    assert secret not in process.output()


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("http://broker:1883", "the scheme is mqtt:// or mqtts://"),
        ("mqtt://user:pw@broker", "not in the URL"),
        ("mqtt://broker:99999", "port"),
    ],
)
async def test_a_bad_mqtt_url_exits_2_naming_it(url: str, error: str) -> None:
    result = await asyncio.to_thread(
        run_cli, "server", "-p", "modbus", "-l", f"{LOOPBACK}:0", "--mqtt", url
    )
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "--mqtt" in line
    assert error in line
