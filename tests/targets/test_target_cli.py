"""``example-server``: flags into TargetConfig, errors, and a real run in a subprocess."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

import tcp_multiplexer
from tcp_multiplexer.options import Address
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets import Fault, OverLimit, TargetConfig
from tcp_multiplexer.targets.cli import add_parser, config_from_args, run
from tests.helpers import open_client
from tests.targets.helpers import TEST_TIMEOUT


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tcp-multiplexer")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_parser(subparsers)
    return parser


def _config(*argv: str) -> TargetConfig:
    return config_from_args(_parser().parse_args(["example-server", *argv]))


def test_defaults() -> None:
    assert _config("echo") == TargetConfig(protocol=ProtocolName.ECHO, port=1234)


def test_every_flag() -> None:
    config = _config(
        "modbus",
        "-l",
        "0.0.0.0:5020",
        "--delay",
        "200ms",
        "--max-connections",
        "1",
        "--over-limit",
        "hang",
        "--fault",
        "no-answer:0.1",
        "--fault",
        "late:5%",
        "--fault",
        "wrong-id:0.2",
        "--seed",
        "3",
        "--late-delay",
        "2s",
        "--close-after",
        "330s",
        "--accept-close",
        "--outage-every",
        "1m",
        "--outage-for",
        "10",
    )
    assert config == TargetConfig(
        protocol=ProtocolName.MODBUS,
        host="0.0.0.0",
        port=5020,
        delay=0.2,
        max_connections=1,
        over_limit=OverLimit.HANG,
        faults=((Fault.NO_ANSWER, 0.1), (Fault.LATE, 0.05), (Fault.WRONG_ID, 0.2)),
        seed=3,
        late_delay=2.0,
        close_after=330.0,
        accept_close=True,
        outage_every=60.0,
        outage_for=10.0,
    )


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        pytest.param("5020", Address("127.0.0.1", 5020), id="port"),
        pytest.param(":5020", Address("127.0.0.1", 5020), id="colon-port"),
        pytest.param("[::1]:0", Address("::1", 0), id="ipv6"),
    ],
)
def test_listen_without_host_is_loopback(listen: str, address: Address) -> None:
    config = _config("http", "--listen", listen)
    assert Address(config.host, config.port) == address


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["gopher"], id="protocol"),
        pytest.param(["echo", "--delay", "soon"], id="duration"),
        pytest.param(["echo", "-l", "host:port"], id="listen"),
        pytest.param(["echo", "--fault", "explode"], id="fault-name"),
        pytest.param(["echo", "--fault", "late:2"], id="fault-fraction"),
        pytest.param(["echo", "--max-connections", "-1"], id="max-connections"),
        pytest.param(["echo", "--over-limit", "queue"], id="over-limit"),
        pytest.param(["echo", "--seed", "x"], id="seed"),
    ],
)
def test_bad_flags_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(["example-server", *argv])
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["echo", "--fault", "wrong-id"], id="wrong-id-echo"),
        pytest.param(["echo", "--fault", "late:0.7", "--fault", "reset:0.7"], id="sum"),
        pytest.param(["echo", "--outage-every", "1s"], id="outage-alone"),
    ],
)
def test_contradicting_flags_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["example-server", *argv])
    with pytest.raises(SystemExit) as exit_info:
        run(args)
    assert exit_info.value.code == 2
    assert "example-server: error:" in capsys.readouterr().err


def test_help_names_every_fault_and_protocol(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["example-server", "--help"])
    text = capsys.readouterr().out
    for name in [*(fault.value for fault in Fault), *(name.value for name in ProtocolName)]:
        assert name in text
    assert "modbus only" in text


SOURCE_ROOT = Path(tcp_multiplexer.__file__).resolve().parents[1]
"""The directory holding the package, for the subprocess's PYTHONPATH."""


async def test_serves_until_sigterm_and_prints_counters() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SOURCE_ROOT), *sys.path])}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tcp_multiplexer.targets",
        "example-server",
        "echo",
        "--listen",
        "127.0.0.1:0",
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert process.stderr is not None
    try:
        async with asyncio.timeout(TEST_TIMEOUT * 2):
            ready = (await process.stderr.readline()).decode()
            match = re.fullmatch(r"example-server echo listening on 127\.0\.0\.1:(\d+)\n", ready)
            assert match, ready
            async with open_client(int(match.group(1))) as (reader, writer):
                writer.write(b"ping\n")
                assert await reader.readline() == b"ping\n"
            process.send_signal(signal.SIGTERM)
            rest = (await process.stderr.read()).decode()
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert "accepted=1 rejected=0 requests=1" in rest
