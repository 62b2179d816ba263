"""The register image end to end: real pymodbus clients and devices, through the
multiplexer.

- Reads inside one device answer are cut from it (registers and coils), the device sees
  no further read; a read two answers cover only together goes to the device.
- A value is never served older than the TTL; after a write is answered nobody is
  served the old value of a register it wrote.
- Polls keep the image warm; a device that refuses a merged read across a hole in its
  register map with 0x02 is read in the separate ranges from then on.
- While the device is down, reads inside a held answer get it (stale) instead of 0x0A.
- `read-only = "ignore"` acknowledges writes as the device would and never sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import AsyncIterator
from typing import Any, Final

import pytest

from tcp_multiplexer.bridge import Bridge
from tcp_multiplexer.core.interfaces import Framer
from tcp_multiplexer.errors import FramingError
from tcp_multiplexer.protocols.modbus.device import ModbusDevice, holding_register_value
from tcp_multiplexer.protocols.modbus.mbap import (
    MbapFramer,
    exception_response,
)
from tcp_multiplexer.protocols.modbus.options import ModbusOptions
from tcp_multiplexer.protocols.modbus.polls import parse_poll
from tcp_multiplexer.protocols.modbus.routes import parse_route
from tcp_multiplexer.protocols.responder import Answer
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets.server import TargetConfig, TargetServer
from tests.helpers import LOOPBACK, eventually, mux_config, running_multiplexer
from tests.modbus.adu import READ_HOLDING, mask_write, read_adu
from tests.peers import (
    OneConnectionModbusServer,
    coil_value,
    holding_value,
    modbus_device,
    pymodbus_client,
)

TEST_TIMEOUT: Final = 15.0
HOLE: Final = range(10, 14)
"""Holding registers the hole device does not have."""


def image(**options: Any) -> ModbusOptions:
    return ModbusOptions(**options)


@contextlib.asynccontextmanager
async def through_image(**options: Any) -> AsyncIterator[tuple[OneConnectionModbusServer, Bridge]]:
    """A pymodbus device that takes one connection, and a bridge to it with `options`."""
    async with (
        modbus_device() as device,
        running_multiplexer(
            mux_config(device.port, protocol=ProtocolName.MODBUS, modbus=image(**options))
        ) as mux,
    ):
        yield device, mux


# ---------------------------------------------------------------------------- one answer


async def test_reads_inside_one_answer_are_cut_from_it_and_the_device_sees_no_more() -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        through_image(cache_ttl=30.0) as (device, mux),
        pymodbus_client(mux.port) as logger_client,
        pymodbus_client(mux.port) as evcc,
    ):
        block = await logger_client.read_holding_registers(0, count=100, device_id=1)
        assert block.registers == [holding_value(a) for a in range(100)]
        asked = device.requests
        for address, count in ((5, 10), (40, 2), (0, 1), (99, 1), (0, 100)):
            answer = await evcc.read_holding_registers(address, count=count, device_id=1)
            assert answer.registers == [holding_value(a) for a in range(address, address + count)]
        coils = await logger_client.read_coils(0, count=80, device_id=1)
        assert coils.bits[:80] == [coil_value(a) for a in range(80)]
        for address, count in ((3, 10), (17, 1), (70, 10)):
            answer = await evcc.read_coils(address, count=count, device_id=1)
            assert answer.bits[:count] == [coil_value(a) for a in range(address, address + count)]
        assert device.requests == asked + 1, "only the coil block reached the device"
        assert mux.metrics.events["image_answers"] == 8


async def test_a_read_two_answers_cover_only_together_goes_to_the_device() -> None:
    """A 32-bit value in registers 9 and 10 must never mix two moments."""
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        through_image(cache_ttl=30.0) as (device, mux),
        pymodbus_client(mux.port) as client,
    ):
        await client.read_holding_registers(0, count=10, device_id=1)
        await device.async_setValues(1, 16, 9, [1, 2])  # the device moves on
        await client.read_holding_registers(10, count=10, device_id=1)
        asked = device.requests
        pair = await client.read_holding_registers(9, count=2, device_id=1)
        assert device.requests == asked + 1
        assert pair.registers == [1, 2], "one moment, the device's"


async def test_a_value_is_never_served_older_than_the_ttl() -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        through_image(cache_ttl=0.3) as (device, mux),
        pymodbus_client(mux.port) as client,
    ):
        loop = asyncio.get_running_loop()
        await client.read_holding_registers(0, count=20, device_id=1)
        changed_at = loop.time()
        await device.async_setValues(1, 16, 5, [4242])
        seen: list[tuple[float, int]] = []

        async def read_until_new() -> None:
            while True:
                answer = await client.read_holding_registers(5, count=1, device_id=1)
                seen.append((loop.time(), answer.registers[0]))
                if answer.registers[0] == 4242:
                    return
                await asyncio.sleep(0.01)

        await asyncio.wait_for(read_until_new(), 5.0)
        old = [at for at, value in seen if value != 4242]
        assert all(at - changed_at < 0.3 + 0.05 for at in old), "old value past the TTL"
        assert mux.metrics.events["image_answers"] >= 1


async def test_after_a_write_is_answered_nobody_is_served_the_old_value() -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        through_image(cache_ttl=30.0) as (_device, mux),
        pymodbus_client(mux.port) as reader,
        pymodbus_client(mux.port) as writer,
    ):
        await reader.read_holding_registers(0, count=50, device_id=1)
        written = await writer.write_registers(20, [7, 8], device_id=1)
        assert not written.isError()
        assert (await reader.read_holding_registers(20, count=2, device_id=1)).registers == [7, 8]
        assert (await reader.read_holding_registers(0, count=20, device_id=1)).registers == [
            holding_value(a) for a in range(20)
        ], "what the write did not touch still comes from the image"
        assert (await reader.read_holding_registers(22, count=28, device_id=1)).registers == [
            holding_value(a) for a in range(22, 50)
        ]
        assert mux.metrics.events["image_answers"] == 2


# ---------------------------------------------------------------------------- polls


class HoleDevice:
    """A simulated device without holding registers 10-13: a read that touches them is
    refused with 0x02. Records every read range it is asked."""

    def __init__(self) -> None:
        self.memory = ModbusDevice()
        self.reads: list[tuple[int, int]] = []

    @property
    def name(self) -> ProtocolName:
        return ProtocolName.MODBUS

    def request_framer(self) -> Framer:
        return MbapFramer()

    def answer(self, request: bytes) -> Answer:
        if request[7] == READ_HOLDING:
            address, count = struct.unpack_from(">HH", request, 8)
            self.reads.append((address, count))
            if any(address <= hole < address + count for hole in HOLE):
                return Answer(exception_response(request, 0x02))
        return self.memory.answer(request)

    def reject(self, error: FramingError) -> bytes:
        return self.memory.reject(error)

    def with_wrong_id(self, answer: bytes) -> bytes:
        return self.memory.with_wrong_id(answer)


@contextlib.asynccontextmanager
async def hole_device() -> AsyncIterator[tuple[TargetServer, HoleDevice]]:
    device = HoleDevice()
    config = TargetConfig(protocol=ProtocolName.MODBUS, host=LOOPBACK, max_connections=1)
    async with TargetServer(config, device) as target:
        yield target, device


@contextlib.asynccontextmanager
async def hole_bridge(
    options: ModbusOptions, **settings: Any
) -> AsyncIterator[tuple[TargetServer, HoleDevice, Bridge]]:
    """The hole device, and a bridge to it with `options` (and bridge `settings`)."""
    async with (
        hole_device() as (target, device),
        running_multiplexer(
            mux_config(target.port, protocol=ProtocolName.MODBUS, modbus=options, **settings)
        ) as mux,
    ):
        yield target, device, mux


async def test_polls_merge_split_on_a_hole_and_keep_the_clients_reads_off_the_device(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tcp_multiplexer")
    polls = tuple(parse_poll(text) for text in ("1:holding:0:10:200ms", "1:holding:14:6:200ms"))
    options = image(cache_ttl=1.0, poll=polls)
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        hole_bridge(options) as (_target, device, mux),
        pymodbus_client(mux.port) as client,
    ):
        await eventually(lambda: device.reads.count((14, 6)) >= 3, message="three rounds")
        assert device.reads[0] == (0, 20), "merged first"
        assert set(device.reads[1:]) == {(0, 10), (14, 6)}, "then apart, never merged again"
        assert "reading its 2 ranges separately" in caplog.text
        asked = len(device.reads)
        for address, count in ((2, 4), (0, 10), (15, 5)):
            answer = await client.read_holding_registers(address, count=count, device_id=1)
            assert answer.registers == [
                holding_register_value(1, a) for a in range(address, address + count)
            ]
        polled = {(0, 10), (14, 6)}
        assert all(read in polled for read in device.reads[asked:]), "clients never reached it"
        events = mux.metrics.events
        assert events["refused_ranges"] == 1
        assert events["merged_reads"] == 1
        assert events["image_answers"] == 3
        rows = mux.targets[0].background.rows(asyncio.get_running_loop().time())  # type: ignore[union-attr]
        assert [(row["address"], row["count"]) for row in rows] == [(0, 10), (14, 6)]
        assert all(row["oldest_age"] is not None and row["oldest_age"] < 1.0 for row in rows)


async def test_polls_pause_while_the_device_is_down_and_resume_with_it() -> None:
    options = image(cache_ttl=1.0, poll=(parse_poll("1:holding:0:10:100ms"),))
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        hole_bridge(options) as (target, device, mux),
    ):
        await eventually(lambda: len(device.reads) >= 2, message="polls")
        await target.go_down()
        await eventually(lambda: mux.pool.connections == 0, message="the connection gone")
        polled = mux.metrics.events["poll_reads"]
        metrics = mux.targets[0].metrics
        attempts = metrics.connect_attempts
        await eventually(
            lambda: metrics.connect_attempts >= attempts + 3, message="three reconnect attempts"
        )
        assert mux.metrics.events["poll_reads"] == polled, "paused"
        assert sum(metrics.gateway.values()) == 0, "no poll was submitted to fail"
        reads = len(device.reads)
        await target.come_up()
        await eventually(lambda: len(device.reads) > reads, message="polls again")


# ---------------------------------------------------------------------------- stale


async def test_while_the_device_is_down_reads_inside_a_held_answer_get_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tcp_multiplexer")
    options = image(cache_ttl=0.2, serve_stale=60.0)
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        hole_bridge(options, reconnect_backoff=0.05) as (target, _device, mux),
        pymodbus_client(mux.port) as client,
    ):
        await client.read_holding_registers(0, count=10, device_id=1)
        await target.go_down()
        await eventually(lambda: mux.pool.unreachable, message="the target seen down")
        while mux.metrics.events["stale_answers"] < 3:  # fresh for 0.2 s, then stale
            answer = await client.read_holding_registers(3, count=4, device_id=1)
            assert not answer.isError(), answer
            assert answer.registers == [holding_register_value(1, a) for a in range(3, 7)]
        never = await client.read_holding_registers(20, count=2, device_id=1)
        assert never.isError(), "never held: the gateway exception"
        written = await client.write_register(3, 5, device_id=1)
        assert written.isError(), "never for writes"
        assert mux.metrics.events["stale_answers"] == 3
        assert caplog.text.count("serving stale reads since") == 1, "once per outage"
        await target.come_up()
        await eventually(lambda: not mux.pool.unreachable, message="the target back", within=5)
        fresh = await client.read_holding_registers(20, count=2, device_id=1)
        assert not fresh.isError()
        assert "the target answers again" in caplog.text


# ---------------------------------------------------------------------------- read-only


@pytest.mark.parametrize("where", ["bridge", "route"])
async def test_read_only_ignore_acknowledges_writes_and_never_sends_them(where: str) -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        hole_device() as (target, device),
    ):
        if where == "bridge":
            options = image(read_only="ignore")
        else:
            options = image(
                routes=(
                    parse_route(
                        {
                            "units": "1",
                            "target": f"{LOOPBACK}:{target.port}",
                            "read-only": "ignore",
                        }
                    ),
                )
            )
        config = mux_config(
            target.port,
            protocol=ProtocolName.MODBUS,
            modbus=options,
            **({"target": None} if where == "route" else {}),
        )
        async with (
            running_multiplexer(config) as mux,
            pymodbus_client(mux.port) as client,
        ):
            single = await client.write_register(100, 7, device_id=1)
            assert not single.isError()
            assert (single.address, single.registers) == (100, [7])
            several = await client.write_registers(100, [1, 2, 3], device_id=1)
            assert not several.isError()
            assert (several.address, several.count) == (100, 3)
            coil = await client.write_coil(5, True, device_id=1)
            assert not coil.isError()
            coils = await client.write_coils(5, [True, False], device_id=1)
            assert not coils.isError()
            reader, writer = await asyncio.open_connection(LOOPBACK, mux.port)
            try:
                writer.write(mask_write(9, 1, 100, 0xFF, 0))
                refused = await read_adu(reader)
            finally:
                writer.close()
            assert refused == exception_response(mask_write(9, 1, 100, 0xFF, 0), 0x01)
            value = await client.read_holding_registers(100, count=1, device_id=1)
            assert value.registers == [holding_register_value(1, 100)], "the device unchanged"
            assert mux.metrics.events["writes_ignored"] == 4
            assert device.memory.holding_register(1, 100) == holding_register_value(1, 100)
