"""The process: the event loop's shared services, the bridges, signals, reload, systemd.

One `App` per process. It owns what every bridge shares: the clock (the event loop),
the post-I/O poller, the supervisor that starts every long-lived task (and restarts one
that fails), the open-file limit, the periodic metrics line and systemd's notify
socket. Bridges are built and started through it, and each can be added, replaced or
drained on its own while the others serve: that is what a reload does.

Signals: SIGTERM, SIGINT and SIGQUIT stop; SIGHUP rereads the config file (stops, as
the reference does, when there is none); SIGUSR1 logs every bridge's metrics line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Final

from tcp_multiplexer.bridge import Bridge
from tcp_multiplexer.config.model import AppConfig, BridgeConfig
from tcp_multiplexer.config.render import describe_changes
from tcp_multiplexer.core.interfaces import Clock, Connector, LoopClock
from tcp_multiplexer.core.poller import Poller
from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.logs import NOTICE, BridgeLog, setup_logging
from tcp_multiplexer.observability.http import ObservabilityListener
from tcp_multiplexer.observability.status import History
from tcp_multiplexer.options import Address, listen_clash

if TYPE_CHECKING:
    from tcp_multiplexer.publishing.mqtt import Publishing
from tcp_multiplexer.supervise import Supervisor
from tcp_multiplexer.systemd import SystemdNotifier

logger = logging.getLogger("tcp_multiplexer.app")
dump_logger = logging.getLogger("tcp_multiplexer.dump")
"""SIGUSR1's metrics lines: shown whatever the log level."""
dump_logger.setLevel(NOTICE)

STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)
STATUS_INTERVAL: Final = 5.0
"""How often systemd's STATUS line is brought up to date."""

ConfigSource = Callable[[], AppConfig]
"""Reads the configuration again (a reload); raises ConfigError for a bad one."""


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


def listen_overlap(old: tuple[Address, ...], new: tuple[Address, ...]) -> bool:
    """True if a listener of `new` could not be opened while `old`'s are."""
    return any(listen_clash(a, b) for a in old for b in new)


class App:
    """The process: shared services and the bridges (see the module docstring)."""

    def __init__(
        self,
        config: AppConfig,
        *,
        connector_for: Callable[[BridgeConfig], Connector | None] | None = None,
        reload_source: ConfigSource | None = None,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        """`connector_for` may give a bridge another way to reach its target than the one
        its config names (tests and benchmarks: memory connections, faults);
        `reload_source` rereads the configuration on SIGHUP."""
        self.config = config
        self._connector_for = connector_for
        self._reload_source = reload_source
        self.notifier = notifier if notifier is not None else SystemdNotifier()
        loop = asyncio.get_running_loop()
        self._loop_clock = LoopClock(loop)
        self._clock: Clock = self._loop_clock
        self._poller = Poller(self._clock, config.busy_poll)
        self.supervisor = Supervisor()
        self.bridges: dict[str, Bridge] = {}
        self._draining: set[asyncio.Task[None]] = set()
        """Bridges removed or replaced by a reload, finishing their requests."""
        self._metrics_task: asyncio.Task[None] | None = None
        self.reloads = 0
        """Reloads that applied a new configuration."""
        self.failed_reloads = 0
        self.history = History(lambda: self.bridges)
        self.observability: ObservabilityListener | None = None
        self._history_task: asyncio.Task[None] | None = None
        self.ready = False
        """True once every listener is open (/readyz)."""
        self.publishing: Publishing | None = None
        """The bridges' points on the MQTT broker, if one is configured."""
        self._started_at = self._clock.time()

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

    @property
    def observing(self) -> bool:
        return self.config.metrics_listen is not None

    @property
    def per_client_latency(self) -> bool:
        return self.config.metrics_per_client

    @property
    def capture_size(self) -> int:
        return self.config.capture

    # ------------------------------------------------------------------ what is observed

    @property
    def task_restarts(self) -> dict[str, int]:
        return dict(self.supervisor.restarts)

    @property
    def reload_counts(self) -> tuple[int, int]:
        return self.reloads, self.failed_reloads

    @property
    def per_client(self) -> bool:
        return self.config.metrics_per_client

    @property
    def uptime(self) -> float:
        return self._clock.time() - self._started_at

    def now(self) -> float:
        return self._clock.time()

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
            await self._open_observability(self.config.metrics_listen)
            for bridge_config in self.config.bridges:
                await self.add_bridge(bridge_config)
        except OSError:
            await self.stop(grace=0.0)
            raise
        self._start_metrics_line()
        self._start_publishing()
        self.ready = True

    def _start_publishing(self) -> None:
        """Publish the bridges' points to the MQTT broker, if one is configured."""
        settings = self.config.mqtt_settings
        if settings is None:
            return
        from tcp_multiplexer.publishing.mqtt import Publishing  # the publish extra

        self.publishing = Publishing(settings, lambda: self.bridges, self._clock)
        self.publishing.sync()

    async def _reload_publishing(self) -> None:
        """Follow the reloaded bridges; reconnect if the [mqtt] settings changed."""
        publishing = self.publishing
        if publishing is not None and publishing.settings == self.config.mqtt_settings:
            publishing.sync()
            return
        if publishing is not None:
            self.publishing = None
            await publishing.stop()
        self._start_publishing()

    async def _open_observability(self, address: Address | None) -> None:
        """Open the metrics, health and status listener (none if `address` is None).

        Raises:
            OSError: it cannot listen there, naming it.
        """
        if address is None:
            return
        listener = ObservabilityListener(self, address)
        try:
            await listener.start()
        except OSError as exc:
            raise OSError(exc.errno, f"metrics listener {address}: {exc.strerror or exc}") from exc
        self.observability = listener
        logger.log(NOTICE, "metrics, health and status page on http://%s/", listener.sockets[0])
        if self._history_task is None:
            self._history_task = self.supervisor.spawn(
                "status history", lambda: self.history.run(self._clock.time)
            )

    def _start_metrics_line(self) -> None:
        if self._metrics_task is not None:
            self._metrics_task.cancel()
            self._metrics_task = None
        if self.config.metrics_interval > 0:
            interval = self.config.metrics_interval
            self._metrics_task = self.supervisor.spawn(
                "metrics line", lambda: self._log_metrics(interval)
            )

    def _new_bridge(self, config: BridgeConfig) -> Bridge:
        connector = self._connector_for(config) if self._connector_for is not None else None
        return Bridge(config, self, connector=connector)

    async def add_bridge(
        self, config: BridgeConfig, *, connector: Connector | None = None
    ) -> Bridge:
        """Build and start one bridge.

        Raises:
            OSError: it cannot listen (nothing of it is left running), naming the bridge.
        """
        bridge = (
            Bridge(config, self, connector=connector)
            if connector is not None
            else self._new_bridge(config)
        )
        try:
            await bridge.start()
        except OSError as exc:
            raise OSError(exc.errno, f"bridge {config.name!r}: {exc.strerror or exc}") from exc
        self.bridges[config.name] = bridge
        self.history.begin(config.name, bridge, self._clock.time())
        return bridge

    async def remove_bridge(self, name: str, grace: float | None = None) -> None:
        """Drain one bridge (bounded by its timeout, or `grace`) and forget it."""
        bridge = self.bridges.pop(name)
        await bridge.drain(bridge.config.timeout if grace is None else grace)

    def _drain_in_background(self, bridge: Bridge) -> None:
        task = asyncio.get_running_loop().create_task(
            bridge.drain(bridge.config.timeout), name=f"drain {bridge.name}"
        )
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def stop(self, grace: float | None = None) -> None:
        """Drain every bridge at once, each bounded by its timeout (or `grace`)."""
        self.ready = False
        if self.publishing is not None:
            publishing, self.publishing = self.publishing, None
            await publishing.stop()
        if self.observability is not None:
            self.observability.close()
            self.observability = None
        if self._metrics_task is not None:
            self._metrics_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._metrics_task
            self._metrics_task = None
        names = list(self.bridges)
        await asyncio.gather(*(self.remove_bridge(name, grace) for name in names))
        if self._draining:
            await asyncio.gather(*self._draining, return_exceptions=True)
        await self.supervisor.stop()
        self._loop_clock.close()

    # ------------------------------------------------------------------ reload

    async def reload(self, new: AppConfig) -> None:
        """Apply `new`: start added bridges, drain removed ones, change changed ones in
        place (their clients stay: `Bridge.apply`), replace those whose protocol
        changed, keep unchanged ones untouched, and take the new global settings. A
        bridge that cannot listen keeps its old configuration (or is left out, if it is
        new); the others go on."""
        running: list[BridgeConfig] = []
        new_by_name = {bridge.name: bridge for bridge in new.bridges}
        for name in list(self.bridges):
            if name not in new_by_name:
                bridge = self.bridges.pop(name)
                bridge.stop_accepting()
                bridge.log.log(NOTICE, "removed by the reload; draining")
                self._drain_in_background(bridge)
        for config in new.bridges:
            old = self.bridges.get(config.name)
            if old is None:
                try:
                    await self.add_bridge(config)
                except OSError as exc:
                    logger.error("reload: %s; that bridge is not started", exc.strerror)
                    continue
                running.append(config)
            elif old.config == config:
                old.reload_tls()  # renewed certificate files, same names
                running.append(config)
            elif old.config.protocol == config.protocol:
                running.append(await self._apply(old, config))
            elif await self._replace(old, config):
                running.append(config)
            else:
                running.append(old.config)
        if new.metrics_listen != self.config.metrics_listen:
            await self._replace_observability(new.metrics_listen)
        self.config = replace(new, bridges=tuple(running))
        self._poller.window = new.busy_poll
        setup_logging(new.log_level, new.log_format)
        self._start_metrics_line()
        await self._reload_publishing()
        self.reloads += 1

    async def _replace_observability(self, address: Address | None) -> None:
        if self.observability is not None:
            self.observability.close()
            self.observability = None
        try:
            await self._open_observability(address)
        except OSError as exc:
            logger.error("reload: %s; no metrics listener until the next reload", exc.strerror)

    async def _apply(self, bridge: Bridge, config: BridgeConfig) -> BridgeConfig:
        """Change a running bridge to `config` in place, logging what changed; returns
        the config it runs with (the old one if it could not take the new)."""
        changes = describe_changes(bridge.config, config)
        connector = self._connector_for(config) if self._connector_for is not None else None
        if not await bridge.apply(config, connector):
            return bridge.config
        bridge.log.notice("reload changed %s", "; ".join(changes))
        return config

    async def _replace(self, old: Bridge, config: BridgeConfig) -> bool:
        """Put a bridge built from `config` in `old`'s place (its protocol changed, so its
        clients cannot stay); False if it cannot listen (`old` then goes on as it was)."""
        new = self._new_bridge(config)
        overlap = listen_overlap(old.config.listen, config.listen)
        if overlap:
            # The same address: the old listeners must close before the new can open.
            old.stop_accepting()
            await old.wait_stopped_accepting()
        try:
            await new.start()
        except OSError as exc:
            logger.error(
                "reload: bridge %r cannot listen: %s; it keeps its old configuration",
                config.name,
                exc.strerror or exc,
            )
            if overlap:
                await old.resume_accepting()
            return False
        self.bridges[config.name] = new
        self.history.begin(config.name, new, self._clock.time())
        if not overlap:
            old.stop_accepting()
        old.log.log(
            NOTICE,
            "the reload changed its protocol from %s to %s: replaced, its clients closed "
            "once answered",
            old.config.protocol,
            config.protocol,
        )
        self._drain_in_background(old)
        return True

    async def reload_from_source(self) -> bool:
        """Reread the configuration and apply it; on a bad one, log why and keep the
        running one. True if a new one was applied."""
        if self._reload_source is None:
            return False
        self.notifier.reloading()
        try:
            new = self._reload_source()
        except ConfigError as exc:
            self.failed_reloads += 1
            logger.error("reload failed, keeping the running configuration: %s", exc)
            self.notifier.ready(self.status_line())
            return False
        await self.reload(new)
        logger.log(NOTICE, "reloaded %s: %s", new.source or "the configuration", self.status_line())
        self.notifier.ready(self.status_line())
        return True

    # ------------------------------------------------------------------ reporting

    def status_line(self) -> str:
        """Bridges, clients and targets up, for systemd's STATUS= and the log."""
        bridges = list(self.bridges.values())
        clients = sum(bridge.metrics.clients for bridge in bridges)
        up = sum(1 for bridge in bridges if bridge.metrics.target_connections)
        return (
            f"{len(bridges)} bridge(s), {clients} client(s), "
            f"{up} of {len(bridges)} target(s) connected"
        )

    def dump_metrics(self) -> None:
        """Log every bridge's metrics line now, whatever the log level (SIGUSR1)."""
        for bridge in self.bridges.values():
            log = BridgeLog(dump_logger, bridge.name, prefix=True)
            log.notice("metrics: %s", bridge.metrics.snapshot().log_line())

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
                # Named whatever the other lines do, as SIGUSR1's: it is read on its own.
                BridgeLog(bridge.log.logger, name, prefix=True).info("metrics: %s", line)

    async def _watchdog(self, interval: float) -> None:
        """WATCHDOG=1 while the event loop runs: a hung loop stops the pings."""
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def _keep_status(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            self.notifier.status(self.status_line())

    # ------------------------------------------------------------------ the daemon

    async def run(self) -> int:
        """Serve until a stop signal; 0 on a clean stop, 1 if a listener cannot open."""
        # Handlers first: a signal during start-up is queued, not fatal (SIGUSR1's and
        # SIGHUP's default action is to end the process).
        async with SignalQueue() as signals:
            try:
                await self.start()
            except OSError as exc:
                logger.error("cannot listen: %s; stopping", exc.strerror or exc)
                return 1
            self.notifier.ready(self.status_line())
            if self.notifier.watchdog_interval > 0:
                interval = self.notifier.watchdog_interval
                self.supervisor.spawn("watchdog", lambda: self._watchdog(interval))
            if self.notifier.enabled:
                self.supervisor.spawn("status", self._keep_status)
            while True:
                sig = await signals.next()
                if sig is signal.SIGUSR1:
                    self.dump_metrics()
                elif sig is signal.SIGHUP and self._reload_source is not None:
                    await self.reload_from_source()
                else:
                    logger.log(NOTICE, "received %s; stopping", sig.name)
                    break
        self.notifier.stopping()
        await self.stop()
        self.notifier.close()
        return 0


class SignalQueue:
    """The signals the daemon handles, queued as they arrive (`async with` installs the
    handlers and removes them again)."""

    HANDLED: Final = (*STOP_SIGNALS, signal.SIGHUP, signal.SIGUSR1)

    def __init__(self) -> None:
        self._queue: asyncio.Queue[signal.Signals] = asyncio.Queue()

    async def __aenter__(self) -> SignalQueue:
        loop = asyncio.get_running_loop()
        for sig in self.HANDLED:
            loop.add_signal_handler(sig, self._queue.put_nowait, sig)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        loop = asyncio.get_running_loop()
        for sig in self.HANDLED:
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(sig)

    async def next(self) -> signal.Signals:
        return await self._queue.get()
