"""Named values: point tables read and checked, values decoded from registers and
scaled, map files with their errors named by file, line and point."""

from __future__ import annotations

import struct
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.protocols.modbus.options import ModbusOptions
from tcp_multiplexer.protocols.modbus.points import (
    Point,
    check_points,
    load_map,
    parse_point,
    points_toml,
)


def point(**table: object) -> Point:
    return parse_point({"name": "value", "address": 0, **table})


def words(fmt: str, value: object) -> bytes:
    return struct.pack(fmt, value)


@pytest.mark.parametrize(
    ("kind", "fmt", "value"),
    [
        ("u16", ">H", 65000),
        ("i16", ">h", -1234),
        ("u32", ">I", 4_000_000_000),
        ("i32", ">i", -2_000_000_000),
        ("u64", ">Q", 2**63 + 5),
        ("i64", ">q", -(2**62)),
        ("f32", ">f", 1.5),
        ("f64", ">d", -2.25),
    ],
)
def test_every_numeric_type_decodes_big_endian_first_register_first(
    kind: str, fmt: str, value: float
) -> None:
    assert point(type=kind).raw(words(fmt, value)) == value


def test_little_word_order_takes_the_last_register_first() -> None:
    data = words(">I", 0x00010002)
    swapped = data[2:] + data[:2]
    assert point(type="u32", **{"word-order": "little"}).raw(swapped) == 0x00010002


@given(st.integers(-(2**31), 2**31 - 1))
def test_i32_round_trips_in_either_word_order(value: int) -> None:
    data = words(">i", value)
    assert point(type="i32").raw(data) == value
    assert point(type="i32", **{"word-order": "little"}).raw(data[2:] + data[:2]) == value


def test_not_implemented_and_nan_are_no_value() -> None:
    assert point(type="i16", **{"not-implemented": -32768}).raw(words(">h", -32768)) is None
    assert point(type="u32", **{"not-implemented": 0xFFFFFFFF}).raw(b"\xff" * 4) is None
    assert point(type="f32").raw(words(">f", float("nan"))) is None
    assert point(type="i16").raw(words(">h", -32768)) == -32768, "only where declared"


def test_strings_bools_and_bits() -> None:
    text = point(type="string", length=4)
    assert text.raw(b"SE7600H\x00") == "SE7600H"
    assert text.raw(b"\x00" * 8) is None, "an empty string is no value"
    assert point(type="bool").raw(b"\x00\x02") is True
    assert point(table="coils").raw(b"\x01") is True
    assert point(table="discrete").raw(b"\x00") is False


def test_a_number_scale_and_a_scale_factor_point() -> None:
    assert point(type="u16", scale=0.1).scaled(12345, None) == 1234.5
    assert point(type="i16", scale=2).scaled(-3, None) == -6
    factor = point(type="i16", scale="value_sf")
    assert factor.scaled(12345, -2) == 123.45
    assert factor.scaled(12, 2) == 1200
    assert factor.scaled(12, None) is None, "no scale factor: no value"
    assert factor.scaled(12, 300) is None, "outside SunSpec's -10..10"
    assert factor.scaled(None, -1) is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"name": "Bad Name", "address": 1}, "must be a slug"),
        ({"name": "x", "address": 1, "type": "u17"}, "type 'u17' is not one of"),
        ({"name": "x", "address": 1, "table": "coils", "type": "u16"}, "is a bool"),
        ({"name": "x", "address": 1, "type": "string"}, "needs its length"),
        ({"name": "x", "address": 1, "length": 2}, "length is for strings"),
        ({"name": "x", "address": 65535, "type": "u32"}, "past address 65535"),
        ({"name": "x", "address": 1, "table": "input", "writable": True}, "only holding"),
        ({"name": "x", "address": 1, "min": 0}, "min and max are for writable points"),
        ({"name": "x", "address": 1, "writable": True, "min": 5, "max": 1}, "above max"),
        ({"name": "x", "address": 1, "colour": "red"}, "unknown key 'colour'"),
        ({"name": "x"}, "needs a name and an address"),
        ({"name": "x", "address": 1, "every": "soon"}, "invalid duration"),
    ],
)
def test_a_bad_point_is_named_in_its_error(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_point(table)
    if "name" in table and isinstance(table["name"], str):
        assert f"point {table['name']!r}" in caught.value.message


def test_names_are_unique_and_scale_factors_must_exist_and_be_i16() -> None:
    with pytest.raises(ConfigError, match="'a' is declared twice"):
        check_points([point(name="a"), point(name="a", address=1)])
    with pytest.raises(ConfigError, match="scale 'a_sf' is no point"):
        check_points([point(name="a", type="i16", scale="a_sf")])
    with pytest.raises(ConfigError, match="must be an i16"):
        check_points([point(name="a", scale="b"), point(name="b", type="u32", address=1)])


def test_points_need_the_image_and_come_round_within_its_ttl() -> None:
    with pytest.raises(ConfigError, match="point 'value' fills the register image"):
        ModbusOptions(point=(point(every="1s"),))
    with pytest.raises(ConfigError, match="point 'value': every 5s is not shorter"):
        ModbusOptions(cache_ttl=5.0, point=(point(),))
    assert ModbusOptions(cache_ttl=10.0, point=(point(),)).points == (point(),)


def test_points_render_as_toml_that_reads_back_the_same() -> None:
    points = (
        point(name="a", type="i32", scale=0.01, **{"word-order": "little"}),
        point(name="b", type="string", length=8, address=10),
        point(name="c", writable=True, min=0, max=100, **{"unit-of-measurement": "A"}),
        point(name="d", type="i16", **{"not-implemented": -32768, "device-class": "power"}),
    )
    document = tomllib.loads("points = " + points_toml(points))
    assert tuple(parse_point(table) for table in document["points"]) == points


MAP = """\
# an inverter's map
[[point]]
name = "ac_power"
address = 40083
type = "i16"
scale = "ac_power_sf"

[[point]]
name = "ac_power_sf"
address = 40084
type = "i16"

[[point]]
name = "energy"
address = 40093
type = "u33"
"""


def test_a_map_file_error_names_the_file_the_line_and_the_point(tmp_path: Path) -> None:
    path = tmp_path / "inverter.toml"
    path.write_text(MAP)
    with pytest.raises(ConfigError) as caught:
        load_map(str(path))
    assert caught.value.message.startswith(f"{path} line 13: point 'energy': type 'u33'")
    path.write_text(MAP.replace("u33", "u32"))
    assert [point.name for point in load_map(str(path)).points] == [
        "ac_power",
        "ac_power_sf",
        "energy",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[point]\nname=1", "not valid TOML"),
        ("[inverter]\n", "unknown table or key 'inverter'"),
        ("point = 3\n", r"write points as \[\[point\]\] tables"),
    ],
)
def test_a_map_that_is_not_a_map_is_one_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "map.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_map(str(path))
    with pytest.raises(ConfigError, match="cannot read it"):
        load_map(str(tmp_path / "missing.toml"))
