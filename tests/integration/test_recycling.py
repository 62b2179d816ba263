"""Recycled target connections, end to end with a real pymodbus client.

A device that goes on accepting its connection but stops answering on it ("works for
weeks, then stops") while it answers a new one: after `--recycle-after-timeouts`
timeouts in a row the multiplexer closes that connection and opens a new one, and the
clients are served again; with 0 they get 0x0B for ever. `--max-connection-age`
reopens an old connection once its requests are answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import AsyncIterator
from typing import Final

import pytest

from tcp_multiplexer.protocols.modbus.device import ModbusDevice, holding_register_value
from tcp_multiplexer.protocols.spec import ProtocolName
from tests.helpers import LOOPBACK, eventually, mux_config, running_multiplexer
from tests.peers import pymodbus_client

TEST_TIMEOUT: Final = 30.0
TIMEOUT: Final = 0.3


class TiringDevice:
    """The example Modbus device over TCP; each connection answers its first
    `answers` requests and then nothing, though it stays open."""

    def __init__(self, answers: int) -> None:
        self.answers = answers
        self.connections = 0
        self.device = ModbusDevice()
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        answered = 0
        try:
            while True:
                head = await reader.readexactly(7)
                (length,) = struct.unpack_from(">H", head, 4)
                request = head + await reader.readexactly(length - 1)
                if answered < self.answers:
                    answered += 1
                    writer.write(self.device.answer(request).data)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def tiring_device(answers: int) -> AsyncIterator[TiringDevice]:
    device = TiringDevice(answers)
    device.server = await asyncio.start_server(device._serve, LOOPBACK, 0)
    try:
        yield device
    finally:
        device.server.close()


async def read_until_answered(port: int, tries: int) -> tuple[int, int]:
    """Read holding 0 up to `tries` times; (exceptions before the first answer, answer)."""
    failed = 0
    async with pymodbus_client(port) as client:
        for _ in range(tries):
            answer = await client.read_holding_registers(0, count=1, device_id=1)
            if not answer.isError():
                return failed, answer.registers[0]
            failed += 1
    return failed, -1


@pytest.mark.parametrize("after", [3, 1])
async def test_clients_are_served_again_after_n_timeouts_in_a_row(
    after: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tcp_multiplexer")
    async with asyncio.timeout(TEST_TIMEOUT), tiring_device(answers=1) as device:
        config = mux_config(
            device.port, protocol=ProtocolName.MODBUS, timeout=TIMEOUT, recycle_after_timeouts=after
        )
        async with running_multiplexer(config) as mux:
            failed, value = await read_until_answered(mux.port, 2)
            assert (failed, value) == (0, holding_register_value(1, 0))
            # The device now says nothing on this connection: N timeouts, then a new one.
            failed, value = await read_until_answered(mux.port, after + 3)
            assert value == holding_register_value(1, 0)
            assert failed == after
            assert device.connections == 2
    assert any(
        f"{after} timeouts in a row; closing it and opening a new connection" in message
        for message in caplog.messages
    )


async def test_without_recycling_the_clients_get_0x0b_for_ever() -> None:
    async with asyncio.timeout(TEST_TIMEOUT), tiring_device(answers=0) as device:
        config = mux_config(
            device.port, protocol=ProtocolName.MODBUS, timeout=TIMEOUT, recycle_after_timeouts=0
        )
        async with running_multiplexer(config) as mux:
            failed, value = await read_until_answered(mux.port, 8)
            assert (failed, value) == (8, -1)
            assert device.connections == 1


async def test_an_old_connection_is_reopened_once_idle() -> None:
    async with asyncio.timeout(TEST_TIMEOUT), tiring_device(answers=1000) as device:
        config = mux_config(device.port, protocol=ProtocolName.MODBUS, max_connection_age=0.5)
        async with running_multiplexer(config) as mux, pymodbus_client(mux.port) as client:
            answer = await client.read_holding_registers(0, count=1, device_id=1)
            assert not answer.isError()
            await eventually(lambda: device.connections >= 2, within=5.0)
            answer = await client.read_holding_registers(0, count=1, device_id=1)
            assert not answer.isError()
            assert mux.metrics.snapshot().reconnects == 0, "reopened as planned"
