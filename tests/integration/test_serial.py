"""Serial and RTU-over-TCP targets with real peers: pymodbus's serial server on a
pseudo-terminal pair, pymodbus's TCP server with its RTU framer as the converter,
pymodbus clients and mbpoll through the multiplexer; routing by unit id, unit maps,
and a device that sends damaged frames, stops short, stays silent and hears broadcasts.

Clients always speak Modbus/TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pymodbus import FramerType
from pymodbus.exceptions import ModbusException

from tcp_multiplexer.bridge import Bridge
from tcp_multiplexer.options import Address, parse_listen
from tcp_multiplexer.protocols.modbus.options import ModbusOptions
from tcp_multiplexer.protocols.modbus.routes import parse_route
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.target import parse_target_url
from tests.framing.builders import mbap
from tests.helpers import LOOPBACK, CliProcess, mux_config, open_client, running_multiplexer
from tests.modbus.adu import read_adu
from tests.peers import holding_value, modbus_device, pymodbus_client
from tests.serial_peers import (
    BAD_CRC,
    CUT_SHORT,
    SILENT,
    FaultyRtuDevice,
    pty_pair,
    register_value,
    rtu_over_tcp_device,
    serial_device,
)

pytestmark = pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs pseudo-terminals (POSIX)")

TEST_TIMEOUT = 15.0
SERIAL_BASE = 5000
CONVERTER_BASE = 7000
GATEWAY_PATH_UNAVAILABLE = 0x0A
GATEWAY_TARGET_FAILED = 0x0B


def serial_url(path: str, baudrate: int = 19200) -> str:
    return f"serial://{path}?baudrate={baudrate}&parity=N&stopbits=1"


@contextlib.asynccontextmanager
async def multiplexer(
    target: str | None, *, answer_timeout: float = 3.0, **modbus: Any
) -> AsyncIterator[Bridge]:
    """One Modbus bridge to `target` (a URL; None: routes only)."""
    config = mux_config(
        1,  # replaced by `target`
        target=None if target is None else parse_target_url(target),
        protocol=ProtocolName.MODBUS,
        timeout=answer_timeout,
        modbus=ModbusOptions(**modbus),
    )
    async with running_multiplexer(config) as bridge:
        yield bridge


async def until(check: Callable[[], Awaitable[bool]], message: str, within: float = 5.0) -> None:
    """Ask `check` every few ms until it says yes, or fail after `within` seconds."""
    try:
        async with asyncio.timeout(within):
            while True:
                if await check():
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {within}s waiting for {message}") from None


def read_request(tid: int, unit: int, address: int, count: int) -> bytes:
    return mbap(tid, unit, struct.pack(">BHH", 0x03, address, count))


def registers_of(answer: bytes) -> list[int]:
    count = answer[8] // 2
    return list(struct.unpack(f">{count}H", answer[9 : 9 + count * 2]))


# ---------------------------------------------------------------------------- serial


async def test_a_pymodbus_serial_device_read_and_written_by_pymodbus_clients() -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        pty_pair() as line,
        serial_device(line.device_end, base=SERIAL_BASE),
        multiplexer(serial_url(line.mux_end)) as mux,
        pymodbus_client(mux.port) as first,
        pymodbus_client(mux.port) as second,
    ):
        reads = await asyncio.gather(
            *(
                client.read_holding_registers(address, count=10, device_id=1)
                for client in (first, second)
                for address in (0, 20, 40)
            )
        )
        for answer, address in zip(reads, [0, 20, 40, 0, 20, 40], strict=True):
            assert not answer.isError(), answer
            assert list(answer.registers) == [
                register_value(SERIAL_BASE, a) for a in range(address, address + 10)
            ]
        written = await first.write_register(7, 4242, device_id=1)
        assert not written.isError(), written
        several = await second.write_registers(30, [1, 2, 3], device_id=1)
        assert not several.isError(), several
        back = await second.read_holding_registers(6, count=2, device_id=1)
        assert list(back.registers) == [register_value(SERIAL_BASE, 6), 4242]
        back = await first.read_holding_registers(30, count=3, device_id=1)
        assert list(back.registers) == [1, 2, 3]
        assert mux.pool.connections == 1, "one master on the line"
        # At 19,200 baud 8N1 a character is 10 bits: the line's silence between an
        # answer and the next request is at least 3.5 of them.
        silences = line.silences()
        assert len(silences) >= 5, "identical reads were coalesced: 7 transactions"
        assert min(silences) >= 3.5 * 10 / 19200


async def mbpoll(*args: str) -> str:
    """Run mbpoll to its end and return its output; it is killed if the test ends
    first (a timeout included)."""
    process = await asyncio.create_subprocess_exec(
        "mbpoll", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, (out + err).decode()
    return out.decode()


@pytest.mark.skipif(shutil.which("mbpoll") is None, reason="mbpoll is not installed")
async def test_mbpoll_reads_and_writes_a_serial_device_through_the_multiplexer() -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        pty_pair() as line,
        serial_device(line.device_end, base=SERIAL_BASE),
        multiplexer(serial_url(line.mux_end)) as mux,
    ):
        common = ["-m", "tcp", "-p", str(mux.port), "-a", "1", "-t", "4", "-0", "-1"]
        await mbpoll(*common, "-r", "12", LOOPBACK, "--", "321", "654")
        out = await mbpoll(*common, "-r", "10", "-c", "4", LOOPBACK)
        values = {
            int(left.strip(" [")): int(right.strip())
            for left, _bracket, right in (
                row.partition("]:") for row in out.splitlines() if row.startswith("[")
            )
        }
        assert values == {
            10: register_value(SERIAL_BASE, 10),
            11: register_value(SERIAL_BASE, 11),
            12: 321,
            13: 654,
        }


async def test_a_vanished_serial_port_answers_at_once_and_is_served_again(tmp_path: Path) -> None:
    """A USB adapter that is not there yet, then unplugged, then back: like a target
    that is down, with gateway answers at once and the port reopened with backoff."""
    port = tmp_path / "ttyUSB0"
    async with (
        asyncio.timeout(TEST_TIMEOUT * 2),
        multiplexer(serial_url(str(port)), answer_timeout=2.0) as mux,
        open_client(mux.port) as (reader, writer),
    ):
        writer.write(read_request(1, 1, 0, 1))
        absent = await read_adu(reader)
        assert absent[7:] == bytes((0x83, GATEWAY_PATH_UNAVAILABLE)), "no port yet: 0x0A"

        for round_ in range(2):
            async with pty_pair() as line, serial_device(line.device_end, base=SERIAL_BASE):
                port.symlink_to(line.mux_end)

                async def served(tid: int = 10 + round_) -> bool:
                    writer.write(read_request(tid, 1, 3, 1))
                    answer = await read_adu(reader)
                    return answer[7] == 0x03

                await until(served, "the port is opened once it exists")
                writer.write(read_request(20, 1, 3, 1))
                assert registers_of(await read_adu(reader)) == [register_value(SERIAL_BASE, 3)]
                port.unlink()
                line.unplug()  # the adapter is pulled while the port is open

                async def refused() -> bool:
                    writer.write(read_request(30, 1, 0, 1))
                    answer = await read_adu(reader)
                    return answer[7:] == bytes((0x83, GATEWAY_PATH_UNAVAILABLE))

                await until(refused, "gateway answers while the port is gone")
        assert not reader.at_eof(), "the client kept its connection throughout"


# ---------------------------------------------------------------------------- RTU over TCP


async def test_an_rtu_over_tcp_converter_read_and_written_through_the_multiplexer() -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        rtu_over_tcp_device(base=CONVERTER_BASE) as converter,
        multiplexer(f"rtu+tcp://{LOOPBACK}:{converter.port}") as mux,
        pymodbus_client(mux.port) as client,
    ):
        answer = await client.read_holding_registers(5, count=10, device_id=4)
        assert not answer.isError(), answer
        assert answer.dev_id == 4
        assert list(answer.registers) == [register_value(CONVERTER_BASE, a) for a in range(5, 15)]
        assert not (await client.write_register(50, 9, device_id=4)).isError()
        back = await client.read_holding_registers(50, count=1, device_id=4)
        assert list(back.registers) == [9]
        beyond = await client.read_holding_registers(1000, count=1, device_id=4)
        assert beyond.isError()
        assert beyond.exception_code == 0x02, "the device's own exception, translated"


# ---------------------------------------------------------------------------- routing


async def test_two_units_routed_to_two_targets_with_concurrent_clients_and_no_cross_talk() -> None:
    """Unit 2: an RTU-over-TCP converter; unit 3: a serial meter; every other unit
    (1 here): a Modbus/TCP inverter, the default target."""
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        modbus_device() as inverter,
        rtu_over_tcp_device(base=CONVERTER_BASE) as converter,
        pty_pair() as line,
        serial_device(line.device_end, base=SERIAL_BASE),
    ):
        routes = (
            parse_route(f"2=rtu+tcp://{LOOPBACK}:{converter.port}"),
            parse_route("3=" + serial_url(line.mux_end)),
        )
        async with multiplexer(f"{LOOPBACK}:{inverter.port}", routes=routes) as mux:
            expected = {
                1: lambda a: holding_value(a),
                2: lambda a: register_value(CONVERTER_BASE, a),
                3: lambda a: register_value(SERIAL_BASE, a),
            }

            async def poll(index: int) -> int:
                checked = 0
                async with pymodbus_client(mux.port) as client:
                    for step in range(12):
                        unit = 1 + (index + step) % 3
                        address = index * 5 + step
                        answer = await client.read_holding_registers(
                            address, count=4, device_id=unit
                        )
                        assert not answer.isError(), (unit, answer)
                        assert answer.dev_id == unit
                        assert list(answer.registers) == [
                            expected[unit](a) for a in range(address, address + 4)
                        ], f"unit {unit} answered by its own device"
                        checked += 1
                return checked

            assert sum(await asyncio.gather(*(poll(i) for i in range(6)))) == 72
            assert inverter.accepted == 1
            assert inverter.requests == 24, "only unit 1's reads reached the inverter"


async def test_without_a_default_target_an_unrouted_unit_gets_0x0b_at_once() -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        rtu_over_tcp_device(base=CONVERTER_BASE) as converter,
        multiplexer(
            None,
            answer_timeout=30.0,
            routes=(parse_route(f"2-3=rtu+tcp://{LOOPBACK}:{converter.port}"),),
        ) as mux,
        open_client(mux.port) as (reader, writer),
    ):
        writer.write(read_request(99, 9, 0, 1) + read_request(100, 3, 0, 1))
        assert (await read_adu(reader))[6:] == bytes((9, 0x83, GATEWAY_TARGET_FAILED)), (
            "at once, not after the 30 s timeout"
        )
        assert registers_of(await read_adu(reader)) == [register_value(CONVERTER_BASE, 0)]
        assert mux.metrics.events["unrouted"] == 1


async def test_a_unit_map_rewrites_the_unit_on_the_way_to_the_device_and_back() -> None:
    """The device answers only on unit 3; clients ask for unit 1."""
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        FaultyRtuDevice(units=frozenset({3})).running() as device,
        multiplexer(
            f"rtu+tcp://{LOOPBACK}:{device.port}", answer_timeout=0.5, unit_map=((1, 3),)
        ) as mux,
        open_client(mux.port) as (reader, writer),
    ):
        writer.write(read_request(7, 1, 2, 2))
        answer = await read_adu(reader)
        assert answer[:2] == b"\x00\x07"
        assert answer[6] == 1, "the client's unit comes back"
        assert registers_of(answer) == [2, 3]
        writer.write(read_request(8, 2, 0, 1))
        assert (await read_adu(reader))[6:] == bytes((2, 0x83, GATEWAY_TARGET_FAILED)), (
            "unit 2 is not mapped, and the line has no unit 2"
        )
        assert [unit for unit, _function, _address in device.requests] == [3, 2]


# ---------------------------------------------------------------------------- a faulty device


async def test_damaged_cut_short_and_silent_answers_fail_alone_and_broadcasts_get_none() -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        FaultyRtuDevice().running() as device,
        multiplexer(f"rtu+tcp://{LOOPBACK}:{device.port}", answer_timeout=0.5) as mux,
        open_client(mux.port) as (reader, writer),
    ):
        for tid, address in ((1, BAD_CRC), (2, CUT_SHORT), (3, SILENT)):
            writer.write(read_request(tid, 1, address, 2))
            answer = await read_adu(reader)
            assert answer[:2] == tid.to_bytes(2, "big")
            assert answer[7:] == bytes((0x83, GATEWAY_TARGET_FAILED)), f"register {address}"
            writer.write(read_request(10 + tid, 1, 7, 2))
            assert registers_of(await read_adu(reader)) == [7, 8], "the line goes on at once"

        # A broadcast write is carried out and gets no answer: the next answer the client
        # reads is the one to the read sent after it.
        writer.write(mbap(40, 0, struct.pack(">BHH", 0x06, 3, 1)) + read_request(41, 1, 9, 1))
        answer = await read_adu(reader)
        assert answer[:2] == b"\x00\x29"
        assert registers_of(answer) == [9]

        assert device.broadcasts == 1
        assert device.connections == 1, "the line was never reopened"
        functions = [(unit, address) for unit, _function, address in device.requests]
        assert functions == [
            (1, BAD_CRC),
            (1, 7),
            (1, CUT_SHORT),
            (1, 7),
            (1, SILENT),
            (1, 7),
            (0, 3),
            (1, 9),
        ], "each request once: a failed answer is never retried"
        assert mux.dispatcher is not None


async def test_two_routes_to_one_serial_port_share_its_one_bus() -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        pty_pair() as line,
        serial_device(line.device_end, base=SERIAL_BASE),
    ):
        url = serial_url(line.mux_end)
        routes = (parse_route(f"1={url}"), parse_route(f"2-4={url}"))
        async with multiplexer(None, routes=routes) as mux, pymodbus_client(mux.port) as client:
            answers = await asyncio.gather(
                *(
                    client.read_holding_registers(unit, count=2, device_id=unit)
                    for unit in (1, 2, 4)
                )
            )
            for unit, answer in zip((1, 2, 4), answers, strict=True):
                assert list(answer.registers) == [
                    register_value(SERIAL_BASE, unit),
                    register_value(SERIAL_BASE, unit + 1),
                ]
            assert len(mux.targets) == 1, "one line, one queue, one connection"
            assert mux.pool.connections == 1


# ---------------------------------------------------------------------------- example-server


@pytest.mark.parametrize("mode", ["--serial", "--rtu"])
async def test_the_example_server_serves_rtu_on_a_pty_or_over_tcp(mode: str) -> None:
    """What a user without hardware runs: the example device on a simulated line."""
    args = ["example-server", "modbus", mode, "--baudrate", "115200"]
    if mode == "--rtu":
        args += ["-l", f"{LOOPBACK}:0"]
    device = CliProcess(args)
    try:
        if mode == "--serial":
            target = device.wait_for_line(r"target (serial://\S+)").group(1)
        else:
            target = f"rtu+tcp://{LOOPBACK}:{device.listening_port()}"
        async with (
            asyncio.timeout(TEST_TIMEOUT),
            multiplexer(target) as mux,
            pymodbus_client(mux.port) as client,
        ):
            answer = await client.read_holding_registers(0, count=10, device_id=1)
            assert not answer.isError(), answer
            assert len(answer.registers) == 10
            assert not (await client.write_register(3, 77, device_id=1)).isError()
            back = await client.read_holding_registers(3, count=1, device_id=1)
            assert list(back.registers) == [77]
    finally:
        assert device.stop() == 0
    device.wait_for_line(r"stopped: requests=3 answers=3")


async def test_a_port_another_master_holds_is_a_target_that_is_down_until_it_is_free() -> None:
    """One master on a line: the port is opened exclusively, both ways."""
    import serial

    async with (
        asyncio.timeout(TEST_TIMEOUT),
        pty_pair() as line,
        serial_device(line.device_end, base=SERIAL_BASE),
    ):
        other = serial.Serial(line.mux_end, exclusive=True)
        try:
            async with (
                multiplexer(serial_url(line.mux_end)) as mux,
                open_client(mux.port) as (reader, writer),
            ):
                writer.write(read_request(1, 1, 0, 1))
                held = await read_adu(reader)
                assert held[7:] == bytes((0x83, GATEWAY_PATH_UNAVAILABLE))
                other.close()

                async def served() -> bool:
                    writer.write(read_request(2, 1, 4, 1))
                    return (await read_adu(reader))[7] == 0x03

                await until(served, "the port is opened once the other master let go")
                with pytest.raises(serial.SerialException, match="exclusively"):
                    serial.Serial(line.mux_end, exclusive=True)
        finally:
            other.close()


# ---------------------------------------------------------------------------- half duplex


async def test_a_half_duplex_adapters_echo_is_read_back_and_checked() -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        pty_pair(echo=True) as line,
        serial_device(line.device_end, base=SERIAL_BASE),
        multiplexer(serial_url(line.mux_end) + "&local-echo=1", answer_timeout=1.0) as mux,
        pymodbus_client(mux.port) as client,
    ):
        answer = await client.read_holding_registers(0, count=4, device_id=1)
        assert not answer.isError(), answer
        assert list(answer.registers) == [register_value(SERIAL_BASE, a) for a in range(4)]
        written = await client.write_register(7, 99, device_id=1)
        assert not written.isError(), written
        # An echo that differs from what was sent fails that request, not the line.
        line.garble_echo = True
        failed = await client.read_holding_registers(0, count=1, device_id=1)
        assert failed.isError()
        assert failed.exception_code == GATEWAY_TARGET_FAILED
        again = await client.read_holding_registers(7, count=1, device_id=1)
        assert list(again.registers) == [99]
        assert mux.pool.connections == 1


async def test_without_local_echo_an_echoing_adapter_gets_nothing_right() -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        pty_pair(echo=True) as line,
        serial_device(line.device_end, base=SERIAL_BASE),
        multiplexer(serial_url(line.mux_end), answer_timeout=1.0) as mux,
        pymodbus_client(mux.port) as client,
    ):
        answer = await client.read_holding_registers(0, count=4, device_id=1)
        assert answer.isError(), "the echo is taken for a (damaged) answer"


async def test_rs485_settings_are_taken_and_a_driver_without_them_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tcp_multiplexer")
    url = "&rs485=1&rts-level-for-tx=1&rts-delay-before-tx=2&rts-delay-after-tx=1"
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        pty_pair() as line,
        serial_device(line.device_end, base=SERIAL_BASE),
        multiplexer(serial_url(line.mux_end) + url) as mux,
        pymodbus_client(mux.port) as client,
    ):
        answer = await client.read_holding_registers(0, count=2, device_id=1)
        assert not answer.isError(), answer
    assert any("does not switch RTS for RS-485" in message for message in caplog.messages)
    target = parse_target_url(serial_url("/dev/ttyUSB0") + url)
    assert (target.rs485, target.rts_delay_before_tx, target.rts_delay_after_tx) == (
        True,
        0.002,
        0.001,
    )
    assert parse_target_url(str(target)) == target


# ---------------------------------------------------------------------------- a serial listener


@contextlib.asynccontextmanager
async def serial_master(port: str) -> AsyncIterator[Any]:
    """pymodbus's serial (RTU) client on `port`, 19,200 8N1: a master on the line."""
    from pymodbus.client import AsyncModbusSerialClient

    master = AsyncModbusSerialClient(
        port,
        framer=FramerType.RTU,
        baudrate=19200,
        parity="N",
        stopbits=1,
        bytesize=8,
        timeout=0.5,
        retries=0,
    )
    try:
        assert await master.connect()
        yield master
    finally:
        master.close()


async def test_a_serial_listener_answers_its_units_on_the_line_and_stays_silent_for_others() -> (
    None
):
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        modbus_device() as device,
        pty_pair() as line,
    ):
        listen = f"serial://{line.mux_end}?baudrate=19200&parity=N&stopbits=1&units=1-2"
        config = mux_config(
            device.port,
            protocol=ProtocolName.MODBUS,
            listen=(parse_listen(listen), Address(LOOPBACK, 0)),
            timeout=0.5,
        )
        async with (
            running_multiplexer(config) as mux,
            serial_master(line.device_end) as master,
            pymodbus_client(mux.port) as tcp_client,
        ):
            answer = await master.read_holding_registers(3, count=4, device_id=1)
            assert not answer.isError(), answer
            assert list(answer.registers) == [holding_value(a) for a in range(3, 7)]
            written = await master.write_register(9, 777, device_id=2)
            assert not written.isError(), written
            # A TCP client of the same bridge sees what the line's master wrote.
            back = await tcp_client.read_holding_registers(9, count=1, device_id=2)
            assert list(back.registers) == [777]
            # Unit 5 is not served here: silence, as on a bus (the master times out).
            answers_before = sum(1 for _at, towards_master in line.chunks if towards_master)
            try:
                silent = await master.read_holding_registers(0, count=1, device_id=5)
            except ModbusException:
                silent = None
            assert silent is None or silent.isError()
            answers_after = sum(1 for _at, towards_master in line.chunks if towards_master)
            assert answers_after == answers_before, "nothing was sent on the line"
            again = await master.read_holding_registers(3, count=1, device_id=1)
            assert list(again.registers) == [holding_value(3)]
            assert "serial://" in " ".join(mux.sockets)


def test_a_serial_listener_needs_its_units_and_a_port_of_its_own() -> None:
    from tcp_multiplexer.errors import ConfigError

    with pytest.raises(ConfigError, match="name the units"):
        mux_config(1, protocol=ProtocolName.MODBUS, listen=(parse_listen("serial:///dev/x"),))
    with pytest.raises(ConfigError, match="listened on or sent to"):
        mux_config(
            1,
            protocol=ProtocolName.MODBUS,
            target=parse_target_url("serial:///dev/x"),
            listen=(parse_listen("serial:///dev/x?units=1"),),
        )
