"""The process: the event loop's shared services, the bridges, signals and shutdown.

One `App` per process. It owns what every bridge shares: the clock (the event loop),
the post-I/O poller, the supervisor that starts every long-lived task (and restarts one
that fails), the open-file limit and the periodic metrics line. Bridges are built and
started through it, and each can be added or drained on its own while the others serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
from collections.abc import Callable
from typing import Final

from tcp_multiplexer.bridge import Bridge
from tcp_multiplexer.config.model import AppConfig, BridgeConfig
from tcp_multiplexer.core.interfaces import Clock, Connector
from tcp_multiplexer.core.poller import Poller
from tcp_multiplexer.supervise import Supervisor

logger = logging.getLogger("tcp_multiplexer.app")

STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP)
"""SIGHUP stops too, as in the reference, when there is no config file to reread."""


def raise_file_limit() -> tuple[int, int]:
    """Raise the soft open-file limit to the hard limit; return (old, new) soft limits.

    Every client and target connection is a file descriptor; the usual soft limit of
    1024 would cap the multiplexer near a thousand clients.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            return soft, wanted
    return soft, soft


class App:
    """The process: shared services and the bridges (see the module docstring)."""

    def __init__(
        self,
        config: AppConfig,
        *,
        connector_for: Callable[[BridgeConfig], Connector | None] | None = None,
    ) -> None:
        """`connector_for` may give a bridge another way to reach its target than the one
        its config names (tests and benchmarks: memory connections, faults)."""
        self.config = config
        self._connector_for = connector_for
        loop = asyncio.get_running_loop()
        self._clock: Clock = loop
        self._poller = Poller(loop, config.busy_poll)
        self.supervisor = Supervisor()
        self.bridges: dict[str, Bridge] = {}
        self._metrics_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ BridgeServices

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def poller(self) -> Poller:
        return self._poller

    @property
    def spawner(self) -> Supervisor:
        return self.supervisor

    @property
    def names_bridges(self) -> bool:
        return self.config.source is not None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Raise the file limit, start every bridge and the metrics line.

        Raises:
            OSError: a bridge cannot listen; the bridges already started are stopped.
        """
        old_limit, new_limit = raise_file_limit()
        if new_limit != old_limit:
            logger.info("raised the open-file limit from %d to %d", old_limit, new_limit)
        try:
            for bridge_config in self.config.bridges:
                await self.add_bridge(bridge_config)
        except OSError:
            await self.stop(grace=0.0)
            raise
        if self.config.metrics_interval > 0:
            interval = self.config.metrics_interval
            self._metrics_task = self.supervisor.spawn(
                "metrics line", lambda: self._log_metrics(interval)
            )

    async def add_bridge(
        self, config: BridgeConfig, *, connector: Connector | None = None
    ) -> Bridge:
        """Build and start one bridge.

        Raises:
            OSError: it cannot listen (nothing of it is left running).
        """
        if connector is None and self._connector_for is not None:
            connector = self._connector_for(config)
        bridge = Bridge(config, self, connector=connector)
        await bridge.start()
        self.bridges[config.name] = bridge
        return bridge

    async def remove_bridge(self, name: str, grace: float | None = None) -> None:
        """Drain one bridge (bounded by its timeout, or `grace`) and forget it."""
        bridge = self.bridges.pop(name)
        await bridge.drain(bridge.config.timeout if grace is None else grace)

    async def stop(self, grace: float | None = None) -> None:
        """Drain every bridge at once, each bounded by its timeout (or `grace`)."""
        if self._metrics_task is not None:
            self._metrics_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._metrics_task
            self._metrics_task = None
        names = list(self.bridges)
        await asyncio.gather(*(self.remove_bridge(name, grace) for name in names))
        await self.supervisor.stop()

    async def _log_metrics(self, interval: float) -> None:
        """Every `interval`, one line per bridge: lifetime counts, and the latency and
        rate since the line before."""
        previous = {name: bridge.metrics.snapshot() for name, bridge in self.bridges.items()}
        while True:
            await asyncio.sleep(interval)
            for name, bridge in self.bridges.items():
                now = bridge.metrics.snapshot()
                earlier = previous.get(name)
                previous[name] = now
                line = now.log_line() if earlier is None else now.interval_line(earlier, interval)
                bridge.log.info("metrics: %s", line)

    async def run(self) -> int:
        """Serve until a stop signal; 0 on a clean stop, 1 if a listener cannot open."""
        try:
            await self.start()
        except OSError as exc:
            logger.error("cannot listen: %s", exc)
            return 1
        sig = await wait_for_stop_signal()
        logger.warning("received %s; stopping", sig.name)
        await self.stop()
        return 0


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
