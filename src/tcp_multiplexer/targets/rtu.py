"""The example Modbus device on an RTU line: a serial port (a pseudo-terminal) or RTU
frames over TCP (what an RTU-over-TCP converter puts on its socket).

`RtuLine` holds one simulated RS-485 line with the example device on it (every unit
id, as `ModbusDevice` answers). With a baud rate, the line's timing is simulated: a
pseudo-terminal carries bytes at once, so the device waits what the request took on
the wire, the 3.5 characters of silence that end a frame, and what its answer takes,
before the answer appears; requests are served one at a time, as one line does. A
broadcast (unit 0) is carried out and not answered. A frame with a bad CRC is ignored,
as a device on a line ignores it. The times run from when the request's bytes arrived;
with `precise`, the line sleeps to within a millisecond of each answer's time and
spins the rest (a benchmark's instrument: the event loop's timers are only good to a
millisecond, which at 115,200 baud is a sixth of a transaction).

    tcp-multiplexer example-server modbus --serial            # prints the port to use
    tcp-multiplexer example-server modbus --rtu -l 5502 --baudrate 9600
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import tty
from dataclasses import dataclass, field
from typing import Final

from tcp_multiplexer.errors import FramingError
from tcp_multiplexer.protocols.modbus.device import ModbusDevice
from tcp_multiplexer.protocols.modbus.mbap import build_adu
from tcp_multiplexer.protocols.modbus.rtu import BROADCAST, RtuRequestFramer, with_crc
from tcp_multiplexer.target import SERIAL, Target

logger = logging.getLogger(__name__)

READ_SIZE: Final = 4096
SPIN: Final = 0.0015
"""A precise line sleeps until this close to an answer's time, then spins."""


@dataclass(slots=True)
class LineStats:
    """What the line saw (tests and the benchmark read it)."""

    requests: int = 0
    answers: int = 0
    broadcasts: int = 0
    damaged: int = 0
    """Frames ignored for a bad CRC or an unknown function."""
    busy_seconds: float = 0.0
    """Time the simulated line was carrying a transaction."""
    units: dict[int, int] = field(default_factory=dict)
    """Requests per unit id."""


class RtuLine:
    """One simulated line with the example device (see the module docstring)."""

    def __init__(
        self,
        device: ModbusDevice | None = None,
        *,
        baudrate: int | None = None,
        parity: str = "N",
        stopbits: int = 2,
        delay: float = 0.0,
        units: frozenset[int] | None = None,
        precise: bool = False,
    ) -> None:
        """`baudrate`: simulate that line's timing (None: answer at once). `delay`: the
        device's own processing time per request. `units`: the unit ids that answer
        (None: every one); a request to another unit meets silence. `precise`: keep
        the timing to a few microseconds, spinning the last millisecond of each wait."""
        self.device = device if device is not None else ModbusDevice()
        self.timing = (
            Target(SERIAL, None, "line", baudrate, parity, stopbits, 8)
            if baudrate is not None
            else None
        )
        self.delay = delay
        self.units = units
        self.precise = precise
        self.stats = LineStats()
        self._lock = asyncio.Lock()
        """One transaction on the line at a time, whoever sent it."""

    async def _until(self, due: float) -> None:
        """Wait until `due` (time.perf_counter())."""
        left = due - time.perf_counter()
        if not self.precise:
            if left > 0:
                await asyncio.sleep(left)
            return
        if left > SPIN:
            await asyncio.sleep(left - SPIN)
        while time.perf_counter() < due:
            pass

    async def handle(self, frame: bytes, arrived: float | None = None) -> bytes | None:
        """The answer frame to a request frame (CRC checked by the framer) that
        arrived at `arrived` (time.perf_counter(); default now), when due; None for a
        broadcast or a unit that is not on the line."""
        async with self._lock:
            started = time.perf_counter()
            if arrived is None or arrived < started - (self.timing.silence if self.timing else 0):
                arrived = started  # it waited for the line: its time runs from now
            stats = self.stats
            stats.requests += 1
            unit = frame[0]
            stats.units[unit] = stats.units.get(unit, 0) + 1
            # The device hears the frame once it is on the wire and the line went quiet.
            wait = self.delay
            timing = self.timing
            if timing is not None:
                wait += timing.transmit_time(len(frame)) + timing.silence
            adu = build_adu(0, unit, frame[1:-2])
            answer = self.device.answer(adu).data
            if unit == BROADCAST:
                stats.broadcasts += 1
                await self._until(arrived + wait)
                stats.busy_seconds += wait
                return None
            if self.units is not None and unit not in self.units:
                return None
            reply = with_crc(answer[6:])
            if timing is not None:
                wait += timing.transmit_time(len(reply))
            await self._until(arrived + wait)
            stats.busy_seconds += wait
            stats.answers += 1
            return reply


class _RtuConnection(asyncio.Protocol):
    """RTU frames over one TCP connection, or one serial port's byte stream."""

    def __init__(self, line: RtuLine) -> None:
        self._line = line
        self._framer = RtuRequestFramer()
        self._transport: asyncio.Transport | None = None
        self._queue: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue()
        """Frames, with the time they arrived (time.perf_counter())."""
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        framer = self._framer
        while True:
            try:
                frames = framer.feed(data)
            except FramingError as exc:
                self._line.stats.damaged += 1
                logger.debug("ignored a damaged frame: %s", exc)
                return
            arrived = time.perf_counter()
            for frame in frames:
                self._queue.put_nowait((frame, arrived))
            if not frames or not framer.buffered:
                return
            data = b""  # good frames came first: a damaged one may be held

    async def _serve(self) -> None:
        while True:
            frame, arrived = await self._queue.get()
            reply = await self._line.handle(frame, arrived)
            if reply is not None and self._transport is not None:
                self._transport.write(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._task is not None:
            self._task.cancel()


async def serve_rtu_over_tcp(line: RtuLine, host: str, port: int) -> asyncio.Server:
    """Serve `line` as an RTU-over-TCP converter does, on `host`:`port`."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _RtuConnection(line), host or None, port)


class PtyLine:
    """The device on a serial port: by default a pseudo-terminal pair with `line`
    behind its master end (open `path` as the serial port; the slave end is held open
    too, so the master never reads EIO while nobody has the port open); or a port
    given by `device` (one end of a socat pair, a real adapter), opened raw."""

    def __init__(self, line: RtuLine, device: str | None = None) -> None:
        self.line = line
        if device is None:
            self._master, self._slave = os.openpty()
            tty.setraw(self._slave)
            self.path = os.ttyname(self._slave)
        else:
            self._master = os.open(device, os.O_RDWR | os.O_NOCTTY)
            tty.setraw(self._master)
            self._slave = -1
            self.path = device
        os.set_blocking(self._master, False)
        self._protocol = _RtuConnection(line)
        self._transport: _PtyTransport | None = None

    def start(self) -> None:
        self._transport = _PtyTransport(self._master)
        self._protocol.connection_made(self._transport)
        asyncio.get_running_loop().add_reader(self._master, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._master, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: the other end closed; the held slave keeps it rare
            return
        if data:
            self._protocol.data_received(data)

    def close(self) -> None:
        with contextlib.suppress(ValueError, RuntimeError):
            asyncio.get_running_loop().remove_reader(self._master)
        self._protocol.connection_lost(None)
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


class _PtyTransport(asyncio.Transport):
    """Writes to the master end (the device's answers)."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(bytes(data))
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:
                continue
            view = view[written:]
