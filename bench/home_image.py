"""Benchmark: a real home on one slow device, without and with the register image.

    .venv/bin/python bench/home_image.py [--duration 60 | --quick] [--seed 1]

The project's example Modbus device (`ChangingDevice` below) answers in 40 ms on ONE
connection, in this process; the multiplexer runs as a subprocess. Register A of table
T read in second k of the device's life holds (k * 1009 + A * 7 + offset(T)) & 0xFFFF,
computed as the device answers, so each value tells when it was read; holding register
44 holds what was last written to it instead (0 before the first write).

Five clients on unit 1, each on its own connection with one request at a time, at fixed
rates from a random phase in their first second (a slot fallen behind on is skipped):
Home Assistant reads eight ranges of 4 to 20 holding and input registers every 5 s, each
its own request, some overlapping; evcc three ranges inside those every second; a logger
holding 10-109 every 10 s, overlapping both; a vendor app 30 ranges of 6 every 30 s, one
after another; a writer writes 1, 2, 3, ... to holding 44 every second, which Home
Assistant, the logger and the vendor app read back. All ranges lie in holding 0-124 and
input 0-63, one poll read per table: over holding 0-199 they would need three, and the
floor (4/s) would be above half the ~6.7 device requests/s without cache.

Configurations, each on a fresh device and multiplexer: no cache; `--cache-ttl 2s`; that
plus a `--poll UNIT:TABLE:ADDRESS:COUNT:1s` for every range a client reads. Each counts
`--duration` seconds (default 60; `--quick` 10, a smoke run: no vendor burst falls in
it) after a 5 s warm-up that fills the image (client reads go before polls: ~25 reads
reach the device first). Every answer must answer its request without exception, or the
bench stops with status 1, and its values are checked against when the device held them:
torn (not all held at one moment), wrong (never held, or not since the TTL before the
request was sent; without cache one device answer, 40 ms), missed writes (a read sent
after a write's answer showing an older 44). The oldest value: the longest time from the
device ceasing to hold a value to a client getting it. Latency: from the client's write
of its request to the whole answer; "image p99" is that of the reads answered in under
one device answer (40 ms), as a client cannot tell image answers from device ones. The
floor, the fewest device requests a second the workload allows at that TTL: the writes
plus one read per merged polled range per poll interval (merged by `plan_reads`, as the
multiplexer does).

Goals (item 7): with polls, device requests at most 1.25 times the floor and at most
half of those without cache; image p99 under 2 ms; write p99 at most two device answers
+ 20 ms (item 3); nothing wrong, torn or missed; no value older than the TTL. Table and
goals go to stdout, progress to stderr; exit status 1 if a goal is not met. Everything
listens on loopback and is stopped again, also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import math
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
from tcp_multiplexer.protocols.modbus import polls
from tcp_multiplexer.protocols.modbus.device import MAX_READ_REGISTERS, ModbusDevice
from tcp_multiplexer.protocols.modbus.mbap import (
    EXCEPTION_FLAG,
    MBAP_HEADER_SIZE,
    FunctionCode,
    build_adu,
    read_request,
    transaction_id,
    unit_id,
)
from tcp_multiplexer.protocols.responder import Answer
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets.server import TargetConfig, TargetServer

LOOPBACK: Final = "127.0.0.1"
UNIT: Final = 1
HOLDING: Final = FunctionCode.READ_HOLDING_REGISTERS
INPUT: Final = FunctionCode.READ_INPUT_REGISTERS
WRITE: Final = FunctionCode.WRITE_SINGLE_REGISTER
TABLES: Final[dict[int, str]] = {HOLDING: "holding", INPUT: "input"}
OFFSET: Final[dict[int, int]] = {HOLDING: 0, INPUT: 0x4000}
MULTIPLIER: Final = 1009
INVERSE: Final = pow(MULTIPLIER, -1, 0x10000)
CHANGE_EVERY: Final = 1.0
"""The device's registers take new values this often."""
DEVICE_DELAY: Final = 0.040
WRITTEN: Final = 44
"""The holding register the writer writes; it changes only then."""
WRITE_EVERY: Final = 1.0
CACHE_TTL: Final = 2.0
POLL_EVERY: Final = 1.0
WARM_UP: Final = 5.0
"""Seconds the clients run before anything is counted (their answers are checked)."""
REQUEST_TIMEOUT: Final = 5.0
"""The multiplexer's --timeout, and how long a client waits for any answer."""
WRITE_GOAL: Final = 2 * DEVICE_DELAY + 0.020
IMAGE_GOAL: Final = 0.002
FLOOR_FACTOR: Final = 1.25
NOTES_KEPT: Final = 10
_RANGE: Final = struct.Struct(">HH")


class BenchError(Exception):
    """No answer, or one that does not answer its request: the run stops."""


@dataclass(frozen=True, slots=True)
class Read:
    function: int
    address: int
    count: int

    def __str__(self) -> str:
        return f"{UNIT}:{TABLES[self.function]}:{self.address}:{self.count}"


def reads(function: int, *ranges: tuple[int, int]) -> tuple[Read, ...]:
    return tuple(Read(function, address, count) for address, count in ranges)


@dataclass(frozen=True, slots=True)
class Client:
    name: str
    every: float
    reads: tuple[Read, ...]


CLIENTS: Final = (
    Client(
        "home-assistant",
        5.0,
        reads(HOLDING, (0, 20), (16, 12), (40, 16), (100, 8), (110, 15))
        + reads(INPUT, (0, 10), (8, 12), (60, 4)),
    ),
    Client("evcc", 1.0, reads(HOLDING, (12, 6), (112, 8)) + reads(INPUT, (2, 6))),
    Client("logger", 10.0, reads(HOLDING, (10, 100))),
    Client(
        "vendor-app",
        30.0,
        reads(HOLDING, *((6 * n, 6) for n in range(20)))
        + reads(INPUT, *((6 * n, 6) for n in range(10))),
    ),
)
POLLS: Final = [
    f"{read}:{POLL_EVERY:g}s"
    for read in dict.fromkeys(read for client in CLIENTS for read in client.reads)
]
"""One --poll for every distinct range a client reads."""


@dataclass(frozen=True, slots=True)
class Setup:
    label: str
    ttl: float
    polls: bool

    def flags(self) -> list[str]:
        flags = ["--cache-ttl", f"{self.ttl:g}s"] if self.ttl else []
        for poll in POLLS if self.polls else []:
            flags += ["--poll", poll]
        return flags


SETUPS: Final = (
    Setup("no cache", 0.0, polls=False),
    Setup(f"--cache-ttl {CACHE_TTL:g}s", CACHE_TTL, polls=False),
    Setup(f"--cache-ttl {CACHE_TTL:g}s + polls", CACHE_TTL, polls=True),
)

# ---------------------------------------------------------------------------- the device


class ChangingDevice(ModbusDevice):
    """The example device, its registers changing every second (see the module docstring)."""

    __slots__ = ("start", "written")

    def __init__(self) -> None:
        super().__init__()
        self.start = time.monotonic()
        self.written: list[tuple[float, int]] = [(-math.inf, 0)]
        """Each value of WRITTEN and when the device took it: value n is written[n]."""

    def value(self, function: int, address: int, second: int) -> int:
        if function == HOLDING and address == WRITTEN:
            return self.written[-1][1]
        return (second * MULTIPLIER + address * 7 + OFFSET[function]) & 0xFFFF

    def held(self, function: int, address: int, value: int) -> tuple[float, float]:
        """When the device held `value` at `address`: [from, until); (inf, -inf) if never."""
        if function == HOLDING and address == WRITTEN:
            if value >= len(self.written) or self.written[value][1] != value:
                return math.inf, -math.inf
            later = self.written[value + 1 : value + 2]
            return self.written[value][0], later[0][0] if later else math.inf
        second = ((value - address * 7 - OFFSET[function]) * INVERSE) & 0xFFFF
        start = self.start + second * CHANGE_EVERY
        return start, start + CHANGE_EVERY

    def answer(self, request: bytes) -> Answer:
        now = time.monotonic()
        function = request[MBAP_HEADER_SIZE]
        if function in TABLES and len(request) == MBAP_HEADER_SIZE + 5:
            address, count = _RANGE.unpack_from(request, MBAP_HEADER_SIZE + 1)
            if 1 <= count <= MAX_READ_REGISTERS and address + count <= 0x10000:
                second = math.floor((now - self.start) / CHANGE_EVERY)
                values = [self.value(function, address + n, second) for n in range(count)]
                pdu = struct.pack(f">BB{count}H", function, 2 * count, *values)
                return Answer(build_adu(transaction_id(request), unit_id(request), pdu))
        answer = super().answer(request)  # writes (and anything malformed)
        if function == WRITE and answer.data == request:
            address, value = _RANGE.unpack_from(request, MBAP_HEADER_SIZE + 1)
            if address == WRITTEN:
                self.written.append((now, value))
        return answer


# ---------------------------------------------------------------------------- the clients


@dataclass(slots=True)
class Run:
    """One configuration's run: what the clients saw, and the checks of their reads."""

    setup: Setup
    device: ChangingDevice
    since: float
    """Requests sent from then on are counted (the warm-up is over)."""
    reads: list[float] = field(default_factory=list)
    writes: list[float] = field(default_factory=list)
    write_answers: list[float] = field(default_factory=list)
    """When each write's answer arrived (write n at index n - 1), warm-up included."""
    wrong: int = 0
    torn: int = 0
    missed: int = 0
    oldest: float = 0.0
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    device_requests: int = 0
    """Requests the device got while counting (polls included)."""

    @property
    def allowed(self) -> float:
        """How long after the device stopped holding a value it may still be served."""
        return self.setup.ttl or DEVICE_DELAY

    def check(self, who: str, read: Read, values: Sequence[int], sent: float, got: float) -> None:
        spans = [
            self.device.held(read.function, address, value)
            for address, value in enumerate(values, read.address)
        ]
        held = [(since, until) for since, until in spans if since < until]
        first_end = min((until for _, until in held), default=math.inf)
        last_start = max((since for since, _ in held), default=-math.inf)
        torn = last_start >= first_end
        wrong = len(held) < len(spans) or first_end <= sent - self.allowed or last_start > got
        missed = False
        if read.function == HOLDING and 0 <= WRITTEN - read.address < read.count:
            seen = values[WRITTEN - read.address]  # a later write than any answered before?
            missed = seen < bisect.bisect_left(self.write_answers, sent)
        self.oldest = max(self.oldest, got - first_end)
        self.torn += torn
        self.wrong += wrong
        self.missed += missed
        if (torn or wrong or missed) and len(self.notes) < NOTES_KEPT:
            found = (("torn", torn), ("wrong", wrong), ("missed write", missed))
            kinds = ", ".join(kind for kind, bad in found if bad)
            start = self.device.start
            times = sorted({f"{since - start:.3f}-{until - start:.3f}" for since, until in held})
            self.notes.append(
                f"{kinds}: {who} read {read} sent at {sent - start:.3f} s, answered at "
                f"{got - start:.3f} s, values held {', '.join(times)} s"
                + (f", and {len(spans) - len(held)} never" if len(held) < len(spans) else "")
            )


async def slots(every: float, phase: float, until: float) -> AsyncIterator[None]:
    """Wake every `every` seconds from `phase` on until `until`; a slot missed is skipped."""
    due = time.monotonic() + phase
    while due < until:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        yield
        due += every
        while due < time.monotonic():
            due += every


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[Streams]:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def exchange(
    streams: Streams, request: bytes, head: bytes, size: int, who: str
) -> tuple[bytes, float, float]:
    """Send `request`; its answer must begin with `head` and be `size` bytes long.
    Returns the answer, when the request was sent and when the answer was whole."""
    reader, writer = streams
    sent = time.monotonic()
    writer.write(request)
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            answer = await reader.readexactly(MBAP_HEADER_SIZE)
            (length,) = struct.unpack_from(">H", answer, 4)
            answer += await reader.readexactly(length - 1)
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
        raise BenchError(f"{who}: no answer to {request.hex()}: {exc!r}") from exc
    got = time.monotonic()
    if answer.startswith(head) and len(answer) == size:
        return answer, sent, got
    if len(answer) > MBAP_HEADER_SIZE + 1 and answer[MBAP_HEADER_SIZE] & EXCEPTION_FLAG:
        raise BenchError(f"{who}: exception 0x{answer[8]:02x} to {request.hex()}")
    raise BenchError(f"{who}: {answer.hex()} does not answer {request.hex()}")


async def read_loop(port: int, client: Client, phase: float, until: float, run: Run) -> None:
    async with connection(port) as streams:
        tid = 0
        async for _ in slots(client.every, phase, until):
            for read in client.reads:
                tid = (tid + 1) & 0xFFFF
                request = read_request(tid, UNIT, read.address, read.count, read.function)
                size = 2 * read.count
                head = request[:4] + struct.pack(">HBBB", 3 + size, UNIT, read.function, size)
                answer, sent, got = await exchange(streams, request, head, 9 + size, client.name)
                if sent >= run.since:
                    run.reads.append(got - sent)
                values = struct.unpack_from(f">{read.count}H", answer, 9)
                run.check(client.name, read, values, sent, got)


async def write_loop(port: int, phase: float, until: float, run: Run) -> None:
    async with connection(port) as streams:
        number = 0
        async for _ in slots(WRITE_EVERY, phase, until):
            number += 1
            request = build_adu(number, UNIT, struct.pack(">BHH", WRITE, WRITTEN, number))
            _, sent, got = await exchange(streams, request, request, len(request), "writer")
            run.write_answers.append(got)
            if sent >= run.since:
                run.writes.append(got - sent)


# ---------------------------------------------------------------------------- one run


async def run_setup(setup: Setup, duration: float, seed: int) -> Run:
    phases = random.Random(seed)
    device = ChangingDevice()
    config = TargetConfig(
        protocol=ProtocolName.MODBUS, host=LOOPBACK, delay=DEVICE_DELAY, max_connections=1
    )
    async with TargetServer(config, device) as target:
        args = ["-p", "modbus", "-t", f"{LOOPBACK}:{target.port}", "-l", f"{LOOPBACK}:0"]
        async with MultiplexerProcess(
            [*args, "--timeout", f"{REQUEST_TIMEOUT:g}s", *setup.flags()]
        ) as mux:
            since = time.monotonic() + WARM_UP
            until = since + duration
            run = Run(setup, device, since)
            try:
                async with asyncio.TaskGroup() as group:
                    for client in CLIENTS:
                        loop = read_loop(mux.port, client, phases.uniform(0, 1), until, run)
                        group.create_task(loop, name=client.name)
                    group.create_task(write_loop(mux.port, phases.uniform(0, 1), until, run))
                    await asyncio.sleep(max(0.0, since - time.monotonic()))
                    before = target.stats.requests
            except ExceptionGroup as errors:
                print("".join(mux.lines[-20:]), file=sys.stderr, end="")  # its log, if any
                raise errors.exceptions[0] from None
            run.seconds = time.monotonic() - since
            run.device_requests = target.stats.requests - before
    return run


# ---------------------------------------------------------------------------- the table


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of `samples` (0 if empty)."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def image_p99(run: Run) -> float | None:
    """The p99 of the reads answered faster than the device can: from the image."""
    quick = [latency for latency in run.reads if latency < DEVICE_DELAY]
    return percentile(quick, 0.99) if run.setup.ttl and quick else None


def rate(run: Run) -> float:
    return run.device_requests / run.seconds


def ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.1f} ms"


def goals(run: Run, no_cache: Run, floor: float) -> list[tuple[str, str, bool]]:
    """(short name, measured against goal, met) for each goal of this row."""
    write = percentile(run.writes, 0.99)
    counts = f"{run.wrong} wrong, {run.torn} torn, {run.missed} missed writes"
    found = [
        ("write p99", f"write p99 {ms(write)} <= {ms(WRITE_GOAL)}", write <= WRITE_GOAL),
        ("correct", f"{counts}: all 0", not (run.wrong or run.torn or run.missed)),
        ("age", f"oldest {ms(run.oldest)} <= {ms(run.allowed)}", run.oldest <= run.allowed),
    ]
    if run.setup.ttl:
        image = image_p99(run)
        met = image is not None and image < IMAGE_GOAL
        found.append(("image p99", f"image p99 {ms(image)} < {ms(IMAGE_GOAL)}", met))
    if run.setup.polls:
        device = f"device requests {rate(run):.2f}/s <="
        limit, half = FLOOR_FACTOR * floor, rate(no_cache) / 2
        text = f"{device} {FLOOR_FACTOR:g} x floor {floor:.2f}/s = {limit:.2f}/s"
        found.append(("floor", text, rate(run) <= limit))
        text = f"{device} half of no cache's {rate(no_cache):.2f}/s = {half:.2f}/s"
        found.append(("half", text, rate(run) <= half))
    return found


def markdown_table(runs: Sequence[Run], floor: float) -> str:
    lines = [
        "| configuration | device requests/s | floor/s | client answers/s | read p50 | read p99 "
        "| image p99 | write p99 | oldest value | wrong | torn | missed writes | goals |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for run in runs:
        unmet = [name for name, _, met in goals(run, runs[0], floor) if not met]
        lines.append(
            f"| {run.setup.label} | {rate(run):.2f} "
            f"| {f'{floor:.2f}' if run.setup.polls else '—'} "
            f"| {(len(run.reads) + len(run.writes)) / run.seconds:.2f} "
            f"| {ms(percentile(run.reads, 0.50))} | {ms(percentile(run.reads, 0.99))} "
            f"| {ms(image_p99(run))} | {ms(percentile(run.writes, 0.99))} "
            f"| {ms(run.oldest)} | {run.wrong} | {run.torn} | {run.missed} "
            f"| {'NOT met: ' + ', '.join(unmet) if unmet else 'met'} |"
        )
    return "\n".join(lines)


async def main_async(duration: float, seed: int) -> list[Run]:
    # SIGTERM stops the run like Ctrl-C does: cancelled, so every `finally` cleans up.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    runs: list[Run] = []
    # A bound on the whole run: warm-up, `duration`, a last vendor burst, start and stop.
    each = WARM_UP + duration + 60 + START_TIMEOUT + STOP_TIMEOUT
    async with asyncio.timeout(len(SETUPS) * each):
        for setup in SETUPS:
            print(f"running: {setup.label} ...", file=sys.stderr, flush=True)
            run = await run_setup(setup, duration, seed)
            runs.append(run)
            counts = f"{run.wrong} wrong, {run.torn} torn, {run.missed} missed writes"
            print(f"  {run.device_requests} device requests counted; {counts}", file=sys.stderr)
    return runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--duration", default="60", help="seconds counted per setup (default: 60)")
    length.add_argument("--quick", action="store_true", help="10 s per configuration")
    parser.add_argument("--seed", type=int, default=1, help="seed of the clients' phases")
    args = parser.parse_args(argv)
    try:
        duration = 10.0 if args.quick else parse_duration(args.duration)
    except ConfigError as exc:
        parser.error(str(exc))
    if duration <= 0:
        parser.error("--duration must be positive")
    # What the multiplexer's poller reads for POLLS, at its default merge gap and size.
    merge = polls.DEFAULT_MERGE_GAP, polls.DEFAULT_MAX_REGISTERS
    plan = polls.plan_reads([polls.parse_poll(poll) for poll in POLLS], *merge)
    floor = 1 / WRITE_EVERY + sum(1 / read.every for read in plan)
    started = time.monotonic()
    try:
        runs = asyncio.run(main_async(duration, args.seed))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    print(
        f"\nThe example Modbus device answering in {DEVICE_DELAY * 1e3:.0f} ms on one "
        f"connection, its registers changing every {CHANGE_EVERY:g} s; Home Assistant, evcc, "
        f"a logger, a vendor app and a writer; {duration:g} s counted per configuration after "
        f"{WARM_UP:g} s of warm-up. Polls: {len(POLLS)} ranges every {POLL_EVERY:g} s, merged "
        f"into {len(plan)} reads ({', '.join(map(str, plan))}); floor = {1 / WRITE_EVERY:g} "
        f"write/s + {len(plan) / POLL_EVERY:g} reads/s = {floor:.2f} requests/s.\n"
    )
    print(markdown_table(runs, floor))
    print()
    met = True
    for run in runs:
        for _, text, ok in goals(run, runs[0], floor):
            met = met and ok
            print(f"- {'met' if ok else 'NOT met'}: {run.setup.label}: {text}")
    for run in runs:
        for note in run.notes:
            print(f"- problem: {run.setup.label}: {note}")
    print(f"\n(total {time.monotonic() - started:.1f} s)", file=sys.stderr)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
