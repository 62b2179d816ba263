"""Shared test helpers: an in-process multiplexer, a CLI subprocess, readiness waits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from typing import Any

from tcp_multiplexer.app import App
from tcp_multiplexer.bridge import Bridge
from tcp_multiplexer.config.model import AppConfig, BridgeConfig
from tcp_multiplexer.options import Address

LOOPBACK = "127.0.0.1"


def loopback_alias_works(address: str) -> bool:
    """127.0.0.2 and 127.0.0.3 are loopback on Linux; check before relying on them."""
    with socket.socket() as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            return False
    return True


async def eventually(
    predicate: Callable[[], bool], within: float = 5.0, message: str = "condition"
) -> None:
    """Wait until `predicate()` is true (checked every few ms), or fail after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {message}")
        await asyncio.sleep(0.005)


APP_FIELDS = frozenset(
    (
        "busy_poll",
        "metrics_interval",
        "log_level",
        "log_format",
        "metrics_listen",
        "metrics_per_client",
        "capture",
    )
)
"""mux_config overrides that belong to the process, not the bridge."""


def mux_config(target_port: int, **overrides: Any) -> AppConfig:
    """One bridge on loopback port 0 with test-friendly timings, in an AppConfig.

    Overrides are fields of BridgeConfig or AppConfig; ``modbus=ModbusOptions(...)``
    sets the protocol options.
    """
    app = {key: overrides.pop(key) for key in list(overrides) if key in APP_FIELDS}
    if "modbus" in overrides:
        overrides["protocol_options"] = overrides.pop("modbus")
    bridge = BridgeConfig(
        name="test",
        target=Address(LOOPBACK, target_port),
        listen=(Address(LOOPBACK, 0),),
        timeout=5.0,
        connect_timeout=2.0,
        reconnect_backoff=0.05,
    )
    return AppConfig(bridges=(replace(bridge, **overrides),), **{"metrics_interval": 0.0, **app})


@contextlib.asynccontextmanager
async def running_app(config: AppConfig, **options: Any) -> AsyncIterator[App]:
    """A started in-process App (`options` go to App), stopped on exit (also on failure)."""
    app = App(config, **options)
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace=1.0)


@contextlib.asynccontextmanager
async def running_multiplexer(config: AppConfig) -> AsyncIterator[Bridge]:
    """The one bridge of `config`, running in an in-process App, stopped on exit."""
    async with running_app(config) as app:
        (bridge,) = app.bridges.values()
        yield bridge


async def wait_for_target_connection(multiplexer: Bridge, count: int = 1) -> None:
    """Wait until the pool holds `count` target connections."""
    await eventually(
        lambda: multiplexer.pool.connections >= count, message=f"{count} target connection(s)"
    )


@contextlib.asynccontextmanager
async def open_client(
    port: int,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A client connection to the multiplexer, closed on exit."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """`python -m tcp_multiplexer ARGV` to its end (30 s at most): its status and output."""
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "tcp_multiplexer", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


class CliProcess:
    """`python -m tcp_multiplexer ...` in a subprocess; a thread collects its stderr."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.args = args
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "tcp_multiplexer", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.lines: list[str] = []
        self._stopped = False
        self._new_line = threading.Condition()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._new_line:
                self.lines.append(line)
                self._new_line.notify_all()
        with self._new_line:
            self.lines.append("")  # end of stream marker
            self._new_line.notify_all()

    def wait_for_line(
        self, pattern: str, timeout: float = 10.0, *, after: int = 0
    ) -> re.Match[str]:
        """Wait for a stderr line matching `pattern` (among lines from index `after`);
        fail if the process ends first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = after
        with self._new_line:
            while True:
                for line in self.lines[seen:]:
                    match = regex.search(line)
                    if match:
                        return match
                seen = len(self.lines)
                ended = bool(self.lines) and self.lines[-1] == ""
                remaining = deadline - time.monotonic()
                if ended or remaining <= 0:
                    raise AssertionError(
                        f"no line matching {pattern!r} from {self.args}; got:\n{self.output()}"
                    )
                self._new_line.wait(remaining)

    def listening_port(self) -> int:
        """The port from the `listening on HOST:PORT` line."""
        return int(self.wait_for_line(r"listening on [^ ]*:(\d+)").group(1))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send `sig`, wait for exit, return the exit status (killing it if it hangs).

        Safe to call again: later calls return the same status.
        """
        if self._stopped:
            return self.process.returncode
        self._stopped = True
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=5)
        if self.process.stdout is not None:
            self.stdout = self.process.stdout.read()
            self.process.stdout.close()
        if self.process.stderr is not None:
            self.process.stderr.close()
        return self.process.returncode

    def output(self) -> str:
        return "".join(self.lines)


@contextlib.contextmanager
def cli_process(args: list[str], env: dict[str, str] | None = None) -> Iterator[CliProcess]:
    """A CLI subprocess that is stopped on exit, also when the test fails."""
    process = CliProcess(args, env)
    try:
        yield process
    finally:
        if process.process.poll() is None:
            process.process.kill()
        process.stop()
