"""The multiplexer as users run it: `python -m tcp_multiplexer server ...` in a subprocess.

Shared by the bench scripts. Its stderr is kept in memory (`lines`); `sample()` reads its
resident memory and open file descriptors from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

START_TIMEOUT: Final = 15.0
"""Longest wait for the `listening on` line."""
STOP_TIMEOUT: Final = 10.0
"""Longest wait for a clean exit after SIGTERM before it is killed."""


@dataclass(frozen=True, slots=True)
class Sample:
    """The multiplexer's resources at one moment."""

    at: float
    rss_kb: int
    fds: int


class MultiplexerProcess:
    """A `tcp-multiplexer server` subprocess; `async with` starts and stops it."""

    def __init__(self, args: Sequence[str]) -> None:
        self.args = [sys.executable, "-m", "tcp_multiplexer", "server", *args]
        self.lines: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0
        self._drain: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MultiplexerProcess:
        try:
            await self.start()
        except BaseException:
            await self.stop()  # __aexit__ is not called when __aenter__ fails
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> int:
        """Start it and return the port from its `listening on` line."""
        self.process = await asyncio.create_subprocess_exec(
            *self.args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        stderr = self.process.stderr
        if stderr is None:
            raise RuntimeError("no stderr pipe")
        async with asyncio.timeout(START_TIMEOUT):
            while True:
                line = (await stderr.readline()).decode(errors="replace")
                if not line:
                    raise RuntimeError(f"the multiplexer exited:\n{''.join(self.lines)}")
                self.lines.append(line)
                match = re.search(r"listening on [^ ]*:(\d+)", line)
                if match:
                    break
        self._drain = asyncio.create_task(self._read_log(stderr))
        self.port = int(match.group(1))
        return self.port

    async def _read_log(self, stderr: asyncio.StreamReader) -> None:
        while line := await stderr.readline():
            self.lines.append(line.decode(errors="replace"))

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def sample(self) -> Sample:
        """Resident memory and open file descriptors now (Linux /proc)."""
        if self.process is None:
            raise RuntimeError("not started")
        pid = self.process.pid
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        rss_kb = 0
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss_kb = int(line.split()[1])
        return Sample(time.monotonic(), rss_kb, fds)

    def cpu_seconds(self) -> float:
        """User plus system CPU time it has used so far (Linux /proc)."""
        if self.process is None:
            raise RuntimeError("not started")
        with open(f"/proc/{self.process.pid}/stat", encoding="ascii") as stat:
            # The command name (field 2) is in parentheses and may hold spaces.
            fields = stat.read().rsplit(")", 1)[1].split()
        utime, stime = int(fields[11]), int(fields[12])
        return (utime + stime) / os.sysconf("SC_CLK_TCK")

    async def stop(self) -> int | None:
        """SIGTERM, wait (kill if it hangs); the exit status, or None if it had to be killed."""
        process = self.process
        if process is None:
            return None
        status: int | None = process.returncode
        if status is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    status = await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
                status = None
        if self._drain is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_TIMEOUT):
                    await self._drain
        return status

    def final_events(self) -> dict[str, int]:
        """Counters from the multiplexer's `stopped after ...` line (after exit)."""
        for line in reversed(self.lines):
            if "stopped after" in line:
                tail = line.split("latency", 1)[-1]
                return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)\b", tail)}
        return {}
