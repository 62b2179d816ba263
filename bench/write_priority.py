"""Benchmark: a control write while clients keep the device's queue full of reads.

    .venv/bin/python bench/write_priority.py [--duration 20] [--readers 4,8]

A simulated Modbus device answers in 50 ms on one connection; the multiplexer runs as a
subprocess (`python -m tcp_multiplexer server -p modbus`). Each reader client keeps
four reads outstanding at all times (pipelined), so requests always wait; a writer
client writes one holding register once a second (a battery's charge limit, a
wallbox's current) and checks every answer. Each reader count runs for `--duration`
seconds against a fresh device and multiplexer.

The table: per reader count, the writes' p50/p99/max time from request to answer, the
reads' p50/p99, and the goal: a write waits at most for the request on the line and
its own answer, so its p99 stays under two device answers plus 20 ms, however many
readers queue. Everything listens on loopback; everything started is stopped again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import struct
import sys
import time
from collections.abc import Sequence
from typing import Final

from mux_process import MultiplexerProcess

from tcp_multiplexer.protocols.modbus.mbap import FunctionCode, build_adu, read_request
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets.server import TargetConfig, TargetServer

LOOPBACK: Final = "127.0.0.1"
DEVICE_DELAY: Final = 0.050
OUTSTANDING: Final = 4
"""Reads each reader keeps waiting at once."""
WRITE_EVERY: Final = 1.0
GOAL_S: Final = 2 * DEVICE_DELAY + 0.020


async def read_adu(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(6)
    (length,) = struct.unpack(">H", head[4:6])
    return head + await reader.readexactly(length)


async def keep_reading(port: int, index: int, latencies: list[float], stop: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    sent: dict[int, float] = {}
    tid = 0

    def ask() -> None:
        nonlocal tid
        tid = (tid + 1) & 0xFFFF
        sent[tid] = time.perf_counter()
        writer.write(read_request(tid, 1, 100 * index, 10))

    try:
        for _ in range(OUTSTANDING):
            ask()
        while not stop.is_set():
            answer = await read_adu(reader)
            (answered,) = struct.unpack(">H", answer[:2])
            latencies.append(time.perf_counter() - sent.pop(answered))
            if answer[7] != FunctionCode.READ_HOLDING_REGISTERS:
                raise RuntimeError(f"reader {index}: not an answer: {answer.hex()}")
            ask()
    finally:
        writer.close()


async def keep_writing(port: int, latencies: list[float], stop: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    tid = 0
    try:
        while not stop.is_set():
            tid = (tid + 1) & 0xFFFF
            request = build_adu(
                tid, 1, struct.pack(">BHH", FunctionCode.WRITE_SINGLE_REGISTER, 40100, tid)
            )
            started = time.perf_counter()
            writer.write(request)
            answer = await read_adu(reader)
            latencies.append(time.perf_counter() - started)
            if answer != request:
                raise RuntimeError(f"the write was not echoed: {answer.hex()}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WRITE_EVERY):
                    await stop.wait()
    finally:
        writer.close()


def quantile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def run_case(readers: int, duration: float) -> dict[str, float]:
    async with TargetServer(
        TargetConfig(protocol=ProtocolName.MODBUS, host=LOOPBACK, delay=DEVICE_DELAY)
    ) as device:
        args = ["-p", "modbus", "-t", f"{LOOPBACK}:{device.port}", "-l", f"{LOOPBACK}:0"]
        async with MultiplexerProcess([*args, "--timeout", "30s"]) as mux:
            stop = asyncio.Event()
            reads: list[float] = []
            writes: list[float] = []
            tasks = [
                asyncio.create_task(keep_reading(mux.port, index, reads, stop))
                for index in range(readers)
            ]
            tasks.append(asyncio.create_task(keep_writing(mux.port, writes, stop)))
            await asyncio.sleep(duration)
            stop.set()
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for result in results:
                if isinstance(result, Exception) and not isinstance(result, asyncio.CancelledError):
                    raise result
    return {
        "writes": len(writes),
        "write_p50": statistics.median(writes),
        "write_p99": quantile(writes, 0.99),
        "write_max": max(writes),
        "read_p50": statistics.median(reads),
        "read_p99": quantile(reads, 0.99),
    }


async def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per case")
    parser.add_argument("--readers", default="4,8", help="reader counts, comma-separated")
    args = parser.parse_args(argv)
    counts = [int(text) for text in args.readers.split(",")]
    print(
        f"device answers in {DEVICE_DELAY * 1e3:.0f} ms on one connection; each reader keeps "
        f"{OUTSTANDING} reads waiting; one write a second; goal: write p99 <= "
        f"{GOAL_S * 1e3:.0f} ms\n"
    )
    print("| readers | writes | write p50 | write p99 | write max | read p50 | read p99 | goal |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    met = True
    for count in counts:
        print(f"running {count} readers for {args.duration:g}s", file=sys.stderr)
        figures = await run_case(count, args.duration)
        ok = figures["write_p99"] <= GOAL_S
        met = met and ok
        print(
            f"| {count} | {figures['writes']:.0f} | {figures['write_p50'] * 1e3:.0f} ms "
            f"| {figures['write_p99'] * 1e3:.0f} ms | {figures['write_max'] * 1e3:.0f} ms "
            f"| {figures['read_p50'] * 1e3:.0f} ms | {figures['read_p99'] * 1e3:.0f} ms "
            f"| {'met' if ok else 'NOT met'} |",
            flush=True,
        )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
