"""Soak run: every target fault at a low rate, hostile clients, and well-behaved clients
checking every answer, while the multiplexer's memory and file descriptors are sampled.

    .venv/bin/python bench/soak.py --duration 600      # the default: 10 minutes
    .venv/bin/python bench/soak.py --duration 60       # what CI runs

The example Modbus device (`TargetServer`) runs in this process and misbehaves on
purpose: every per-request fault (no answer, answer twice, wrong transaction id, half
an answer then close, garbage, RST mid-answer, late) shares `--fault-rate` of the
requests (1 % by default), every connection is closed after `--close-after` seconds, and
the device goes away for `--outage-for` seconds every `--outage-every` seconds. The
multiplexer runs as a subprocess (`python -m tcp_multiplexer server -p modbus`), as
users run it.

Well-behaved clients (`--clients`, in pairs reading the same registers, so identical
reads may be coalesced) each ask one read at a time and check every answer: their own
transaction and unit id and the device's exact register values, or a gateway exception
answer (0x06, 0x0A, 0x0B) with their own ids. Anything else is a wrong answer. A request
without any answer within 2 x --timeout (+ LOST_SLACK) is lost (the longest a request may take by
design: --timeout waiting for a free target connection, then --timeout for the answer);
the client then reconnects. Meanwhile a trickle of hostile clients connects: garbage,
oversized headers, half requests, requests abandoned before their answer, silent
connections, slow drips, unread pipelines, bursts of connections.

After `--warmup` seconds of all that, the hostile clients pause and the multiplexer's
RSS and open fds are taken as the start figures; they are sampled every
`--sample-every` seconds; the end figures are taken the same way, after the hostile
clients are gone, with the well-behaved ones still connected. The run fails (exit
status 1) if any answer was wrong or lost, if the multiplexer died, logged a traceback
or did not exit 0 on SIGTERM, or if RSS grew by more than both 20 % and 10 MB, or the
open fds by more than 10. Everything listens on 127.0.0.1 only and everything started
is stopped again, also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import random
import struct
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from mux_process import MultiplexerProcess, Sample

from tcp_multiplexer.protocols.modbus.mbap import (
    EXCEPTION_FLAG,
    FunctionCode,
    build_adu,
    read_request,
)
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets import Fault, TargetConfig, TargetServer, holding_register_value

LOOPBACK: Final = "127.0.0.1"
LOST_SLACK: Final = 0.5
"""Scheduling slack on top of the 2 x --timeout a request may take by design: a busy
2-core machine can delay a timer by tens of milliseconds."""
GATEWAY_CODES: Final = frozenset({0x06, 0x0A, 0x0B})
RSS_GROWTH_FRACTION: Final = 0.20
RSS_GROWTH_KB: Final = 10 * 1024
FD_GROWTH: Final = 10
LATE_GRACE: Final = 1.0
"""How much longer than the lost limit a client waits, to report a late answer as such."""
LOG_SIGNS: Final = ("Traceback", "Exception in callback", "exception was never retrieved")


# ---------------------------------------------------------------------------- well-behaved clients


@dataclass
class Figures:
    requests: int = 0
    correct: int = 0
    gateway: Counter[int] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    slowest: float = 0.0
    hostile: Counter[str] = field(default_factory=Counter)
    hostile_unexpected: list[str] = field(default_factory=list)


def read_exchange(tid: int, unit: int, address: int, count: int) -> tuple[bytes, bytes]:
    """A holding-register read and the device's exact answer to it."""
    request = read_request(tid, unit, address, count)
    values = [holding_register_value(unit, address + k) for k in range(count)]
    answer = build_adu(
        tid,
        unit,
        struct.pack(f">BB{count}H", FunctionCode.READ_HOLDING_REGISTERS, 2 * count, *values),
    )
    return request, answer


def gateway_answer(request: bytes, code: int) -> bytes:
    """The multiplexer's own exception answer to `request`."""
    tid = int.from_bytes(request[:2], "big")
    return build_adu(tid, request[6], bytes((request[7] | EXCEPTION_FLAG, code)))


async def read_adu(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(7)
    (length,) = struct.unpack_from(">H", header, 4)
    return header + await reader.readexactly(max(length - 1, 0))


async def well_behaved(
    index: int, port: int, figures: Figures, stop: asyncio.Event, *, interval: float, lost: float
) -> None:
    """Client `index`: pairs (0, 1), (2, 3)... read the same registers, each with its own ids."""
    unit = 1 + index // 2
    base = 100 * (index // 2)
    tid = 0x1000 * index
    seq = 0
    while not stop.is_set():
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        try:
            while not stop.is_set():
                seq += 1
                request, answer = read_exchange(
                    (tid + seq) & 0xFFFF, unit, base + seq % 20, 1 + seq % 4
                )
                what = f"client {index} request {request.hex(' ')}"
                started = time.monotonic()
                writer.write(request)
                figures.requests += 1
                try:
                    # Waits a little longer, to tell a late answer from none at all.
                    async with asyncio.timeout(lost + LATE_GRACE):
                        reply = await read_adu(reader)
                except TimeoutError:
                    figures.lost.append(f"{what}: no answer at all")
                    break  # the stream cannot be trusted any more: reconnect
                except (asyncio.IncompleteReadError, ConnectionError) as exc:
                    figures.closed.append(f"{what}: connection closed ({exc!r})")
                    break
                took = time.monotonic() - started
                figures.slowest = max(figures.slowest, took)
                if took > lost:
                    figures.lost.append(f"{what}: answered only after {took:.3f}s")
                if reply == answer:
                    figures.correct += 1
                elif (
                    len(reply) == 9
                    and reply[8] in GATEWAY_CODES
                    and reply == gateway_answer(request, reply[8])
                ):
                    figures.gateway[reply[8]] += 1
                else:
                    figures.wrong.append(
                        f"{what}: expected {answer.hex(' ')}, got {reply.hex(' ')}"
                    )
                await asyncio.sleep(interval)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


# ---------------------------------------------------------------------------- hostile clients


async def expect_closed(reader: asyncio.StreamReader, within: float) -> bool:
    """True if the multiplexer closes this connection within `within` seconds."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(4096):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


class Hostile:
    """The hostile clients; each returns None, or what it saw that it should not have."""

    def __init__(self, port: int, timeout: float, rng: random.Random) -> None:
        self.port = port
        self.timeout = timeout
        self.rng = rng

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(LOOPBACK, self.port)

    @staticmethod
    async def _close(writer: asyncio.StreamWriter, *, reset: bool = False) -> None:
        if reset:
            writer.transport.abort()
        else:
            writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def garbage(self) -> str | None:
        reader, writer = await self._connect()
        data = bytearray(self.rng.randbytes(self.rng.randrange(16, 65536)))
        data[2] = 0xFF  # protocol id other than 0
        writer.write(data)
        closed = await expect_closed(reader, 4 * self.timeout)
        await self._close(writer)
        return None if closed else "garbage: connection not closed"

    async def oversized_header(self) -> str | None:
        reader, writer = await self._connect()
        writer.write(struct.pack(">HHHB", 1, 0, self.rng.randrange(255, 0x10000), 1) + bytes(64))
        closed = await expect_closed(reader, 4 * self.timeout)
        await self._close(writer)
        return None if closed else "oversized header: connection not closed"

    async def half_request(self) -> str | None:
        request, _answer = read_exchange(1, 200, 0, 1)
        _reader, writer = await self._connect()
        writer.write(request[: self.rng.randrange(1, len(request))])
        await writer.drain()
        await self._close(writer, reset=self.rng.random() < 0.5)
        return None

    async def abandon(self) -> str | None:
        """Requests, then gone before the answers (FIN or RST)."""
        _reader, writer = await self._connect()
        writer.write(
            b"".join(read_exchange(n, 201, n, 2)[0] for n in range(self.rng.randrange(1, 20)))
        )
        await writer.drain()
        await self._close(writer, reset=self.rng.random() < 0.5)
        return None

    async def silent(self) -> str | None:
        """Connects, says nothing for a few timeouts, then asks once: still served."""
        reader, writer = await self._connect()
        try:
            await asyncio.sleep(3 * self.timeout)
            request, answer = read_exchange(7, 202, 7, 3)
            writer.write(request)
            async with asyncio.timeout(2 * self.timeout + 1):
                reply = await read_adu(reader)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
            return f"silent client: {exc!r}"
        finally:
            await self._close(writer)
        if reply != answer and reply != gateway_answer(request, reply[-1]):
            return f"silent client got {reply.hex(' ')}"
        return None

    async def slow_drip(self) -> str | None:
        """A few bytes, one per 100 ms, then gone."""
        request, _answer = read_exchange(8, 203, 8, 1)
        _reader, writer = await self._connect()
        try:
            for byte in request[: self.rng.randrange(2, 8)]:
                writer.write(bytes((byte,)))
                await writer.drain()
                await asyncio.sleep(0.1)
        except ConnectionError:
            pass
        await self._close(writer)
        return None

    async def unread_pipeline(self) -> str | None:
        """100 requests, answers not read for a while, then gone."""
        _reader, writer = await self._connect()
        writer.write(b"".join(read_exchange(n, 204, n, 8)[0] for n in range(100)))
        await writer.drain()
        await asyncio.sleep(2 * self.timeout)
        await self._close(writer, reset=True)
        return None

    async def burst(self) -> str | None:
        """200 connections at once, closed again at once."""
        results = await asyncio.gather(
            *(self._connect() for _ in range(200)), return_exceptions=True
        )
        failed = [result for result in results if isinstance(result, BaseException)]
        for result in results:
            if not isinstance(result, BaseException):
                await self._close(result[1], reset=self.rng.random() < 0.5)
        return f"burst: {len(failed)} connections failed: {failed[:1]}" if failed else None

    def kinds(self) -> dict[str, Callable[[], Awaitable[str | None]]]:
        return {
            "garbage": self.garbage,
            "oversized-header": self.oversized_header,
            "half-request": self.half_request,
            "abandoned-requests": self.abandon,
            "silent": self.silent,
            "slow-drip": self.slow_drip,
            "unread-pipeline": self.unread_pipeline,
            "burst-200": self.burst,
        }


async def hostile_trickle(
    hostile: Hostile, figures: Figures, stop: asyncio.Event, *, every: float
) -> None:
    """One hostile client about every `every` seconds until `stop`; waits for all to end."""
    kinds = hostile.kinds()
    names = sorted(kinds)
    running: set[asyncio.Task[None]] = set()

    async def one(name: str) -> None:
        try:
            problem = await kinds[name]()
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            problem = f"{name}: {exc!r}"
        figures.hostile[name] += 1
        if problem is not None:
            figures.hostile_unexpected.append(problem)

    try:
        while not stop.is_set():
            task = asyncio.create_task(one(hostile.rng.choice(names)))
            running.add(task)
            task.add_done_callback(running.discard)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(hostile.rng.uniform(0.5, 1.5) * every):
                    await stop.wait()
    finally:
        if running:
            await asyncio.gather(*running, return_exceptions=True)


# ---------------------------------------------------------------------------- the run


@dataclass
class Options:
    duration: float
    warmup: float
    clients: int
    interval: float
    timeout: float
    fault_rate: float
    close_after: float
    outage_every: float
    outage_for: float
    hostile_every: float
    sample_every: float
    seed: int
    json_path: str | None
    mux_args: tuple[str, ...]


def target_config(options: Options) -> TargetConfig:
    faults = list(Fault)
    share = options.fault_rate / len(faults)
    return TargetConfig(
        protocol=ProtocolName.MODBUS,
        faults=tuple((fault, share) for fault in faults) if share > 0 else (),
        seed=options.seed,
        late_delay=1.5 * options.timeout,
        close_after=options.close_after,
        outage_every=options.outage_every,
        outage_for=options.outage_for,
    )


async def sampler(
    mux: MultiplexerProcess, samples: list[Sample], stop: asyncio.Event, every: float
) -> None:
    while mux.running and not stop.is_set():
        with contextlib.suppress(OSError):
            samples.append(mux.sample())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(every):
                await stop.wait()


async def soak(options: Options) -> Result:
    figures = Figures()
    samples: list[Sample] = []
    lost_after = 2 * options.timeout + LOST_SLACK
    async with TargetServer(target_config(options)) as target:
        mux = MultiplexerProcess(
            [
                "-p",
                "modbus",
                "-t",
                f"{LOOPBACK}:{target.port}",
                "-l",
                f"{LOOPBACK}:0",
                "--timeout",
                f"{options.timeout}",
                "--reconnect-backoff",
                "50ms",
                "--metrics-interval",
                "0",
                *options.mux_args,
            ]
        )
        status: int | None = None
        tasks: list[asyncio.Task[None]] = []
        try:
            port = await mux.start()
            began = time.monotonic()
            stop_clients = asyncio.Event()
            stop_hostile = asyncio.Event()
            tasks = [
                asyncio.create_task(
                    well_behaved(
                        index,
                        port,
                        figures,
                        stop_clients,
                        interval=options.interval,
                        lost=lost_after,
                    )
                )
                for index in range(options.clients)
            ]
            tasks.append(
                asyncio.create_task(sampler(mux, samples, stop_clients, options.sample_every))
            )
            hostile = Hostile(port, options.timeout, random.Random(options.seed))
            warming = asyncio.create_task(
                hostile_trickle(hostile, figures, stop_hostile, every=options.hostile_every)
            )
            tasks.append(warming)
            await asyncio.sleep(options.warmup)
            # The start figures are taken with no hostile client about, as the end ones.
            stop_hostile.set()
            await warming
            await asyncio.sleep(options.sample_every)
            start = mux.sample()
            stop_hostile = asyncio.Event()
            trickle = asyncio.create_task(
                hostile_trickle(hostile, figures, stop_hostile, every=options.hostile_every)
            )
            tasks.append(trickle)
            progress(f"warmed up after {options.warmup:g}s: {start}")
            remaining = options.duration - (time.monotonic() - began)
            while remaining > 0 and mux.running:
                await asyncio.sleep(min(remaining, 10.0))
                remaining = options.duration - (time.monotonic() - began)
                progress(
                    f"{time.monotonic() - began:5.0f}s requests {figures.requests} correct "
                    f"{figures.correct} wrong {len(figures.wrong)} lost {len(figures.lost)} "
                    f"{samples[-1] if samples else ''}"
                )
            stop_hostile.set()
            await trickle
            # Let the multiplexer notice the last hostile connections closing.
            await asyncio.sleep(options.sample_every)
            running = mux.running
            end = mux.sample() if running else samples[-1]
            stop_clients.set()
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            status = await mux.stop()
        stats = target.stats
    log = "".join(mux.lines)
    log_problems = [sign for sign in LOG_SIGNS if sign in log]
    rss_limit = start.rss_kb + max(RSS_GROWTH_KB, RSS_GROWTH_FRACTION * start.rss_kb)
    problems: list[str] = []
    if figures.wrong:
        problems.append(f"{len(figures.wrong)} wrong answers")
    if figures.lost:
        problems.append(f"{len(figures.lost)} lost answers")
    if figures.closed:
        problems.append(f"{len(figures.closed)} well-behaved connections closed")
    if figures.hostile_unexpected:
        problems.append(f"{len(figures.hostile_unexpected)} hostile clients treated unexpectedly")
    if not running:
        problems.append("the multiplexer died during the run")
    if status != 0:
        problems.append(f"exit status {status} on SIGTERM")
    if log_problems:
        problems.append(f"{', '.join(log_problems)} in the multiplexer's log")
    if end.rss_kb > rss_limit:
        problems.append(f"RSS grew from {start.rss_kb} kB to {end.rss_kb} kB")
    if end.fds > start.fds + FD_GROWTH:
        problems.append(f"open fds grew from {start.fds} to {end.fds}")
    not_exercised = [str(fault) for fault, _share in target_config(options).faults]
    not_exercised = [name for name in not_exercised if not stats.faults[Fault(name)]]
    if options.close_after and not stats.closed_after:
        not_exercised.append("close-after")
    if options.outage_every and not stats.outages:
        not_exercised.append("outage")
    return Result(
        duration_s=options.duration,
        requests=figures.requests,
        correct=figures.correct,
        gateway={f"0x{code:02X}": count for code, count in sorted(figures.gateway.items())},
        wrong=len(figures.wrong),
        lost=len(figures.lost),
        closed=len(figures.closed),
        slowest_answer_s=round(figures.slowest, 3),
        lost_after_s=lost_after,
        hostile_clients=dict(sorted(figures.hostile.items())),
        target_faults={str(fault): count for fault, count in stats.faults.items() if count},
        target_requests=stats.requests,
        target_connections=stats.accepted,
        target_closed_after=stats.closed_after,
        target_outages=stats.outages,
        not_exercised=not_exercised,
        rss_kb_start=start.rss_kb,
        rss_kb_end=end.rss_kb,
        rss_kb_max=max(sample.rss_kb for sample in samples),
        fds_start=start.fds,
        fds_end=end.fds,
        fds_max=max(sample.fds for sample in samples),
        exit_status=status,
        problems=problems,
        examples=[
            *figures.wrong[:5],
            *figures.lost[:5],
            *figures.closed[:5],
            *figures.hostile_unexpected[:5],
        ],
    )


@dataclass(frozen=True, slots=True)
class Result:
    """The figures of one soak run (also written as JSON with --json)."""

    duration_s: float
    requests: int
    correct: int
    gateway: dict[str, int]
    wrong: int
    lost: int
    closed: int
    slowest_answer_s: float
    lost_after_s: float
    hostile_clients: dict[str, int]
    target_faults: dict[str, int]
    target_requests: int
    target_connections: int
    target_closed_after: int
    target_outages: int
    not_exercised: list[str]
    rss_kb_start: int
    rss_kb_end: int
    rss_kb_max: int
    fds_start: int
    fds_end: int
    fds_max: int
    exit_status: int | None
    problems: list[str]
    examples: list[str]

    def report(self) -> str:
        lines = [
            f"soak run of {self.duration_s:g} s",
            f"requests          {self.requests}",
            f"answers correct   {self.correct}",
            f"gateway answers   {self.gateway}",
            f"wrong answers     {self.wrong}",
            f"lost answers      {self.lost} (no answer within {self.lost_after_s:g} s)",
            f"clients closed    {self.closed}",
            f"slowest answer    {self.slowest_answer_s} s",
            f"hostile clients   {self.hostile_clients}",
            f"target faults     {self.target_faults}",
            f"target            {self.target_requests} requests, {self.target_connections} "
            f"connections, {self.target_closed_after} closed after a while, "
            f"{self.target_outages} outages",
            f"not exercised     {', '.join(self.not_exercised) or 'nothing: every fault fired'}",
            f"memory (RSS)      start {self.rss_kb_start} kB, end {self.rss_kb_end} kB, "
            f"max {self.rss_kb_max} kB",
            f"open fds          start {self.fds_start}, end {self.fds_end}, max {self.fds_max}",
            f"exit status       {self.exit_status}",
            "verdict           " + ("FAIL: " + "; ".join(self.problems) if self.problems else "ok"),
        ]
        lines += [f"  {example}" for example in self.examples]
        return "\n".join(lines)


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--warmup", type=float, default=None, help="default: 10 s, or less")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--interval", type=float, default=0.02, help="between a client's asks")
    parser.add_argument("--timeout", type=float, default=0.5, help="the multiplexer's --timeout")
    parser.add_argument("--fault-rate", type=float, default=0.01, help="all faults together")
    parser.add_argument("--close-after", type=float, default=2.0)
    parser.add_argument("--outage-every", type=float, default=20.0)
    parser.add_argument("--outage-for", type=float, default=1.0)
    parser.add_argument("--hostile-every", type=float, default=1.0, help="seconds, on average")
    parser.add_argument("--sample-every", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", dest="json_path", help="also write the figures here")
    parser.add_argument(
        "--mux-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for the multiplexer (repeatable), e.g. --mux-arg=--max-inflight=4",
    )
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.clients < 1 or args.timeout <= 0:
        parser.error("--duration, --clients and --timeout must be positive")
    warmup = args.warmup if args.warmup is not None else min(10.0, args.duration / 4)
    return Options(
        duration=args.duration,
        warmup=warmup,
        clients=args.clients,
        interval=args.interval,
        timeout=args.timeout,
        fault_rate=args.fault_rate,
        close_after=args.close_after,
        outage_every=args.outage_every,
        outage_for=args.outage_for,
        hostile_every=args.hostile_every,
        sample_every=args.sample_every,
        seed=args.seed,
        json_path=args.json_path,
        mux_args=tuple(args.mux_arg),
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    result = asyncio.run(soak(options))
    print(result.report(), flush=True)
    if options.json_path:
        with open(options.json_path, "w", encoding="utf-8") as out:
            json.dump(dataclasses.asdict(result), out, indent=2)
    return 1 if result.problems else 0


if __name__ == "__main__":
    sys.exit(main())
