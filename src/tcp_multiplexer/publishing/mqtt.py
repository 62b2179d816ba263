"""Each bridge's points on an MQTT broker (aiomqtt, on paho-mqtt: the publish extra).

One MQTT connection per bridge, as client ID-BRIDGE, whose last will sets
BASE/BRIDGE/availability to offline: so a bridge's entities go unavailable when the
multiplexer is gone as when the bridge's target is down. On each connection:

- Home Assistant discovery configs (discovery.py), retained; sent again when the
  bridge's points change (a reload, a SunSpec scan), and emptied for points it lost;
- BASE/BRIDGE/availability: online while its target is healthy as /healthz says (a
  connection up, or an answer within the timeout), else offline;
- BASE/BRIDGE/POINT: each point's value as plain text, retained, when it changes and at
  least every `every` x 10 (None: a value the device says it does not have); nothing
  while the image does not hold it (not read yet, or cut by a write until read again);
- BASE/BRIDGE/_bridge/{target_up,clients,answers_per_minute}: the bridge's health,
  every 30 s and when the target comes or goes;
- BASE/BRIDGE/POINT/set: a command to a writable point, checked and made a write
  request by the bridge's background (range, scale, type), checked against the bridge's
  write rules as the client named `mqtt`, sent before waiting reads; the state is
  published once the device confirms it, and the old one again when it does not.

A broker that is down or goes away is tried again with a growing pause (1 s up to
30 s); the bridges and their clients never wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import aiomqtt

from tcp_multiplexer.core.backoff import Backoff
from tcp_multiplexer.core.interfaces import Clock, Priority, Request
from tcp_multiplexer.logs import NOTICE
from tcp_multiplexer.observability.status import target_state
from tcp_multiplexer.observability.values import bridge_readings
from tcp_multiplexer.protocols.spec import Background, ClientIdentity, PointInfo
from tcp_multiplexer.publishing.discovery import (
    HEALTH_EVERY,
    OFF,
    OFFLINE,
    ON,
    ONLINE,
    Topics,
    discovery_messages,
    state_text,
)
from tcp_multiplexer.publishing.settings import MqttSettings

if TYPE_CHECKING:
    from tcp_multiplexer.bridge import Bridge

logger = logging.getLogger("tcp_multiplexer.mqtt")

COMMAND_CLIENT: Final = ClientIdentity(None, frozenset({"mqtt"}))
"""Who a command is, for the bridge's write rules: the client named ``mqtt``."""
RECONNECT_FIRST: Final = 1.0
RECONNECT_CAP: Final = 30.0
REFRESH_FACTOR: Final = 10
"""A state unchanged is published again after its point's `every` times this."""
COMMAND_LIMIT: Final = 60.0
"""Seconds a command may wait for its answer (the bridge answers long before)."""
KEEPALIVE: Final = 30
STOP_LIMIT: Final = 3.0


class _CommandOwner:
    """The `RequestOwner` of one command's write request."""

    closed = False

    def __init__(self, done: asyncio.Future[Request]) -> None:
        self._done = done

    def request_done(self, request: Request) -> None:
        if not self._done.done():
            self._done.set_result(request)

    def pause_for_queue(self) -> None:
        """One request: nothing to pause."""

    def resume_for_queue(self) -> None:
        """One request: nothing to resume."""


class BridgePublisher:
    """One bridge on the broker (see the module docstring)."""

    def __init__(
        self,
        settings: MqttSettings,
        name: str,
        bridge: Callable[[], Bridge | None],
        clock: Clock,
    ) -> None:
        self.settings = settings
        self.name = name
        self._bridge = bridge
        self._clock = clock
        self.topics = Topics(settings, name)
        self._sent: dict[str, tuple[str, float]] = {}
        """Each state topic's last payload and when it went."""
        self._discovery: dict[str, str] = {}
        """Each discovery config announced, as sent."""
        self._discovery_key: object = None
        self._announce_all = True
        self._health_at = -math.inf
        self._target_up: bool | None = None
        self._answers: tuple[float, int] | None = None
        self.connected = False
        self.connections = 0
        """Connections made to the broker so far."""
        self.commands: list[tuple[str, str, str]] = []
        """The last commands: (point, payload, "" or why it was refused), at most 100."""
        self._task: asyncio.Task[None] | None = None
        self._commands: set[asyncio.Task[str]] = set()
        """Commands being carried out."""

    # ------------------------------------------------------------------ life

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"mqtt {self.name}"
            )

    async def stop(self) -> None:
        """Say offline and disconnect (within STOP_LIMIT: a broker that does not answer
        does not hold up a shutdown)."""
        task, self._task = self._task, None
        if task is None:
            return
        if not await cancel_all([task], STOP_LIMIT):
            logger.warning("[%s] MQTT: the broker did not take the disconnect in time", self.name)
        elif not task.cancelled() and task.exception() is not None:
            logger.error("[%s] MQTT: %s", self.name, task.exception())

    async def _run(self) -> None:
        backoff = Backoff(RECONNECT_FIRST, RECONNECT_CAP)
        settings = self.settings
        while True:
            try:
                async with aiomqtt.Client(
                    settings.host,
                    settings.port,
                    username=settings.username,
                    password=settings.password,
                    identifier=f"{settings.client_id}-{self.name}",
                    will=aiomqtt.Will(self.topics.availability, OFFLINE, qos=1, retain=True),
                    tls_context=settings.tls_context(),
                    keepalive=KEEPALIVE,
                    timeout=10,
                ) as client:
                    self.connected = True
                    self.connections += 1
                    backoff.reset()
                    logger.log(
                        NOTICE,
                        "[%s] MQTT: connected to %s as %s-%s",
                        self.name,
                        settings.url,
                        settings.client_id,
                        self.name,
                    )
                    try:
                        await self._session(client)
                    except asyncio.CancelledError:
                        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                            async with asyncio.timeout(1.0):
                                await client.publish(
                                    self.topics.availability, OFFLINE, qos=1, retain=True
                                )
                        raise
            except aiomqtt.MqttError as exc:
                delay = backoff.next_delay()
                level = logging.WARNING if self.connected or backoff.attempts == 1 else logging.INFO
                logger.log(
                    level,
                    "[%s] MQTT: broker %s: %s; trying again in %.1fs",
                    self.name,
                    settings.url,
                    exc,
                    delay,
                )
                self.connected = False
                await asyncio.sleep(delay)

    async def _session(self, client: aiomqtt.Client) -> None:
        self._sent.clear()
        self._discovery_key = None
        self._announce_all = True  # a broker restarted without persistence forgot them
        self._target_up = None
        self._health_at = -math.inf
        await client.subscribe(self.topics.commands, qos=1)
        loop = asyncio.get_running_loop()
        tasks = {
            loop.create_task(self._listen(client)),
            loop.create_task(self._publish_forever(client)),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # the broker went away: MqttError
        finally:
            for running in (*tasks, *self._commands):
                running.cancel()
            await cancel_all([*tasks, *self._commands], STOP_LIMIT)

    # ------------------------------------------------------------------ states

    async def _publish_forever(self, client: aiomqtt.Client) -> None:
        while True:
            tick = await self.publish_once(client)
            await asyncio.sleep(tick)

    async def publish_once(self, client: aiomqtt.Client) -> float:
        """Publish what changed; returns how long to wait for the next round."""
        bridge = self._bridge()
        if bridge is None:
            return 1.0
        now = self._clock.time()
        backgrounds = _backgrounds(bridge)
        infos = [info for background in backgrounds for info in background.point_infos()]
        if self.settings.discovery:
            await self._announce(client, bridge, backgrounds, infos)
        up = any(target_state(target, now).healthy for target in bridge.targets)
        if up is not self._target_up:
            self._target_up = up
            await client.publish(
                self.topics.availability, ONLINE if up else OFFLINE, qos=1, retain=True
            )
            self._health_at = -math.inf
        readings = bridge_readings(bridge, now)
        for info in infos:
            reading = readings.get(info.name)
            if reading is None or reading.age is None:
                continue  # not held now (never read, or a write cut it): no news
            text = state_text(reading.value)
            await self._state(client, self.topics.state(info.name), text, info.every, now)
        if now - self._health_at >= HEALTH_EVERY:
            await self._health(client, bridge, up, now)
        every = min((info.every for info in infos), default=1.0)
        return min(1.0, max(0.1, every / 2))

    async def _state(
        self, client: aiomqtt.Client, topic: str, text: str, every: float, now: float
    ) -> None:
        sent = self._sent.get(topic)
        if sent is not None and sent[0] == text and now - sent[1] < every * REFRESH_FACTOR:
            return
        self._sent[topic] = (text, now)
        await client.publish(topic, text, qos=0, retain=True)

    async def _health(self, client: aiomqtt.Client, bridge: Bridge, up: bool, now: float) -> None:
        answers = sum(target.metrics.answers for target in bridge.targets)
        rate = 0.0
        if self._answers is not None and now > self._answers[0]:
            rate = (answers - self._answers[1]) * 60.0 / (now - self._answers[0])
        self._answers = (now, answers)
        self._health_at = now
        for name, text in (
            ("target_up", ON if up else OFF),
            ("clients", str(bridge.metrics.clients)),
            ("answers_per_minute", f"{max(0.0, rate):.1f}"),
        ):
            await client.publish(self.topics.health(name), text, qos=0, retain=True)

    async def _announce(
        self,
        client: aiomqtt.Client,
        bridge: Bridge,
        backgrounds: list[Background],
        infos: list[PointInfo],
    ) -> None:
        """Send the discovery configs when they changed; empty the ones gone."""
        device: dict[str, str] = {}
        for background in backgrounds:
            device.update(background.device_info())
        target = bridge.targets[0].name
        key = (tuple(infos), tuple(sorted(device.items())), target)
        if key == self._discovery_key:
            return
        self._discovery_key = key
        messages = discovery_messages(self.settings, self.name, infos, device, target)
        texts = {topic: json.dumps(config, sort_keys=True) for topic, config in messages.items()}
        for topic in self._discovery:
            if topic not in texts:
                await client.publish(topic, b"", qos=1, retain=True)
        for topic, text in texts.items():
            if self._announce_all or self._discovery.get(topic) != text:
                await client.publish(topic, text, qos=1, retain=True)
        self._discovery = texts
        self._announce_all = False

    # ------------------------------------------------------------------ commands

    async def _listen(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        async for message in client.messages:
            point = self.topics.point_of(str(message.topic))
            payload = message.payload
            if point is None or not isinstance(payload, bytes | bytearray):
                continue
            text = bytes(payload).decode("utf-8", "replace")
            task = loop.create_task(self.command(client, point, text))
            self._commands.add(task)
            task.add_done_callback(self._commands.discard)

    async def command(self, client: aiomqtt.Client, point: str, text: str) -> str:
        """Carry out one command; returns "" or why it was refused (also logged)."""
        reason = await self._carry_out(point, text)
        self.commands = [*self.commands[-99:], (point, text, reason)]
        topic = self.topics.state(point)
        if reason:
            logger.warning("[%s] MQTT: %s/set %r refused: %s", self.name, point, text, reason)
            old = self._sent.get(topic)
            if old is not None:
                await client.publish(topic, old[0], qos=0, retain=True)
            return reason
        logger.info("[%s] MQTT: %s set to %s", self.name, point, text.strip())
        state = _confirmed_text(text)
        self._sent[topic] = (state, self._clock.time())
        await client.publish(topic, state, qos=0, retain=True)
        return ""

    async def _carry_out(self, point: str, text: str) -> str:
        bridge = self._bridge()
        if bridge is None:
            return "the bridge is gone"
        now = self._clock.time()
        background = next(
            (b for b in _backgrounds(bridge) if any(i.name == point for i in b.point_infos())),
            None,
        )
        if background is None:
            return f"no point {point!r}"
        payload = background.command(point, text, now)
        if isinstance(payload, str):
            return payload
        write_filter = bridge.filter_for_identity(COMMAND_CLIENT)
        if write_filter is not None and write_filter.refusal(payload) is not None:
            return "the bridge's write rules refuse it to the client mqtt"
        done: asyncio.Future[Request] = asyncio.get_running_loop().create_future()
        request = Request(_CommandOwner(done), payload, now)
        request.priority = Priority.URGENT
        bridge.dispatch.submit(request)
        try:
            async with asyncio.timeout(COMMAND_LIMIT):
                answered = await done
        except TimeoutError:
            return "no answer"
        if answered.close_client:
            return "no answer"
        return background.command_refusal(answered.answer)


async def cancel_all(tasks: list[asyncio.Task[Any]], limit: float) -> bool:
    """Cancel `tasks` and wait for them to end, within `limit` seconds; True if they
    did. Cancelled again while they run: Python 3.11's `asyncio.wait_for` (which the
    MQTT client awaits its broker with) may swallow a cancellation that meets an answer.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    pending = [task for task in tasks if not task.done()]
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _done, still = await asyncio.wait(pending, timeout=0.1)
        pending = list(still)
    return not pending


def _backgrounds(bridge: Bridge) -> list[Background]:
    return [target.background for target in bridge.targets if target.background is not None]


def _confirmed_text(text: str) -> str:
    """A command's payload as the state it leaves: ON/OFF for a truth, a number as a
    number reads."""
    word = text.strip().lower()
    if word in ("on", "true", "yes"):
        return ON
    if word in ("off", "false", "no"):
        return OFF
    try:
        number = float(word)
    except ValueError:
        return text.strip()
    return str(int(number)) if number.is_integer() else str(number)


class Publishing:
    """The MQTT side of the process: a publisher per bridge, following the bridges
    through reloads."""

    def __init__(
        self,
        settings: MqttSettings,
        bridges: Callable[[], Mapping[str, Bridge]],
        clock: Clock,
    ) -> None:
        self.settings = settings
        self._bridges = bridges
        self._clock = clock
        self.publishers: dict[str, BridgePublisher] = {}

    def sync(self) -> None:
        """A publisher for each bridge there is now; none for those gone."""
        names = set(self._bridges())
        for name in list(self.publishers):
            if name not in names:
                publisher = self.publishers.pop(name)
                asyncio.get_running_loop().create_task(publisher.stop())
        for name in sorted(names - set(self.publishers)):
            publisher = BridgePublisher(self.settings, name, self._finder(name), self._clock)
            self.publishers[name] = publisher
            publisher.start()

    def _finder(self, name: str) -> Callable[[], Bridge | None]:
        """The bridge of that name as it is when asked (a reload may replace it)."""
        return lambda: self._bridges().get(name)

    async def stop(self) -> None:
        publishers = list(self.publishers.values())
        self.publishers.clear()
        await asyncio.gather(*(publisher.stop() for publisher in publishers))

    def status(self) -> dict[str, Any]:
        return {
            "url": self.settings.url,
            "bridges": {
                name: {"connected": publisher.connected, "connections": publisher.connections}
                for name, publisher in self.publishers.items()
            },
        }
