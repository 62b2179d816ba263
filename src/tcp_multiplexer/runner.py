"""Running a command's coroutine: on uvloop where it is installed, else on asyncio's own
loop. Every command that runs the event loop (server, demo, example-server) goes
through here."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def run_async(main: Coroutine[Any, Any, int]) -> int:
    """Run `main` on uvloop where installed, else on the default asyncio loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result: int = runner.run(main)
        return result
