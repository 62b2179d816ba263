"""systemd's notify protocol, read from a fake NOTIFY_SOCKET: readiness once listening,
reload and stop notices, a STATUS line, watchdog pings; and the units we ship."""

from __future__ import annotations

import asyncio
import itertools
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from tcp_multiplexer.systemd import SystemdNotifier
from tcp_multiplexer.targets.server import TargetConfig, TargetServer
from tests.helpers import cli_process, open_client
from tests.integration.core_support import echo
from tests.integration.daemon_support import bridge, bridge_port, write_config

TEST_TIMEOUT: Final = 30.0
WATCHDOG_USEC: Final = 400_000
PACKAGING: Final = Path(__file__).resolve().parents[2] / "packaging"


class NotifySocket:
    """The datagram socket systemd would listen on, and what arrived on it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []

    async def next(self, within: float = 10.0) -> dict[str, str]:
        """The next datagram, as its KEY=value lines."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(within):
            data = await loop.sock_recv(self.sock, 4096)
        message = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.messages.append(message)
        return message

    async def until(self, key: str, within: float = 10.0) -> dict[str, str]:
        """Read datagrams until one has `key`."""
        async with asyncio.timeout(within):
            while True:
                message = await self.next(within)
                if key in message:
                    return message


@contextmanager
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    receiver = NotifySocket(tmp_path / "notify")
    try:
        yield receiver
    finally:
        receiver.sock.close()


async def test_ready_once_listening_then_reloading_ready_watchdog_and_stopping(
    tmp_path: Path,
) -> None:
    config = tmp_path / "site.toml"
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(TargetConfig()) as target:
        write_config(config, [bridge("lines", target.port)])
        env = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        with (
            notify_socket(tmp_path) as systemd,
            cli_process(["server", "--config", str(config)], env) as process,
        ):
            ready = await systemd.until("READY")
            assert ready["READY"] == "1"
            assert ready["STATUS"].startswith("1 bridge(s), 0 client(s)")
            # READY=1 comes once the listener is open: it accepts already.
            port = await bridge_port(process, "lines")
            async with open_client(port) as client:
                assert await echo(client, b"ready\n") == b"ready\n"
            pings = []
            while len(pings) < 3:
                message = await systemd.next(within=WATCHDOG_USEC / 1e6 * 2)
                if "WATCHDOG" in message:
                    pings.append(time.monotonic())
            gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
            assert all(gap < WATCHDOG_USEC / 1e6 for gap in gaps), "pings within the interval"
            before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            process.process.send_signal(signal.SIGHUP)
            reloading = await systemd.until("RELOADING")
            after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            assert before <= int(reloading["MONOTONIC_USEC"]) <= after
            assert (await systemd.until("READY"))["READY"] == "1"
            process.process.send_signal(signal.SIGTERM)
            assert (await systemd.until("STOPPING"))["STOPPING"] == "1"
            assert await asyncio.to_thread(process.process.wait, 10.0) == 0


def test_the_watchdog_is_only_for_the_process_it_names() -> None:
    assert SystemdNotifier({"WATCHDOG_USEC": "2000000"}).watchdog_interval == 1.0
    assert SystemdNotifier({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}).watchdog_interval == 0
    assert not SystemdNotifier({}).enabled


def test_an_abstract_notify_socket_is_reached(tmp_path: Path) -> None:
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"tcp-multiplexer-test-{time.monotonic_ns()}"
    receiver.bind("\0" + name)
    try:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        notifier.ready("up")
        assert receiver.recv(100).decode().splitlines() == ["READY=1", "STATUS=up"]
        notifier.status("up")
        notifier.status("2 clients")
        assert receiver.recv(100) == b"STATUS=2 clients", "an unchanged STATUS is not sent"
        notifier.close()
    finally:
        receiver.close()


def unit_settings(name: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (PACKAGING / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_units_use_readiness_the_watchdog_reload_and_port_502() -> None:
    for name in ("tcp-multiplexer.service", "tcp-multiplexer@.service"):
        unit = unit_settings(name)
        assert unit["Type"] == ["notify"]
        assert unit["WatchdogSec"]
        assert unit["Restart"] == ["on-failure"]
        assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
        assert unit["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
        assert unit["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
        assert "systemd" not in " ".join(unit["Documentation"])
        assert "--config" in unit["ExecStart"][0]
        # serial:// targets: USB RS-485 adapters may be opened, nothing else of /dev.
        assert unit["DevicePolicy"] == ["closed"]
        assert "char-ttyUSB rw" in unit["DeviceAllow"]
        assert unit["SupplementaryGroups"] == ["dialout"]
        assert "PrivateDevices" not in unit
    assert (
        "/etc/tcp-multiplexer/%i.toml" in unit_settings("tcp-multiplexer@.service")["ExecStart"][0]
    )
