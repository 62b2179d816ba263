"""Named values end to end: points from a config file and its map file, read by polls
from the example device, served by /api/values and /metrics (parsed with
prometheus-client), reread on reload; a bad map stops check-config with one line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

from prometheus_client.parser import text_string_to_metric_families

from tcp_multiplexer.app import App
from tcp_multiplexer.config.file import load_config
from tcp_multiplexer.observability.values import bridge_readings
from tcp_multiplexer.protocols.modbus.device import (
    coil_value,
    holding_register_value,
    input_register_value,
)
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets.server import TargetConfig, TargetServer
from tests.helpers import LOOPBACK, eventually, run_cli

TEST_TIMEOUT: Final = 20.0

MAP: Final = """\
[[point]]
name = "power"
address = 100
type = "u16"
scale = 0.1
unit-of-measurement = "W"
device-class = "power"
state-class = "measurement"
every = "200ms"

[[point]]
name = "energy"
table = "input"
address = 10
type = "u32"
unit-of-measurement = "Wh"
every = "200ms"
"""


def site(port: int, extra: str = "") -> str:
    return f"""\
[metrics]
listen = "{LOOPBACK}:0"

[[bridge]]
name = "inverter"
protocol = "modbus"
listen = ["{LOOPBACK}:0"]
target = "{LOOPBACK}:{port}"
cache-ttl = "2s"
map = "inverter-map.toml"

[[bridge.point]]
name = "relay"
table = "coils"
address = 3
every = "200ms"
{extra}"""


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def get(app: App, path: str) -> tuple[int, Any]:
    assert app.observability is not None
    url = f"http://{LOOPBACK}:{app.observability.port}{path}"
    status, body = await asyncio.to_thread(fetch, url)
    return status, (json.loads(body) if body.startswith(("{", "[")) else body)


async def known(app: App, *names: str) -> None:
    """Wait until the points `names` of the bridge are read (fresh)."""
    bridge = app.bridges["inverter"]

    def fresh() -> bool:
        readings = bridge_readings(bridge, app.now())
        return all(name in readings and readings[name].quality == "fresh" for name in names)

    await eventually(fresh, within=10.0, message=f"points {names} read")


@contextlib.asynccontextmanager
async def site_app(folder: Path) -> AsyncIterator[App]:
    """The example device, and an App run from a config file in `folder` whose map file
    is `MAP` (reload() rereads both); stopped on exit."""
    async with TargetServer(TargetConfig(protocol=ProtocolName.MODBUS, host=LOOPBACK)) as device:
        (folder / "inverter-map.toml").write_text(MAP)
        config_path = folder / "site.toml"
        config_path.write_text(site(device.port))
        app = App(load_config(config_path), reload_source=lambda: load_config(config_path))
        await app.start()
        try:
            yield app
        finally:
            await app.stop(grace=1.0)


async def test_points_are_read_once_and_served_as_json_and_gauges(tmp_path: Path) -> None:
    async with asyncio.timeout(TEST_TIMEOUT), site_app(tmp_path) as app:
        await known(app, "power", "energy", "relay")
        status, document = await get(app, "/api/values")
        assert status == 200
        points = document["bridges"]["inverter"]["points"]
        assert points["power"]["value"] == round(holding_register_value(1, 100) * 0.1, 1)
        assert points["power"]["unit-of-measurement"] == "W"
        high, low = input_register_value(1, 10), input_register_value(1, 11)
        assert points["energy"]["value"] == high << 16 | low
        assert points["relay"]["value"] is coil_value(1, 3)
        assert all(0 <= point["age"] < 2.0 for point in points.values())
        status, one = await get(app, "/api/values/inverter/power")
        assert status == 200
        assert set(one) == {"value", "unit-of-measurement", "age", "quality"}
        assert one["value"] == points["power"]["value"]
        assert (await get(app, "/api/values/nope"))[0] == 404
        status, missing = await get(app, "/api/values/inverter/nope")
        assert status == 404
        assert missing["points"] == ["energy", "power", "relay"]

        _status, text = await get(app, "/metrics")
        samples = {
            (sample.labels["point"], sample.labels["unit"]): sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "tcp_multiplexer_point_value"
            for sample in family.samples
        }
        assert samples[("energy", "Wh")] == float(high << 16 | low)
        assert samples[("relay", "")] == float(coil_value(1, 3))
        assert ("power", "W") in samples

        # A reload rereads the map: a point added there appears.
        (tmp_path / "inverter-map.toml").write_text(
            MAP + '\n[[point]]\nname = "status"\naddress = 7\nevery = "200ms"\n'
        )
        assert await app.reload_from_source()
        await known(app, "status")
        status_point = await _one(app, "status")
        assert status_point["value"] == holding_register_value(1, 7)
        assert status_point["unit-of-measurement"] is None


async def _one(app: App, name: str) -> dict[str, Any]:
    status, document = await get(app, "/api/values/inverter")
    assert status == 200
    point: dict[str, Any] = document["points"][name]
    return point


async def test_the_http_api_takes_no_writes(tmp_path: Path) -> None:
    async with asyncio.timeout(TEST_TIMEOUT), site_app(tmp_path) as app:
        assert app.observability is not None
        url = f"http://{LOOPBACK}:{app.observability.port}/api/values/inverter/power"
        request = urllib.request.Request(url, data=b"5", method="PUT")
        status = await asyncio.to_thread(_status_of, request)
        assert status in (405, 413)


def _status_of(request: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


async def test_a_bad_map_is_one_line_naming_its_file_line_and_point(tmp_path: Path) -> None:
    (tmp_path / "inverter-map.toml").write_text(MAP.replace('type = "u32"', 'type = "u33"'))
    config_path = tmp_path / "site.toml"
    config_path.write_text(site(1502))
    result = await asyncio.to_thread(run_cli, "check-config", str(config_path))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    map_path = tmp_path / "inverter-map.toml"
    assert f"bridge \"inverter\": map: {map_path} line 11: point 'energy': type 'u33'" in line


async def test_check_config_shows_the_points_and_the_map(tmp_path: Path) -> None:
    (tmp_path / "inverter-map.toml").write_text(MAP)
    config_path = tmp_path / "site.toml"
    config_path.write_text(site(1502))
    result = await asyncio.to_thread(run_cli, "check-config", str(config_path))
    assert result.returncode == 0, result.stderr
    assert f'map = "{tmp_path / "inverter-map.toml"}"' in result.stdout
    assert 'point = [{ name = "relay", unit = 1, table = "coils"' in result.stdout
