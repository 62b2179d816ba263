"""Benchmark: the typical home setup, one inverter shared by six pollers.

    .venv/bin/python bench/home_setup.py [--duration 10]

A simulated Modbus device (answers in 30 ms, accepts ONE connection) runs in this
process; the multiplexer runs as a subprocess (`python -m tcp_multiplexer server`), so
the client load does not share its event loop. Six clients poll through it every
100 ms: four read the same 40 registers (Home Assistant, evcc, a logger, a vendor app
all wanting the live power values), two read ranges of their own. Every answer is
checked: transaction id, unit, function, and each register value.

Each configuration runs for `--duration` seconds against a fresh device and
multiplexer: coalescing and cache off, coalescing on, coalescing plus a 1 s cache.
The result is a Markdown table on stdout; progress goes to stderr. Everything listens
on loopback only, and everything started is stopped again, also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import struct
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Final

from mux_process import START_TIMEOUT, STOP_TIMEOUT, MultiplexerProcess

from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.options import parse_duration
from tcp_multiplexer.protocols.modbus.device import holding_register_value
from tcp_multiplexer.protocols.modbus.mbap import (
    MBAP_HEADER_SIZE,
    FunctionCode,
    build_adu,
    read_request,
)
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets.server import TargetConfig, TargetServer

LOOPBACK: Final = "127.0.0.1"
DEVICE_DELAY: Final = 0.030
POLL_INTERVAL: Final = 0.100
REQUEST_TIMEOUT: Final = 5.0
"""The multiplexer's --timeout, and how long a client waits for any answer."""


@dataclass(frozen=True, slots=True)
class Poller:
    """One client: what it reads."""

    name: str
    address: int
    count: int
    unit: int = 1


POLLERS: Final = (
    Poller("home-assistant", 30000, 40),
    Poller("evcc", 30000, 40),
    Poller("logger", 30000, 40),
    Poller("vendor-app", 30000, 40),
    Poller("battery-script", 32000, 20),
    Poller("heat-pump-bridge", 40000, 10),
)
"""Four poll the same 40 registers; two poll ranges of their own."""


@dataclass(frozen=True, slots=True)
class Setup:
    label: str
    flags: tuple[str, ...]


SETUPS: Final = (
    Setup("coalescing and cache off", ("--no-coalesce",)),
    Setup("coalescing on (default)", ()),
    Setup("coalescing on, --busy-poll 0", ("--busy-poll", "0")),
    Setup("coalescing + cache-ttl 1s", ("--cache-ttl", "1s")),
)
"""The default with and without polling after I/O: at this load polling cannot help, so
it must cost next to nothing (issue 9: at most 1.2 times the CPU time without it)."""


@dataclass(slots=True)
class Tally:
    """What the clients saw during one run."""

    latencies: list[float] = field(default_factory=list)
    wrong: int = 0
    """Answers with a wrong id, unit, function or value (0 is the only acceptable count)."""
    failed: int = 0
    """Exception answers, timeouts, lost connections."""
    skipped: int = 0
    """Polls skipped because the previous one was still waiting."""


@dataclass(frozen=True, slots=True)
class Result:
    setup: Setup
    seconds: float
    tally: Tally
    device_requests: int
    device_connections: int
    gateway_events: dict[str, int]
    cpu_seconds: float
    """The multiplexer's user + system CPU time while the clients polled."""


def poll_request(tid: int, poller: Poller) -> bytes:
    return read_request(tid, poller.unit, poller.address, poller.count)


def expected_answer(tid: int, poller: Poller) -> bytes:
    values = [holding_register_value(poller.unit, poller.address + i) for i in range(poller.count)]
    pdu = struct.pack(
        f">BB{poller.count}H", FunctionCode.READ_HOLDING_REGISTERS, 2 * poller.count, *values
    )
    return build_adu(tid, poller.unit, pdu)


async def read_adu(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(MBAP_HEADER_SIZE)
    (length,) = struct.unpack_from(">H", header, 4)
    return header + await reader.readexactly(length - 1)


async def poll(port: int, poller: Poller, until: float, phase: float, tally: Tally) -> None:
    """Poll every POLL_INTERVAL (fixed rate, starting `phase` seconds in) until `until`."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        tid = 0
        due = loop.time() + phase
        while due < until:
            await asyncio.sleep(max(0.0, due - loop.time()))
            tid = (tid + 1) & 0xFFFF
            sent_at = loop.time()
            writer.write(poll_request(tid, poller))
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    answer = await read_adu(reader)
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                tally.failed += 1
                return
            tally.latencies.append(loop.time() - sent_at)
            if answer != expected_answer(tid, poller):
                if len(answer) > MBAP_HEADER_SIZE and answer[MBAP_HEADER_SIZE] & 0x80:
                    tally.failed += 1
                else:
                    tally.wrong += 1
            due += POLL_INTERVAL
            while due < loop.time():  # too late for this slot: skip it, never burst
                due += POLL_INTERVAL
                tally.skipped += 1
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def device() -> AsyncIterator[TargetServer]:
    config = TargetConfig(
        protocol=ProtocolName.MODBUS, host=LOOPBACK, delay=DEVICE_DELAY, max_connections=1
    )
    async with TargetServer(config) as target:
        yield target


async def run_setup(setup: Setup, duration: float, seed: int) -> Result:
    phases = random.Random(seed)
    async with device() as target:
        mux = MultiplexerProcess(
            [
                "-p",
                "modbus",
                "-t",
                f"{LOOPBACK}:{target.port}",
                "-l",
                f"{LOOPBACK}:0",
                "--timeout",
                str(REQUEST_TIMEOUT),
                *setup.flags,
            ]
        )
        async with mux:
            port = mux.port
            tally = Tally()
            loop = asyncio.get_running_loop()
            started = loop.time()
            cpu_before = mux.cpu_seconds()
            until = started + duration
            async with asyncio.TaskGroup() as group:
                for poller in POLLERS:
                    phase = phases.uniform(0, POLL_INTERVAL)
                    group.create_task(poll(port, poller, until, phase, tally), name=poller.name)
            seconds = loop.time() - started
            cpu = mux.cpu_seconds() - cpu_before
            device_requests = target.stats.requests
        return Result(
            setup=setup,
            seconds=seconds,
            tally=tally,
            device_requests=device_requests,
            device_connections=target.stats.accepted,
            cpu_seconds=cpu,
            gateway_events=mux.final_events(),
        )


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of `samples` (0 if empty)."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def markdown_table(results: Sequence[Result]) -> str:
    header = (
        "| configuration | answers/s | p50 latency | p99 latency | device requests "
        "(per s) | coalesced | cache hits | polls missed | wrong answers | failed "
        "| multiplexer CPU |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = []
    for result in results:
        tally = result.tally
        answers = len(tally.latencies)
        events = result.gateway_events
        rows.append(
            f"| {result.setup.label} "
            f"| {answers / result.seconds:.1f} "
            f"| {percentile(tally.latencies, 0.50) * 1e3:.1f} ms "
            f"| {percentile(tally.latencies, 0.99) * 1e3:.1f} ms "
            f"| {result.device_requests} ({result.device_requests / result.seconds:.1f}) "
            f"| {events.get('coalesced', 0)} "
            f"| {events.get('image_answers', 0)} "
            f"| {tally.skipped} "
            f"| {tally.wrong} "
            f"| {tally.failed} "
            f"| {result.cpu_seconds / result.seconds * 100:.2f} % of a core |"
        )
    return "\n".join([header, *rows])


async def main_async(duration: float, seed: int) -> list[Result]:
    results: list[Result] = []
    # SIGTERM stops the run like Ctrl-C does: cancelled, so every `finally` cleans up.
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    # A bound on the whole run, whatever happens: each setup takes `duration` plus start-up.
    async with asyncio.timeout(len(SETUPS) * (duration + START_TIMEOUT + STOP_TIMEOUT)):
        for setup in SETUPS:
            print(f"running: {setup.label} for {duration:g}s ...", file=sys.stderr, flush=True)
            result = await run_setup(setup, duration, seed)
            results.append(result)
            if result.tally.wrong or result.tally.failed:
                print(
                    f"  {result.tally.wrong} wrong and {result.tally.failed} failed answers",
                    file=sys.stderr,
                )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--duration",
        default="10",
        help="seconds per configuration (or 500ms, 1m; default: 10)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the pollers' phases")
    args = parser.parse_args(argv)
    try:
        duration = parse_duration(args.duration)
    except ConfigError as exc:
        parser.error(str(exc))
    if duration <= 0:
        parser.error("--duration must be positive")
    started = time.monotonic()
    try:
        results = asyncio.run(main_async(duration, args.seed))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    print(
        f"\n{len(POLLERS)} clients (4 on the same 40 registers, 2 on their own ranges), "
        f"polling every {POLL_INTERVAL * 1e3:.0f} ms; device answers in "
        f"{DEVICE_DELAY * 1e3:.0f} ms and accepts one connection; "
        f"{duration:g} s per configuration.\n"
    )
    print(markdown_table(results))
    print(f"\n(total {time.monotonic() - started:.1f} s)", file=sys.stderr)
    wrong = sum(result.tally.wrong for result in results)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
