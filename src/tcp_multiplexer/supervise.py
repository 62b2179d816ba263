"""Supervision: every long-lived task is started here, and none is ever left dead.

A task that raises anything unexpected (not a cancellation) is logged once, with its
traceback, counted, and started again after a short pause that doubles while it keeps
failing (up to RESTART_CAP) and starts over once it has run for HEALTHY_RUN. Without
this, a pool slot whose connect loop died would leave its bridge answering "busy" for
ever, and nothing in the log would say why.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Final

logger = logging.getLogger("tcp_multiplexer.supervise")

RESTART_DELAY: Final = 0.1
"""First pause before a failed task is started again: short, so service resumes at once."""
RESTART_CAP: Final = 5.0
"""Longest pause: a task that fails at once on every start is not spun on."""
HEALTHY_RUN: Final = 60.0
"""A run this long resets the pause: the next failure is a new one."""


class Supervisor:
    """Starts tasks that are restarted when they fail (a `TaskSpawner`)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self.restarts: Counter[str] = Counter()
        """Restarts by task name."""

    @property
    def failures(self) -> int:
        """Unexpected exceptions caught in all tasks so far."""
        return sum(self.restarts.values())

    def spawn(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run `run()` until it returns or is cancelled, restarting it after it raises."""
        task = asyncio.get_running_loop().create_task(self._supervise(name, run), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        delay = RESTART_DELAY
        while True:
            started = loop.time()
            try:
                await run()
            except Exception:
                if loop.time() - started >= HEALTHY_RUN:
                    delay = RESTART_DELAY
                self.restarts[name] += 1
                logger.exception("task %r failed; starting it again in %.1fs", name, delay)
                await asyncio.sleep(delay)
                delay = min(RESTART_CAP, delay * 2)
            else:
                return

    async def stop(self) -> None:
        """Cancel every task still running and wait for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
