"""The Modbus example device: against pymodbus, and byte for byte."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest
from pymodbus.client import AsyncModbusTcpClient

from tcp_multiplexer.protocols.modbus.device import (
    ILLEGAL_DATA_ADDRESS,
    ILLEGAL_DATA_VALUE,
    ILLEGAL_FUNCTION,
    pack_bits,
    unpack_bits,
)
from tcp_multiplexer.protocols.modbus.mbap import build_adu
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets import (
    ModbusDevice,
    TargetConfig,
    TargetServer,
    coil_value,
    discrete_input_value,
    holding_register_value,
    input_register_value,
)
from tests.helpers import open_client
from tests.modbus.adu import read_adu
from tests.targets.helpers import TEST_TIMEOUT, read_registers_request


@pytest.fixture
async def target() -> AsyncIterator[TargetServer]:
    async with TargetServer(TargetConfig(protocol=ProtocolName.MODBUS)) as server:
        yield server


@pytest.fixture
async def client(target: TargetServer) -> AsyncIterator[AsyncModbusTcpClient]:
    modbus = AsyncModbusTcpClient("127.0.0.1", port=target.port, timeout=2, retries=0)
    assert await modbus.connect()
    try:
        yield modbus
    finally:
        modbus.close()


@pytest.mark.parametrize(
    ("unit", "address", "count"), [(1, 0, 10), (7, 40000, 125), (255, 65530, 6)]
)
async def test_pymodbus_reads_registers(
    client: AsyncModbusTcpClient, unit: int, address: int, count: int
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        holding = await client.read_holding_registers(address, count=count, device_id=unit)
        inputs = await client.read_input_registers(address, count=count, device_id=unit)
    addresses = range(address, address + count)
    assert holding.registers == [holding_register_value(unit, item) for item in addresses]
    assert inputs.registers == [input_register_value(unit, item) for item in addresses]


async def test_pymodbus_reads_bits(client: AsyncModbusTcpClient) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        coils = await client.read_coils(5, count=19, device_id=2)
        inputs = await client.read_discrete_inputs(1990, count=2000 - 1990 + 2, device_id=2)
    assert coils.bits[:19] == [coil_value(2, item) for item in range(5, 24)]
    assert inputs.bits[:12] == [discrete_input_value(2, item) for item in range(1990, 2002)]


async def test_pymodbus_writes_are_remembered_per_unit(
    client: AsyncModbusTcpClient, target: TargetServer
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        assert not (await client.write_register(10, 0xBEEF, device_id=1)).isError()
        assert not (await client.write_registers(20, [1, 2, 3], device_id=1)).isError()
        assert not (await client.write_coil(1, True, device_id=1)).isError()
        assert not (await client.write_coils(30, [False, True, True], device_id=1)).isError()
        holding = await client.read_holding_registers(9, count=14, device_id=1)
        other_unit = await client.read_holding_registers(10, count=1, device_id=2)
        coils = await client.read_coils(0, count=33, device_id=1)
    expected = [holding_register_value(1, item) for item in range(9, 23)]
    expected[1] = 0xBEEF
    expected[11:14] = [1, 2, 3]
    assert holding.registers == expected
    assert other_unit.registers == [holding_register_value(2, 10)]
    expected_coils = [coil_value(1, item) for item in range(33)]
    expected_coils[1] = True
    expected_coils[30:33] = [False, True, True]
    assert coils.bits[:33] == expected_coils
    device = target.responder
    assert isinstance(device, ModbusDevice)
    assert device.holding_register(1, 10) == 0xBEEF
    assert device.coil(1, 31)


async def test_pymodbus_read_write_writes_first(client: AsyncModbusTcpClient) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        reply = await client.readwrite_registers(
            read_address=100, read_count=4, write_address=101, values=[7, 8], device_id=3
        )
    assert reply.registers == [holding_register_value(3, 100), 7, 8, holding_register_value(3, 103)]


async def test_pymodbus_sees_exceptions(client: AsyncModbusTcpClient) -> None:
    async with asyncio.timeout(TEST_TIMEOUT):
        past_end = await client.read_holding_registers(65535, count=2, device_id=1)
        coils_past_end = await client.read_coils(65000, count=537, device_id=1)
    assert past_end.isError()
    assert past_end.exception_code == ILLEGAL_DATA_ADDRESS
    assert coils_past_end.isError()
    assert coils_past_end.exception_code == ILLEGAL_DATA_ADDRESS


def _pdu(*fields: int, layout: str) -> bytes:
    return struct.pack(">" + layout, *fields)


@pytest.mark.parametrize(
    ("pdu", "code"),
    [
        pytest.param(b"\x41", ILLEGAL_FUNCTION, id="unknown-function"),
        pytest.param(b"\x83\x00\x00\x00\x01", ILLEGAL_FUNCTION, id="exception-flag"),
        pytest.param(_pdu(3, 0, 0, layout="BHH"), ILLEGAL_DATA_VALUE, id="zero-registers"),
        pytest.param(_pdu(4, 0, 126, layout="BHH"), ILLEGAL_DATA_VALUE, id="126-registers"),
        pytest.param(_pdu(1, 0, 2001, layout="BHH"), ILLEGAL_DATA_VALUE, id="2001-coils"),
        pytest.param(_pdu(2, 0, 0, layout="BHH"), ILLEGAL_DATA_VALUE, id="zero-inputs"),
        pytest.param(_pdu(3, 65500, 37, layout="BHH"), ILLEGAL_DATA_ADDRESS, id="past-65535"),
        pytest.param(_pdu(1, 65535, 2, layout="BHH"), ILLEGAL_DATA_ADDRESS, id="coils-past-end"),
        pytest.param(b"\x03\x00\x00\x00", ILLEGAL_DATA_VALUE, id="short-pdu"),
        pytest.param(_pdu(5, 1, 0x1234, layout="BHH"), ILLEGAL_DATA_VALUE, id="bad-coil-value"),
        pytest.param(
            _pdu(16, 0, 2, 3, 1, 2, layout="BHHBHH"), ILLEGAL_DATA_VALUE, id="byte-count-mismatch"
        ),
        pytest.param(_pdu(16, 0, 124, 248, layout="BHHB"), ILLEGAL_DATA_VALUE, id="124-writes"),
        pytest.param(
            _pdu(16, 65535, 2, 4, 1, 2, layout="BHHBHH"), ILLEGAL_DATA_ADDRESS, id="write-past-end"
        ),
        pytest.param(_pdu(15, 0, 9, 1, 0xFF, layout="BHHBB"), ILLEGAL_DATA_VALUE, id="coil-bytes"),
        pytest.param(
            _pdu(23, 0, 126, 0, 1, 2, 5, layout="BHHHHBH"), ILLEGAL_DATA_VALUE, id="rw-126-reads"
        ),
        pytest.param(
            _pdu(23, 65535, 2, 0, 1, 2, 5, layout="BHHHHBH"),
            ILLEGAL_DATA_ADDRESS,
            id="rw-read-past-end",
        ),
    ],
)
def test_device_exceptions(pdu: bytes, code: int) -> None:
    request = build_adu(0x1234, 9, pdu)
    answer = ModbusDevice().answer(request)
    assert answer.data == build_adu(0x1234, 9, bytes(((pdu[0] | 0x80) & 0xFF, code)))
    assert not answer.close


def test_device_write_single_echoes_request() -> None:
    device = ModbusDevice()
    for pdu in (_pdu(5, 7, 0xFF00, layout="BHH"), _pdu(6, 7, 0xABCD, layout="BHH")):
        request = build_adu(1, 1, pdu)
        assert device.answer(request).data == request
    assert device.coil(1, 7)
    assert device.holding_register(1, 7) == 0xABCD


def test_device_write_multiple_coils_answer() -> None:
    device = ModbusDevice()
    request = build_adu(2, 4, _pdu(15, 100, 10, 2, 0b1010_0101, 0b10, layout="BHHBBB"))
    assert device.answer(request).data == build_adu(2, 4, _pdu(15, 100, 10, layout="BHH"))
    assert [device.coil(4, item) for item in range(100, 110)] == unpack_bits(
        bytes((0b1010_0101, 0b10)), 10
    )


@pytest.mark.parametrize("count", [1, 7, 8, 9, 16, 2000])
def test_bits_round_trip(count: int) -> None:
    bits = [coil_value(0, item) or item % 5 == 0 for item in range(count)]
    packed = pack_bits(bits)
    assert len(packed) == (count + 7) // 8
    assert unpack_bits(packed, count) == bits


async def test_pipelined_requests_keep_their_ids_and_order(target: TargetServer) -> None:
    requests = [read_registers_request(1000 + index, index % 3, index, 2) for index in range(50)]
    async with asyncio.timeout(TEST_TIMEOUT), open_client(target.port) as (reader, writer):
        writer.write(b"".join(requests))
        answers = [await read_adu(reader) for _ in requests]
    for index, answer in enumerate(answers):
        unit = index % 3
        assert answer == build_adu(
            1000 + index,
            unit,
            struct.pack(
                ">BBHH",
                3,
                4,
                holding_register_value(unit, index),
                holding_register_value(unit, index + 1),
            ),
        )
    assert target.stats.max_pipelined >= 2


async def test_bad_mbap_header_closes_the_connection(target: TargetServer) -> None:
    async with asyncio.timeout(TEST_TIMEOUT), open_client(target.port) as (reader, writer):
        writer.write(b"\x00\x01\x00\x01\x00\x06\x01\x03\x00\x00\x00\x01")
        assert await reader.read() == b""
    assert target.stats.framing_errors == 1
