"""`tcp-multiplexer calibrate` against the example Modbus device with the quirks it is
meant to find: answers nothing for a while after a connect (--connect-quiet), busy
(0x06) when asked too soon after an answer (--min-gap), 0x03 above a read size
(--max-read), one connection at a time (closed, or left hanging, beyond it). The
printed block is a config file check-config takes, with the settings found."""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path
from typing import Any, Final

import pytest

from tcp_multiplexer.config.file import load_config
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets.server import OverLimit, TargetConfig, TargetServer
from tests.helpers import LOOPBACK, run_cli

TEST_TIMEOUT: Final = 40.0


def calibrate(port: int, *extra: str) -> Any:
    return asyncio.to_thread(
        run_cli,
        "calibrate",
        f"{LOOPBACK}:{port}",
        "--probe-timeout",
        "0.5s",
        "--budget",
        "25s",
        *extra,
    )


def bridge_of(output: str, folder: Path) -> dict[str, Any]:
    """The printed [[bridge]] block, loaded as check-config would."""
    path = folder / "calibrated.toml"
    path.write_text(output)
    load_config(str(path))  # a valid config file as printed
    (bridge,) = tomllib.loads(output)["bridge"]
    found: dict[str, Any] = bridge
    return found


async def test_calibrate_finds_each_quirk_and_prints_a_bridge(tmp_path: Path) -> None:
    config = TargetConfig(
        protocol=ProtocolName.MODBUS,
        host=LOOPBACK,
        connect_quiet=0.8,
        min_gap=0.06,
        max_read=60,
        max_connections=1,
    )
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(config) as device:
        result = await calibrate(device.port)
        assert result.returncode == 0, result.stderr
        assert device.stats.requests > 20
    assert "read-only, it never writes" in result.stdout.splitlines()[0]
    bridge = bridge_of(result.stdout, tmp_path)
    assert bridge["delay"] == "1s"  # 0.5 s after a connect is still quiet
    assert bridge["request-gap"] == "100ms"  # 50 ms gets 0x06
    assert bridge["poll-max-registers"] == 60  # narrowed down between 50 and 64
    assert bridge["max-connections"] == 1
    assert bridge["timeout"] == "1s"
    assert "the next connection is closed at once" in result.stdout
    assert "nearest device profile: " in result.stdout
    assert result.stderr == "", "no progress lines off a terminal"


async def test_calibrate_tells_a_hanging_refusal_and_counts_connections(tmp_path: Path) -> None:
    config = TargetConfig(
        protocol=ProtocolName.MODBUS,
        host=LOOPBACK,
        max_connections=2,
        over_limit=OverLimit.HANG,
    )
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(config) as device:
        result = await calibrate(device.port, "--register", "input:10")
    assert result.returncode == 0, result.stderr
    bridge = bridge_of(result.stdout, tmp_path)
    assert bridge["max-connections"] == 2
    assert bridge["delay"] == "0"
    assert bridge["request-gap"] == "0"
    assert bridge["poll-max-registers"] == 125
    assert "the next connection is accepted and never answered" in result.stdout


async def test_no_device_exits_1_and_bad_arguments_exit_2() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        result = await calibrate(port)
    assert result.returncode == 1
    assert "cannot reach" in result.stderr
    for bad in (("--register", "holding"), ("--unit", "300"), ("--budget", "0")):
        result = await calibrate(1, *bad)
        assert result.returncode == 2, bad
        assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("url", ["ftp://x:1"])
async def test_a_bad_target_exits_2(url: str) -> None:
    result = await asyncio.to_thread(run_cli, "calibrate", url)
    assert result.returncode == 2
    assert "unknown scheme" in result.stderr


async def test_calibrate_reaches_a_device_over_rtu_over_tcp(tmp_path: Path) -> None:
    from tests.integration.test_sunspec import rtu_over_tcp_device

    async with asyncio.timeout(TEST_TIMEOUT), rtu_over_tcp_device() as port:
        result = await asyncio.to_thread(
            run_cli,
            "calibrate",
            f"rtu+tcp://{LOOPBACK}:{port}",
            "--register",
            "holding:40000",
            "--probe-timeout",
            "0.5s",
            "--budget",
            "25s",
        )
    assert result.returncode == 0, result.stderr
    bridge = bridge_of(result.stdout, tmp_path)
    assert bridge["target"] == f"rtu+tcp://{LOOPBACK}:{port}"
    assert bridge["delay"] == "0"


async def test_on_a_terminal_each_probe_shows_a_line() -> None:
    config = TargetConfig(protocol=ProtocolName.MODBUS, host=LOOPBACK, max_read=20)
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(config) as device:
        lines = await asyncio.to_thread(_on_a_terminal, device.port)
    probes = [line.split(":")[0].strip() for line in lines if line.startswith("  ")]
    assert probes[:1] == ["connect"]
    assert {"request gap", "answer time", "largest read", "connections"} <= set(probes)
    assert any("largest read: 20 registers" in line for line in lines)


def _on_a_terminal(port: int) -> list[str]:
    """Run calibrate with its stderr on a pseudo-terminal; the lines written there."""
    import os
    import subprocess
    import sys

    master, slave = os.openpty()
    try:
        process = subprocess.run(  # noqa: S603 - our own interpreter and module
            [
                sys.executable,
                "-m",
                "tcp_multiplexer",
                "calibrate",
                f"{LOOPBACK}:{port}",
                "--probe-timeout",
                "0.5s",
                "--budget",
                "25s",
            ],
            stdout=subprocess.DEVNULL,
            stderr=slave,
            timeout=30,
            check=False,
        )
        assert process.returncode == 0
        os.set_blocking(master, False)
        written = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except (BlockingIOError, OSError):
                break
            if not chunk:
                break
            written += chunk
    finally:
        os.close(master)
        os.close(slave)
    return written.decode().replace("\r\n", "\n").splitlines()
