"""The SunSpec walk, layout and points without I/O: a register map in memory, models
encoded by pysunspec2 (or by hand where it cannot: model 160's repeating modules)."""

from __future__ import annotations

import struct
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.protocols.modbus.points import check_points
from tcp_multiplexer.protocols.modbus.sunspec import (
    Model,
    ScanWalk,
    SunSpecDevice,
    layout,
    model_points,
    units_toml,
    units_value,
)
from tests.sunspec_device import COMMON, INVERTER, METER, model_registers

MODELS = {1: COMMON, 103: INVERTER, 203: METER, 101: {}, 160: {}, 802: {}, 124: {}}


def memory(base: int, chain: bytes, refuse_past_end: bool = False) -> dict[int, int]:
    data = b"SunS" + chain
    if not refuse_past_end:
        data += struct.pack(">HH", 0xFFFF, 0)
    words = struct.unpack(f">{len(data) // 2}H", data)
    return {base + index: word for index, word in enumerate(words)}


def walk(registers: dict[int, int], unit: int = 1) -> tuple[ScanWalk, int]:
    """Run a walk against `registers` (a read of any missing register is refused)."""
    scan = ScanWalk(unit)
    reads = 0
    while (read := scan.next_read()) is not None:
        reads += 1
        address, count = read
        assert 1 <= count <= 125
        wanted = range(address, address + count)
        if all(a in registers for a in wanted):
            scan.answered(b"".join(struct.pack(">H", registers[a]) for a in wanted))
        else:
            scan.refused()
        assert reads < 1000
    return scan, reads


@settings(max_examples=40, deadline=None)
@given(
    base=st.sampled_from([40000, 0, 50000]),
    ids=st.lists(st.sampled_from(sorted(MODELS)), min_size=1, max_size=6),
    refuse_past_end=st.booleans(),
)
def test_the_walk_finds_every_model_where_it_sits(
    base: int, ids: list[int], refuse_past_end: bool
) -> None:
    chain = b"".join(model_registers(model_id, MODELS[model_id]) for model_id in ids)
    scan, _reads = walk(memory(base, chain, refuse_past_end))
    assert scan.device is not None, scan.error
    assert scan.device.base == base
    assert [model.id for model in scan.device.models] == ids
    address = base + 2
    for model, model_id in zip(scan.device.models, ids, strict=True):
        encoded = model_registers(model_id, MODELS[model_id])
        assert model.address == address
        assert model.data == encoded[4:]
        address += len(encoded) // 2


def test_no_marker_anywhere_is_an_error_and_no_device() -> None:
    scan, reads = walk({40000: 1, 40001: 2, 0: 0, 1: 0})
    assert scan.device is None
    assert scan.error == "no SunSpec marker ('SunS') at 40000, 0 or 50000"
    assert reads == 3


def test_a_read_without_answer_ends_the_walk_with_nothing() -> None:
    scan = ScanWalk(1)
    assert scan.next_read() == (40000, 2)
    scan.answered(b"SunS")
    assert scan.next_read() == (40002, 2)
    scan.failed("no answer")
    assert scan.next_read() is None
    assert scan.device is None
    assert scan.error == "no answer"


def test_a_long_model_is_read_in_pieces_of_125() -> None:
    long_model = struct.pack(">HH", 64001, 300) + bytes(600)
    scan, _ = walk(memory(40000, long_model))
    assert scan.device is not None
    (model,) = scan.device.models
    assert model.length == 300


def test_repeating_groups_are_laid_out_as_many_times_as_the_device_says() -> None:
    # Model 160: four scale factors, Evt (2), N, TmsPer; then N modules of 20 registers.
    top = struct.pack(">hhhhIHH", -2, -1, 0, 0, 0, 2, 0xFFFF)
    modules = b""
    for index, watts in ((1, 1500), (2, 1700)):
        modules += struct.pack(">H", index) + f"PV{index}".encode().ljust(16, b"\0")
        modules += struct.pack(">HHHIIhHI", 250, 3500, watts, 10_000 * index, 7, 40, 4, 0)
    model = Model(160, 40100, top + modules)
    device = SunSpecDevice(1, 40000, (model,))
    points = {point.name: point for point in model_points(device, 5.0)}
    assert points["m160_module2_dcw"].address == 40102 + 8 + 20 + 11
    assert points["m160_module2_dcw"].scale == "m160_dcw_sf"
    assert points["m160_module1_dca"].scale == "m160_dca_sf"
    check_points(list(points.values()))
    entries = {entry.key: entry for entry in layout(model)}
    assert entries["module2_DCW"].value(model, entries) == 1700
    assert entries["module1_DCA"].value(model, entries) == 2.5
    assert entries["module1_DCV"].value(model, entries) == 350.0
    assert entries["module2_IDStr"].value(model, entries) == "PV2"
    assert entries["TmsPer"].value(model, entries) is None  # 0xFFFF: not implemented
    assert "module3_DCW" not in entries


def test_points_carry_sunspecs_not_implemented_value_per_type() -> None:
    model = Model(103, 40070, model_registers(103, INVERTER)[4:])
    device = SunSpecDevice(1, 40000, (model,))
    points = {point.name: point for point in model_points(device, 5.0)}
    assert points["m103_w"].not_implemented == -0x8000
    assert points["m103_a"].not_implemented == 0xFFFF
    assert points["m103_wh"].not_implemented == 0  # acc32: 0 is "not accumulated"
    assert points["m103_evt1"].not_implemented == 0xFFFFFFFF
    assert points["m103_w_sf"].type == "i16"
    assert points["m103_st"].state_class is None  # an enum: no measurement
    # Each decodes its own registers as the entry does.
    data = model.data
    for name, value in (("m103_a", 123), ("m103_aphc", None), ("m103_w_sf", 0)):
        point = points[name]
        offset = point.address - model.start
        assert point.raw(data[offset * 2 : (offset + point.count) * 2]) == value


def test_a_second_model_of_an_id_and_another_unit_get_names_of_their_own() -> None:
    meter = model_registers(203, METER)[4:]
    device = SunSpecDevice(240, 40000, (Model(203, 40002, meter), Model(203, 40109, meter)))
    names = {point.name for point in model_points(device, 5.0, prefix="u240_")}
    assert {"u240_m203_w", "u240_m203_2_w"} <= names
    assert all(len(name) <= 64 for name in names)


def test_only_published_models_become_points() -> None:
    device = SunSpecDevice(1, 0, (Model(11, 2, bytes(26)), Model(1, 30, bytes(132))))
    assert {point.name.split("_")[0] for point in model_points(device, 5.0)} == {"m1"}


@pytest.mark.parametrize(
    ("given_value", "units"),
    [(True, (1,)), (False, ()), (126, (126,)), ([1, 240], (1, 240)), ("1,240", (1, 240))],
)
def test_the_sunspec_option_takes_true_a_unit_or_several(
    given_value: object, units: tuple[int, ...]
) -> None:
    assert units_value(given_value) == units
    assert units_value(tomllib.loads(f"sunspec = {units_toml(units)}")["sunspec"]) == units


@pytest.mark.parametrize("bad", [0, 248, "x", [1, "y"], 1.5])
def test_a_bad_sunspec_unit_is_refused(bad: object) -> None:
    with pytest.raises(ConfigError):
        units_value(bad)
