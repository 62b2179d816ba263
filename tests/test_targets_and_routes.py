"""Target URLs, routes by unit id, unit maps and device profiles, as the command line
and config files read them: what they mean, and one clear line for every mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcp_multiplexer.config.build import build_bridge
from tcp_multiplexer.config.file import ConfigFileError, parse_config
from tcp_multiplexer.config.render import render_config
from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.options import Address
from tcp_multiplexer.profiles import PROFILES, describe_profiles
from tcp_multiplexer.protocols.modbus.options import ModbusOptions
from tcp_multiplexer.target import RTU_TCP, SERIAL, Target, parse_target_url
from tests.helpers import run_cli


def test_a_plain_address_and_tcp_urls_are_modbus_tcp() -> None:
    assert parse_target_url("10.0.0.5:502") == Target.tcp(Address("10.0.0.5", 502))
    assert parse_target_url("tcp://10.0.0.5:502") == Target.tcp(Address("10.0.0.5", 502))
    converter = parse_target_url("rtu+tcp://[::1]:8899")
    assert (converter.scheme, converter.address, converter.framing) == (
        RTU_TCP,
        Address("::1", 8899),
        "rtu",
    )
    assert str(converter) == "rtu+tcp://[::1]:8899"


def test_a_serial_url_defaults_to_9600_8e1() -> None:
    line = parse_target_url("serial:///dev/ttyUSB0")
    assert (line.scheme, line.device, line.baudrate, line.parity, line.stopbits) == (
        SERIAL,
        "/dev/ttyUSB0",
        9600,
        "E",
        1,
    )
    assert line.bits_per_character == 11
    assert line.silence == pytest.approx(3.5 * 11 / 9600)
    fast = parse_target_url("serial:///dev/ttyAMA0?baudrate=115200&parity=N&stopbits=2")
    assert fast.silence == 0.00175, "fixed above 19200 baud"
    assert parse_target_url(str(fast)) == fast
    echoing = parse_target_url("serial:///dev/ttyUSB0?local-echo=1&rs485=1")
    assert (echoing.local_echo, echoing.rs485, echoing.rts_level_for_tx) == (True, True, True)
    assert parse_target_url(str(echoing)) == echoing


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ftp://host:21", "unknown scheme 'ftp'"),
        ("serial://", "name the serial port"),
        ("serial:///dev/ttyUSB0?baud=9600", "unknown serial setting 'baud'"),
        ("serial:///dev/ttyUSB0?baudrate=fast", "are numbers"),
        ("serial:///dev/ttyUSB0?baudrate=100", "outside 300..4000000"),
        ("serial:///dev/ttyUSB0?parity=X", "parity is N, E or O"),
        ("serial:///dev/ttyUSB0?stopbits=3", "stopbits is 1 or 2"),
        ("serial:///dev/ttyUSB0?bytesize=7", "8 data bits"),
        ("rtu+tcp://host", "expected HOST:PORT"),
        ("serial:///dev/ttyUSB0?local-echo=2", "local-echo is 1 or 0"),
        ("serial:///dev/ttyUSB0?rts-delay-before-tx=2", "go with rs485=1"),
        ("serial:///dev/ttyUSB0?rs485=1&rts-delay-after-tx=-1", "milliseconds, 0..1000"),
    ],
)
def test_a_bad_target_url_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        parse_target_url(text)
    assert message in str(caught.value)


def modbus(**values: object) -> ModbusOptions:
    options = build_bridge({"protocol": "modbus", **values}).protocol_options
    assert isinstance(options, ModbusOptions)
    return options


def test_routes_and_unit_maps_from_the_command_line() -> None:
    bridge = build_bridge(
        {
            "protocol": "modbus",
            "route": ["2-3=serial:///dev/ttyUSB0?parity=N", "7=rtu+tcp://10.0.0.9:8899"],
            "unit_map": ["2=1", "7=1"],
        }
    )
    assert bridge.target is None, "with routes and no --target, only routed units go out"
    plans = bridge.targets()
    assert [str(plan.target) for plan in plans] == [
        "serial:///dev/ttyUSB0?baudrate=9600&parity=N&stopbits=1&bytesize=8",
        "rtu+tcp://10.0.0.9:8899",
    ]
    assert plans[0].keys == frozenset({2, 3})
    assert dict(plans[0].key_map) == {2: 1}
    assert dict(plans[1].key_map) == {7: 1}, "each target its own part of the map"


def test_a_default_target_serves_every_unit_without_a_route() -> None:
    bridge = build_bridge(
        {"protocol": "modbus", "target": "10.0.0.5:502", "route": ["9=10.0.0.6:502"]}
    )
    default, meter = bridge.targets()
    assert (default.keys, meter.keys) == (None, frozenset({9}))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"route": ["1=10.0.0.5:502", "1=10.0.0.6:502"]}, "--route unit 1 is routed twice"),
        ({"route": ["x=10.0.0.5:502"]}, "'x' is not a unit id"),
        ({"route": ["300=10.0.0.5:502"]}, "outside 0..255"),
        ({"route": ["1"]}, "a route is UNITS=TARGET"),
        ({"unit_map": ["1=3", "2=3"]}, "--unit-map two client units reach one device unit"),
        ({"unit_map": ["1=3", "1=4"]}, "client unit 1 is mapped twice"),
        ({"unit_map": ["1:3"]}, "CLIENT=DEVICE"),
        ({"route": ["1=ftp://a:1"]}, "unknown scheme"),
    ],
)
def test_a_bad_route_or_map_is_one_clear_error(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_bridge({"protocol": "modbus", **values})
    assert message in caught.value.as_flag()


def test_rtu_and_serial_targets_are_modbus_only() -> None:
    with pytest.raises(ConfigError, match="for the modbus protocol"):
        build_bridge({"protocol": "http", "target": "rtu+tcp://10.0.0.5:502"})


SITE = """
[[bridge]]
name = "site"
protocol = "modbus"
listen = 5020
target = "192.0.2.22:502"
profile = "huawei-sdongle"
unit-map = ["0=1"]

[[bridge.route]]
units = 3
target = "rtu+tcp://192.0.2.40:8899"

[[bridge.route]]
units = "10-11"
target = "serial:///dev/ttyUSB0?parity=N"
profile = "rs485-meter"
unit-map = ["11=1"]
timeout = "800ms"
"""


def test_routes_in_a_file_with_profiles_and_check_config_reads_back() -> None:
    config = parse_config(SITE, "site.toml")
    (bridge,) = config.bridges
    assert (bridge.delay, bridge.request_gap, bridge.timeout) == (2.0, 0.05, 5.0), (
        "the bridge's profile"
    )
    default, converter, meters = bridge.targets()
    assert dict(default.key_map) == {0: 1}
    assert converter.settings == {}
    assert meters.settings == {"timeout": 0.8, "request_gap": 0.02}, (
        "the route's own timeout wins over its profile's 1 s"
    )
    assert dict(meters.key_map) == {11: 1}
    assert parse_config(render_config(config), "site.toml") == config


def test_explicit_options_win_over_a_profile() -> None:
    bridge = build_bridge({"profile": "solaredge", "timeout": "3s", "target": "10.0.0.5:1502"})
    assert bridge.protocol == "modbus", "the profile says modbus"
    assert (bridge.timeout, bridge.max_idle, bridge.max_connections) == (3.0, 300.0, 1)


def test_an_unknown_profile_lists_the_real_ones() -> None:
    with pytest.raises(ConfigFileError, match=r"no profile 'huawai'.*huawei-sdongle"):
        parse_config(SITE.replace("huawei-sdongle", "huawai"), "site.toml")


def test_every_profile_sets_valid_options_and_is_described() -> None:
    text = describe_profiles()
    for name, profile in PROFILES.items():
        build_bridge({"profile": name, "target": "10.0.0.5:502"})
        assert f"{name}: {profile.device}" in text


def test_the_profiles_command_and_bad_targets_on_the_command_line() -> None:
    listed = run_cli("profiles")
    assert listed.returncode == 0
    assert "huawei-sdongle:" in listed.stdout
    for argv, message in (
        (["-t", "serial:///dev/ttyUSB0?parity=Q"], "parity is N, E or O"),
        (["--route", "1=10.0.0.1:502", "--route", "1=10.0.0.2:502"], "routed twice"),
        (["--unit-map", "1=2", "--unit-map", "3=2"], "one-to-one"),
    ):
        result = run_cli("server", "-p", "modbus", *argv)
        assert result.returncode == 2
        (line,) = result.stderr.splitlines()
        assert message in line


def test_a_serial_port_that_does_not_exist_is_a_target_that_is_down(tmp_path: Path) -> None:
    """Valid config: the port is opened when the server runs (an adapter may come later)."""
    bridge = build_bridge({"protocol": "modbus", "target": f"serial://{tmp_path}/ttyNONE"})
    assert bridge.target is not None
    assert bridge.target.is_serial


def test_a_serial_target_without_the_serial_extra_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tcp_multiplexer.config import build

    monkeypatch.setattr(build, "serial_available", lambda: False)
    with pytest.raises(ConfigError, match=r"pip install 'tcp-multiplexer\[serial\]'"):
        build_bridge({"protocol": "modbus", "target": "serial:///dev/ttyUSB0"})
