"""`tcp-multiplexer calibrate TARGET [--unit N] [--register TABLE:ADDRESS] [--budget
DURATION]`: probe a Modbus device and print the bridge settings that suit it.

Read-only (it only ever reads, and says so), one probe at a time, done within
`--budget`:

1. how long after a connect the first answer comes right (0, 0.5, 1, 2 and 5 s);
2. the shortest pause between an answer and the next request that stays free of
   errors (0 up to 1 s);
3. answer times over 20 reads, p50 and p99, and the timeout that follows from them;
4. the largest read the device accepts (125 registers down, then narrowed);
5. how many connections it takes at once and how it refuses the next one (closed at
   once, left hanging at connect, or accepted and never answered); a serial line has
   one master, so not there.

Then it prints a `[[bridge]]` block a config file takes as it is (`delay`,
`request-gap`, `timeout`, `poll-max-registers`, `max-connections`) and the device
profile nearest to what it found. TARGET is what a bridge's `target` takes: HOST:PORT,
rtu+tcp://HOST:PORT or serial:///dev/ttyUSB0?baudrate=9600. On a terminal each probe
shows a line on stderr as it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from tcp_multiplexer.errors import ConfigError, DamagedMessage
from tcp_multiplexer.options import (
    format_duration,
    parse_duration,
    positive_duration_argument,
    unit_argument,
)
from tcp_multiplexer.profiles import PROFILES
from tcp_multiplexer.protocols.modbus.mbap import read_request
from tcp_multiplexer.protocols.modbus.polls import TABLES
from tcp_multiplexer.protocols.modbus.rtu import RtuAnswerFramer, rtu_from_adu
from tcp_multiplexer.runner import run_async
from tcp_multiplexer.target import Target, target_url_value

EXIT_USAGE: Final = 2
EXIT_NO_DEVICE: Final = 1
DEFAULT_BUDGET: Final = 90.0
DEFAULT_PROBE_TIMEOUT: Final = 3.0
CONNECT_DELAYS: Final = (0.0, 0.5, 1.0, 2.0, 5.0)
GAPS: Final = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
READS_PER_GAP: Final = 5
TIMED_READS: Final = 20
READ_SIZES: Final = (125, 100, 64, 50, 32, 16, 8, 4, 2, 1)
MAX_CONNECTIONS_TRIED: Final = 4
BIT_TABLES: Final = frozenset({"coils", "discrete"})


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one read got: ``ok`` (with the time it took), ``exception`` (with its
    code), ``timeout``, ``closed`` or ``damaged``."""

    kind: str
    seconds: float = 0.0
    code: int = 0

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


class Link:
    """One connection to the device: TCP (MBAP or RTU frames) or a serial line."""

    def __init__(
        self, target: Target, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._rtu = target.framing == "rtu"
        self._reader = reader
        self._writer = writer
        self._tid = 0

    @classmethod
    async def open(cls, target: Target, limit: float) -> Link:
        """Connect (or open the port).

        Raises:
            OSError: refused, unreachable, no such port.
            TimeoutError: not connected within `limit` seconds.
        """
        async with asyncio.timeout(limit):
            if target.is_serial:
                import serial_asyncio_fast

                reader, writer = await serial_asyncio_fast.open_serial_connection(
                    url=target.device,
                    baudrate=target.baudrate,
                    parity=target.parity,
                    stopbits=target.stopbits,
                    bytesize=target.bytesize,
                )
            else:
                address = target.address
                if address is None:
                    raise OSError(f"{target} has no address")
                reader, writer = await asyncio.open_connection(address.host, address.port)
        return cls(target, reader, writer)

    async def read(
        self, unit: int, function: int, address: int, count: int, limit: float
    ) -> Outcome:
        """Read, waiting at most `limit` seconds for the answer."""
        self._tid = (self._tid + 1) & 0xFFFF
        adu = read_request(self._tid, unit, address, count, function)
        started = time.monotonic()
        try:
            async with asyncio.timeout(limit):
                if self._rtu:
                    answer = await self._rtu_answer(adu)
                else:
                    answer = await self._mbap_answer(adu)
        except TimeoutError:
            return Outcome("timeout")
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            return Outcome("closed")
        except DamagedMessage:
            return Outcome("damaged")
        took = time.monotonic() - started
        if answer[0] & 0x80:
            return Outcome("exception", took, answer[1])
        return Outcome("ok", took)

    async def _mbap_answer(self, adu: bytes) -> bytes:
        """The PDU answering `adu` (a late answer to an earlier read is skipped)."""
        self._writer.write(adu)
        while True:
            head = await self._reader.readexactly(7)
            body = await self._reader.readexactly(int.from_bytes(head[4:6], "big") - 1)
            if head[:2] == adu[:2]:
                return body

    async def _rtu_answer(self, adu: bytes) -> bytes:
        wire = rtu_from_adu(adu)
        framer = RtuAnswerFramer()
        framer.expect_response(wire)
        self._writer.write(wire)
        while True:
            data = await self._reader.read(256)
            if not data:
                raise asyncio.IncompleteReadError(b"", None)
            frames = framer.feed(data)
            if frames:
                return frames[0][1:]

    def close(self) -> None:
        self._writer.close()


@dataclass(slots=True)
class Findings:
    """What the probes found (None: not measured)."""

    delay: float | None = None
    request_gap: float | None = None
    p50: float | None = None
    p99: float | None = None
    timeout: float | None = None
    max_read: int | None = None
    max_connections: int | None = None
    refusal: str = ""
    reads: int = 0
    notes: list[str] = field(default_factory=list)


class Calibration:
    """The probes, one at a time, within the budget (see the module docstring)."""

    def __init__(
        self,
        target: Target,
        unit: int,
        table: str,
        address: int,
        *,
        budget: float,
        probe_timeout: float,
        progress: Callable[[str], None],
    ) -> None:
        self.target = target
        self.unit = unit
        self.function = TABLES[table]
        self.bits = table in BIT_TABLES
        self.address = address
        self.deadline = time.monotonic() + budget
        self.probe_timeout = probe_timeout
        self.progress = progress
        self.found = Findings()

    def _left(self) -> float:
        return self.deadline - time.monotonic()

    async def _link(self) -> Link:
        link = await Link.open(self.target, self.probe_timeout)
        if self.found.delay:
            await asyncio.sleep(self.found.delay)
        return link

    async def _read(self, link: Link, count: int = 1) -> Outcome:
        self.found.reads += 1
        timeout = min(self.probe_timeout, max(0.05, self._left()))
        return await link.read(self.unit, self.function, self.address, count, timeout)

    async def run(self) -> Findings:
        """Every probe the budget allows.

        Raises:
            OSError, TimeoutError: the device cannot be reached at all.
            LookupError: it never answers.
        """
        await self._connect_delay()
        for probe in (self._request_gap, self._answer_times, self._max_read, self._connections):
            if self._left() <= self.probe_timeout:
                self.found.notes.append(f"{probe.__name__.strip('_')}: not measured (budget)")
                continue
            await probe()
        return self.found

    async def _connect_delay(self) -> None:
        for delay in CONNECT_DELAYS:
            link = await Link.open(self.target, self.probe_timeout)
            try:
                await asyncio.sleep(delay)
                outcome = await self._read(link)
            finally:
                link.close()
            if outcome.ok or outcome.kind == "exception":
                self.found.delay = delay
                self.progress(f"connect: the first answer comes right {_ms(delay)} after it")
                return
            self.progress(f"connect: {_ms(delay)} after a connect, {outcome.kind}")
            if self._left() <= 0:
                break
        raise LookupError(
            f"no answer from unit {self.unit}, even {_ms(CONNECT_DELAYS[-1])} after a connect"
        )

    async def _request_gap(self) -> None:
        link = await self._link()
        try:
            for gap in GAPS:
                outcomes = []
                for _ in range(READS_PER_GAP):
                    await asyncio.sleep(gap)
                    outcomes.append(await self._read(link))
                    if not outcomes[-1].ok:
                        break
                if all(outcome.ok for outcome in outcomes):
                    self.found.request_gap = gap
                    self.progress(f"request gap: {_ms(gap)} is free of errors")
                    return
                bad = next(outcome for outcome in outcomes if not outcome.ok)
                what = f"exception 0x{bad.code:02x}" if bad.kind == "exception" else bad.kind
                self.progress(f"request gap: {_ms(gap)} gives {what}")
                if bad.kind in ("timeout", "closed", "damaged"):
                    link.close()
                    link = await self._link()
                if self._left() <= self.probe_timeout:
                    return
        finally:
            link.close()

    async def _answer_times(self) -> None:
        gap = self.found.request_gap or 0.0
        link = await self._link()
        times: list[float] = []
        try:
            for _ in range(TIMED_READS):
                if self._left() <= self.probe_timeout:
                    break
                await asyncio.sleep(gap)
                outcome = await self._read(link)
                if outcome.ok:
                    times.append(outcome.seconds)
        finally:
            link.close()
        if not times:
            return
        times.sort()
        self.found.p50 = _rank(times, 0.50)
        self.found.p99 = _rank(times, 0.99)
        self.found.timeout = max(1.0, math.ceil(self.found.p99 * 3 * 2) / 2)
        self.progress(
            f"answer time: p50 {_ms(self.found.p50)}, p99 {_ms(self.found.p99)} "
            f"({len(times)} reads): timeout {format_duration(self.found.timeout)}"
        )

    async def _max_read(self) -> None:
        factor = 16 if self.bits else 1
        gap = self.found.request_gap or 0.0
        link = await self._link()
        try:
            refused_above = 126
            accepted = 0
            for size in READ_SIZES:
                if self.address + size * factor > 65536:
                    continue
                await asyncio.sleep(gap)
                if (await self._read(link, size * factor)).ok:
                    accepted = size
                    break
                refused_above = size
            low, high = accepted, refused_above  # accepted <= max < refused_above
            while accepted and high - low > 1 and self._left() > self.probe_timeout:
                middle = (low + high) // 2
                await asyncio.sleep(gap)
                if (await self._read(link, middle * factor)).ok:
                    low = middle
                else:
                    high = middle
            if accepted:
                self.found.max_read = low
                self.progress(f"largest read: {low} registers")
        finally:
            link.close()

    async def _connections(self) -> None:
        if self.target.is_serial:
            self.found.max_connections = 1
            self.progress("connections: a serial line has one master")
            return
        links: list[Link] = []
        try:
            for _ in range(MAX_CONNECTIONS_TRIED):
                try:
                    link = await Link.open(self.target, self.probe_timeout)
                except TimeoutError:
                    self.found.refusal = "the next connection hangs at connect"
                    break
                except OSError:
                    self.found.refusal = "the next connection is refused"
                    break
                links.append(link)
                if self.found.delay:
                    await asyncio.sleep(self.found.delay)
                outcome = await self._read(link)
                if outcome.ok or outcome.kind == "exception":
                    continue
                links.pop().close()
                self.found.refusal = (
                    "the next connection is accepted and never answered"
                    if outcome.kind == "timeout"
                    else "the next connection is closed at once"
                )
                break
            else:
                self.found.refusal = f"{MAX_CONNECTIONS_TRIED} at once, all answered"
            self.found.max_connections = max(1, len(links))
            self.progress(
                f"connections: {self.found.max_connections} at once; {self.found.refusal}"
            )
        finally:
            for link in links:
                link.close()


def _rank(ordered: list[float], fraction: float) -> float:
    index = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


def _ms(seconds: float) -> str:
    """A time for people: 0s, 0.45ms, 38ms, 1.5s."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1e3:.3g}ms"
    return f"{seconds:.3g}s"


# ---------------------------------------------------------------------------- output


def bridge_block(target: Target, found: Findings) -> list[str]:
    """The `[[bridge]]` block for what was found (a config file takes it as it is)."""
    lines = [
        "[[bridge]]",
        'name = "calibrated"',
        'protocol = "modbus"',
        'listen = ["127.0.0.1:5020"]    # the address your clients use',
        f'target = "{target}"',
    ]
    for key, value in (
        ("delay", found.delay),
        ("request-gap", found.request_gap),
        ("timeout", found.timeout),
    ):
        if value is not None:
            lines.append(f'{key} = "{format_duration(value)}"')
    if found.max_read is not None:
        lines.append(f"poll-max-registers = {found.max_read}")
    if found.max_connections is not None:
        lines.append(f"max-connections = {found.max_connections}")
    return lines


def nearest_profile(found: Findings) -> tuple[str, str]:
    """The Modbus device profile closest to what was found: its name and what it sets."""

    def seconds(settings: Any, key: str, default: float) -> float:
        value = settings.get(key)
        return parse_duration(value) if value is not None else default

    best: tuple[float, str, str] | None = None
    for profile in PROFILES.values():
        settings = profile.settings
        if settings.get("protocol", "modbus") != "modbus":
            continue
        score = abs(seconds(settings, "delay", 0.0) - (found.delay or 0.0))
        score += 10 * abs(seconds(settings, "request-gap", 0.0) - (found.request_gap or 0.0))
        score += abs(math.log(seconds(settings, "timeout", 5.0) / (found.timeout or 5.0))) / 2
        connections = settings.get("max-connections", 1)
        score += abs(int(str(connections)) - (found.max_connections or 1)) / 2
        text = ", ".join(f"{key} {value}" for key, value in settings.items())
        if best is None or score < best[0]:
            best = (score, profile.name, text)
    return (best[1], best[2]) if best is not None else ("", "")


# ---------------------------------------------------------------------------- the command


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="probe a Modbus device (read-only) and print the bridge settings that suit it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", metavar="TARGET", help="HOST:PORT or a bridge's target URL")
    parser.add_argument(
        "--unit", type=unit_argument, default=1, metavar="N", help="unit id (default: 1)"
    )
    parser.add_argument(
        "--register",
        type=_register,
        default=("holding", 0),
        metavar="TABLE:ADDRESS",
        help="what it reads: holding, input, coils or discrete, and an address the device "
        "has (default: holding:0)",
    )
    parser.add_argument(
        "--budget",
        type=positive_duration_argument,
        default=DEFAULT_BUDGET,
        metavar="DURATION",
        help=f"the time it may take in all (default: {format_duration(DEFAULT_BUDGET)})",
    )
    parser.add_argument(
        "--probe-timeout",
        type=positive_duration_argument,
        default=DEFAULT_PROBE_TIMEOUT,
        metavar="DURATION",
        help="how long one probe waits for an answer "
        f"(default: {format_duration(DEFAULT_PROBE_TIMEOUT)})",
    )
    parser.set_defaults(handler=run)


def _register(text: str) -> tuple[str, int]:
    table, _, address = text.partition(":")
    if table not in TABLES or not address.isdigit() or not 0 <= int(address) <= 65535:
        raise argparse.ArgumentTypeError(
            f"expected TABLE:ADDRESS such as holding:40000 (TABLE: {', '.join(TABLES)}), "
            f"got {text!r}"
        )
    return table, int(address)


def run(args: argparse.Namespace) -> int:
    try:
        target = target_url_value(args.target)
    except ConfigError as exc:
        print(f"tcp-multiplexer calibrate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    table, address = args.register
    terminal = sys.stderr.isatty()

    def progress(line: str) -> None:
        if terminal:
            print(f"  {line}", file=sys.stderr, flush=True)

    calibration = Calibration(
        target,
        args.unit,
        table,
        address,
        budget=args.budget,
        probe_timeout=args.probe_timeout,
        progress=progress,
    )
    started = time.monotonic()
    print(
        f"# tcp-multiplexer calibrate {target} unit {args.unit}, {table} {address}: "
        "read-only, it never writes",
        flush=True,
    )
    failure: list[str] = []

    async def calibrate() -> int:
        try:
            await calibration.run()
        except (OSError, TimeoutError) as exc:
            reason = str(exc) or "no connection in time"
            failure.append(f"cannot reach {target}: {reason}")
        except LookupError as exc:
            failure.append(str(exc.args[0]))
        return 0

    with contextlib.suppress(KeyboardInterrupt):
        run_async(calibrate())
    if failure:
        print(f"tcp-multiplexer calibrate: {failure[0]}", file=sys.stderr)
        return EXIT_NO_DEVICE
    found = calibration.found
    print(f"# {found.reads} reads in {time.monotonic() - started:.1f} s; nothing was written")
    if found.p50 is not None and found.p99 is not None:
        print(f"# answer time p50 {_ms(found.p50)}, p99 {_ms(found.p99)}")
    if found.refusal:
        print(f"# connections: {found.refusal}")
    for note in found.notes:
        print(f"# {note}")
    print("\n".join(bridge_block(target, found)))
    name, sets = nearest_profile(found)
    if name:
        print(f'# nearest device profile: {name} ({sets}): profile = "{name}"')
    return 0
