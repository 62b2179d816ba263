"""Durations, addresses and config validation."""

from __future__ import annotations

import pytest

from tcp_multiplexer.config.model import AppConfig, BridgeConfig
from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.options import (
    Address,
    format_duration,
    parse_duration,
    parse_listen,
    parse_target,
)
from tcp_multiplexer.protocols.modbus.options import ModbusOptions


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("0", 0.0, id="zero"),
        pytest.param("60", 60.0, id="int"),
        pytest.param("0.25", 0.25, id="fraction"),
        pytest.param(".5", 0.5, id="leading-dot"),
        pytest.param("500ms", 0.5, id="ms"),
        pytest.param("1s", 1.0, id="s"),
        pytest.param("1m30s", 90.0, id="m-s"),
        pytest.param("1h", 3600.0, id="h"),
        pytest.param("1.5s", 1.5, id="frac-s"),
        pytest.param("250us", 0.00025, id="us"),
        pytest.param("2h45m", 9900.0, id="h-m"),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_durations_are_the_nearest_float_so_they_read_back_exactly() -> None:
    for text, seconds in (("200us", 0.0002), ("1.1ms", 0.0011), ("300ms", 0.3)):
        assert parse_duration(text) == seconds
        assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "s", "1x", "-1s", "1s2", "1 s", "ms", "+1"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid duration"):
        parse_duration(text)


def test_addresses() -> None:
    assert parse_target("example.org:502") == Address("example.org", 502)
    assert parse_target("[fe80::1]:502") == Address("fe80::1", 502)
    assert str(Address("::1", 80)) == "[::1]:80"
    assert parse_listen("8000") == Address("", 8000)
    assert parse_listen("0.0.0.0:8000") == Address("0.0.0.0", 8000)


@pytest.mark.parametrize(
    "text", ["502", "host:", "host:0", "host:-1", "fe80::1:502", "[::1]502", "h:1:2"]
)
def test_bad_targets(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_target(text)


@pytest.mark.parametrize(
    "fields",
    [
        {"timeout": 0.0},
        {"connect_timeout": -1.0},
        {"delay": -0.1},
        {"max_connections": 0},
        {"queue_size": 0},
        {"max_inflight": 0},
        {"max_inflight": 5000},
        {"request_gap": -1.0},
    ],
)
def test_config_rejects_bad_values(fields: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        BridgeConfig(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("fields", [{"busy_poll": -1.0}, {"metrics_interval": -1.0}])
def test_process_config_rejects_bad_values(fields: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        AppConfig(**fields)  # type: ignore[arg-type]


def test_negative_cache_ttl_is_rejected() -> None:
    with pytest.raises(ConfigError):
        ModbusOptions(cache_ttl=-1.0)


def test_a_bridge_is_named_after_its_first_listen_address() -> None:
    config = BridgeConfig(listen=(Address("127.0.0.1", 5020), Address("", 5021)))
    assert config.name == "127.0.0.1:5020"
    assert BridgeConfig(name="inverter").name == "inverter"


def test_protocol_options_must_be_the_protocols_own() -> None:
    assert BridgeConfig(protocol="modbus").protocol_options == ModbusOptions()
    with pytest.raises(ConfigError, match="are not echo options"):
        BridgeConfig(protocol="echo", protocol_options=ModbusOptions())


def test_bridges_need_distinct_names_and_addresses() -> None:
    one = BridgeConfig(name="a", listen=(Address("", 5020),))
    with pytest.raises(ConfigError, match="two bridges are named 'a'"):
        AppConfig(bridges=(one, BridgeConfig(name="a", listen=(Address("", 5021),))))
    with pytest.raises(ConfigError, match="both listen on :5020"):
        AppConfig(bridges=(one, BridgeConfig(name="b", listen=(Address("", 5020),))))
