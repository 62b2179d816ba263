"""Command line: parse arguments into a ServerConfig, set up logging, run, exit codes.

    tcp-multiplexer server -p PROTO -t HOST:PORT -l [HOST:]PORT [options]
    tcp-multiplexer list
    tcp-multiplexer version
    tcp-multiplexer example-server PROTO -l [HOST:]PORT [options]
    tcp-multiplexer demo [--duration SECONDS]

Bad input exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn

from tcp_multiplexer import __version__
from tcp_multiplexer.config import (
    DEFAULT_BUSY_POLL,
    DEFAULT_CLIENT_BACKLOG,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_HEALTH_CHECK_INTERVAL,
    DEFAULT_LISTEN,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_INFLIGHT,
    DEFAULT_METRICS_INTERVAL,
    DEFAULT_PROTOCOL,
    DEFAULT_QUEUE_SIZE,
    DEFAULT_RECONNECT_BACKOFF,
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    ModbusOptions,
    ServerConfig,
    parse_duration,
    parse_listen,
    parse_target,
)
from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.framing import protocol_names
from tcp_multiplexer.framing.base import ProtocolName

logger = logging.getLogger("tcp_multiplexer")

EXIT_USAGE = 2
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP)
"""SIGHUP stops too, as in the reference, until a configuration reload exists."""


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _typed(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Wrap a ConfigError-raising parser as an argparse type (argparse reports ValueError)."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__.removeprefix("parse_")
    return convert


def _protocol(text: str) -> ProtocolName:
    try:
        return ProtocolName(text.strip().lower())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"unknown protocol {text!r} (choose from {', '.join(protocol_names())})"
        ) from None


def _count(minimum: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum of {minimum}")
        return value

    convert.__name__ = "count"
    return convert


duration = _typed(parse_duration)


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    proto = parser.add_argument_group("target and listener (as in the reference)")
    proto.add_argument(
        "-p",
        "--applicationProtocol",
        "--protocol",
        dest="protocol",
        type=_protocol,
        default=DEFAULT_PROTOCOL,
        metavar="PROTO",
        help=f"application protocol: {', '.join(protocol_names())} (default: %(default)s)",
    )
    proto.add_argument(
        "-t",
        "--targetServer",
        "--target",
        dest="target",
        type=_typed(parse_target),
        default=parse_target(DEFAULT_TARGET),
        metavar="HOST:PORT",
        help="target server address (default: %(default)s)",
    )
    proto.add_argument(
        "-l",
        "--listen",
        type=_typed(parse_listen),
        default=parse_listen(DEFAULT_LISTEN),
        metavar="[HOST:]PORT",
        help="address to listen on; a bare PORT listens on all interfaces (default: 8000)",
    )
    timing = parser.add_argument_group(
        "timing (durations: plain seconds like 1.5, or 500ms, 1s, 1m30s)"
    )
    timing.add_argument(
        "--timeout",
        type=duration,
        default=DEFAULT_TIMEOUT,
        metavar="DURATION",
        help="longest wait for a target answer, and for a free target connection; a quiet "
        "client is never dropped for idling (default: 60)",
    )
    timing.add_argument(
        "--connect-timeout",
        type=duration,
        default=DEFAULT_CONNECT_TIMEOUT,
        metavar="DURATION",
        help="longest wait for a target connection to open (default: 5s)",
    )
    timing.add_argument(
        "--delay",
        type=duration,
        default=0.0,
        metavar="DURATION",
        help="pause after each target connect before the first request, for devices that "
        "need time (default: 0)",
    )
    timing.add_argument(
        "--reconnect-backoff",
        type=duration,
        default=DEFAULT_RECONNECT_BACKOFF,
        metavar="DURATION",
        help="first wait before reconnecting to the target; doubles per failure up to 30s, "
        "with jitter (default: 1s)",
    )
    timing.add_argument(
        "--health-check-interval",
        type=duration,
        default=DEFAULT_HEALTH_CHECK_INTERVAL,
        metavar="DURATION",
        help="idle time after which TCP keepalive probes target and client connections, so "
        "a dead (half-open) one is found: a target connection is replaced, a client's "
        "closed; closes and resets are seen at once (default: 30s)",
    )
    timing.add_argument(
        "--busy-poll",
        type=duration,
        default=DEFAULT_BUSY_POLL,
        metavar="DURATION",
        help="keep polling this long after each burst of I/O before sleeping: the next "
        "request or answer is usually that close, and waking from sleep costs more; costs "
        "CPU only while traffic flows; 0 = never (default: 200us)",
    )
    pool = parser.add_argument_group("connections and queueing")
    pool.add_argument(
        "--max-connections",
        type=_count(1),
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help="target connections used in parallel; opened as load needs them (default: 1)",
    )
    pool.add_argument(
        "--max-inflight",
        type=_count(1),
        default=DEFAULT_MAX_INFLIGHT,
        metavar="N",
        help="requests outstanding at once on one target connection (pipelining); answers "
        "are matched in order, or by transaction id for modbus (default: 1)",
    )
    pool.add_argument(
        "--queue-size",
        type=_count(1),
        default=DEFAULT_QUEUE_SIZE,
        metavar="N",
        help="requests that may wait for a free target connection; when full, a client that "
        "adds a second waiting request is not read from until room frees (each client may "
        "always queue one) (default: 32)",
    )
    pool.add_argument(
        "--client-backlog",
        type=_count(1),
        default=DEFAULT_CLIENT_BACKLOG,
        metavar="N",
        help="requests one client may have outstanding before it is not read from (default: 16)",
    )
    pool.add_argument(
        "--request-gap",
        type=duration,
        default=0.0,
        metavar="DURATION",
        help="minimum quiet time on one target connection between an answer (or request) "
        "and the next request (default: 0)",
    )
    pool.add_argument(
        "--max-idle",
        type=duration,
        default=0.0,
        metavar="DURATION",
        help="close a target connection idle this long, before the device silently does; "
        "it reopens on the next request (default: 0 = never)",
    )
    modbus = parser.add_argument_group("modbus gateway")
    modbus.add_argument(
        "--lenient-ids",
        action="store_true",
        help="for gateways that do not echo transaction ids: match answers in order and "
        "reconnect after a timeout",
    )
    modbus.add_argument(
        "--no-coalesce",
        dest="coalesce",
        action="store_false",
        help="send every read to the device, even when an identical one is already waiting "
        "or in flight",
    )
    modbus.add_argument(
        "--cache-ttl",
        type=duration,
        default=0.0,
        metavar="DURATION",
        help="answer reads from a cache of device answers this young; writes drop what they "
        "overlap (default: 0 = off)",
    )
    modbus.add_argument(
        "--read-only",
        action="store_true",
        help="refuse writes (function codes 5, 6, 15, 16, 22, 23) with exception 0x01",
    )
    logs = parser.add_argument_group("logging")
    logs.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log each client and target connection, and a metrics line periodically",
    )
    logs.add_argument("-d", "--debug", action="store_true", help="also log every message in hex")
    logs.add_argument(
        "--metrics-interval",
        type=duration,
        default=DEFAULT_METRICS_INTERVAL,
        metavar="DURATION",
        help="how often -v logs the metrics line (default: 60s; 0 = never)",
    )


def build_parser() -> OneLineErrorParser:
    """The whole command line."""
    import tcp_multiplexer.demo as demo
    import tcp_multiplexer.targets.cli as targets_cli

    parser = OneLineErrorParser(
        prog="tcp-multiplexer",
        description="Let many TCP clients share one (or a few) connections to a target that "
        "accepts only a few: Modbus/TCP, HTTP/1.1, ISO-8583, MPU and newline protocols.",
    )
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=OneLineErrorParser
    )
    commands.required = True
    server = commands.add_parser(
        "server",
        help="run the multiplexer",
        description="Accept clients, cut their streams into requests, send each over a shared "
        "target connection, and return every answer to the client that asked.",
    )
    _add_server_options(server)
    commands.add_parser("list", help="list the supported protocols, one per line")
    commands.add_parser("version", help="print the version")
    targets_cli.add_parser(commands)
    commands.choices["example-server"].set_defaults(handler=targets_cli.run)
    demo.add_parser(commands)
    return parser


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The ServerConfig for parsed `server` arguments.

    Raises:
        ConfigError: a combination of values is invalid.
    """
    return ServerConfig(
        protocol=args.protocol,
        target=args.target,
        listen=args.listen,
        timeout=args.timeout,
        connect_timeout=args.connect_timeout,
        delay=args.delay,
        max_connections=args.max_connections,
        reconnect_backoff=args.reconnect_backoff,
        health_check_interval=args.health_check_interval,
        queue_size=args.queue_size,
        max_inflight=args.max_inflight,
        client_backlog=args.client_backlog,
        request_gap=args.request_gap,
        max_idle=args.max_idle,
        metrics_interval=args.metrics_interval,
        busy_poll=args.busy_poll,
        modbus=ModbusOptions(
            lenient_ids=args.lenient_ids,
            coalesce=args.coalesce,
            cache_ttl=args.cache_ttl,
            read_only=args.read_only,
        ),
    )


def setup_logging(*, verbose: bool, debug: bool) -> None:
    """Warnings by default, connections at -v, hex dumps at -d."""
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
        force=True,
    )


def run_async(main: Coroutine[Any, Any, int]) -> int:
    """Run `main` on uvloop where installed, else on the default asyncio loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result: int = runner.run(main)
        return result


async def wait_for_stop_signal() -> signal.Signals:
    """Wait until SIGINT, SIGTERM, SIGQUIT or SIGHUP arrives; return which."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()

    def on_signal(sig: signal.Signals) -> None:
        if not received.done():
            received.set_result(sig)

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await received
    finally:
        for sig in STOP_SIGNALS:
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(sig)


async def serve(config: ServerConfig) -> int:
    """Run the multiplexer until a stop signal; 0 on a clean stop."""
    from tcp_multiplexer.server import Multiplexer

    multiplexer = Multiplexer(config)
    try:
        await multiplexer.start()
    except OSError as exc:
        logger.error("cannot listen on %s: %s", config.listen, exc)
        return 1
    sig = await wait_for_stop_signal()
    logger.warning("received %s; stopping", sig.name)
    await multiplexer.shutdown(grace=config.timeout)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "list":
        for name in protocol_names():
            print(name)
        return 0
    if args.command == "version":
        print(f"tcp-multiplexer {__version__}")
        return 0
    if args.command == "server":
        try:
            config = config_from_args(args)
        except ConfigError as exc:
            parser.exit(EXIT_USAGE, f"tcp-multiplexer server: error: {exc}\n")
        setup_logging(verbose=args.verbose, debug=args.debug)
        return run_async(serve(config))
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)
