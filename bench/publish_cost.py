"""Benchmark: what publishing 100 points a second to a local MQTT broker costs the
multiplexer, at the home load of bench/home_image.py.

    .venv/bin/python bench/publish_cost.py [--duration 60 | --quick] [--rounds 2]

The home of bench/home_image.py (the example device answering in 40 ms on one
connection, its registers changing every second; Home Assistant, evcc, a logger, a
vendor app and a writer) with `--cache-ttl 2s` and its polls, plus 100 points (holding
0-99, read every second: inside the polled ranges, so they add no device request). Two
configurations, side by side in each round: the points without MQTT, and the same
points published to Debian's mosquitto (started here on 127.0.0.1 and a free port) with
Home Assistant discovery. A paho-mqtt subscriber counts the states that arrive. The
multiplexer runs as a subprocess; its CPU time (user + system, /proc) is counted over
`--duration` seconds after the 5 s warm-up.

Goal (issue item 6): MQTT adds at most 2 % of one core (the difference of the medians
over the rounds), at least 95 states a second arrive, and the device sees no more
requests with MQTT than without (within 5 %). Table to stdout, progress to stderr; exit
status 1 if a goal is not met. Everything listens on loopback and is stopped again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import paho.mqtt.client as paho
from home_image import (
    CACHE_TTL,
    CLIENTS,
    DEVICE_DELAY,
    LOOPBACK,
    POLLS,
    WARM_UP,
    ChangingDevice,
    Run,
    Setup,
    read_loop,
    write_loop,
)
from mux_process import MultiplexerProcess
from paho.mqtt.enums import CallbackAPIVersion

from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets.server import TargetConfig, TargetServer

POINTS: Final = 100
CPU_GOAL: Final = 2.0
"""Percent of one core MQTT may add."""
STATES_GOAL: Final = 95.0
DEVICE_SLACK: Final = 1.05


@dataclass(slots=True)
class Measured:
    mqtt: bool
    cpu_percent: float
    device_per_second: float
    states_per_second: float


def config_text(target_port: int, broker_port: int | None) -> str:
    lines = []
    if broker_port is not None:
        lines += ["[mqtt]", f'url = "mqtt://{LOOPBACK}:{broker_port}"', ""]
    lines += [
        "[[bridge]]",
        'name = "home"',
        'protocol = "modbus"',
        f'listen = ["{LOOPBACK}:0"]',
        f'target = "{LOOPBACK}:{target_port}"',
        'timeout = "5s"',
        f'cache-ttl = "{CACHE_TTL:g}s"',
        "poll = [" + ", ".join(f'"{poll}"' for poll in POLLS) + "]",
        "point = [",
        *(f'  {{ name = "r{n}", address = {n}, every = "1s" }},' for n in range(POINTS)),
        "]",
    ]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def broker() -> Iterator[int]:
    """Debian's mosquitto on 127.0.0.1 and a free port; stopped on exit."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "mosquitto.conf"
        config.write_text(f"listener {port} {LOOPBACK}\nallow_anonymous true\n")
        process = subprocess.Popen(
            [binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.2):
                    break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("mosquitto did not start")
                time.sleep(0.02)
            yield port
        finally:
            process.terminate()
            process.wait(10)


class Counter:
    """A paho-mqtt subscriber counting the point states that arrive."""

    def __init__(self, port: int) -> None:
        self.count = 0
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-counter")
        self.client.on_message = self._message
        self.client.connect(LOOPBACK, port)
        self.client.subscribe("tcp-multiplexer/home/+", qos=0)
        self.client.loop_start()

    def _message(self, *_args: object) -> None:
        with self._lock:
            self.count += 1

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def measure(mqtt: bool, broker_port: int, duration: float, seed: int) -> Measured:
    phases = random.Random(seed)
    device = ChangingDevice()
    config = TargetConfig(
        protocol=ProtocolName.MODBUS, host=LOOPBACK, delay=DEVICE_DELAY, max_connections=1
    )
    counter = Counter(broker_port) if mqtt else None
    try:
        async with TargetServer(config, device) as target:
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "home.toml"
                path.write_text(config_text(target.port, broker_port if mqtt else None))
                async with MultiplexerProcess(["--config", str(path)]) as mux:
                    since = time.monotonic() + WARM_UP
                    until = since + duration
                    run = Run(Setup("publish", CACHE_TTL, polls=True), device, since)
                    async with asyncio.TaskGroup() as group:
                        for client in CLIENTS:
                            loop = read_loop(mux.port, client, phases.uniform(0, 1), until, run)
                            group.create_task(loop)
                        group.create_task(write_loop(mux.port, phases.uniform(0, 1), until, run))
                        await asyncio.sleep(max(0.0, since - time.monotonic()))
                        cpu = mux.cpu_seconds()
                        requests = target.stats.requests
                        states = counter.count if counter else 0
                        await asyncio.sleep(max(0.0, until - time.monotonic()))
                        seconds = time.monotonic() - since
                        cpu = mux.cpu_seconds() - cpu
                        requests = target.stats.requests - requests
                        states = (counter.count if counter else 0) - states
    finally:
        if counter is not None:
            counter.close()
    if run.wrong or run.torn or run.missed:
        print(
            f"  problem: {run.wrong} wrong, {run.torn} torn, {run.missed} missed", file=sys.stderr
        )
    return Measured(mqtt, 100 * cpu / seconds, requests / seconds, states / seconds)


async def main_async(duration: float, rounds: int, seed: int) -> list[Measured]:
    found: list[Measured] = []
    with broker() as port:
        for round_number in range(rounds):
            for mqtt in (False, True):
                label = "with MQTT" if mqtt else "without MQTT"
                print(f"round {round_number + 1}: {label} ...", file=sys.stderr, flush=True)
                measured = await measure(mqtt, port, duration, seed + round_number)
                print(
                    f"  {measured.cpu_percent:.2f} % of a core, "
                    f"{measured.device_per_second:.2f} device requests/s, "
                    f"{measured.states_per_second:.1f} states/s",
                    file=sys.stderr,
                )
                found.append(measured)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--duration", type=float, default=60.0, help="seconds counted (60)")
    length.add_argument("--quick", action="store_true", help="10 s a configuration")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of both (default: 2)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    duration = 10.0 if args.quick else args.duration
    if duration <= 0 or args.rounds < 1:
        parser.error("--duration and --rounds must be positive")
    found = asyncio.run(main_async(duration, args.rounds, args.seed))
    without = [m for m in found if not m.mqtt]
    with_mqtt = [m for m in found if m.mqtt]

    def median(items: list[Measured], field: str) -> float:
        return statistics.median(getattr(item, field) for item in items)

    cpu_without, cpu_with = median(without, "cpu_percent"), median(with_mqtt, "cpu_percent")
    device_without = median(without, "device_per_second")
    device_with = median(with_mqtt, "device_per_second")
    states = median(with_mqtt, "states_per_second")
    added = cpu_with - cpu_without
    print(
        f"\nThe home of bench/home_image.py with --cache-ttl {CACHE_TTL:g}s, its polls and "
        f"{POINTS} points read every second; {duration:g} s counted per run, {args.rounds} "
        "round(s), medians:\n"
    )
    print("| configuration | multiplexer CPU (% of a core) | device requests/s | states/s |")
    print("|---|---:|---:|---:|")
    print(f"| points, no MQTT | {cpu_without:.2f} | {device_without:.2f} | - |")
    print(f"| points published to mosquitto | {cpu_with:.2f} | {device_with:.2f} | {states:.1f} |")
    print()
    checks = [
        (added <= CPU_GOAL, f"MQTT adds {added:.2f} % of a core (goal: at most {CPU_GOAL:g} %)"),
        (states >= STATES_GOAL, f"{states:.1f} states/s arrive (goal: {STATES_GOAL:g})"),
        (
            device_with <= device_without * DEVICE_SLACK,
            f"device requests/s {device_with:.2f} with MQTT, {device_without:.2f} without",
        ),
    ]
    for ok, text in checks:
        print(f"- {'met' if ok else 'NOT met'}: {text}")
    return 0 if all(ok for ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
