"""Modbus/TCP through the multiplexer against pymodbus: a real device and real clients.

The device (tests/peers.py) takes ONE connection at a time, like most inverters and
batteries: everything the clients ask must share the multiplexer's single connection.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest

from tcp_multiplexer.protocols.spec import ProtocolName
from tests.framing.builders import mbap
from tests.helpers import mux_config, open_client, running_multiplexer
from tests.modbus.adu import read_adu
from tests.peers import (
    OneConnectionModbusServer,
    coil_value,
    holding_value,
    input_value,
    modbus_device,
    pymodbus_client,
    refused_port,
)

TEST_TIMEOUT = 8.0
READ_HOLDING = 0x03
READ_INPUT = 0x04
GATEWAY_PATH_UNAVAILABLE = 0x0A


@pytest.fixture
async def device() -> AsyncIterator[OneConnectionModbusServer]:
    async with modbus_device() as server:
        yield server


def read_request(tid: int, unit: int, function: int, address: int, count: int) -> bytes:
    return mbap(tid, unit, struct.pack(">BHH", function, address, count))


def holding_answer(tid: int, unit: int, address: int, count: int) -> bytes:
    """The exact ADU a correct device sends for a holding-register read."""
    values = [holding_value(address + offset) for offset in range(count)]
    return mbap(tid, unit, struct.pack(f">BB{count}H", READ_HOLDING, 2 * count, *values))


async def test_device_fixture_really_takes_one_connection(
    device: OneConnectionModbusServer,
) -> None:
    """Without this the single-connection assertions below would prove nothing."""
    async with asyncio.timeout(TEST_TIMEOUT), open_client(device.port) as (reader, writer):
        writer.write(read_request(1, 1, READ_HOLDING, 0, 1))
        assert await read_adu(reader) == holding_answer(1, 1, 0, 1)
        async with open_client(device.port) as (second_reader, _second_writer):
            assert await second_reader.read() == b""
        assert (device.accepted, device.rejected, device.requests) == (1, 1, 1)


async def test_one_pymodbus_client_reads_and_writes(device: OneConnectionModbusServer) -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        running_multiplexer(mux_config(device.port, protocol=ProtocolName.MODBUS)) as mux,
        pymodbus_client(mux.port, answer_timeout=3) as client,
    ):
        holding = await client.read_holding_registers(10, count=5, device_id=1)
        assert not holding.isError(), holding
        assert list(holding.registers) == [holding_value(a) for a in range(10, 15)]
        assert holding.dev_id == 1

        inputs = await client.read_input_registers(100, count=3, device_id=17)
        assert not inputs.isError(), inputs
        assert list(inputs.registers) == [input_value(a) for a in range(100, 103)]
        assert inputs.dev_id == 17

        coils = await client.read_coils(0, count=8, device_id=1)
        assert not coils.isError(), coils
        assert list(coils.bits[:8]) == [coil_value(a) for a in range(8)]

        written = await client.write_register(7, 4242, device_id=1)
        assert not written.isError(), written
        assert list(written.registers) == [4242]
        read_back = await client.read_holding_registers(6, count=3, device_id=1)
        assert list(read_back.registers) == [holding_value(6), 4242, holding_value(8)]

        coil_written = await client.write_coil(1, True, device_id=1)
        assert not coil_written.isError(), coil_written
        coils_back = await client.read_coils(0, count=3, device_id=1)
        assert list(coils_back.bits[:3]) == [True, True, False]

        beyond = await client.read_holding_registers(1000, count=1, device_id=1)
        assert beyond.isError()
        assert beyond.exception_code == 0x02  # illegal data address, from the device itself

    assert (device.accepted, device.rejected, device.requests) == (1, 0, 8)


async def test_ten_pymodbus_clients_share_one_device_connection(
    device: OneConnectionModbusServer,
) -> None:
    clients, reads = 10, 20

    async def poll(index: int) -> list[tuple[int, int, list[int]]]:
        """`reads` reads of ranges no other client asks for; (function, address, values)."""
        seen: list[tuple[int, int, list[int]]] = []
        async with pymodbus_client(mux.port, answer_timeout=3) as client:
            for step in range(reads):
                address = reads * index + step
                count = 1 + (index + step) % 8
                if step % 2:
                    response = await client.read_input_registers(
                        address, count=count, device_id=index + 1
                    )
                    function = READ_INPUT
                else:
                    response = await client.read_holding_registers(
                        address, count=count, device_id=index + 1
                    )
                    function = READ_HOLDING
                assert not response.isError(), (index, step, response)
                assert response.dev_id == index + 1
                seen.append((function, address, list(response.registers)))
        return seen

    async with (
        asyncio.timeout(TEST_TIMEOUT),
        running_multiplexer(mux_config(device.port, protocol=ProtocolName.MODBUS)) as mux,
    ):
        results = await asyncio.gather(*(poll(index) for index in range(clients)))
        assert mux.metrics.clients_total == clients

    for index, seen in enumerate(results):
        expected = []
        for step in range(reads):
            address = reads * index + step
            count = 1 + (index + step) % 8
            value = input_value if step % 2 else holding_value
            function = READ_INPUT if step % 2 else READ_HOLDING
            expected.append((function, address, [value(address + k) for k in range(count)]))
        assert seen == expected, f"client {index} got someone else's answers"
    assert device.accepted == 1
    assert device.rejected == 0
    assert device.requests == clients * reads


async def test_target_down_answers_exception_0x0a_quickly() -> None:
    loop = asyncio.get_running_loop()
    with refused_port() as port:
        async with (
            asyncio.timeout(TEST_TIMEOUT),
            running_multiplexer(mux_config(port, protocol=ProtocolName.MODBUS, timeout=5.0)) as mux,
        ):
            started = loop.time()
            async with pymodbus_client(mux.port, answer_timeout=3) as client:
                response = await client.read_holding_registers(0, count=2, device_id=5)
            assert response.isError(), response
            assert response.exception_code == GATEWAY_PATH_UNAVAILABLE
            assert response.function_code == READ_HOLDING | 0x80
            assert response.dev_id == 5

            async with open_client(mux.port) as (reader, writer):
                writer.write(read_request(0xBEEF, 0x21, READ_INPUT, 3, 4))
                answer = await read_adu(reader)
            assert answer == mbap(
                0xBEEF, 0x21, bytes((READ_INPUT | 0x80, GATEWAY_PATH_UNAVAILABLE))
            )
            # Answered from the gateway at once, not after the 5 s timeout.
            assert loop.time() - started < 1.5


@pytest.mark.parametrize(
    ("tid", "unit"),
    [
        pytest.param(0, 1, id="tid-0"),
        pytest.param(0xFFFF, 0xFF, id="tid-ffff"),
        pytest.param(12345, 0x11, id="tid-12345"),
    ],
)
async def test_client_transaction_id_is_restored(
    device: OneConnectionModbusServer, tid: int, unit: int
) -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        running_multiplexer(mux_config(device.port, protocol=ProtocolName.MODBUS)) as mux,
        open_client(mux.port) as (reader, writer),
    ):
        for address, count in ((0, 1), (37, 4), (123, 2)):
            writer.write(read_request(tid, unit, READ_HOLDING, address, count))
            assert await read_adu(reader) == holding_answer(tid, unit, address, count)


async def test_unusual_transaction_ids_pipelined_in_one_write(
    device: OneConnectionModbusServer,
) -> None:
    requests = [(0, 1, 5, 2), (0xFFFF, 2, 50, 3), (12345, 3, 250, 1), (0, 4, 300, 5)]
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        running_multiplexer(mux_config(device.port, protocol=ProtocolName.MODBUS)) as mux,
        open_client(mux.port) as (reader, writer),
    ):
        writer.write(b"".join(read_request(t, u, READ_HOLDING, a, c) for t, u, a, c in requests))
        answers = [await read_adu(reader) for _ in requests]
    assert answers == [holding_answer(t, u, a, c) for t, u, a, c in requests]
    assert (device.accepted, device.rejected, device.requests) == (1, 0, len(requests))
