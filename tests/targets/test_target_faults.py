"""Fault injection: each fault does what it says, at its fraction, reproducibly."""

from __future__ import annotations

import asyncio
import struct
import time

import pytest

from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.protocols.modbus.device import WRONG_ID_OFFSET
from tcp_multiplexer.protocols.modbus.mbap import build_adu, transaction_id
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets import (
    Fault,
    FaultPlan,
    ModbusDevice,
    TargetConfig,
    TargetServer,
    holding_register_value,
    parse_fault,
)
from tests.helpers import open_client
from tests.modbus.adu import read_adu
from tests.targets.helpers import TEST_TIMEOUT, read_registers_request, read_to_end


def _expected_faults(
    faults: tuple[tuple[Fault, float], ...], seed: int, count: int
) -> list[Fault | None]:
    plan = FaultPlan(faults, seed)
    return [plan.choose() for _ in range(count)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("no-answer", (Fault.NO_ANSWER, 1.0), id="default-all"),
        pytest.param("late:0.25", (Fault.LATE, 0.25), id="fraction"),
        pytest.param("garbage:5%", (Fault.GARBAGE, 0.05), id="percent"),
        pytest.param(" reset:1 ", (Fault.RESET, 1.0), id="spaces"),
    ],
)
def test_parse_fault(text: str, expected: tuple[Fault, float]) -> None:
    assert parse_fault(text) == expected


@pytest.mark.parametrize("text", ["nope", "late:0", "late:1.5", "late:x", "late:-1%", "late:"])
def test_parse_fault_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_fault(text)


def test_fault_plan_is_reproducible_and_near_its_fractions() -> None:
    faults = ((Fault.NO_ANSWER, 0.2), (Fault.LATE, 0.3))
    first = _expected_faults(faults, 42, 2000)
    assert first == _expected_faults(faults, 42, 2000)
    assert first != _expected_faults(faults, 43, 2000)
    assert 300 < first.count(Fault.NO_ANSWER) < 500
    assert 500 < first.count(Fault.LATE) < 700
    assert FaultPlan(faults, 42).garbage(16) == FaultPlan(faults, 42).garbage(16)


def test_fault_plan_without_faults_never_fires() -> None:
    plan = FaultPlan((), 0)
    assert {plan.choose() for _ in range(100)} == {None}


def test_fault_plan_full_fraction_always_fires() -> None:
    plan = FaultPlan(((Fault.GARBAGE, 1.0),), 3)
    assert {plan.choose() for _ in range(100)} == {Fault.GARBAGE}


async def test_answer_twice_hits_the_drawn_requests() -> None:
    faults = ((Fault.ANSWER_TWICE, 0.3),)
    count = 200
    drawn = _expected_faults(faults, 7, count)
    config = TargetConfig(protocol=ProtocolName.ECHO, faults=faults, seed=7)
    lines = [f"{index}\n".encode() for index in range(count)]
    expected = [
        line for line, fault in zip(lines, drawn, strict=True) for _ in range(2 if fault else 1)
    ]
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(config) as target:
        async with open_client(target.port) as (reader, writer):
            writer.write(b"".join(lines))
            received = [await reader.readline() for _ in expected]
        assert received == expected
        doubled = drawn.count(Fault.ANSWER_TWICE)
        assert 0.2 * count < doubled < 0.4 * count
        assert target.stats.faults[Fault.ANSWER_TWICE] == doubled
        assert target.stats.answers == count


async def test_no_answer_skips_only_the_drawn_requests() -> None:
    faults = ((Fault.NO_ANSWER, 0.25),)
    count = 100
    drawn = _expected_faults(faults, 1, count)
    answered = [index for index, fault in enumerate(drawn) if fault is None]
    config = TargetConfig(protocol=ProtocolName.MODBUS, faults=faults, seed=1)
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(config) as target:
        async with open_client(target.port) as (reader, writer):
            writer.write(b"".join(read_registers_request(index, 1, 0, 1) for index in range(count)))
            tids = [transaction_id(await read_adu(reader)) for _ in answered]
            await target.wait_for(lambda stats: stats.requests == count and stats.in_progress == 0)
        assert tids == answered
        assert target.stats.faults[Fault.NO_ANSWER] == count - len(answered)
        assert target.stats.answers == len(answered)


async def test_wrong_id_changes_only_the_transaction_id() -> None:
    config = TargetConfig(protocol=ProtocolName.MODBUS, faults=((Fault.WRONG_ID, 1.0),))
    request = read_registers_request(5, 9, 100, 1)
    correct = ModbusDevice().answer(request).data
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(config) as target,
        open_client(target.port) as (reader, writer),
    ):
        writer.write(request)
        answer = await read_adu(reader)
    assert transaction_id(answer) == 5 + WRONG_ID_OFFSET
    assert answer[2:] == correct[2:]
    assert answer[9:] == struct.pack(">H", holding_register_value(9, 100))


async def test_garbage_is_the_seeded_random_bytes() -> None:
    faults = ((Fault.GARBAGE, 1.0),)
    config = TargetConfig(protocol=ProtocolName.MODBUS, faults=faults, seed=11)
    request = read_registers_request(1, 1, 0, 3)
    size = len(ModbusDevice().answer(request).data)
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(config) as target:
        async with open_client(target.port) as (reader, writer):
            writer.write(request)
            received = await reader.readexactly(size)
        assert target.stats.faults[Fault.GARBAGE] == 1
        assert target.stats.answers == 0
    assert received == FaultPlan(faults, 11).garbage(size)


async def test_half_answer_close_sends_half_then_fin() -> None:
    config = TargetConfig(protocol=ProtocolName.ECHO, faults=((Fault.HALF_ANSWER_CLOSE, 1.0),))
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(config) as target:
        async with open_client(target.port) as (reader, writer):
            writer.write(b"hello world\nnever answered\n")
            received, reset = await read_to_end(reader)
        assert (received, reset) == (b"hello ", False)
        assert target.stats.faults[Fault.HALF_ANSWER_CLOSE] == 1
        await target.wait_for(lambda stats: stats.in_progress == 0 and stats.open_connections == 0)


async def test_reset_sends_part_then_rst() -> None:
    config = TargetConfig(protocol=ProtocolName.MODBUS, faults=((Fault.RESET, 1.0),))
    request = build_adu(3, 1, struct.pack(">BHH", 3, 0, 10))
    correct = ModbusDevice().answer(request).data
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(config) as target:
        async with open_client(target.port) as (reader, writer):
            writer.write(request)
            received, reset = await read_to_end(reader)
        assert reset
        assert correct.startswith(received)
        assert target.stats.faults[Fault.RESET] == 1


async def test_late_answers_after_late_delay_and_keeps_order() -> None:
    faults = ((Fault.LATE, 0.5),)
    drawn = _expected_faults(faults, 3, 6)
    late_delay = 0.1
    config = TargetConfig(protocol=ProtocolName.ECHO, faults=faults, seed=3, late_delay=late_delay)
    lines = [f"{index}\n".encode() for index in range(6)]
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(config) as target:
        async with open_client(target.port) as (reader, writer):
            started = time.monotonic()
            writer.write(b"".join(lines))
            received = [await reader.readline() for _ in lines]
            elapsed = time.monotonic() - started
        assert received == lines
        late = drawn.count(Fault.LATE)
        assert drawn[0] is Fault.LATE  # so the answers after it had to wait
        assert elapsed >= late * late_delay
        assert target.stats.faults[Fault.LATE] == late
        assert target.stats.answers == len(lines)


async def test_late_request_counts_as_in_progress() -> None:
    config = TargetConfig(protocol=ProtocolName.ECHO, faults=((Fault.LATE, 1.0),), late_delay=0.2)
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(config) as target:
        async with open_client(target.port) as (reader, writer):
            writer.write(b"slow\n")
            await target.wait_for(lambda stats: stats.requests == 1)
            assert (target.stats.in_progress, target.stats.answers) == (1, 0)
            assert await reader.readline() == b"slow\n"
        assert target.stats.in_progress == 0


async def test_faults_apply_to_http() -> None:
    config = TargetConfig(protocol=ProtocolName.HTTP, faults=((Fault.HALF_ANSWER_CLOSE, 1.0),))
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(config) as target,
        open_client(target.port) as (reader, writer),
    ):
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        received, _reset = await read_to_end(reader)
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\n\r\nGET /\n" not in received


@pytest.mark.parametrize(
    "protocol", [ProtocolName.ECHO, ProtocolName.HTTP, ProtocolName.ISO8583, ProtocolName.MPU]
)
def test_wrong_id_is_modbus_only(protocol: ProtocolName) -> None:
    with pytest.raises(ConfigError, match="modbus only"):
        TargetConfig(protocol=protocol, faults=((Fault.WRONG_ID, 0.5),))


@pytest.mark.parametrize(
    "faults",
    [
        pytest.param(((Fault.LATE, 0.6), (Fault.RESET, 0.5)), id="sum-above-1"),
        pytest.param(((Fault.LATE, 0.1), (Fault.LATE, 0.1)), id="duplicate"),
        pytest.param(((Fault.LATE, 0.0),), id="zero"),
    ],
)
def test_bad_fault_lists(faults: tuple[tuple[Fault, float], ...]) -> None:
    with pytest.raises(ConfigError):
        TargetConfig(faults=faults)


def test_thirds_add_up_to_one() -> None:
    third = 1 / 3
    TargetConfig(faults=((Fault.LATE, third), (Fault.RESET, third), (Fault.GARBAGE, third)))
