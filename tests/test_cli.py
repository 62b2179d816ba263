"""The command line: every flag reaches the config; bad input exits 2 with one line."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tcp_multiplexer import __version__
from tcp_multiplexer.cli import build_parser, config_from_args, main
from tcp_multiplexer.config.model import AppConfig, BridgeConfig
from tcp_multiplexer.options import Address
from tcp_multiplexer.profiles import PROFILES
from tcp_multiplexer.protocols.modbus.options import ModbusOptions
from tcp_multiplexer.protocols.modbus.polls import Poll
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.target import Target
from tests.helpers import run_cli


class Parsed:
    """The one bridge's settings, and the process's, from one command line."""

    def __init__(self, app: AppConfig) -> None:
        (self.bridge,) = app.bridges
        self.app = app

    def __getattr__(self, name: str) -> object:
        if name == "modbus":
            return self.bridge.protocol_options
        if name == "listen":
            (address,) = self.bridge.listen
            return address
        if name in AppConfig.__dataclass_fields__:
            return getattr(self.app, name)
        return getattr(self.bridge, name)


def parse(*argv: str) -> Parsed:
    return Parsed(config_from_args(build_parser().parse_args(["server", *argv])))


def test_defaults_match_the_reference() -> None:
    config = parse()
    assert config.app == AppConfig(bridges=(BridgeConfig(),))
    assert config.protocol is ProtocolName.ECHO
    assert config.target == Target.tcp(Address("127.0.0.1", 1234))
    assert config.listen == Address("", 8000)
    assert config.timeout == 60.0
    assert config.delay == 0.0
    assert config.max_connections == 1
    assert config.reconnect_backoff == 1.0
    assert config.health_check_interval == 30.0
    assert config.queue_size == 32
    assert config.connect_timeout == 5.0


@pytest.mark.parametrize(
    ("argv", "field", "expected"),
    [
        pytest.param(["-p", "modbus"], "protocol", ProtocolName.MODBUS, id="p"),
        pytest.param(
            ["--applicationProtocol", "HTTP"], "protocol", ProtocolName.HTTP, id="appproto"
        ),
        pytest.param(
            ["-t", "10.0.0.5:502"], "target", Target.tcp(Address("10.0.0.5", 502)), id="t"
        ),
        pytest.param(
            ["--targetServer", "[::1]:1502"], "target", Target.tcp(Address("::1", 1502)), id="t6"
        ),
        pytest.param(["-l", "5020"], "listen", Address("", 5020), id="l-port"),
        pytest.param(["-l", "127.0.0.1:5020"], "listen", Address("127.0.0.1", 5020), id="l-host"),
        pytest.param(["--listen", ":5020"], "listen", Address("", 5020), id="l-colon"),
        pytest.param(["--timeout", "2.5"], "timeout", 2.5, id="timeout-frac"),
        pytest.param(["--timeout", "1m30s"], "timeout", 90.0, id="timeout-go"),
        pytest.param(["--connect-timeout", "500ms"], "connect_timeout", 0.5, id="connect"),
        pytest.param(["--delay", "1s"], "delay", 1.0, id="delay"),
        pytest.param(["--max-connections", "4"], "max_connections", 4, id="maxconn"),
        pytest.param(["--reconnect-backoff", "250ms"], "reconnect_backoff", 0.25, id="backoff"),
        pytest.param(["--health-check-interval", "1m"], "health_check_interval", 60.0, id="health"),
        pytest.param(["--queue-size", "100"], "queue_size", 100, id="queue"),
        pytest.param(["--max-inflight", "16"], "max_inflight", 16, id="inflight"),
        pytest.param(["--client-backlog", "4"], "client_backlog", 4, id="backlog"),
        pytest.param(["--request-gap", "50ms"], "request_gap", 0.05, id="gap"),
        pytest.param(["--max-idle", "5m"], "max_idle", 300.0, id="idle"),
        pytest.param(["--metrics-interval", "10s"], "metrics_interval", 10.0, id="metrics"),
        pytest.param(["--busy-poll", "1ms"], "busy_poll", 0.001, id="busy-poll"),
        pytest.param(["--busy-poll", "0"], "busy_poll", 0.0, id="busy-poll-off"),
        pytest.param(["--lenient-ids"], "modbus", ModbusOptions(lenient_ids=True), id="lenient"),
        pytest.param(["--no-coalesce"], "modbus", ModbusOptions(coalesce=False), id="coalesce"),
        pytest.param(["--cache-ttl", "2s"], "modbus", ModbusOptions(cache_ttl=2.0), id="cache"),
        pytest.param(["--read-only"], "modbus", ModbusOptions(read_only="deny"), id="readonly"),
        pytest.param(
            ["--read-only=ignore"], "modbus", ModbusOptions(read_only="ignore"), id="ignore"
        ),
        pytest.param(["--read-only", "deny"], "modbus", ModbusOptions(read_only="deny"), id="deny"),
        pytest.param(
            ["--serve-stale", "5m"], "modbus", ModbusOptions(serve_stale=300.0), id="stale"
        ),
        pytest.param(
            ["--cache-ttl", "2s", "--poll", "1:holding:40000:50:1s", "--poll", "2:coils:0:8:500ms"],
            "modbus",
            ModbusOptions(
                cache_ttl=2.0,
                poll=(
                    Poll(1, "holding", 40000, 50, 1.0, "1:holding:40000:50:1s"),
                    Poll(2, "coils", 0, 8, 0.5, "2:coils:0:8:500ms"),
                ),
            ),
            id="poll",
        ),
        pytest.param(
            ["--poll-merge-gap", "0", "--poll-max-registers", "64"],
            "modbus",
            ModbusOptions(poll_merge_gap=0, poll_max_registers=64),
            id="poll-limits",
        ),
        pytest.param(["-v"], "log_level", "info", id="verbose"),
        pytest.param(["-v", "-d"], "log_level", "debug", id="debug"),
        pytest.param(["--log-level", "INFO"], "log_level", "info", id="log-level"),
        pytest.param(["--name", "inverter"], "name", "inverter", id="name"),
    ],
)
def test_every_flag_reaches_the_config(argv: list[str], field: str, expected: object) -> None:
    if field == "modbus":
        argv = ["-p", "modbus", *argv]
    assert getattr(parse(*argv), field) == expected


def test_listen_may_be_repeated() -> None:
    (bridge,) = config_from_args(
        build_parser().parse_args(["server", "-l", "127.0.0.1:5020", "-l", "[::1]:5020"])
    ).bridges
    assert bridge.listen == (Address("127.0.0.1", 5020), Address("::1", 5020))
    assert bridge.name == "127.0.0.1:5020"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        pytest.param(["-p", "smtp"], "unknown protocol 'smtp'", id="protocol"),
        pytest.param(["-t", "nohost"], "invalid address", id="target-no-port"),
        pytest.param(["-t", ":502"], "host is missing", id="target-no-host"),
        pytest.param(["-t", "host:99999"], "outside 0..65535", id="target-port-range"),
        pytest.param(["-l", "eighty"], "invalid", id="listen"),
        pytest.param(["--timeout", "soon"], "invalid duration", id="duration"),
        pytest.param(["--timeout", "-1"], "invalid duration", id="negative-duration"),
        pytest.param(["--timeout", "0"], "--timeout must be positive", id="zero-timeout"),
        pytest.param(["--queue-size", "-3"], "below the minimum", id="negative-size"),
        pytest.param(["--max-connections", "0"], "below the minimum", id="zero-conns"),
        pytest.param(["--max-inflight", "x"], "not a whole number", id="inflight-word"),
        pytest.param(["--no-such-flag"], "unrecognized arguments", id="unknown-flag"),
        pytest.param(["--cache-ttl", "1s"], "is a modbus option", id="other-protocols-option"),
        pytest.param(["-l", "5020", "-l", "5020"], "given twice", id="listen-twice"),
        pytest.param(
            ["-p", "modbus", "--poll", "1:holding:0:10:1s"],
            "--poll 1:holding:0:10:1s fills the register image, which needs --cache-ttl",
            id="poll-without-image",
        ),
        pytest.param(
            ["-p", "modbus", "--cache-ttl", "2s", "--poll", "1:holding:0:10:2s"],
            "--poll 1:holding:0:10:2s: every 2s is not shorter than cache-ttl 2s",
            id="poll-too-slow",
        ),
        pytest.param(
            ["-p", "modbus", "--cache-ttl", "2s", "--poll", "1:registers:0:10:1s"],
            "table 'registers' is not one of coils, discrete, holding, input",
            id="poll-table",
        ),
        pytest.param(
            ["-p", "modbus", "--read-only=maybe"], "expected true, false, 'deny'", id="read-only"
        ),
        pytest.param(
            ["-p", "modbus", "--poll-max-registers", "200"],
            "--poll-max-registers 200 is outside 1..125",
            id="poll-max-registers",
        ),
        pytest.param(
            ["-l", "5020", "-l", "127.0.0.1:5020"],
            "port 5020 (:5020 and 127.0.0.1:5020) is given twice",
            id="listen-twice-spelled-apart",
        ),
        pytest.param(
            ["--profile", "huawei-sdongle", "-p", "http"],
            "--profile huawei-sdongle is a profile for modbus devices; this bridge's protocol "
            "is http",
            id="profile-of-another-protocol",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(argv: list[str], needle: str) -> None:
    result = run_cli("server", *argv)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]
    assert result.stdout == ""


def test_no_command_prints_the_commands_and_where_to_start() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert result.stderr == ""
    for command in ("server", "check-config", "health", "capture", "profiles", "demo"):
        assert f"    {command} " in result.stdout, command
    assert "tcp-multiplexer demo" in result.stdout
    assert "tcp-multiplexer COMMAND --help" in result.stdout


def test_dash_dash_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.strip() == f"tcp-multiplexer {__version__}"


def test_profiles_print_every_setting_whole(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert all(len(line) <= 88 for line in lines if line.startswith(" ")), "wrapped"
    settings = " ".join(line.strip().removeprefix("sets:").strip() for line in lines if line)
    for key, value in PROFILES["huawei-sdongle"].settings.items():
        assert f"{key} = {value}" in settings, key
    assert not any(line.rstrip().endswith("-") for line in lines), "a word cut at its hyphen"


def test_list_prints_one_protocol_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    assert capsys.readouterr().out.splitlines() == ["echo", "http", "iso8583", "modbus", "mpu"]


def test_version_names_the_commit_of_a_checkout(capsys: pytest.CaptureFixture[str]) -> None:
    import subprocess

    assert main(["version"]) == 0
    shown = capsys.readouterr().out.strip()
    head = subprocess.run(  # noqa: S603 - git, about this checkout
        ["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if head:  # a checkout (CI's clone is one); the wheel's case is in .ci/release-check
        assert shown == f"tcp-multiplexer {__version__} (commit {head})"
    else:
        assert shown == f"tcp-multiplexer {__version__}"


@pytest.mark.parametrize("command", ["server", "example-server", "demo"])
def test_help_explains_every_option(command: str) -> None:
    parser = build_parser()
    subcommands = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    subparser = subcommands.choices[command]
    for action in subparser._actions:
        assert action.help, f"{command} {action.option_strings or action.dest} has no help"
    result = run_cli(command, "--help")
    assert result.returncode == 0
    for action in subparser._actions:
        for option in action.option_strings:
            assert option in result.stdout


def test_python_dash_m_matches_the_script() -> None:
    result = run_cli("list")
    assert result.returncode == 0
    assert result.stdout.split() == ["echo", "http", "iso8583", "modbus", "mpu"]
