"""Real MQTT peers for the tests: Debian's mosquitto broker on 127.0.0.1 and a free
port (stopped after, also on failure), and a paho-mqtt subscriber that keeps every
message it gets."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.helpers import LOOPBACK

MOSQUITTO: Final = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)
needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


class Broker:
    """A mosquitto process listening on `port`, without persistence (a restart forgets
    retained messages, as a broker without a disk does)."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.folder = folder
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert MOSQUITTO is not None
        config = self.folder / f"mosquitto-{self.port}.conf"
        config.write_text(
            f"listener {self.port} {LOOPBACK}\nallow_anonymous true\npersistence false\n"
        )
        self.process = subprocess.Popen(  # noqa: S603 - Debian's broker, our config
            [MOSQUITTO, "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10.0
        while True:
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, self.port), 0.2):
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mosquitto did not listen on {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(5.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5.0)

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"


@contextlib.contextmanager
def running_broker(folder: Path) -> Iterator[Broker]:
    broker = Broker(folder)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


class Subscriber:
    """A paho-mqtt client subscribed to `topics`, keeping the last payload of each topic
    and every message in order; it reconnects by itself (paho's loop)."""

    def __init__(self, port: int, *topics: str) -> None:
        self.last: dict[str, bytes] = {}
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Condition()
        self._topics = topics
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{port}-{id(self)}")
        self.client.on_connect = self._connected
        self.client.on_message = self._message
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect(LOOPBACK, port, keepalive=10)
        self.client.loop_start()

    def _connected(self, client: paho.Client, *_args: Any) -> None:
        for topic in self._topics:
            client.subscribe(topic, qos=1)

    def _message(self, _client: paho.Client, _data: Any, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.last[message.topic] = message.payload
            self.messages.append((message.topic, message.payload, bool(message.retain)))
            self._lock.notify_all()

    def wait(self, condition: Callable[[], bool], within: float = 10.0, what: str = "") -> None:
        """Wait until `condition()` (called under the lock) is true."""
        deadline = time.monotonic() + within
        with self._lock:
            while not condition():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"timed out waiting for {what or 'messages'}; last: {self.last}"
                    )
                self._lock.wait(remaining)

    def text(self, topic: str) -> str | None:
        with self._lock:
            payload = self.last.get(topic)
        return None if payload is None else payload.decode()

    def publish(self, topic: str, payload: str) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5.0)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@contextlib.contextmanager
def subscribed(port: int, *topics: str) -> Iterator[Subscriber]:
    subscriber = Subscriber(port, *topics)
    try:
        yield subscriber
    finally:
        subscriber.close()
