"""Real peers for serial and RTU tests: a pseudo-terminal pair standing in for an
RS-485 line, pymodbus's serial server and its RTU-over-TCP server as devices, and a
small RTU device that misbehaves on purpose.

Every peer is a context manager that stops what it started, also when the test fails.
The CRCs of the misbehaving device come from pymodbus, not from the code under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
import tty
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final

from pymodbus import FramerType
from pymodbus.framer.rtu import FramerRTU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from tests.helpers import LOOPBACK
from tests.peers import listening_port

REGISTERS: Final = 100


def register_value(base: int, address: int) -> int:
    """Holding register `address` of the device whose values start at `base`."""
    return (base + address) & 0xFFFF


def sim_device(unit: int, base: int) -> SimDevice:
    """A pymodbus device on `unit` (0: every unit) with holding registers 0..99 =
    base + address, and 16 coils and inputs."""
    return SimDevice(
        unit,
        simdata=(
            [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
            [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
            [
                SimData(
                    0,
                    values=[register_value(base, a) for a in range(REGISTERS)],
                    datatype=DataType.REGISTERS,
                )
            ],
            [SimData(0, values=[0] * REGISTERS, datatype=DataType.REGISTERS)],
        ),
    )


def crc(frame: bytes) -> bytes:
    """The Modbus CRC-16 of `frame`, low byte first, as pymodbus computes it."""
    value = FramerRTU.compute_CRC(frame)
    return struct.pack(">H", value)


class PtyPair:
    """Two pseudo-terminals joined master to master: what is written to one slave end
    is read from the other, like the two ends of a null-modem cable (or of socat's
    ``pty pty``). The slave ends are held open so neither master reads EIO while
    nobody has its port open. `unplug()` closes everything, as pulling a USB adapter
    does to the process that has the port open."""

    def __init__(self, *, echo: bool = False) -> None:
        self.echo = echo
        """A half-duplex adapter: what the multiplexer sends comes back to it too."""
        self.garble_echo = False
        """Change the next echo's last byte (a collision on the line)."""
        self._masters: list[int] = []
        self._slaves: list[int] = []
        for _end in range(2):
            master, slave = os.openpty()
            tty.setraw(slave)
            os.set_blocking(master, False)
            self._masters.append(master)
            self._slaves.append(slave)
        self.mux_end = os.ttyname(self._slaves[0])
        """Open this as the multiplexer's serial port."""
        self.device_end = os.ttyname(self._slaves[1])
        """Open this as the device's serial port."""
        self.carried = 0
        self.chunks: list[tuple[float, bool]] = []
        """(time.monotonic() when read, True if it went towards the device) per chunk."""
        self._open = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        first, second = self._masters
        loop.add_reader(first, self._pump, first, second)
        loop.add_reader(second, self._pump, second, first)
        self._towards_device = second
        self._open = True

    def _pump(self, source: int, sink: int) -> None:
        try:
            data = os.read(source, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(sink, view) :]
            except BlockingIOError:
                continue
        self.carried += len(data)
        self.chunks.append((time.monotonic(), sink == self._towards_device))
        if self.echo and sink == self._towards_device:
            echo = bytearray(data)
            if self.garble_echo:
                self.garble_echo = False
                echo[-1] ^= 0xFF
            view = memoryview(bytes(echo))
            while view:
                try:
                    view = view[os.write(source, view) :]
                except BlockingIOError:
                    continue

    def silences(self) -> list[float]:
        """Each pause between the last chunk of an answer and the next request."""
        pauses = []
        last_answer: float | None = None
        for at, towards_device in self.chunks:
            if not towards_device:
                last_answer = at
            elif last_answer is not None:
                pauses.append(at - last_answer)
                last_answer = None
        return pauses

    def unplug(self) -> None:
        if not self._open:
            return
        self._open = False
        loop = asyncio.get_running_loop()
        for fd in self._masters:
            loop.remove_reader(fd)
        for fd in (*self._masters, *self._slaves):
            with contextlib.suppress(OSError):
                os.close(fd)


@contextlib.asynccontextmanager
async def pty_pair(*, echo: bool = False) -> AsyncIterator[PtyPair]:
    pair = PtyPair(echo=echo)
    pair.start()
    try:
        yield pair
    finally:
        pair.unplug()


@contextlib.asynccontextmanager
async def serial_device(
    port: str, *, unit: int = 0, base: int = 5000, baudrate: int = 19200
) -> AsyncIterator[ModbusSerialServer]:
    """pymodbus's serial (RTU) server on `port`, 8N1: the RS-485 device."""
    server = ModbusSerialServer(
        sim_device(unit, base),
        framer=FramerType.RTU,
        port=port,
        baudrate=baudrate,
        parity="N",
        stopbits=1,
        bytesize=8,
    )
    await server.serve_forever(background=True)
    try:
        yield server
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]


class RtuOverTcpDevice(ModbusTcpServer):
    """pymodbus's TCP server with its RTU framer: an RTU-over-TCP converter with a
    device behind it."""

    def __init__(self, unit: int, base: int) -> None:
        super().__init__(sim_device(unit, base), framer=FramerType.RTU, address=(LOOPBACK, 0))

    @property
    def port(self) -> int:
        return listening_port(self)


@contextlib.asynccontextmanager
async def rtu_over_tcp_device(
    *, unit: int = 0, base: int = 7000
) -> AsyncIterator[RtuOverTcpDevice]:
    server = RtuOverTcpDevice(unit, base)
    await server.serve_forever(background=True)
    try:
        yield server
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]


# ---------------------------------------------------------------------------- a faulty device

BAD_CRC: Final = 100
"""Reading this holding register gets an answer with a wrong CRC."""
CUT_SHORT: Final = 101
"""... an answer that stops after three bytes."""
SILENT: Final = 102
"""... no answer at all."""


@dataclass
class FaultyRtuDevice:
    """RTU over TCP, one connection: reads of holding registers answer `address + i`,
    except at the addresses above; a write to unit 0 (a broadcast) is noted and not
    answered; with `units`, other units meet silence, as on a bus. Requests are the
    8-byte kind (functions 3 and 6)."""

    units: frozenset[int] | None = None

    requests: list[tuple[int, int, int]] = field(default_factory=list)
    """(unit, function, address) of every request, in order."""
    broadcasts: int = 0
    connections: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while True:
                frame = await reader.readexactly(8)
                unit, function, address, count = struct.unpack(">BBHH", frame[:6])
                assert crc(frame[:6]) == frame[6:], "the multiplexer sent a good CRC"
                self.requests.append((unit, function, address))
                if unit == 0:
                    self.broadcasts += 1
                    continue
                if self.units is not None and unit not in self.units:
                    continue
                if function == 6:
                    writer.write(frame)
                    continue
                data = b"".join(struct.pack(">H", address + i) for i in range(count))
                body = bytes((unit, function, len(data))) + data
                answer = body + crc(body)
                if address == BAD_CRC:
                    answer = body + bytes(b ^ 0xFF for b in crc(body))
                elif address == CUT_SHORT:
                    answer = answer[:3]
                elif address == SILENT:
                    continue
                writer.write(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FaultyRtuDevice]:
        self._server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()
