"""Reliability: every target fault and every hostile client, with well-behaved clients alongside.

Each test runs the real multiplexer (`python -m tcp_multiplexer server`, a subprocess,
so its file descriptors and memory can be read from /proc/PID) between the example
target (`TargetServer`) and a `WellBehavedSet` of five clients, and asserts:

(a) what DESIGN.md promises for the fault or the hostile client (gateway answer code,
    the hostile connection closed or kept, reconnection and recovery);
(b) the well-behaved clients: every request answered, never wrong, never lost, never
    someone else's answer, the connection never closed; gateway answers only where the
    table below allows them; the multiplexer never restarted (same process, exit 0 on
    SIGTERM, no traceback in its log);
(c) the multiplexer's open file descriptors and resident memory back near where they
    were after warm-up (`FD_SLACK`, `RSS_SLACK_KB`).

What the well-behaved clients may get besides their own correct answer (Modbus,
one target connection carrying one request at a time, `--timeout TIMEOUT`):

=====================  =======================================================
fault                  gateway answers allowed
=====================  =======================================================
none (hostile client)  none at all; the target sees only complete requests
delay < timeout        none
answer twice           none (the second copy carries an id nobody waits for)
never answer           0x0B for exactly the requests hit; 0x06 for requests that
wrong transaction id   waited for the connection since before a hit one was sent
                       (at most one per other client per 0x0B)
late (> timeout)       0x0B for at least the requests hit (one queued behind a late
                       one may be late too); 0x06 as above
half answer + close,   0x0B for exactly the requests hit (one request per
garbage, RST           connection); 0x06 as above
close after N s        0x0B, at most one per closed connection; no 0x06 (a
                       connection that answered is replaced at once)
target down            0x0A while down (0x0B for the one request in flight when it
outage (away, back)    went); once back, 0x0A until reconnected, then none
accept + close at once 0x06 (waited, never sent), 0x0B (sent), 0x0A (refused)
one connection only,   while another client holds the slot: 0x06, 0x0B, 0x0A;
rest closed / hanging  once it is free, served again within RECOVERY, then none
=====================  =======================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import resource
import signal
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Final

import pytest

from tcp_multiplexer.protocols.modbus.mbap import build_adu
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets import (
    Fault,
    OverLimit,
    TargetConfig,
    TargetServer,
    holding_register_value,
)
from tests.helpers import LOOPBACK, CliProcess, cli_process, eventually, open_client
from tests.wellbehaved import Resources, Tally, WellBehavedSet, process_resources

TIMEOUT: Final = 0.5
"""The multiplexer's --timeout: answers and free target connections."""
ANSWER_WITHIN: Final = 2 * TIMEOUT + 1.0
"""A well-behaved request without any answer for this long is lost."""
TEST_BUDGET: Final = 25.0
"""asyncio.timeout of each test body (pytest-timeout is the outer guard)."""
RECOVERY: Final = 5.0
"""Longest wait for the multiplexer to serve again once the target is healthy."""
FD_SLACK: Final = 2
"""A target connection being replaced may briefly count twice."""
RSS_SLACK_KB: Final = 3 * 1024
FLOOD_RSS_SLACK_KB: Final = 8 * 1024
"""After the first burst of 2,000 connections only (see `connection_flood`)."""
PEAK_SLACK_KB: Final = 4 * 1024
"""The 10 MB line must never be held: the peak RSS stays within this of the start."""
SEED: Final = 5
GATEWAY_BUSY: Final = 0x06
GATEWAY_UNREACHABLE: Final = 0x0A
GATEWAY_NO_ANSWER: Final = 0x0B
LATE_DELAY: Final = 0.8
"""> TIMEOUT, and the next request (sent at TIMEOUT) is still answered within its own."""
HOSTILE_CONNECTIONS: Final = 2000
LOG_TAIL: Final = 80
OUTAGES: Final = 3
OUTAGE: Final = 0.5
OUTAGE_RECOVERY: Final = 2.0
"""Backoff from 50 ms, doubling with jitter: attempts at most 0.05, 0.1, 0.2, 0.4 s apart
cover a 0.5 s outage, the next comes at most 0.8 s later: about 1.05 s after the target
is back, at worst."""

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------- the multiplexer


@dataclass
class Mux:
    """The multiplexer subprocess and its listening port."""

    process: CliProcess
    port: int

    @property
    def pid(self) -> int:
        return self.process.process.pid

    def resources(self) -> Resources:
        return process_resources(self.pid)


@contextlib.asynccontextmanager
async def multiplexer(target_port: int, protocol: ProtocolName) -> AsyncIterator[Mux]:
    """The CLI multiplexer in a subprocess; stopped with SIGTERM, which must exit 0."""
    args = [
        "server",
        "-p",
        protocol.value,
        "-t",
        f"{LOOPBACK}:{target_port}",
        "-l",
        f"{LOOPBACK}:0",
        "--timeout",
        str(TIMEOUT),
        "--connect-timeout",
        "1",
        "--reconnect-backoff",
        "50ms",
        "--metrics-interval",
        "0",
        "-v",
    ]
    with cli_process(args) as process:
        port = await asyncio.to_thread(process.listening_port)
        try:
            yield Mux(process, port)
            assert process.process.poll() is None, "the multiplexer died"
            process.process.send_signal(signal.SIGTERM)
            status = await asyncio.to_thread(process.process.wait, 10)
        finally:
            # Shown by pytest if the test fails (also after this block, in the checks).
            print(log_excerpt(process.lines))
    output = process.output()
    assert status == 0, f"exit status {status}:\n{output}"
    for sign in ("Traceback", "Exception in callback", "exception was never retrieved"):
        assert sign not in output, f"{sign!r} in the multiplexer's log:\n{output}"


def log_excerpt(lines: list[str]) -> str:
    """The multiplexer's log without the client connect/disconnect lines, last part."""
    kept = [line for line in lines if " client #" not in line or "WARNING" in line]
    return f"multiplexer log (last {LOG_TAIL} lines of {len(kept)}):\n" + "".join(kept[-LOG_TAIL:])


async def settle(mux: Mux, start: Resources, *, rss_slack_kb: int = RSS_SLACK_KB) -> Resources:
    """Wait until the fds are back within `FD_SLACK` of `start`; check memory; return them."""
    await eventually(
        lambda: mux.resources().fds <= start.fds + FD_SLACK,
        within=5.0,
        message=f"open fds back to {start.fds} + {FD_SLACK}",
    )
    end = mux.resources()
    assert end.rss_kb <= start.rss_kb + rss_slack_kb, f"RSS grew: {start} -> {end}"
    return end


def modbus_target(**options: Any) -> TargetConfig:
    return replace(TargetConfig(protocol=ProtocolName.MODBUS, seed=SEED), **options)


# ---------------------------------------------------------------------------- per-request faults


@dataclass(frozen=True)
class RequestFault:
    """A target fault hitting a fraction of requests, and what well-behaved clients may see."""

    target: TargetConfig
    allowed: frozenset[int]
    no_answers: str
    """How the number of 0x0B answers relates to the faults fired: none, exact, at-least."""
    fault: Fault | None = None


def _fault(fault: Fault, fraction: float, no_answers: str) -> RequestFault:
    allowed = frozenset() if no_answers == "none" else {GATEWAY_NO_ANSWER, GATEWAY_BUSY}
    return RequestFault(
        modbus_target(faults=((fault, fraction),), late_delay=LATE_DELAY),
        frozenset(allowed),
        no_answers,
        fault,
    )


REQUEST_FAULTS: Final = [
    pytest.param(
        RequestFault(modbus_target(delay=0.02), frozenset(), "none"), id="delay-within-timeout"
    ),
    pytest.param(_fault(Fault.LATE, 0.05, "at-least"), id="late"),
    pytest.param(_fault(Fault.NO_ANSWER, 0.05, "exact"), id="no-answer"),
    pytest.param(_fault(Fault.ANSWER_TWICE, 0.2, "none"), id="answer-twice"),
    pytest.param(_fault(Fault.WRONG_ID, 0.05, "exact"), id="wrong-id"),
    pytest.param(_fault(Fault.HALF_ANSWER_CLOSE, 0.05, "exact"), id="half-answer-close"),
    pytest.param(_fault(Fault.GARBAGE, 0.05, "exact"), id="garbage"),
    pytest.param(_fault(Fault.RESET, 0.05, "exact"), id="reset-mid-answer"),
]


@pytest.mark.parametrize("case", REQUEST_FAULTS)
async def test_request_fault(case: RequestFault) -> None:
    fired = 0
    async with (
        asyncio.timeout(TEST_BUDGET),
        TargetServer(case.target) as target,
        multiplexer(target.port, ProtocolName.MODBUS) as mux,
    ):
        async with WellBehavedSet(mux.port, ProtocolName.MODBUS, answer_within=ANSWER_WITHIN) as wb:
            await wb.wait_correct(2, within=RECOVERY)
            start = mux.resources()
            wb.phase("fault")
            fault = case.fault
            if fault is not None:
                await target.wait_for(lambda stats: stats.faults[fault] >= 3, timeout=15)
            await wb.wait_correct(5, within=15)
            await settle(mux, start)
        if fault is not None:
            fired = target.stats.faults[fault]
        tally = wb.check(allowed=case.allowed)
    no_answers = tally.gateway[GATEWAY_NO_ANSWER]
    match case.no_answers:
        case "none":
            assert tally.gateway.total() == 0
        case "exact":
            assert no_answers == fired, wb.report()
        case "at-least":
            assert no_answers >= fired, wb.report()
    never_sent = tally.gateway[GATEWAY_BUSY]
    # Each stall (a request without answer) can expire at most the other clients' one
    # request each that waited for the connection since before it was sent.
    assert never_sent <= (wb.clients - 1) * no_answers, wb.report()
    assert target.stats.requests == tally.sent - never_sent, "each sent request reached it once"


# ---------------------------------------------------------------------------- connection faults


async def test_target_refuses_connections_then_comes_back() -> None:
    async with (
        asyncio.timeout(TEST_BUDGET),
        TargetServer(modbus_target()) as target,
        multiplexer(target.port, ProtocolName.MODBUS) as mux,
        WellBehavedSet(mux.port, ProtocolName.MODBUS, answer_within=ANSWER_WITHIN) as wb,
    ):
        await wb.wait_correct(5, within=RECOVERY)
        start = mux.resources()
        await wb.enter_phase("down", within=RECOVERY)
        await target.go_down()
        await wb.wait_each(
            lambda tally: tally.gateway[GATEWAY_UNREACHABLE] >= 10,
            within=RECOVERY,
            message="0x0A answers while the target is down",
        )
        wb.phase("up")
        await target.come_up()
        await wb.wait_correct(3, within=RECOVERY)
        wb.phase("after")
        await wb.wait_correct(30, within=RECOVERY)
        await settle(mux, start)
    down = wb.check("down", allowed={GATEWAY_UNREACHABLE, GATEWAY_NO_ANSWER}, min_correct_each=0)
    assert down.gateway[GATEWAY_NO_ANSWER] <= 1, "only the request in flight gets 0x0B"
    wb.check("up", allowed={GATEWAY_UNREACHABLE}, min_correct_each=3)
    wb.check("after", min_correct_each=30)


async def test_target_accepts_and_closes_at_once() -> None:
    """A listener that resets every connection: gateway answers, then recovery."""
    config = modbus_target(accept_close=True)
    async with (
        asyncio.timeout(TEST_BUDGET),
        TargetServer(config) as closing,
        multiplexer(closing.port, ProtocolName.MODBUS) as mux,
        WellBehavedSet(mux.port, ProtocolName.MODBUS, answer_within=ANSWER_WITHIN) as wb,
    ):
        await wb.wait_each(
            lambda tally: tally.answered >= 2, within=RECOVERY, message="gateway answers"
        )
        start = mux.resources()
        wb.phase("closing")
        await closing.wait_for(lambda stats: stats.rejected >= 4)
        await wb.wait_each(
            lambda tally: tally.answered >= 2, within=RECOVERY, message="gateway answers"
        )
        await closing.stop()
        async with TargetServer(replace(config, accept_close=False, port=closing.port)):
            wb.phase("recovering")
            await wb.wait_correct(3, within=RECOVERY)
            wb.phase("after")
            await wb.wait_correct(30, within=RECOVERY)
            await settle(mux, start)
            await wb.stop()  # before this target goes
    failing = {GATEWAY_BUSY, GATEWAY_NO_ANSWER, GATEWAY_UNREACHABLE}
    for phase in ("start", "closing"):
        wb.check(phase, allowed=failing, min_correct_each=0)
    wb.check("recovering", allowed=failing, min_correct_each=3)
    wb.check("after", min_correct_each=30)


@pytest.mark.parametrize("over_limit", [OverLimit.CLOSE, OverLimit.HANG])
async def test_target_takes_one_connection_held_by_another(over_limit: OverLimit) -> None:
    """A device with one TCP slot, held by another program (a vendor app, a stale
    connection): the multiplexer's connection is closed, or accepted and never answered.
    Once the slot is free, the multiplexer must serve again without a restart."""
    config = modbus_target(max_connections=1, over_limit=over_limit)
    async with (
        asyncio.timeout(TEST_BUDGET),
        TargetServer(config) as target,
        open_client(target.port) as (_intruder_reader, intruder),
    ):
        await target.wait_for(lambda stats: stats.open_connections == 1)
        async with (
            multiplexer(target.port, ProtocolName.MODBUS) as mux,
            WellBehavedSet(mux.port, ProtocolName.MODBUS, answer_within=ANSWER_WITHIN) as wb,
        ):
            await wb.wait_each(
                lambda tally: tally.answered >= 2, within=RECOVERY, message="gateway answers"
            )
            start = mux.resources()
            wb.phase("occupied")
            await target.wait_for(lambda stats: stats.rejected >= 1)
            await wb.wait_each(
                lambda tally: tally.answered >= 3, within=RECOVERY, message="gateway answers"
            )
            intruder.close()
            await target.wait_for(lambda stats: stats.open_connections == 0)
            wb.phase("freed")
            await wb.wait_correct(3, within=RECOVERY)
            wb.phase("after")
            await wb.wait_correct(30, within=RECOVERY)
            await settle(mux, start)
    failing = {GATEWAY_BUSY, GATEWAY_NO_ANSWER, GATEWAY_UNREACHABLE}
    for phase in ("start", "occupied"):
        wb.check(phase, allowed=failing, min_correct_each=0)
    wb.check("freed", allowed=failing, min_correct_each=3)
    wb.check("after", min_correct_each=30)


async def test_target_closes_every_connection_after_a_while() -> None:
    """Like SolarEdge (about 330 s), but 0.5 s: each close costs at most the one request
    in flight, and reconnecting is quick every time (never a 0x06)."""
    closes = 6
    async with (
        asyncio.timeout(TEST_BUDGET),
        TargetServer(modbus_target(close_after=0.5)) as target,
        multiplexer(target.port, ProtocolName.MODBUS) as mux,
        WellBehavedSet(mux.port, ProtocolName.MODBUS, answer_within=ANSWER_WITHIN) as wb,
    ):
        await wb.wait_correct(3, within=RECOVERY)
        start = mux.resources()
        wb.phase("closing")
        await target.wait_for(lambda stats: stats.closed_after >= closes, timeout=15)
        await wb.wait_correct(30, within=RECOVERY)
        await settle(mux, start)
    closed = target.stats.closed_after
    tally = wb.check(allowed={GATEWAY_NO_ANSWER}, min_correct_each=30)
    assert tally.gateway[GATEWAY_NO_ANSWER] <= closed, wb.report()
    assert target.stats.accepted >= closes + 1


async def test_target_goes_away_and_comes_back() -> None:
    """The nightly inverter shutdown, shortened: away for OUTAGE seconds, three times.
    0x0A while away (0x0B for the request in flight as it went), then served again
    within the reconnect backoff, every time (a connection that answered resets it)."""
    async with (
        asyncio.timeout(TEST_BUDGET),
        TargetServer(modbus_target()) as target,
        multiplexer(target.port, ProtocolName.MODBUS) as mux,
        WellBehavedSet(mux.port, ProtocolName.MODBUS, answer_within=ANSWER_WITHIN) as wb,
    ):
        await wb.wait_correct(3, within=RECOVERY)
        start = mux.resources()
        for outage in range(OUTAGES):
            await wb.enter_phase(f"down{outage}", within=RECOVERY)
            await target.go_down()
            await asyncio.sleep(OUTAGE)  # the length of the outage is the behaviour under test
            await target.come_up()
            wb.phase(f"up{outage}")
            await wb.wait_correct(1, within=OUTAGE_RECOVERY)
            wb.phase(f"served{outage}")
            await wb.wait_correct(10, within=RECOVERY)
        await settle(mux, start)
    wb.check("start", min_correct_each=3)
    for outage in range(OUTAGES):
        down = wb.check(
            f"down{outage}",
            allowed={GATEWAY_UNREACHABLE, GATEWAY_NO_ANSWER},
            min_correct_each=0,
        )
        assert down.gateway[GATEWAY_NO_ANSWER] <= 1, wb.report()
        assert down.gateway[GATEWAY_UNREACHABLE] >= 5, "answered at once while away"
        wb.check(f"up{outage}", allowed={GATEWAY_UNREACHABLE}, min_correct_each=1)
        wb.check(f"served{outage}", min_correct_each=10)


# ---------------------------------------------------------------------------- hostile clients


@dataclass
class Scene:
    """What a hostile client's script sees: the multiplexer, the target, the good clients."""

    protocol: ProtocolName
    mux: Mux
    target: TargetServer
    wb: WellBehavedSet
    start: Resources
    hostile_requests: int = 0
    """Complete, valid requests the hostile client sent (they may reach the target)."""

    def exchange(self, n: int) -> tuple[bytes, bytes]:
        """Hostile request `n` and the target's exact answer to it (unlike any
        well-behaved client's: other unit ids, other lines)."""
        if self.protocol is ProtocolName.ECHO:
            line = f"hostile {n}\n".encode()
            return line, line
        return read_request(0x7000 + n, 60 + n % 100, n % 50, 1 + n % 4)


def read_request(tid: int, unit: int, address: int, count: int) -> tuple[bytes, bytes]:
    """A holding-register read and the device's exact answer to it."""
    request = build_adu(tid, unit, struct.pack(">BHH", 3, address, count))
    values = [holding_register_value(unit, address + k) for k in range(count)]
    answer = build_adu(tid, unit, struct.pack(f">BB{count}H", 3, 2 * count, *values))
    return request, answer


async def expect_closed(reader: asyncio.StreamReader) -> None:
    """The multiplexer closes this connection (FIN or RST) without sending a byte."""
    async with asyncio.timeout(4 * TIMEOUT):
        try:
            received = await reader.read()
        except ConnectionError:
            # Reset, or a broken pipe: a client still writing when the multiplexer
            # aborts its connection learns of it from its own write, and the stream
            # reader hands that error on.
            received = b""
    assert received == b"", f"got {received!r} before the close"


async def vanish(writer: asyncio.StreamWriter, *, reset: bool) -> None:
    """Close with FIN, or with RST (a crashed or killed client)."""
    if reset:
        writer.transport.abort()
    else:
        writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def garbage_bytes(scene: Scene) -> None:
    data = bytearray(random.Random(SEED).randbytes(4096))
    data[2] = 0xFF  # a protocol id other than 0: not Modbus
    async with open_client(scene.mux.port) as (reader, writer):
        writer.write(data)
        await expect_closed(reader)


async def oversized_header(scene: Scene) -> None:
    header = struct.pack(">HHHB", 1, 0, 0xFFFF, 1)  # announces 65,534 bytes; 254 is the limit
    async with open_client(scene.mux.port) as (reader, writer):
        writer.write(header + bytes(1000))
        await expect_closed(reader)


async def ten_megabyte_line(scene: Scene) -> None:
    """Closed without ever holding the line: the peak RSS stays near the start."""
    async with open_client(scene.mux.port) as (reader, writer):
        writer.write(b"x" * (10 * 1024 * 1024))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        await expect_closed(reader)
    peak = scene.mux.resources().peak_rss_kb
    assert peak <= scene.start.peak_rss_kb + PEAK_SLACK_KB, "the line was buffered"


async def slow_drip(scene: Scene) -> None:
    """One byte per 100 ms of a 12-byte request (1.2 s, longer than --timeout).

    DESIGN lists a slow drip among misbehaviours that may cost the client its
    connection, and also keeps quiet clients connected: either is accepted, a wrong
    answer never (today the drip is answered). Meanwhile the others are served as usual.
    """
    request, answer = scene.exchange(1)
    async with open_client(scene.mux.port) as (reader, writer):
        scene.wb.phase("during-drip")
        for byte in request:
            writer.write(bytes((byte,)))
            await writer.drain()
            await asyncio.sleep(0.1)  # the drip's pace is the behaviour under test
        scene.wb.phase("after-drip")
        async with asyncio.timeout(ANSWER_WITHIN):
            try:
                received = await reader.read(len(answer))
            except ConnectionResetError:
                received = b""
        assert received in (answer, b""), f"the drip got {received!r}"
        scene.hostile_requests = 1 if received else 0
    during = scene.wb.per_client("during-drip").values()
    assert min(tally.correct for tally in during) >= 10, "the others were held up"


async def silent_client(scene: Scene) -> None:
    """Connects and sends nothing for longer than --timeout: it keeps its connection."""
    request, answer = scene.exchange(2)
    async with open_client(scene.mux.port) as (reader, writer):
        await asyncio.sleep(3 * TIMEOUT)  # the idle time is the behaviour under test
        writer.write(request)
        async with asyncio.timeout(ANSWER_WITHIN):
            assert await reader.readexactly(len(answer)) == answer
    scene.hostile_requests = 1


async def half_request_then_vanish(scene: Scene) -> None:
    """Part of a request, then FIN or RST, 20 times: nothing of it reaches the target."""
    for attempt in range(20):
        request, _answer = scene.exchange(attempt)
        _reader, writer = await asyncio.open_connection(LOOPBACK, scene.mux.port)
        writer.write(request[: 1 + attempt % (len(request) - 1)])
        await writer.drain()
        await vanish(writer, reset=bool(attempt % 2))


async def close_before_the_answer(scene: Scene) -> None:
    """1-3 requests, then FIN or RST before any answer (the target takes 5 ms each), 20
    times: the answers, when they come, go to nobody.

    After a FIN the requests are still served (the client may only have half-closed);
    the load stays below what the target serves within --timeout, so that the others
    never wait that long.
    """
    for attempt in range(20):
        count = 1 + attempt % 3
        requests = [scene.exchange(10 * attempt + n)[0] for n in range(count)]
        _reader, writer = await asyncio.open_connection(LOOPBACK, scene.mux.port)
        writer.write(b"".join(requests))
        await writer.drain()
        scene.hostile_requests += count
        await vanish(writer, reset=bool(attempt % 2))


@contextlib.contextmanager
def open_file_limit(needed: int) -> Iterator[None]:
    """Raise this process's soft RLIMIT_NOFILE to `needed` if it is lower (restored after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        yield
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the hard open-file limit {hard} is below {needed}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_sockets(port: int, count: int) -> list[socket.socket]:
    """`count` blocking connections to `port` (run in a worker thread)."""
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            opened.append(socket.create_connection((LOOPBACK, port), timeout=10.0))
    except BaseException:
        close_sockets(opened)
        raise
    return opened


def close_sockets(sockets: list[socket.socket]) -> None:
    """Close them all, every second one with RST (a crashed or killed client)."""
    for index, sock in enumerate(sockets):
        if index % 2:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


@contextlib.asynccontextmanager
async def connection_burst(port: int) -> AsyncIterator[list[socket.socket]]:
    """HOSTILE_CONNECTIONS connections opened at once; closed on exit, half with RST.

    They are opened and closed by a worker thread with blocking sockets: opened from this
    event loop, 2,000 connects would stall the target and the well-behaved clients that
    share it for longer than the multiplexer's timeout, and the test would blame the
    multiplexer for their lateness.
    """
    sockets = await asyncio.to_thread(open_sockets, port, HOSTILE_CONNECTIONS)
    try:
        yield sockets
    finally:
        await asyncio.to_thread(close_sockets, sockets)


def exchange_on(sock: socket.socket, request: bytes, answer_size: int) -> bytes:
    """Send `request` on a blocking socket and read `answer_size` bytes back."""
    sock.settimeout(ANSWER_WITHIN)
    sock.sendall(request)
    received = b""
    while len(received) < answer_size:
        chunk = sock.recv(answer_size - len(received))
        if not chunk:
            break
        received += chunk
    return received


async def connection_flood(scene: Scene) -> None:
    """2,000 connections at once, twice: all accepted and held at the same time, a sample
    served, then all gone again. The first burst grows the allocator's pools (about
    5 MB on CPython, kept for reuse); the second must not grow memory any further."""
    mux = scene.mux
    with open_file_limit(HOSTILE_CONNECTIONS + 512):
        for burst in range(2):
            async with connection_burst(mux.port) as sockets:
                await eventually(
                    lambda: mux.resources().fds >= scene.start.fds + HOSTILE_CONNECTIONS,
                    within=5.0,
                    message="the multiplexer holding every connection at once",
                )
                chosen = sockets[:: HOSTILE_CONNECTIONS // 20]
                exchanges = [scene.exchange(100 * burst + n) for n in range(len(chosen))]
                scene.hostile_requests += len(chosen)
                answers = await asyncio.gather(
                    *(
                        asyncio.to_thread(exchange_on, sock, request, len(answer))
                        for sock, (request, answer) in zip(chosen, exchanges, strict=True)
                    )
                )
                assert answers == [answer for _request, answer in exchanges]
            if burst == 0:
                warmed = await settle(mux, scene.start, rss_slack_kb=FLOOD_RSS_SLACK_KB)
                scene.start = replace(scene.start, rss_kb=warmed.rss_kb)


async def pipeline_without_reading(scene: Scene) -> None:
    """100 requests at once, answers left unread while the others carry on; then every
    answer is there, correct and in order."""
    exchanges = [scene.exchange(n) for n in range(100)]
    async with open_client(scene.mux.port) as (reader, writer):
        writer.write(b"".join(request for request, _answer in exchanges))
        scene.wb.phase("pipelined")
        await scene.wb.wait_correct(20, within=RECOVERY)
        async with asyncio.timeout(ANSWER_WITHIN):
            for _request, answer in exchanges:
                assert await reader.readexactly(len(answer)) == answer
    scene.hostile_requests = len(exchanges)


@dataclass(frozen=True)
class Hostile:
    script: Callable[[Scene], Awaitable[None]]
    protocol: ProtocolName = ProtocolName.MODBUS
    target_delay: float = 0.0


MODBUS: Final = ProtocolName.MODBUS
ECHO: Final = ProtocolName.ECHO
HOSTILE_CLIENTS: Final = [
    pytest.param(Hostile(garbage_bytes), id="garbage-bytes"),
    pytest.param(Hostile(oversized_header), id="oversized-header"),
    pytest.param(Hostile(ten_megabyte_line, ECHO), id="10mb-line-echo"),
    pytest.param(Hostile(slow_drip), id="slow-drip"),
    pytest.param(Hostile(silent_client), id="connect-and-send-nothing"),
    pytest.param(Hostile(half_request_then_vanish), id="half-request-then-vanish"),
    pytest.param(Hostile(half_request_then_vanish, ECHO), id="half-request-then-vanish-echo"),
    pytest.param(Hostile(close_before_the_answer, target_delay=0.005), id="close-before-answer"),
    pytest.param(
        Hostile(close_before_the_answer, ECHO, target_delay=0.005), id="close-before-answer-echo"
    ),
    pytest.param(Hostile(connection_flood), id="2000-connections"),
    pytest.param(Hostile(pipeline_without_reading), id="pipeline-100-unread"),
    pytest.param(Hostile(pipeline_without_reading, ECHO), id="pipeline-100-unread-echo"),
]


@pytest.mark.parametrize("hostile", HOSTILE_CLIENTS)
async def test_hostile_client(hostile: Hostile) -> None:
    config = TargetConfig(protocol=hostile.protocol, delay=hostile.target_delay, seed=SEED)
    async with (
        asyncio.timeout(TEST_BUDGET),
        TargetServer(config) as target,
        multiplexer(target.port, hostile.protocol) as mux,
        WellBehavedSet(mux.port, hostile.protocol, answer_within=ANSWER_WITHIN) as wb,
    ):
        await wb.wait_correct(5, within=RECOVERY)
        scene = Scene(hostile.protocol, mux, target, wb, mux.resources())
        await hostile.script(scene)
        wb.phase("afterwards")
        await wb.wait_correct(10, within=RECOVERY)
        await settle(mux, scene.start)
    tally = wb.check()  # no gateway answer at all: the target is healthy
    assert target.stats.framing_errors == 0, "a broken request reached the target"
    assert tally.sent <= target.stats.requests <= tally.sent + scene.hostile_requests


# ---------------------------------------------------------------------------- the harness


def _wrong(tally: Tally) -> list[str]:
    return tally.wrong


def _lost(tally: Tally) -> list[str]:
    return tally.lost


def _closed(tally: Tally) -> list[str]:
    return tally.closed


@pytest.mark.parametrize(
    ("fault", "seen", "failure"),
    [
        pytest.param(Fault.WRONG_ID, _wrong, "wrong answers", id="wrong"),
        pytest.param(Fault.NO_ANSWER, _lost, "lost answers", id="lost"),
        pytest.param(Fault.HALF_ANSWER_CLOSE, _closed, "connections closed", id="closed"),
    ],
)
async def test_the_well_behaved_set_catches_what_it_must(
    fault: Fault, seen: Callable[[Tally], list[str]], failure: str
) -> None:
    """Straight to a faulty target, no multiplexer: each failure is seen and fails check()."""
    config = modbus_target(faults=((fault, 0.5),))
    async with asyncio.timeout(TEST_BUDGET), TargetServer(config) as target:
        async with WellBehavedSet(target.port, MODBUS, answer_within=0.2) as wb:
            await eventually(lambda: bool(seen(wb.tally())), message=failure)
        with pytest.raises(AssertionError, match=failure):
            wb.check(allowed={GATEWAY_BUSY, GATEWAY_NO_ANSWER, GATEWAY_UNREACHABLE})
