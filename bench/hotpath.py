"""The Python work per request on the hot path, without sockets: a profile harness.

Runs the multiplexer's own request path in one process: a client's bytes go into a
`ClientSession`, through the `Dispatcher` to an `UpstreamConnection`, and the target's
answer comes back the same way. A real bridge runs, with its real pool, but reaches its
target through `tcp_multiplexer.testing`'s memory connections; in-memory transports
stand in for the client sockets too, and the target answers at once, so what this
measures is the multiplexer's Python work per request and nothing else: no system
calls, no event-loop wake-ups, no load generator.
With 16 clients each keeps one request outstanding, as in the main benchmark table, so
requests wait in the fair queue while the target link is busy.

`modbus-image` is Modbus with a register image (`--cache-ttl 1h`): one read of
registers 0-124 fills it before the measurement, and then every client read (ten
registers somewhere in that range) is answered from the image, without the target.

    .venv/bin/python bench/hotpath.py                   # µs per request
    .venv/bin/python bench/hotpath.py --instructions    # and instructions, under valgrind

Microseconds move with whatever else the machine does. `--instructions` runs the
harness twice under `valgrind --tool=callgrind` (Debian package `valgrind`), with two
request counts, and divides the difference in instructions by the difference in
requests: start-up costs cancel out and the figure is the same from run to run, which
makes it the one to compare before and after a change to the hot path. Standard
library, uvloop and the project only; nothing listens, nothing connects.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, cast

from tcp_multiplexer.app import App
from tcp_multiplexer.config.model import AppConfig, BridgeConfig
from tcp_multiplexer.core.session import ClientSession
from tcp_multiplexer.options import Address
from tcp_multiplexer.protocols.modbus.options import ModbusOptions
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.testing import MemoryConnector, MemoryTransport

PROTOCOLS: Final = ("echo", "modbus", "http", "modbus-image")
IMAGE: Final = "modbus-image"
"""Modbus, every read answered from the register image."""
IMAGE_FILL: Final = bytes.fromhex("0001 0000 0006 01 03 0000 007d")
"""The read that fills the image: holding registers 0-124."""
UNUSED_TARGET: Final = Address("127.0.0.1", 9)
"""Never connected to: the bridge reaches its target through memory connections."""


def request_bytes(protocol: str, client: int, sequence: int) -> bytes:
    """What the Go load generator sends, near enough."""
    if protocol == "http":
        return (
            b"GET /c%d/n%d HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: loadgen\r\n"
            b"Accept: */*\r\nConnection: keep-alive\r\n\r\n" % (client, sequence)
        )
    if protocol == "modbus":
        address = (client * 131 + sequence * 7) % 1000
        return bytes.fromhex("0001 0000 0006 01 03") + address.to_bytes(2, "big") + b"\x00\x0a"
    if protocol == IMAGE:
        address = (client * 13 + sequence * 7) % 115  # inside 0-124: always in the image
        return bytes.fromhex("0001 0000 0006 01 03") + address.to_bytes(2, "big") + b"\x00\x0a"
    return b"client %d request %d\n" % (client, sequence)


def answer_bytes(protocol: str, wire: bytes) -> bytes:
    """The target's answer to the request `wire` as it left the multiplexer."""
    if protocol == "http":
        body = wire.split(b"\r\n", 1)[0] + b"\n"
        return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body),
            body,
        )
    if protocol == "modbus":
        return wire[:4] + bytes.fromhex("0017 01 03 14") + bytes(20)
    if protocol == IMAGE:
        return wire[:4] + bytes.fromhex("00fd 01 03 fa") + bytes(250)
    return wire


@dataclass(frozen=True, slots=True)
class Observing:
    """What observability runs during a measurement (issue 11's cost goals)."""

    metrics: bool = False
    """The metrics listener on (clients' addresses counted)."""
    scrape_every: int = 0
    """Render /metrics every this many requests (0: never)."""
    capture: int = 0
    """Transactions each bridge keeps (0: no capture)."""

    def argv(self) -> list[str]:
        return [
            *(["--metrics"] if self.metrics else []),
            *(["--scrape-every", str(self.scrape_every)] if self.scrape_every else []),
            *(["--capture", str(self.capture)] if self.capture else []),
        ]


async def measure(
    protocol: str, clients: int, requests: int, observing: Observing = Observing()
) -> float:
    """Seconds per request for `requests` answered requests."""
    connector = MemoryConnector(record=False)
    image = protocol == IMAGE
    bridge_config = BridgeConfig(
        name="bench",
        protocol=ProtocolName.MODBUS if image else ProtocolName(protocol),
        target=UNUSED_TARGET,
        listen=(Address("127.0.0.1", 0),),
        protocol_options=ModbusOptions(cache_ttl=3600.0) if image else None,
    )
    metrics_listen = Address("127.0.0.1", 0) if observing.metrics or observing.capture else None
    app = App(
        AppConfig(
            bridges=(bridge_config,),
            metrics_interval=0,
            metrics_listen=metrics_listen,
            capture=observing.capture,
        ),
        connector_for=lambda config: connector,
    )
    await app.start()
    bridge = app.bridges["bench"]
    for _round in range(100):  # the slot task connects within a few loop rounds
        if bridge.pool.connections:
            break
        await asyncio.sleep(0)
    target, connection = connector.last
    answered: list[int] = []
    sessions: list[ClientSession] = []
    for index in range(clients):
        session = ClientSession(bridge, index + 1)
        note_answer = functools.partial(answered.append, index)
        client = MemoryTransport(on_write=note_answer, record=False)
        session.connection_made(cast(asyncio.Transport, client))
        sessions.append(session)
    try:
        if image:
            # One read fills the image; from then on the target is never asked.
            sessions[0].data_received(IMAGE_FILL)
            connection.data_received(answer_bytes(protocol, target.last))
            answered.clear()
        for index, session in enumerate(sessions):
            session.data_received(request_bytes(protocol, index, 0))
        scrape_every = observing.scrape_every
        listener = app.observability
        started = time.perf_counter()
        for sequence in range(1, requests + 1):
            if not image:
                connection.data_received(answer_bytes(protocol, target.last))
            index = answered.pop()
            sessions[index].data_received(request_bytes(protocol, index, sequence))
            if scrape_every and listener is not None and not sequence % scrape_every:
                # What a Prometheus scrape costs the loop: the collector and the text.
                listener.routes.answer(b"GET", b"/metrics")
        elapsed = time.perf_counter() - started
    finally:
        await app.stop(grace=0.0)
    expected = 1 if image else requests + 1
    if target.writes != expected:
        raise RuntimeError(f"the target got {target.writes} requests, expected {expected}")
    if image and bridge.metrics.events["image_answers"] != requests + clients:
        raise RuntimeError("not every read was answered from the image")
    return elapsed / requests


def run_loop(
    protocol: str, clients: int, requests: int, observing: Observing = Observing()
) -> float:
    try:
        import uvloop
    except ImportError:  # the event loop asyncio brings is slower, but works
        return asyncio.run(measure(protocol, clients, requests, observing))
    return uvloop.run(measure(protocol, clients, requests, observing))


def instructions(
    protocol: str, clients: int, requests: int, observing: Observing = Observing()
) -> int:
    """Instructions callgrind counts for one run of this script with `requests`."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "callgrind.out"
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable]
        argv += [__file__, "--one", protocol, str(clients), str(requests), *observing.argv()]
        # A fixed hash seed: dict and set layouts, and so the instructions, repeat exactly.
        env = dict(os.environ, PYTHONHASHSEED="0")
        subprocess.run(argv, check=True, capture_output=True, timeout=600, env=env)
        found = re.search(r"^summary:\s+(\d+)", out.read_text(), re.MULTILINE)
        if found is None:
            raise RuntimeError("no summary line in the callgrind output")
        return int(found.group(1))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocols", default=",".join(PROTOCOLS), help="comma-separated")
    parser.add_argument("--clients", default="1,16", help="comma-separated client counts")
    parser.add_argument("-n", "--requests", type=int, default=100_000, help="per measurement")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count instructions per request under valgrind (slow: about a minute)",
    )
    parser.add_argument("--one", nargs=3, metavar=("PROTOCOL", "CLIENTS", "N"), help="internal")
    parser.add_argument(
        "--metrics", action="store_true", help="with the metrics listener on (clients counted)"
    )
    parser.add_argument(
        "--scrape-every",
        type=int,
        default=0,
        metavar="N",
        help="render /metrics every N requests, as a Prometheus scrape would (0: never)",
    )
    parser.add_argument(
        "--capture", type=int, default=0, metavar="N", help="keep the last N transactions"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    observing = Observing(args.metrics, args.scrape_every, args.capture)
    if args.one:
        protocol, clients, requests = args.one
        run_loop(protocol, int(clients), int(requests), observing)
        return 0
    protocols = [name for name in args.protocols.split(",") if name]
    unknown = [name for name in protocols if name not in PROTOCOLS]
    if unknown:
        print(f"unknown protocol(s) {', '.join(unknown)}; choose from {PROTOCOLS}")
        return 2
    if args.instructions and shutil.which("valgrind") is None:
        print("--instructions needs valgrind (apt-get install valgrind)")
        return 2
    counts = [int(count) for count in args.clients.split(",") if count]
    header = "| protocol | clients | µs per request |" + (
        " instructions per request |" if args.instructions else ""
    )
    print(header)
    print("|---|---|---|" + ("---|" if args.instructions else ""))
    for protocol in protocols:
        for clients in counts:
            seconds = min(run_loop(protocol, clients, args.requests, observing) for _ in range(3))
            row = f"| {protocol} | {clients} | {seconds * 1e6:.2f} |"
            if args.instructions:
                few, many = 1_000, 6_000
                per_request = (
                    instructions(protocol, clients, many, observing)
                    - instructions(protocol, clients, few, observing)
                ) / (many - few)
                row += f" {per_request:,.0f} |"
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    # The multiplexer logs its start and stop at WARNING; here that is noise.
    logging.getLogger("tcp_multiplexer").setLevel(logging.ERROR)
    sys.exit(main())
