"""Publishing without a broker: the [mqtt] settings, topics, discovery components, state
payloads, and a point's value written back into its registers."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcp_multiplexer.config.file import load_config
from tcp_multiplexer.config.render import render_config
from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.protocols.modbus.points import Point
from tcp_multiplexer.protocols.modbus.polling import write_request
from tcp_multiplexer.protocols.spec import PointInfo
from tcp_multiplexer.publishing.discovery import Topics, component, state_text
from tcp_multiplexer.publishing.settings import MqttSettings, mqtt_url_value, topic_value


@pytest.mark.parametrize(
    ("given_url", "url"),
    [
        ("mqtt://broker", "mqtt://broker:1883"),
        ("mqtts://broker", "mqtts://broker:8883"),
        ("broker:1884", "mqtt://broker:1884"),
        ("mqtt://[::1]:1883", "mqtt://[::1]:1883"),
    ],
)
def test_a_broker_url_gets_its_default_port(given_url: str, url: str) -> None:
    assert mqtt_url_value(given_url) == url
    settings = MqttSettings(url)
    assert settings.port == int(url.rsplit(":", 1)[1])
    assert settings.tls is url.startswith("mqtts")


@pytest.mark.parametrize("bad", ["ws://b", "mqtt://u:p@b", "mqtt://b:0x", "mqtt://b/x", "", 5])
def test_a_bad_broker_url_is_refused(bad: object) -> None:
    with pytest.raises(ConfigError):
        mqtt_url_value(bad)


@pytest.mark.parametrize("bad", ["a/+/b", "#", "a//b", "/", 3])
def test_a_topic_prefix_has_no_wildcards_or_empty_levels(bad: object) -> None:
    with pytest.raises(ConfigError):
        topic_value(bad)


def test_topics_and_commands() -> None:
    topics = Topics(MqttSettings("mqtt://b:1883", base_topic="home/mux"), "PV roof")
    assert topics.state("m103_w") == "home/mux/PV roof/m103_w"
    assert topics.point_of("home/mux/PV roof/m103_w/set") == "m103_w"
    assert topics.point_of("home/mux/other/m103_w/set") is None
    assert topics.point_of("home/mux/PV roof/m103_w") is None
    assert topics.node == "home_mux_pv_roof"


@pytest.mark.parametrize(
    ("kind", "writable", "expected"),
    [
        ("number", False, "sensor"),
        ("text", False, "sensor"),
        ("number", True, "number"),
        ("bool", False, "binary_sensor"),
        ("bool", True, "switch"),
    ],
)
def test_each_point_is_the_component_that_fits(kind: str, writable: bool, expected: str) -> None:
    assert component(PointInfo("p", "P", kind, writable=writable)) == expected


def test_states_are_plain_text_and_unknown_is_none() -> None:
    assert state_text(None) == "None"
    assert state_text(True) == "ON"
    assert state_text(50.01) == "50.01"
    assert state_text("SN1") == "SN1"


@given(
    kind=st.sampled_from(["u16", "i16", "u32", "i32", "u64", "i64"]),
    order=st.sampled_from(["big", "little"]),
    raw=st.integers(-(2**15), 2**15 - 1),
    decimals=st.integers(0, 3),
)
def test_a_value_written_reads_back_as_itself(
    kind: str, order: str, raw: int, decimals: int
) -> None:
    if kind.startswith("u"):
        raw = abs(raw)
    scale = 10.0**-decimals
    point = Point("p", 0, type=kind, word_order=order, scale=scale, writable=True)
    value = point.scaled(raw, None)
    assert value is not None
    assert not isinstance(value, bool | str)
    data = point.encode(value, None)
    assert point.raw(data) == raw


def test_a_scale_factor_point_scales_a_command_back() -> None:
    point = Point("w", 0, type="i16", scale="w_sf", writable=True)
    assert point.encode(1234.5, -1) == struct.pack(">h", 12345)
    with pytest.raises(ValueError, match="not known"):
        point.encode(1.0, None)
    with pytest.raises(ValueError, match="does not fit"):
        Point("x", 0, type="u16", writable=True).encode(70000, None)


def test_write_requests_take_the_function_that_fits() -> None:
    assert write_request(1, "coils", 3, b"\x01")[7:] == bytes.fromhex("050003ff00")
    assert write_request(2, "holding", 100, b"\x01\xa9")[6:] == bytes.fromhex("02060064 01a9")
    many = write_request(1, "holding", 10, b"\x00\x01\x00\x02")
    assert many[7:] == bytes.fromhex("10000a000204 00010002")
    assert struct.unpack(">H", many[4:6])[0] == len(many) - 6


def test_the_mqtt_table_is_read_and_shown_without_the_password(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("hunter2\n")
    config_path = tmp_path / "site.toml"
    config_path.write_text(
        '[mqtt]\nurl = "mqtts://broker"\nusername = "mux"\npassword-file = "secret"\n'
        'base-topic = "home/mux"\ndiscovery = false\n\n[[bridge]]\nname = "pv"\n'
        'protocol = "modbus"\ntarget = "127.0.0.1:502"\nlisten = ["127.0.0.1:5020"]\n'
    )
    config = load_config(str(config_path))
    settings = config.mqtt_settings
    assert settings is not None
    assert settings.url == "mqtts://broker:8883"
    assert settings.password == "hunter2"  # noqa: S105 - the file the test wrote
    assert settings.discovery is False
    assert "hunter2" not in repr(config)
    assert "hunter2" not in repr(settings)
    shown = render_config(config)
    assert "hunter2" not in shown
    assert f'password-file = "{tmp_path / "secret"}"' in shown
    # The command line's --mqtt wins over the file's url.
    overridden = load_config(str(config_path), {"mqtt": "mqtt://other:1999"})
    assert overridden.mqtt == "mqtt://other:1999"


def test_mqtt_settings_without_a_broker_are_an_error(tmp_path: Path) -> None:
    config_path = tmp_path / "site.toml"
    config_path.write_text(
        '[mqtt]\nusername = "mux"\n\n[[bridge]]\nname = "pv"\nprotocol = "modbus"\n'
        'target = "127.0.0.1:502"\nlisten = ["127.0.0.1:5020"]\n'
    )
    with pytest.raises(ConfigError, match="no MQTT broker"):
        load_config(str(config_path))
