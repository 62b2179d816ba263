"""Python fallback load generator: closed-loop asyncio clients, every answer checked.

    .venv/bin/python bench/pyload.py --mode modbus --addr 127.0.0.1:8000 -c 16 -d 3

Used by bench/run.py when the Go load generator of ../shared/bench has not been built.
Each of the -c clients owns one TCP connection and runs a closed loop: send one request,
read exactly one answer, compare it with the answer the target must give, repeat. One
JSON line with the same fields as the Go `loadgen` prints on stdout.

Modes (the target is `tcp-multiplexer example-server MODE`, or `loadgen serve`):
  echo    "c<id>-n<seq>-xxx...\\n" (32 bytes), the answer must be byte-identical
  modbus  FC3 read of 10 holding registers, transaction id (id*7919 + seq) & 0xFFFF;
          register values as the example server computes them ((address*7 + unit) &
          0xFFFF, --values example) or as `loadgen serve` does (address & 0xFFFF,
          --values loadgen)

CAVEAT: this generator is one Python process. On a 2-core machine it saturates its core
before the multiplexer saturates the other, so ratios measured with it understate what
the multiplexer can do. The Go load generator is the instrument of record.

Standard library only; uses uvloop when it is importable (faster, same results).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Final, cast

ECHO_SIZE: Final = 32
MODBUS_REGS: Final = 10
MODBUS_SPAN: Final = 1000
MODBUS_UNIT: Final = 1
RECONNECT_PAUSE: Final = 0.01
WATCHDOG_PERIOD: Final = 0.1


class Stats:
    """Counters shared by all clients of one run."""

    def __init__(self) -> None:
        self.requests = 0
        self.warmup = 0
        self.errors = 0
        self.mismatches = 0
        self.timeouts = 0
        self.connect_errors = 0
        self.latencies_us: list[int] = []
        self.first_error = ""
        self.first_mismatch = ""

    def error(self, text: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = text


class Load:
    """What every client needs to know: mode, timing, where to count."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.mode: str = args.mode
        self.values: str = args.values
        host, _, port = str(args.addr).rpartition(":")
        self.host = host or "127.0.0.1"
        self.port = int(port)
        self.timeout: float = args.timeout
        self.stats = Stats()
        self.measure_start = 0.0
        self.end = math.inf
        self.stopping = False

    def request(self, cid: int, seq: int) -> tuple[bytes, bytes]:
        """Request number seq of client cid, and the exact answer it must get."""
        if self.mode == "echo":
            head = f"c{cid}-n{seq}-".encode()
            req = head + b"x" * max(0, ECHO_SIZE - 1 - len(head)) + b"\n"
            return req, req
        tid = (cid * 7919 + seq) & 0xFFFF
        addr = (cid * 131 + seq * 7) % MODBUS_SPAN
        req = (
            tid.to_bytes(2, "big")
            + b"\x00\x00\x00\x06"
            + bytes((MODBUS_UNIT, 3))
            + addr.to_bytes(2, "big")
            + MODBUS_REGS.to_bytes(2, "big")
        )
        if self.values == "example":
            regs = [(a * 7 + MODBUS_UNIT) & 0xFFFF for a in range(addr, addr + MODBUS_REGS)]
        else:
            regs = [a & 0xFFFF for a in range(addr, addr + MODBUS_REGS)]
        pdu = bytes((3, 2 * MODBUS_REGS)) + b"".join(r.to_bytes(2, "big") for r in regs)
        answer = (
            tid.to_bytes(2, "big")
            + b"\x00\x00"
            + (len(pdu) + 1).to_bytes(2, "big")
            + bytes((MODBUS_UNIT,))
            + pdu
        )
        return req, answer

    def frame_length(self, buf: bytearray) -> int:
        """Length of the first complete answer in buf, 0 when incomplete, -1 when invalid."""
        if self.mode == "echo":
            i = buf.find(b"\n")
            return i + 1 if i >= 0 else 0
        if len(buf) < 7:
            return 0
        length = int.from_bytes(buf[4:6], "big")
        if length < 2 or length > 254:
            return -1
        return 6 + length if len(buf) >= 6 + length else 0


class Client(asyncio.Protocol):
    """One closed-loop client on its own connection."""

    def __init__(self, load: Load, cid: int) -> None:
        self.load = load
        self.cid = cid
        self.seq = 0
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.expected = b""
        self.sent_at = 0.0
        self.outstanding = False
        self.started = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport, hence no isinstance
        self.transport = cast(asyncio.Transport, transport)
        self.buf.clear()
        if self.started:
            self.send()

    def start(self) -> None:
        self.started = True
        if self.transport is not None:
            self.send()

    def send(self) -> None:
        load = self.load
        if load.stopping or self.transport is None:
            return
        req, self.expected = load.request(self.cid, self.seq)
        self.seq += 1
        self.outstanding = True
        self.sent_at = time.perf_counter()
        self.transport.write(req)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        load = self.load
        stats = load.stats
        while buf:
            n = load.frame_length(buf)
            if n == 0:
                return
            if n < 0 or not self.outstanding:
                stats.error("framing: bad or unexpected answer")
                self.fail()
                return
            now = time.perf_counter()
            answer = bytes(buf[:n])
            del buf[:n]
            self.outstanding = False
            if answer != self.expected:
                stats.mismatches += 1
                if not stats.first_mismatch:
                    stats.first_mismatch = f"expected {self.expected!r} got {answer!r}"
            if now < load.measure_start:
                stats.warmup += 1
            elif now <= load.end:
                stats.requests += 1
                stats.latencies_us.append(int((now - self.sent_at) * 1e6))
            else:
                load.stopping = True
                return
            self.send()

    def fail(self) -> None:
        self.outstanding = False
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.load.stopping:
            return
        self.load.stats.error(f"connection lost: {exc or 'closed by peer'}")
        self.outstanding = False
        asyncio.get_running_loop().call_later(RECONNECT_PAUSE, self.reconnect)

    def reconnect(self) -> None:
        if not self.load.stopping:
            asyncio.get_running_loop().create_task(connect(self.load, self))


async def connect(load: Load, client: Client) -> bool:
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(
            loop.create_connection(lambda: client, load.host, load.port), load.timeout
        )
    except (OSError, TimeoutError) as exc:
        load.stats.connect_errors += 1
        load.stats.error(f"connect: {exc}")
        if not load.stopping:
            loop.call_later(RECONNECT_PAUSE * 5, client.reconnect)
        return False
    return True


async def run(load: Load, clients: int, duration: float, warmup: float) -> float:
    """Run the closed loop; returns the measured seconds."""
    pool = [Client(load, i) for i in range(clients)]
    await asyncio.gather(*(connect(load, c) for c in pool))
    start = time.perf_counter()
    load.measure_start = start + warmup
    load.end = load.measure_start + duration
    for c in pool:
        c.start()
    while not load.stopping:
        await asyncio.sleep(WATCHDOG_PERIOD)
        now = time.perf_counter()
        if now >= load.end:
            break
        for c in pool:
            if c.outstanding and now - c.sent_at > load.timeout:
                load.stats.timeouts += 1
                load.stats.error("timeout")
                c.fail()
    load.stopping = True
    for c in pool:
        if c.transport is not None:
            c.transport.close()
    await asyncio.sleep(0)
    return duration


def percentile(sorted_us: Sequence[int], p: float) -> int:
    if not sorted_us:
        return 0
    k = max(0, math.ceil(p * len(sorted_us)) - 1)
    return sorted_us[k]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    ap.add_argument("--mode", choices=("echo", "modbus"), default="echo")
    ap.add_argument("--addr", default="127.0.0.1:8000", help="HOST:PORT (loopback)")
    ap.add_argument("-c", "--clients", type=int, default=1)
    ap.add_argument("-d", "--duration", type=float, default=3.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=0.5, help="seconds not counted")
    ap.add_argument("--timeout", type=float, default=2.0, help="per request and connect")
    ap.add_argument(
        "--values",
        choices=("example", "loadgen"),
        default="example",
        help="modbus register values of the target (example-server or loadgen serve)",
    )
    ap.add_argument("--label", default="")
    ap.add_argument("--no-uvloop", action="store_true")
    args = ap.parse_args(argv)
    if args.clients < 1 or args.duration <= 0:
        ap.error("need -c >= 1 and -d > 0")
    load = Load(args)
    coro = run(load, args.clients, args.duration, args.warmup)
    uvloop = None
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            uvloop = importlib.import_module("uvloop")
    if uvloop is not None:
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        try:
            seconds = loop.run_until_complete(coro)
        finally:
            loop.close()
    else:
        seconds = asyncio.run(coro)
    st = load.stats
    lat = sorted(st.latencies_us)
    result = {
        "mode": args.mode,
        "clients": args.clients,
        "requests": st.requests,
        "errors": st.errors,
        "mismatches": st.mismatches,
        "seconds": round(seconds, 3),
        "rps": round(st.requests / seconds, 1) if seconds > 0 else 0.0,
        "p50_us": percentile(lat, 0.50),
        "p90_us": percentile(lat, 0.90),
        "p99_us": percentile(lat, 0.99),
        "max_us": lat[-1] if lat else 0,
        "timeouts": st.timeouts,
        "connect_errors": st.connect_errors,
        "warmup_requests": st.warmup,
        "addr": args.addr,
        "label": args.label,
        "generator": "pyload" + ("+uvloop" if uvloop is not None else ""),
    }
    if st.first_error:
        result["first_error"] = st.first_error
    if st.first_mismatch:
        result["first_mismatch"] = st.first_mismatch[:200]
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
