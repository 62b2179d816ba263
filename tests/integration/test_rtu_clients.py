"""Clients speaking Modbus RTU over TCP, and auto-detected clients, end to end: pymodbus
clients with its RTU framer over TCP and with MBAP, through the multiplexer to the
example Modbus device.

- `-l rtu+tcp://`: reads, writes, the device's exceptions and the gateway's as RTU
  exception frames; write rules apply; a broadcast gets no answer; a bad CRC loses that
  client only.
- `-l auto://`: an RTU client and an MBAP client on one port, each answered in its own
  framing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Final

import pytest
from pymodbus import FramerType
from pymodbus.client import AsyncModbusTcpClient

from tcp_multiplexer.bridge import Bridge
from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.options import Address, parse_listen
from tcp_multiplexer.protocols.modbus.device import ModbusDevice, holding_register_value
from tcp_multiplexer.protocols.modbus.options import ModbusOptions
from tcp_multiplexer.protocols.modbus.rtu import with_crc
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets.server import TargetConfig, TargetServer
from tests.helpers import LOOPBACK, eventually, mux_config, run_cli, running_multiplexer

TEST_TIMEOUT: Final = 20.0


@contextlib.asynccontextmanager
async def client(port: int, framer: FramerType) -> AsyncIterator[AsyncModbusTcpClient]:
    modbus = AsyncModbusTcpClient(
        LOOPBACK, port=port, framer=framer, timeout=3, retries=0, reconnect_delay=0
    )
    try:
        assert await modbus.connect()
        yield modbus
    finally:
        modbus.close()


@contextlib.asynccontextmanager
async def rtu_bridge(
    framing: str, **options: object
) -> AsyncIterator[tuple[Bridge, TargetServer, int]]:
    async with TargetServer(TargetConfig(protocol=ProtocolName.MODBUS, host=LOOPBACK)) as device:
        config = mux_config(
            device.port,
            protocol=ProtocolName.MODBUS,
            listen=(Address(LOOPBACK, 0, framing),),
            **options,
        )
        async with running_multiplexer(config) as mux:
            yield mux, device, mux.port


def memory(server: TargetServer) -> ModbusDevice:
    device = server.responder
    assert isinstance(device, ModbusDevice)
    return device


async def test_rtu_clients_read_write_and_get_exceptions_as_rtu_frames() -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        rtu_bridge("rtu") as (_mux, device, port),
        client(port, FramerType.RTU) as rtu,
    ):
        answer = await rtu.read_holding_registers(10, count=3, device_id=1)
        assert not answer.isError()
        assert answer.registers == [holding_register_value(1, a) for a in range(10, 13)]
        written = await rtu.write_register(20, 4242, device_id=1)
        assert not written.isError()
        assert memory(device).holding_register(1, 20) == 4242
        refused = await rtu.read_holding_registers(65530, count=100, device_id=1)
        assert refused.isError()
        assert refused.exception_code == 0x02  # the device's, as an RTU exception frame
        await device.go_down()
        unreachable = await rtu.read_holding_registers(0, count=1, device_id=1)
        assert unreachable.isError()
        assert unreachable.exception_code in (0x0A, 0x0B)  # the gateway's


async def test_write_rules_apply_to_rtu_clients() -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        rtu_bridge("rtu", modbus=ModbusOptions(read_only="deny")) as (_mux, device, port),
        client(port, FramerType.RTU) as rtu,
    ):
        before = memory(device).holding_register(1, 20)
        refused = await rtu.write_register(20, 1, device_id=1)
        assert refused.isError()
        assert refused.exception_code == 0x01
        assert memory(device).holding_register(1, 20) == before


async def test_a_broadcast_gets_no_answer_and_a_bad_crc_closes_that_client_only() -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        rtu_bridge("rtu") as (_mux, device, port),
        client(port, FramerType.RTU) as other,
    ):
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        try:
            broadcast = with_crc(bytes.fromhex("00 06 0015 0007"))  # unit 0: write 21 = 7
            read = with_crc(bytes.fromhex("01 03 0015 0001"))
            writer.write(broadcast + read)
            # The first answer to arrive is the read's: the broadcast had none.
            answer = await reader.readexactly(7)
            value = memory(device).holding_register(1, 21)
            assert answer == with_crc(bytes([1, 3, 2]) + value.to_bytes(2, "big"))
            assert memory(device).holding_register(0, 21) == 7, "the broadcast was sent"
            bad = bytearray(read)
            bad[-1] ^= 0xFF
            writer.write(bytes(bad))
            assert await reader.read() == b"", "a bad CRC closes the connection"
        finally:
            writer.close()
        # The other RTU client goes on.
        answer = await other.read_holding_registers(0, count=1, device_id=1)
        assert not answer.isError()


async def test_auto_answers_each_client_in_its_own_framing() -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        rtu_bridge("auto") as (mux, _device, port),
        client(port, FramerType.RTU) as rtu,
        client(port, FramerType.SOCKET) as mbap,
    ):
        for _ in range(3):
            first = await rtu.read_holding_registers(0, count=2, device_id=1)
            second = await mbap.read_holding_registers(0, count=2, device_id=1)
            assert not first.isError()
            assert not second.isError()
            assert first.registers == second.registers
        await eventually(lambda: mux.metrics.snapshot().clients == 2)


def test_listen_urls_name_the_framing_and_are_checked() -> None:
    assert parse_listen("rtu+tcp://127.0.0.1:5020") == Address("127.0.0.1", 5020, "rtu")
    assert parse_listen("auto://:5020") == Address("", 5020, "auto")
    assert str(parse_listen("rtu+tcp://127.0.0.1:5020")) == "rtu+tcp://127.0.0.1:5020"
    assert parse_listen("tcp://127.0.0.1:5020") == Address("127.0.0.1", 5020)
    with pytest.raises(ConfigError, match="udp://"):
        parse_listen("udp://127.0.0.1:5020")
    result = run_cli("server", "-p", "echo", "-l", "rtu+tcp://127.0.0.1:0")
    assert result.returncode == 2
    assert "are for Modbus" in result.stderr
