"""`tcp-multiplexer demo`: a simulated inverter shared by several pollers, live.

No hardware and no arguments needed. It starts:
- a simulated Modbus device that accepts ONE connection and answers in about 20 ms,
  as many solar inverters do;
- the multiplexer in front of it, on a free loopback port;
- a simulated energy meter (unit 2) on an RS-485 line at 9600 baud: a serial port on
  a pseudo-terminal when the serial extra is installed, else behind a simulated
  RTU-over-TCP converter; the multiplexer routes unit 2 to it and every other unit to
  the inverter, behind the same port;
- a few simulated clients (named after the usual suspects) polling registers through
  the multiplexer at once, each checking every value it gets back.

Halfway through, the inverter restarts (down for 1.5 s, as at night): the clients get
Modbus exception answers at once instead of hanging, the meter's reader does not
notice, and the multiplexer reconnects by itself. Once a second it prints what happens;
after `--duration` (or Ctrl-C) a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import struct
import sys
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

from tcp_multiplexer.config.model import AppConfig, BridgeConfig
from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.observability.metrics import LatencyHistogram
from tcp_multiplexer.options import Address, parse_duration
from tcp_multiplexer.protocols.modbus.device import holding_register_value
from tcp_multiplexer.protocols.modbus.mbap import MbapFramer, read_request
from tcp_multiplexer.protocols.modbus.options import ModbusOptions
from tcp_multiplexer.protocols.modbus.routes import Route
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.runner import run_async
from tcp_multiplexer.target import Target, parse_target_url
from tcp_multiplexer.targets.rtu import PtyLine, RtuLine, serve_rtu_over_tcp
from tcp_multiplexer.targets.server import OverLimit, TargetConfig, TargetServer
from tcp_multiplexer.transports.serial import serial_available

DEVICE_ANSWER_DELAY: Final = 0.020
"""A typical inverter's Modbus answer time."""
RESTART_DOWNTIME: Final = 1.5
"""How long the simulated inverter is away when it restarts halfway through."""
METER_UNIT: Final = 2
"""The energy meter's unit id on its RS-485 line."""
METER_BAUDRATE: Final = 9600
DEMO_DURATION: Final = 10.0
"""How long the demo runs unless told otherwise."""
MIN_DURATION_FOR_RESTART: Final = 6.0
"""Shorter demos skip the restart: there would be too little before and after it."""


@dataclass(frozen=True, slots=True)
class PollerSpec:
    """A simulated client: who it pretends to be and what it polls."""

    name: str
    unit: int
    address: int
    count: int
    interval: float


DEMO_POLLERS: Final = (
    PollerSpec("home-assistant", 1, 30000, 40, 0.25),
    PollerSpec("evcc", 1, 30000, 40, 0.25),
    PollerSpec("data-logger", 1, 32000, 20, 0.5),
    PollerSpec("vendor-app", 1, 40000, 10, 1.0),
    PollerSpec("meter-reader", METER_UNIT, 0, 10, 0.5),
)
"""Home Assistant and evcc poll the same block: the multiplexer coalesces those reads.
The meter reader asks unit 2: the meter on its RS-485 line."""


@dataclass(slots=True)
class PollerStats:
    answers: int = 0
    wrong: int = 0
    exceptions: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)


async def poll(spec: PollerSpec, port: int, stats: PollerStats, stop: asyncio.Event) -> None:
    """Read `spec`'s registers every `interval` until `stop`, checking each value."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    framer = MbapFramer()
    transaction = 0
    expected = [holding_register_value(spec.unit, spec.address + i) for i in range(spec.count)]
    try:
        while not stop.is_set():
            transaction = (transaction + 1) & 0xFFFF
            started = loop.time()
            writer.write(read_request(transaction, spec.unit, spec.address, spec.count))
            answers: list[bytes] = []
            while not answers:
                data = await reader.read(4096)
                if not data:
                    return
                answers = framer.feed(data)
            stats.latency.observe(loop.time() - started)
            answer = answers[0]
            if answer[:2] != transaction.to_bytes(2, "big"):
                stats.wrong += 1
            elif answer[7] & 0x80:
                stats.exceptions += 1
            else:
                values = list(struct.unpack(f">{spec.count}H", answer[9 : 9 + 2 * spec.count]))
                if values != expected:
                    stats.wrong += 1
                else:
                    stats.answers += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(spec.interval):
                    await stop.wait()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def _at_a_time(most_open: int, rejected: int) -> str:
    """How the device's connections overlapped: the point of the demo is "never two"."""
    if most_open <= 1 and not rejected:
        return "one at a time"
    return f"up to {most_open} at a time ({rejected} refused)"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f}ms"


async def run_demo(duration: float, out: TextIO) -> int:
    """Run the demo for `duration` seconds (or until SIGINT/SIGTERM); 0 if all went well."""
    from tcp_multiplexer.app import App

    # The demo prints its own story; the daemon's start/stop lines would interrupt it.
    logging.getLogger("tcp_multiplexer").setLevel(logging.ERROR)
    device = TargetServer(
        TargetConfig(
            protocol=ProtocolName.MODBUS,
            delay=DEVICE_ANSWER_DELAY,
            max_connections=1,
            over_limit=OverLimit.CLOSE,
        )
    )
    await device.start()
    meter = RtuLine(baudrate=METER_BAUDRATE, parity="N", stopbits=2, units=frozenset({METER_UNIT}))
    meter_port: PtyLine | None = None
    meter_converter: asyncio.Server | None = None
    if serial_available():
        meter_port = PtyLine(meter)
        meter_port.start()
        meter_url = f"serial://{meter_port.path}?baudrate={METER_BAUDRATE}&parity=N&stopbits=2"
        meter_where = f"on serial port {meter_port.path}"
    else:
        meter_converter = await serve_rtu_over_tcp(meter, "127.0.0.1", 0)
        converter_port = meter_converter.sockets[0].getsockname()[1]
        meter_url = f"rtu+tcp://127.0.0.1:{converter_port}"
        meter_where = (
            f"behind a simulated RTU-over-TCP converter on 127.0.0.1:{converter_port} (with "
            "the serial extra, on a serial port of its own)"
        )
    app = App(
        AppConfig(
            bridges=(
                BridgeConfig(
                    name="inverter",
                    protocol=ProtocolName.MODBUS,
                    target=Target.tcp(Address("127.0.0.1", device.port)),
                    listen=(Address("127.0.0.1", 0),),
                    timeout=2.0,
                    reconnect_backoff=0.2,
                    protocol_options=ModbusOptions(
                        routes=(Route(frozenset({METER_UNIT}), parse_target_url(meter_url)),)
                    ),
                ),
            ),
            metrics_interval=0.0,
        )
    )
    await app.start()
    multiplexer = app.bridges["inverter"]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"simulated inverter on 127.0.0.1:{device.port}: accepts ONE connection, answers in "
        f"{_ms(DEVICE_ANSWER_DELAY)}\n"
        f"simulated energy meter, unit {METER_UNIT}, on an RS-485 line at {METER_BAUDRATE} "
        f"baud {meter_where}\n"
        f"multiplexer on 127.0.0.1:{multiplexer.port}, {len(DEMO_POLLERS)} clients polling "
        f"through it for {duration:g}s (Ctrl-C ends early)\n",
        file=out,
        flush=True,
    )
    stats = {spec.name: PollerStats() for spec in DEMO_POLLERS}
    tasks = [
        loop.create_task(poll(spec, multiplexer.port, stats[spec.name], stop))
        for spec in DEMO_POLLERS
    ]
    started = loop.time()
    # Halfway through, the inverter restarts (as at night): clients get exception
    # answers at once instead of hanging, and the multiplexer reconnects by itself.
    restart_at = duration / 2 if duration >= MIN_DURATION_FOR_RESTART else None
    back_at: float | None = None
    try:
        while not stop.is_set() and loop.time() - started < duration:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await stop.wait()
            elapsed = loop.time() - started
            if restart_at is not None and elapsed >= restart_at:
                restart_at = None
                back_at = elapsed + RESTART_DOWNTIME
                await device.go_down()
                print(
                    f"[{elapsed:4.1f}s] the inverter restarts: down for {RESTART_DOWNTIME:g}s",
                    file=out,
                    flush=True,
                )
            elif back_at is not None and elapsed >= back_at:
                back_at = None
                await device.come_up()
                print(f"[{elapsed:4.1f}s] the inverter is back", file=out, flush=True)
            clients = " ".join(
                f"{name}={s.answers}" + (f"(+{s.exceptions} exc)" if s.exceptions else "")
                for name, s in stats.items()
            )
            snapshot = multiplexer.metrics.snapshot()
            print(
                f"[{elapsed:4.1f}s] answers: {clients} | device: "
                f"{device.stats.requests} requests on {device.stats.open_connections} "
                f"connection(s) | coalesced {snapshot.events.get('coalesced', 0)} | "
                f"latency mean {_ms(snapshot.latency_mean_s)}",
                file=out,
                flush=True,
            )
    finally:
        stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await app.stop(grace=1.0)
        await device.stop()
        if meter_port is not None:
            meter_port.close()
        if meter_converter is not None:
            meter_converter.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    failures = [result for result in results if isinstance(result, BaseException)]
    total_answers = sum(s.answers for s in stats.values())
    total_wrong = sum(s.wrong for s in stats.values())
    total_exceptions = sum(s.exceptions for s in stats.values())
    print("\nsummary", file=out)
    for name, s in stats.items():
        print(
            f"  {name:<15} {s.answers:5d} correct answers, {s.wrong} wrong, "
            f"{s.exceptions} exceptions, latency mean {_ms(s.latency.mean())} "
            f"p99 {_ms(s.latency.quantile(0.99))}",
            file=out,
        )
    gateway_answers = dict(multiplexer.metrics.failures)
    print(
        f"  the device accepted {device.stats.accepted} connection(s), "
        f"{_at_a_time(device.stats.max_open_connections, device.stats.rejected)}, and "
        f"answered {device.stats.requests} requests for {total_answers + total_exceptions} "
        f"client answers ({multiplexer.metrics.events.get('coalesced', 0)} reads shared by "
        f"coalescing)\n"
        f"  the meter's line carried {meter.stats.answers} answers, unit {METER_UNIT} routed to "
        f"it through the same port\n"
        f"  gateway answers while it was away: {gateway_answers or 'none'}; wrong answers: "
        f"{total_wrong}",
        file=out,
        flush=True,
    )
    for failure in failures:
        print(f"  a client failed: {failure!r}", file=out)
    return 0 if not failures and not total_wrong and total_answers else 1


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register `tcp-multiplexer demo`."""
    parser = subparsers.add_parser(
        "demo",
        help="watch several clients share a simulated one-connection inverter (no hardware)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--duration",
        type=_duration,
        default=DEMO_DURATION,
        metavar="DURATION",
        help="how long to run (default: 10s)",
    )
    parser.set_defaults(handler=run)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    return run_async(run_demo(args.duration, sys.stdout))
