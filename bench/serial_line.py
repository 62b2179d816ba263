"""Benchmark: a serial line shared by 16 clients, against what the line can carry.

    .venv/bin/python bench/serial_line.py [--duration 20] [--baudrates 9600,115200]

The example device sits on a simulated RS-485 line behind a pseudo-terminal in this
process (`RtuLine`: a request takes its time on the wire, then the 3.5 characters of
silence that end a frame, then the answer's time on the wire; one transaction at a
time), timed from the request's arrival to a few microseconds (`precise`: it spins the
last millisecond of each wait), so the time above the line's is the multiplexer's and
the pseudo-terminal's. The multiplexer runs as a subprocess (`python -m tcp_multiplexer server -t
serial://...`), opening the pty as its serial port. 16 Modbus/TCP clients each read
10 holding registers of their own (no two alike, so nothing is coalesced) as fast as
answers come, and every answer is checked.

The line's capacity per second, from the frame sizes, 11 bits a character (8 data
bits, a start bit and two stop bits or one parity and one stop bit) and the two
silences of each transaction (after the request, and after the answer before the next
request; 3.5 characters, or 1.75 ms above 19,200 baud):

    capacity = 1 / ((8 + 25) characters x 11 bits / baud + 2 x silence)

The goal is >= 0.9 of it at 9,600 and at 115,200 baud. The multiplexer's own share
of each transaction is shown as its CPU time per transaction (from /proc) and as the
wall time per transaction above the line's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import struct
import sys
import time
from dataclasses import dataclass
from typing import Final

from mux_process import MultiplexerProcess

from tcp_multiplexer.protocols.modbus.device import holding_register_value
from tcp_multiplexer.protocols.modbus.mbap import build_adu
from tcp_multiplexer.targets.rtu import PtyLine, RtuLine

CLIENTS: Final = 16
REGISTERS: Final = 10
REQUEST_CHARS: Final = 8
"""unit, function, address, count, CRC."""
ANSWER_CHARS: Final = 5 + 2 * REGISTERS
"""unit, function, byte count, the registers, CRC."""
BITS_PER_CHAR: Final = 11
WARM_UP: Final = 2.0


def silence(baudrate: int) -> float:
    """3.5 character times, fixed at 1.75 ms above 19,200 baud."""
    return 0.00175 if baudrate > 19200 else 3.5 * BITS_PER_CHAR / baudrate


def capacity(baudrate: int) -> float:
    """Transactions per second the line carries with the required silences."""
    wire = (REQUEST_CHARS + ANSWER_CHARS) * BITS_PER_CHAR / baudrate
    return 1.0 / (wire + 2 * silence(baudrate))


@dataclass
class Result:
    baudrate: int
    transactions: int
    seconds: float
    mux_cpu: float
    errors: int

    @property
    def rate(self) -> float:
        return self.transactions / self.seconds


async def client(port: int, index: int, stop: asyncio.Event, counts: list[int]) -> int:
    """Read this client's 10 registers until `stop`; the number of wrong answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    address = index * REGISTERS
    expected = [holding_register_value(1, address + i) for i in range(REGISTERS)]
    errors = 0
    tid = 0
    try:
        while not stop.is_set():
            tid = (tid + 1) & 0xFFFF
            writer.write(build_adu(tid, 1, struct.pack(">BHH", 3, address, REGISTERS)))
            header = await reader.readexactly(7)
            body = await reader.readexactly(struct.unpack(">H", header[4:6])[0] - 1)
            values = list(struct.unpack(f">{REGISTERS}H", body[2:])) if body[0] == 3 else []
            if int.from_bytes(header[:2], "big") != tid or values != expected:
                errors += 1
            counts[index] += 1
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return errors


async def measure(baudrate: int, duration: float) -> Result:
    line = RtuLine(baudrate=baudrate, parity="N", stopbits=2, precise=True)
    pty = PtyLine(line)
    pty.start()
    url = f"serial://{pty.path}?baudrate={baudrate}&parity=N&stopbits=2"
    try:
        async with MultiplexerProcess(
            ["-p", "modbus", "-t", url, "-l", "127.0.0.1:0", "--timeout", "2s"]
        ) as mux:
            stop = asyncio.Event()
            counts = [0] * CLIENTS
            tasks = [
                asyncio.create_task(client(mux.port, index, stop, counts))
                for index in range(CLIENTS)
            ]
            await asyncio.sleep(WARM_UP)
            start_count, start_cpu, started = sum(counts), mux.cpu_seconds(), time.monotonic()
            await asyncio.sleep(duration)
            transactions = sum(counts) - start_count
            seconds = time.monotonic() - started
            cpu = mux.cpu_seconds() - start_cpu
            stop.set()
            errors = sum(await asyncio.gather(*tasks))
    finally:
        pty.close()
    return Result(baudrate, transactions, seconds, cpu, errors)


def table(results: list[Result]) -> str:
    rows = [
        "| baud | line capacity /s | measured /s | ratio (goal >= 0.9) | line time per "
        "transaction | wall time above it | multiplexer CPU per transaction | wrong answers |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        line_time = 1.0 / capacity(result.baudrate)
        measured_time = 1.0 / result.rate
        ratio = result.rate / capacity(result.baudrate)
        rows.append(
            f"| {result.baudrate:,} | {capacity(result.baudrate):.1f} | {result.rate:.1f} | "
            f"{ratio:.3f} {'met' if ratio >= 0.9 else 'NOT met'} | {line_time * 1e3:.2f} ms | "
            f"{(measured_time - line_time) * 1e3:.2f} ms | "
            f"{result.mux_cpu / result.transactions * 1e6:.0f} µs | {result.errors} |"
        )
    return "\n".join(rows)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per baud rate")
    parser.add_argument("--baudrates", default="9600,115200", help="comma-separated")
    args = parser.parse_args(argv)
    results = []
    for baudrate in (int(text) for text in args.baudrates.split(",")):
        print(f"{baudrate} baud: {args.duration:g} s with {CLIENTS} clients", file=sys.stderr)
        results.append(await measure(baudrate, args.duration))
    print(table(results))
    return 0 if all(result.errors == 0 for result in results) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
