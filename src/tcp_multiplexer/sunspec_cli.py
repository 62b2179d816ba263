"""`tcp-multiplexer sunspec scan TARGET [--unit N] [--write-map FILE]`: find a SunSpec
device's models, print their values, and write a map file of points for a bridge.

TARGET is what a bridge's `target` takes: HOST:PORT, rtu+tcp://HOST:PORT or
serial:///dev/ttyUSB0?baudrate=9600. The scan goes through the multiplexer's own target
path (a bridge that listens nowhere), so it reaches a device exactly as a bridge would,
with the same timeouts and device profile; it only reads.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any, Final

from tcp_multiplexer.bridge import Bridge
from tcp_multiplexer.config.build import build_bridge
from tcp_multiplexer.config.model import BridgeConfig
from tcp_multiplexer.core.interfaces import Clock, LoopClock, Priority
from tcp_multiplexer.core.poller import Poller
from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.logs import setup_logging
from tcp_multiplexer.options import (
    format_duration,
    positive_duration_argument,
    unit_argument,
)
from tcp_multiplexer.protocols.modbus.points import map_text
from tcp_multiplexer.protocols.modbus.sunspec import (
    SunSpecDevice,
    describe,
    model_points,
)
from tcp_multiplexer.protocols.modbus.sunspec_scan import SunSpecScan
from tcp_multiplexer.runner import run_async
from tcp_multiplexer.supervise import Supervisor

EXIT_USAGE: Final = 2
EXIT_NOT_FOUND: Final = 1
DEFAULT_SCAN_TIMEOUT: Final = 3.0
DEFAULT_EVERY: Final = 5.0
SCAN_LIMIT: Final = 120.0
"""Seconds a whole scan may take (a slow serial line: about a hundred reads)."""


class _Services:
    """What a bridge needs of the process, for one that only scans."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._clock = LoopClock(loop)
        self._poller = Poller(self._clock, False)
        self._spawner = Supervisor()

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def poller(self) -> Poller:
        return self._poller

    @property
    def spawner(self) -> Supervisor:
        return self._spawner

    names_bridges = False
    observing = False
    per_client_latency = False
    capture_size = 0


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register `tcp-multiplexer sunspec scan`."""
    parser = subparsers.add_parser(
        "sunspec",
        help="find a SunSpec device's models, print their values, write a map file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    scan = actions.add_parser(
        "scan",
        help="scan a target for SunSpec models (marker at 40000, 0 or 50000)",
        description="Find the SunSpec marker, walk the model chain and print every model "
        "with its values decoded and scaled (not-implemented values as unknown). Exit "
        "status 0 when a device was found, 1 when none was, 2 on a bad argument.",
    )
    scan.add_argument("target", metavar="TARGET", help="HOST:PORT or a bridge's target URL")
    scan.add_argument(
        "--unit", type=unit_argument, default=1, metavar="N", help="unit id (default: 1)"
    )
    scan.add_argument(
        "--write-map",
        metavar="FILE",
        help="write a map file ([[point]] tables) for the common, inverter, meter, MPPT, "
        "storage and battery models found, for a bridge's map = FILE",
    )
    scan.add_argument(
        "--every",
        type=positive_duration_argument,
        default=DEFAULT_EVERY,
        metavar="DURATION",
        help=f"how often the map's points are read (default: {format_duration(DEFAULT_EVERY)})",
    )
    scan.add_argument(
        "--timeout",
        type=positive_duration_argument,
        default=DEFAULT_SCAN_TIMEOUT,
        metavar="DURATION",
        help=f"how long to wait for each answer (default: {format_duration(DEFAULT_SCAN_TIMEOUT)})",
    )
    scan.add_argument(
        "--profile",
        metavar="NAME",
        help="the device profile a bridge to it uses (tcp-multiplexer profiles)",
    )
    scan.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    values: dict[str, object] = {
        "protocol": "modbus",
        "target": args.target,
        "listen": "127.0.0.1:0",
        "timeout": args.timeout,
    }
    if args.profile:
        values["profile"] = args.profile
    try:
        config = build_bridge(values)
        if args.write_map:
            _check_writable(Path(args.write_map))
    except ConfigError as exc:
        print(f"tcp-multiplexer sunspec scan: error: {exc.as_flag()}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging("warning", "text")
    found: list[tuple[SunSpecDevice | None, str]] = []

    async def scan() -> int:
        found.append(await scan_device(config, args.unit))
        return 0

    run_async(scan())
    return _report(*found[0], args)


def _check_writable(path: Path) -> None:
    if path.is_dir() or not path.parent.is_dir():
        raise ConfigError(f"cannot write a map to {str(path)!r}", key="write-map")


async def scan_device(config: BridgeConfig, unit: int) -> tuple[SunSpecDevice | None, str]:
    """Scan `unit` of the bridge's target: the device found, or None and why not."""
    loop = asyncio.get_running_loop()
    bridge = Bridge(config, _Services(loop))
    found: asyncio.Future[tuple[SunSpecDevice | None, str]] = loop.create_future()

    def done(device: SunSpecDevice | None, error: str) -> None:
        if not found.done():
            found.set_result((device, error))

    bridge.pool.start()
    scan = SunSpecScan(bridge.dispatch, bridge.clock, unit, done, priority=Priority.NORMAL)
    scan.start()
    try:
        async with asyncio.timeout(SCAN_LIMIT):
            return await found
    except TimeoutError:
        scan.stop()
        return None, f"no end of the scan within {format_duration(SCAN_LIMIT)}"
    finally:
        await bridge.drain(0.0)


def _report(device: SunSpecDevice | None, error: str, args: argparse.Namespace) -> int:
    """Print what the scan found; write the map if asked."""
    where = str(args.target)
    if device is None:
        print(f"{where} unit {args.unit}: {error}", file=sys.stderr)
        return EXIT_NOT_FOUND
    for line in describe(device, where):
        print(line)
    if error:
        print(f"(the scan stopped early: {error})")
    if args.write_map:
        points = model_points(device, args.every)
        ids = [str(model) for model in sorted({_model_of(point.name) for point in points})]
        header = [
            f"SunSpec points of {where} unit {args.unit}, written by tcp-multiplexer sunspec scan",
            f'models {", ".join(ids)}; name it in a bridge: map = "{Path(args.write_map).name}"',
            "(not-implemented values are published as unknown)",
        ]
        Path(args.write_map).write_text(map_text(points, header), encoding="utf-8")
        print(f"\nwrote {len(points)} points of models {', '.join(ids)} to {args.write_map}")
    return 0


def _model_of(name: str) -> int:
    return int(name.split("_", 1)[0].lstrip("m"))
