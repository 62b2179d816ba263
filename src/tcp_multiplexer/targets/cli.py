"""``tcp-multiplexer example-server``: run an example target from the command line.

`add_parser` registers the subcommand on the main parser; `run` serves until SIGINT or
SIGTERM. One line on stderr says when the target is ready, one at exit gives the
counters, so scripts can wait for the first and check the second.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import textwrap
from collections.abc import Sequence
from typing import Any, Final

from tcp_multiplexer.config.model import DEFAULT_TARGET
from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.options import Address, parse_duration, parse_listen
from tcp_multiplexer.protocols.registry import protocol_names
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.target import DEFAULT_BAUDRATE
from tcp_multiplexer.targets.faults import FAULT_HELP, Fault, parse_fault
from tcp_multiplexer.targets.rtu import PtyLine, RtuLine, serve_rtu_over_tcp
from tcp_multiplexer.targets.server import (
    DEFAULT_LATE_DELAY,
    DEFAULT_TARGET_HOST,
    OverLimit,
    TargetConfig,
    TargetServer,
    TargetStats,
)

COMMAND: Final = "example-server"
_PARSER_KEY: Final = "example_server_parser"
"""Namespace attribute holding the subparser, so `run` can report errors through it."""

_DESCRIPTION: Final = """\
Run a target server to try the multiplexer against, optionally misbehaving on purpose.

protocols:
  echo     answers each line (up to and including \\n) with itself
  http     HTTP/1.1 keep-alive; 200 with body "METHOD TARGET\\n" + request body;
           HEAD without body; Connection: close honoured
  iso8583  2-byte big-endian length prefix; MTI 0200 is answered as 0210 (third digit
           + 1) when the body starts with 4 ASCII digits, anything else is echoed
  modbus   simulated device, every unit id; fc 1-6, 15, 16, 23; coils and discrete
           inputs = (address % 3 == 0), holding registers = (address * 7 + unit) &
           0xFFFF until written, input registers = (address * 11 + unit) & 0xFFFF
  mpu      4 ASCII digit length prefix; echoes each message
"""


def _fault_epilog() -> str:
    lines = ["faults (--fault NAME[:FRACTION], e.g. --fault no-answer:0.1 --fault late:5%):"]
    for fault, text in FAULT_HELP.items():
        lines += textwrap.wrap(
            text, width=80, initial_indent=f"  {fault.value:<19}", subsequent_indent=" " * 21
        )
    lines += [
        "",
        "Every fault works with every protocol except wrong-id (modbus only). Each request",
        "draws once from a generator seeded by --seed, so at most one fault hits a request",
        "and the fractions add up to 1 or less. Faults act on the answer: the request",
        "itself is processed (a Modbus write is applied). For echo, garbage may contain",
        "newlines and so look like several (wrong) answers.",
    ]
    return "\n".join(lines)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _listen(text: str) -> Address:
    try:
        address = parse_listen(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return address if address.host else Address(DEFAULT_TARGET_HOST, address.port)


def _fault(text: str) -> tuple[Fault, float]:
    try:
        return parse_fault(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(text: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


def _seed(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register the ``example-server`` subcommand (run it with `run`)."""
    parser = subparsers.add_parser(
        COMMAND,
        help="run an example target server (echo, http, iso8583, modbus, mpu) with faults",
        description=_DESCRIPTION,
        epilog=_fault_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(**{_PARSER_KEY: parser})
    parser.add_argument(
        "protocol",
        choices=protocol_names(),
        help="the protocol to serve",
    )
    parser.add_argument(
        "-l",
        "--listen",
        type=_listen,
        default=_listen(DEFAULT_TARGET),
        metavar="[HOST:]PORT",
        help=f"address to listen on (default {DEFAULT_TARGET}, the multiplexer's default "
        f"target; no host = {DEFAULT_TARGET_HOST}, use 0.0.0.0 for all interfaces)",
    )
    parser.add_argument(
        "--delay",
        type=_duration,
        default=0.0,
        metavar="DURATION",
        help="time each request takes (500ms, 1s, 0.2); a connection's requests are handled "
        "one after another, pipelined ones wait their turn (default 0)",
    )
    rtu = parser.add_argument_group("modbus RTU (a serial line, or RTU over TCP)")
    rtu.add_argument(
        "--serial",
        nargs="?",
        const="pty",
        default=None,
        metavar="PATH",
        help="serve Modbus RTU on a serial port instead of TCP: without PATH, on a "
        "pseudo-terminal this creates (it prints the port to give the multiplexer); "
        "line timing is simulated at --baudrate",
    )
    rtu.add_argument(
        "--rtu",
        action="store_true",
        help="serve Modbus RTU frames over TCP on --listen, as an RTU-over-TCP converter "
        "(EW11, USR, Waveshare) does",
    )
    rtu.add_argument(
        "--baudrate",
        type=_count,
        default=None,
        metavar="BAUD",
        help="simulate the line's timing at this speed: frame transmission and the "
        "3.5-character silences (default 9600 with --serial, none with --rtu)",
    )
    rtu.add_argument(
        "--parity",
        choices=["N", "E", "O"],
        default="N",
        help="the simulated line's parity, for its timing and the printed target URL "
        "(default N: some kernels' pseudo-terminals refuse parity)",
    )
    rtu.add_argument(
        "--stopbits",
        type=int,
        choices=[1, 2],
        default=2,
        help="the simulated line's stop bits (default 2: with no parity, 11 bits a "
        "character, as 8E1 has)",
    )
    limits = parser.add_argument_group("connection limits")
    limits.add_argument(
        "--max-connections",
        type=_count,
        default=0,
        metavar="N",
        help="connections served at once, 0 = unlimited (default 0)",
    )
    limits.add_argument(
        "--over-limit",
        choices=[mode.value for mode in OverLimit],
        default=OverLimit.CLOSE.value,
        help="connections beyond --max-connections: close = accept and close at once, "
        "hang = accept and never answer (default close)",
    )
    quirks = parser.add_argument_group("device quirks (what tcp-multiplexer calibrate finds)")
    quirks.add_argument(
        "--connect-quiet",
        type=_duration,
        default=0.0,
        metavar="DURATION",
        help="answer nothing on a connection until this long after it opened, as a "
        "Huawei SDongle (default 0)",
    )
    quirks.add_argument(
        "--min-gap",
        type=_duration,
        default=0.0,
        metavar="DURATION",
        help="modbus: answer exception 0x06 (busy) to a request closer than this to the "
        "last answer (default 0)",
    )
    quirks.add_argument(
        "--max-read",
        type=_count,
        default=0,
        metavar="N",
        help="modbus: answer exception 0x03 to a read of more than N registers or bits "
        "(default 0: the protocol's limit)",
    )
    faults = parser.add_argument_group("fault injection")
    faults.add_argument(
        "--fault",
        type=_fault,
        action="append",
        default=[],
        metavar="NAME[:FRACTION]",
        help="misbehave on a fraction (0..1 or N%%, default 1 = every request) of requests; "
        "repeatable; names below",
    )
    faults.add_argument(
        "--seed",
        type=_seed,
        default=0,
        help="seed of the fault draws and garbage bytes, for reproducible runs (default 0)",
    )
    faults.add_argument(
        "--late-delay",
        type=_duration,
        default=DEFAULT_LATE_DELAY,
        metavar="DURATION",
        help="extra time taken by a request hit by the late fault "
        f"(default {DEFAULT_LATE_DELAY:g}s)",
    )
    faults.add_argument(
        "--accept-close",
        action="store_true",
        help="accept every connection and reset it (RST) at once",
    )
    faults.add_argument(
        "--close-after",
        type=_duration,
        default=0.0,
        metavar="DURATION",
        help="close every connection this long after accepting it, like SolarEdge inverters "
        "after about 330s (default 0 = never)",
    )
    faults.add_argument(
        "--outage-every",
        type=_duration,
        default=0.0,
        metavar="DURATION",
        help="go down this long after each start: stop listening (connects are refused) and "
        "drop every connection, like a nightly shutdown; needs --outage-for",
    )
    faults.add_argument(
        "--outage-for",
        type=_duration,
        default=0.0,
        metavar="DURATION",
        help="how long each outage lasts before listening again on the same port",
    )


def config_from_args(args: argparse.Namespace) -> TargetConfig:
    """The `TargetConfig` for parsed ``example-server`` arguments.

    Raises:
        ConfigError: the options contradict each other (e.g. wrong-id with echo).
    """
    listen: Address = args.listen
    faults: list[tuple[Fault, float]] = args.fault
    return TargetConfig(
        protocol=ProtocolName(args.protocol),
        host=listen.host,
        port=listen.port,
        delay=args.delay,
        max_connections=args.max_connections,
        over_limit=OverLimit(args.over_limit),
        faults=tuple(faults),
        seed=args.seed,
        late_delay=args.late_delay,
        close_after=args.close_after,
        accept_close=args.accept_close,
        outage_every=args.outage_every,
        outage_for=args.outage_for,
        connect_quiet=args.connect_quiet,
        min_gap=args.min_gap,
        max_read=args.max_read,
    )


def format_stats(stats: TargetStats) -> str:
    """The counters as ``key=value`` pairs (the exit line); faults only when they fired."""
    parts = [
        f"accepted={stats.accepted}",
        f"rejected={stats.rejected}",
        f"requests={stats.requests}",
        f"answers={stats.answers}",
        f"max_concurrent={stats.max_concurrent}",
    ]
    parts += [f"{fault.value}={count}" for fault, count in stats.faults.items() if count]
    if stats.closed_after:
        parts.append(f"closed_after={stats.closed_after}")
    if stats.outages:
        parts.append(f"outages={stats.outages}")
    return " ".join(parts)


async def serve(config: TargetConfig) -> int:
    """Serve `config` until SIGINT or SIGTERM; 0 on a clean stop, 1 if it cannot listen."""
    target = TargetServer(config)
    try:
        await target.start()
    except OSError as exc:
        print(
            f"{COMMAND}: cannot listen on {Address(config.host, config.port)}: {exc}",
            file=sys.stderr,
        )
        return 1
    print(f"{COMMAND} {config.protocol} listening on {target.address}", file=sys.stderr, flush=True)
    try:
        await _until_stopped()
    finally:
        await target.stop()
    print(f"{COMMAND} {config.protocol} stopped: {format_stats(target.stats)}", file=sys.stderr)
    return 0


async def _until_stopped() -> None:
    """Return at SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def _line_text(line: RtuLine) -> str:
    timing = line.timing
    if timing is None:
        return "no line timing"
    return f"{timing.baudrate} baud, 8{timing.parity}{timing.stopbits} timing"


async def serve_rtu(args: argparse.Namespace) -> int:
    """Serve the example device on an RTU line until SIGINT or SIGTERM."""
    baudrate: int | None = args.baudrate
    if baudrate is None and args.serial is not None:
        baudrate = DEFAULT_BAUDRATE
    line = RtuLine(baudrate=baudrate, parity=args.parity, stopbits=args.stopbits, delay=args.delay)
    if args.serial is not None:
        try:
            pty = PtyLine(line, None if args.serial == "pty" else args.serial)
        except OSError as exc:
            print(f"{COMMAND}: cannot open {args.serial}: {exc.strerror}", file=sys.stderr)
            return 1
        pty.start()
        print(
            f"{COMMAND} modbus RTU on serial {pty.path} ({_line_text(line)}): "
            f"target serial://{pty.path}?baudrate={baudrate}&parity={args.parity}"
            f"&stopbits={args.stopbits}",
            file=sys.stderr,
            flush=True,
        )
        try:
            await _until_stopped()
        finally:
            pty.close()
    else:
        listen: Address = args.listen
        try:
            server = await serve_rtu_over_tcp(line, listen.host, listen.port)
        except OSError as exc:
            print(f"{COMMAND}: cannot listen on {listen}: {exc}", file=sys.stderr)
            return 1
        port = server.sockets[0].getsockname()[1]
        print(
            f"{COMMAND} modbus RTU over TCP listening on {Address(listen.host, port)} "
            f"({_line_text(line)})",
            file=sys.stderr,
            flush=True,
        )
        try:
            await _until_stopped()
        finally:
            server.close()
    stats = line.stats
    print(
        f"{COMMAND} modbus RTU stopped: requests={stats.requests} answers={stats.answers} "
        f"broadcasts={stats.broadcasts} damaged={stats.damaged}",
        file=sys.stderr,
    )
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the ``example-server`` subcommand; returns the exit status.

    Contradicting options end in ``parser.error`` (exit status 2).
    """
    parser: argparse.ArgumentParser = getattr(args, _PARSER_KEY)
    if args.serial is not None or args.rtu:
        if args.protocol != ProtocolName.MODBUS:
            parser.error("--serial and --rtu serve the modbus protocol")
        if args.serial is not None and args.rtu:
            parser.error("--serial or --rtu, not both")
        if args.fault or args.max_connections or args.accept_close or args.outage_every:
            parser.error("faults and connection limits are for TCP targets, not RTU lines")
        return asyncio.run(serve_rtu(args))
    if args.baudrate is not None:
        parser.error("--baudrate is for --serial and --rtu")
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        parser.error(str(exc))
    return asyncio.run(serve(config))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tcp_multiplexer.targets ...``: the subcommand without the main CLI."""
    parser = argparse.ArgumentParser(prog="python -m tcp_multiplexer.targets")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_parser(subparsers)
    return run(parser.parse_args(argv))
