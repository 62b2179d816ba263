"""SunSpec end to end: a pymodbus device holding models 1, 103 and 203 encoded by
pysunspec2 (tests/sunspec_device.py), scanned through the multiplexer.

- `tcp-multiplexer sunspec scan` prints the models with their values scaled (and not
  implemented ones as unknown), over TCP and over RTU over TCP, and writes a map file a
  bridge reads back; a target that is not SunSpec, or not there, exits 1 naming why.
- A bridge with `sunspec = true` scans once its target answers and publishes the
  models' values: /api/values and the gauges (parsed with prometheus-client).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pymodbus import FramerType
from pymodbus.server import ModbusTcpServer

from tcp_multiplexer.app import App
from tcp_multiplexer.config.file import load_config
from tcp_multiplexer.protocols.modbus.points import load_map
from tests.helpers import LOOPBACK, run_cli
from tests.peers import listening_port
from tests.sunspec_device import _device, device_registers, port_of, sunspec_server

TEST_TIMEOUT: Final = 30.0


def scan(*argv: str) -> Any:
    return asyncio.to_thread(run_cli, "sunspec", "scan", *argv)


async def test_scan_prints_the_models_scaled_and_writes_a_map(tmp_path: Path) -> None:
    map_path = tmp_path / "inverter.toml"
    async with asyncio.timeout(TEST_TIMEOUT), sunspec_server() as device:
        result = await scan(f"{LOOPBACK}:{port_of(device)}", "--write-map", str(map_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "marker at 40000, 3 model(s): 1, 103, 203" in lines[0]
    assert "manufacturer ExampleSolar, model Hybrid 5000" in lines[1]
    assert "serial number SN0001" in lines[1]
    shown: dict[str, str] = {}
    for line in lines:
        if line.startswith("  "):
            shown.setdefault(line.split()[0], line)  # the inverter's, before the meter's
    assert shown["A"].endswith(" 12.3 A")  # scale factor -1
    assert shown["Hz"].endswith(" 50.01 Hz")
    assert shown["WH"].endswith(" 123456 Wh")
    assert shown["AphC"].endswith("unknown (not implemented)")  # 0xFFFF
    assert shown["TmpCab"].endswith("unknown (its scale factor is not implemented)")
    assert any(line.startswith("model 203 ") for line in lines)
    assert any(line.endswith(" -1500 W") for line in lines)  # the meter's, signed
    assert lines[-1].startswith(f"wrote {len(load_map(str(map_path)).points)} points")

    points = {point.name: point for point in load_map(str(map_path)).points}
    assert points["m1_sn"].type == "string"
    assert points["m103_w"].scale == "m103_w_sf"
    assert points["m103_w"].device_class == "power"
    assert points["m103_w"].state_class == "measurement"
    assert points["m103_wh"].state_class == "total_increasing"
    assert points["m103_wh"].device_class == "energy"
    assert points["m103_aphc"].not_implemented == 0xFFFF
    assert points["m203_w"].type == "i16"
    assert points["m203_w"].not_implemented == -0x8000
    assert points["m103_tmpcab"].unit_of_measurement == "°C"
    assert "m103_evtvnd1" in points


@contextlib.asynccontextmanager
async def rtu_over_tcp_device() -> AsyncIterator[int]:
    """The SunSpec device behind pymodbus's RTU-over-TCP framing; yields its port."""
    server = ModbusTcpServer(
        _device(device_registers(), 40000), address=(LOOPBACK, 0), framer=FramerType.RTU
    )
    await server.serve_forever(background=True)
    try:
        yield listening_port(server)
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]


async def test_scan_reaches_a_device_over_rtu_over_tcp() -> None:
    async with asyncio.timeout(TEST_TIMEOUT), rtu_over_tcp_device() as port:
        result = await scan(f"rtu+tcp://{LOOPBACK}:{port}")
    assert result.returncode == 0, result.stderr
    assert "3 model(s): 1, 103, 203" in result.stdout
    assert " 50.01 Hz" in result.stdout


async def test_scan_of_no_sunspec_device_or_none_at_all_exits_1_saying_why() -> None:
    plain = [0] * 8
    async with asyncio.timeout(TEST_TIMEOUT), sunspec_server(plain, base=0) as device:
        result = await scan(f"{LOOPBACK}:{port_of(device)}", "--timeout", "1s")
    assert result.returncode == 1
    assert "no SunSpec marker ('SunS') at 40000, 0 or 50000" in result.stderr
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        result = await scan(f"{LOOPBACK}:{port}", "--timeout", "1s")
    assert result.returncode == 1
    assert "the target cannot be reached" in result.stderr
    bad = await scan(f"{LOOPBACK}:1", "--unit", "300")
    assert bad.returncode == 2
    assert "--unit" in bad.stderr


async def test_a_marker_at_50000_is_found() -> None:
    async with asyncio.timeout(TEST_TIMEOUT), sunspec_server(base=50000) as device:
        result = await scan(f"{LOOPBACK}:{port_of(device)}")
    assert result.returncode == 0, result.stderr
    assert "marker at 50000" in result.stdout


def site(port: int) -> str:
    return f"""\
[metrics]
listen = "{LOOPBACK}:0"

[[bridge]]
name = "inverter"
protocol = "modbus"
listen = ["{LOOPBACK}:0"]
target = "{LOOPBACK}:{port}"
cache-ttl = "2s"
sunspec = true
"""


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
        return str(response.read().decode())


async def test_a_bridge_with_sunspec_publishes_the_models_it_finds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tcp_multiplexer")
    config_path = tmp_path / "site.toml"
    async with asyncio.timeout(TEST_TIMEOUT), sunspec_server() as device:
        config_path.write_text(site(port_of(device)))
        app = App(load_config(config_path))
        await app.start()
        try:
            assert app.observability is not None
            base = f"http://{LOOPBACK}:{app.observability.port}"

            async def values() -> dict[str, Any]:
                text = await asyncio.to_thread(fetch, f"{base}/api/values/inverter")
                points: dict[str, Any] = json.loads(text)["points"]
                return points

            found: dict[str, Any] = {}

            async def read_all() -> None:
                while True:
                    found.update(await values())
                    wanted = ("m103_w", "m203_totwhimp", "m1_mn")
                    if all(found.get(name, {}).get("quality") == "fresh" for name in wanted):
                        return
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(read_all(), 15.0)
            assert found["m103_w"]["value"] == 2500
            assert found["m103_w"]["unit-of-measurement"] == "W"
            assert found["m103_hz"]["value"] == 50.01
            assert found["m103_a"]["value"] == 12.3
            assert found["m103_phvpha"]["value"] == 230.1
            assert found["m203_w"]["value"] == -1500
            assert found["m203_totwhimp"]["value"] == 98765
            assert found["m1_mn"]["value"] == "ExampleSolar"
            # Not implemented (0xFFFF), and a value whose scale factor is not: unknown.
            assert found["m103_aphc"]["value"] is None
            assert found["m103_aphc"]["quality"] == "unknown"
            assert found["m103_tmpcab"]["value"] is None

            text = await asyncio.to_thread(fetch, f"{base}/metrics")
            gauges = {
                sample.labels["point"]: sample.value
                for family in text_string_to_metric_families(text)
                if family.name == "tcp_multiplexer_point_value"
                for sample in family.samples
            }
            assert gauges["m103_w"] == 2500.0
            assert gauges["m203_totwhimp"] == 98765.0
            assert "m103_aphc" not in gauges  # unknown is no number
            assert any(
                "SunSpec unit 1: models 1, 103, 203 (ExampleSolar Hybrid 5000); publishing"
                in message
                for message in caplog.messages
            )
        finally:
            await app.stop(grace=1.0)


async def test_sunspec_needs_a_cache_ttl(tmp_path: Path) -> None:
    config_path = tmp_path / "site.toml"
    config_path.write_text(site(1502).replace('cache-ttl = "2s"\n', ""))
    result = await asyncio.to_thread(run_cli, "check-config", str(config_path))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "sunspec" in line
    assert "cache-ttl" in line
