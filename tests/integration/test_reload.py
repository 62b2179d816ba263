"""A reload drops nobody: each kind of change, reloaded from the config file while two
clients poll a device that accepts one connection.

What must hold after each: no client disconnected (except one whose listen address went
away or whom the new settings refuse), no gateway exception (0x0A, 0x06, 0x0B), and the
device never saw two connections at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Final

import pytest

from tcp_multiplexer.app import App
from tcp_multiplexer.config.file import load_config
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets.server import OverLimit, TargetConfig, TargetServer
from tests.helpers import LOOPBACK, eventually, loopback_alias_works
from tests.integration.core_support import read_answer, read_request
from tests.modbus.adu import read_adu, write_register

TEST_TIMEOUT: Final = 60.0
ANSWERS_BETWEEN: Final = 10
"""Answers each client must get after a reload before the next change."""


class ModbusPoller:
    """A client that keeps reading through one connection and notes what goes wrong:
    an answer that is not the device's (a gateway exception), or its connection gone."""

    def __init__(self, port: int, unit: int, host: str = LOOPBACK) -> None:
        self.host = host
        self.port = port
        self.unit = unit
        self.answers = 0
        self.wrong: list[bytes] = []
        self.closed = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ModbusPoller:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self._task = asyncio.create_task(self._run(reader, writer))
        return self

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tid = 0
        try:
            while True:
                tid = (tid + 1) & 0xFFFF
                address = tid % 50
                writer.write(read_request(tid, self.unit, address))
                try:
                    answer = await read_adu(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.closed = True
                    return
                if answer != read_answer(tid, self.unit, address):
                    self.wrong.append(answer)
                else:
                    self.answers += 1
                await asyncio.sleep(0.005)
        finally:
            writer.close()

    async def more(self, count: int = ANSWERS_BETWEEN) -> None:
        """Wait for `count` more good answers (or a failure, which the test then sees)."""
        target = self.answers + count
        await eventually(
            lambda: self.answers >= target or self.closed or bool(self.wrong),
            within=15.0,
            message=f"{count} more answers for the client of unit {self.unit}",
        )

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def one_connection_device() -> TargetServer:
    """A device that takes one connection: a second is closed at once."""
    return TargetServer(
        TargetConfig(
            protocol=ProtocolName.MODBUS,
            delay=0.01,
            max_connections=1,
            over_limit=OverLimit.CLOSE,
        )
    )


def toml_value(value: object) -> str:
    """A value as TOML: JSON's strings, numbers and lists are TOML's; tables inline."""
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return json.dumps(value)


def write(path: Path, table: Mapping[str, Any]) -> None:
    lines = ["[[bridge]]", *(f"{key} = {toml_value(value)}" for key, value in table.items())]
    path.write_text("\n".join(lines) + "\n")


@contextlib.asynccontextmanager
async def reloadable(path: Path, table: Mapping[str, Any]) -> AsyncIterator[App]:
    """An App run from the config file at `path`, which `reload()` rereads (as SIGHUP)."""
    write(path, table)
    app = App(load_config(path), reload_source=lambda: load_config(path))
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace=1.0)


async def reload(app: App, path: Path, table: Mapping[str, Any]) -> None:
    write(path, table)
    assert await app.reload_from_source()


def base(device: TargetServer) -> dict[str, Any]:
    return {
        "name": "inverter",
        "protocol": "modbus",
        "listen": [f"{LOOPBACK}:0", "[::1]:0"],
        "target": f"{LOOPBACK}:{device.port}",
        "timeout": "3s",
        "reconnect-backoff": "1s",
    }


def ports(app: App) -> dict[str, int]:
    bridge = app.bridges["inverter"]
    return {name.rsplit(":", 1)[0]: int(name.rsplit(":", 1)[1]) for name in bridge.sockets}


@contextlib.asynccontextmanager
async def two_pollers(app: App) -> AsyncIterator[tuple[ModbusPoller, ModbusPoller]]:
    """A client on each of the bridge's two addresses (IPv4 and IPv6 loopback), each
    answered a few times already."""
    listening = ports(app)
    async with (
        ModbusPoller(listening[LOOPBACK], 1) as first,
        ModbusPoller(listening["[::1]"], 2, host="::1") as second,
    ):
        await first.more()
        await second.more()
        yield first, second


def assert_served(pollers: list[ModbusPoller], *devices: TargetServer) -> None:
    for poller in pollers:
        assert poller.wrong == [], f"unit {poller.unit}: gateway answers"
        assert not poller.closed, f"unit {poller.unit}: disconnected"
    for device in devices:
        assert device.stats.max_open_connections == 1, "two connections to the device at once"
        assert device.stats.rejected == 0


CHANGES: Final = [
    pytest.param({"allow": ["127.0.0.0/8", "::1/128"]}, id="allow-list"),
    pytest.param({"cache-ttl": "500ms", "no-coalesce": True}, id="gateway-policy"),
    pytest.param(
        {"write-rules": [{"clients": ["127.0.0.1"], "writes": ["unit 1 holding 0-9"]}]},
        id="write-rules",
    ),
    pytest.param({"queue-size": 4, "client-backlog": 4}, id="queueing"),
    pytest.param({"client-idle-timeout": "10m"}, id="client-idle-timeout"),
    pytest.param({"timeout": "2s"}, id="timeout"),
    pytest.param({"delay": "300ms", "request-gap": "5ms"}, id="delay-and-gap"),
    pytest.param({"max-idle": "5m", "connect-timeout": "2s"}, id="pool"),
    pytest.param({"unit-map": ["7=1"]}, id="unit-map"),
    pytest.param({"lenient-ids": True}, id="lenient-ids"),
    pytest.param(
        {"cache-ttl": "2s", "serve-stale": "1m", "poll": ["1:holding:0:50:500ms"]},
        id="register-image-and-polls",
    ),
    pytest.param({"read-only": "ignore"}, id="read-only-ignore"),
]


@pytest.mark.parametrize("change", CHANGES)
async def test_a_reload_drops_nobody_and_never_doubles_the_device_connection(
    tmp_path: Path, change: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tcp_multiplexer")
    path = tmp_path / "site.toml"
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        one_connection_device() as device,
    ):
        table = base(device)
        async with reloadable(path, table) as app:
            listening = ports(app)
            async with two_pollers(app) as (first, second):
                await reload(app, path, {**table, **change})
                await first.more()
                await second.more()
                assert_served([first, second], device)
                assert ports(app) == listening, "the listeners stayed"
                assert app.bridges["inverter"].metrics.clients == 2
        changed = [r.getMessage() for r in caplog.records if "reload changed" in r.getMessage()]
        assert len(changed) == 1
        for key in change:
            assert key in changed[0], changed


async def test_a_changed_target_is_switched_over_with_no_gateway_answer(tmp_path: Path) -> None:
    """The old device's connection closes after its request in flight; the new one
    opens after the post-connect delay; clients only wait."""
    path = tmp_path / "site.toml"
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        one_connection_device() as old,
        one_connection_device() as new,
    ):
        table = {**base(old), "delay": "200ms"}
        async with reloadable(path, table) as app, two_pollers(app) as (first, second):
            served_by_old = old.stats.answers
            await reload(app, path, {**table, "target": f"{LOOPBACK}:{new.port}"})
            await first.more()
            await second.more()
            assert_served([first, second], old, new)
            await old.wait_for(lambda stats: stats.open_connections == 0)
            assert new.stats.answers >= 2 * ANSWERS_BETWEEN
            assert old.stats.answers <= served_by_old + 2, "at most what was in flight"


@pytest.mark.skipif(
    not loopback_alias_works("127.0.0.2"), reason="127.0.0.2 is not a loopback address here"
)
async def test_listen_addresses_added_and_removed(tmp_path: Path) -> None:
    """An added address opens beside the others; a removed one closes its own clients,
    and only them."""
    path = tmp_path / "site.toml"
    async with asyncio.timeout(TEST_TIMEOUT), one_connection_device() as device:
        table = base(device)
        async with reloadable(path, table) as app, two_pollers(app) as (first, second):
            await reload(app, path, {**table, "listen": [*table["listen"], "127.0.0.2:0"]})
            added = ports(app)
            assert set(added) == {LOOPBACK, "[::1]", "127.0.0.2"}
            async with ModbusPoller(added["127.0.0.2"], 3, host="127.0.0.2") as third:
                await third.more()
                await first.more()
                await second.more()
                assert_served([first, second, third], device)
                await reload(app, path, {**table, "listen": [f"{LOOPBACK}:0", "127.0.0.2:0"]})
                await eventually(lambda: second.closed, message="the [::1] client closed")
                await first.more()
                await third.more()
                assert_served([first, third], device)
                assert second.wrong == []
            assert set(ports(app)) == {LOOPBACK, "127.0.0.2"}


async def test_a_client_the_new_allow_list_refuses_is_closed_and_only_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tcp_multiplexer")
    path = tmp_path / "site.toml"
    async with asyncio.timeout(TEST_TIMEOUT), one_connection_device() as device:
        table = base(device)
        async with reloadable(path, table) as app, two_pollers(app) as (first, second):
            await reload(app, path, {**table, "allow": ["127.0.0.0/8"]})
            await eventually(lambda: second.closed, message="the ::1 client closed")
            await first.more()
            assert_served([first], device)
            assert second.wrong == []
        assert any(
            "reload: closing client" in record.getMessage()
            and "no longer allowed" in record.getMessage()
            for record in caplog.records
        )


async def test_new_write_rules_apply_to_a_connected_clients_next_write(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    async with asyncio.timeout(TEST_TIMEOUT), one_connection_device() as device:
        table = base(device)
        async with reloadable(path, table) as app:
            port = ports(app)[LOOPBACK]
            reader, writer = await asyncio.open_connection(LOOPBACK, port)
            try:
                writer.write(write_register(1, 1, 5, 7))
                assert (await read_adu(reader))[7] == 0x06, "written"
                await reload(app, path, {**table, "read-only": True})
                writer.write(write_register(2, 1, 5, 8))
                refused = await read_adu(reader)
                assert refused[7:9] == bytes((0x86, 0x01)), "refused with 0x01, not sent"
                writer.write(read_request(3, 1, 6))
                assert await read_adu(reader) == read_answer(3, 1, 6)
            finally:
                writer.close()
            assert device.stats.requests == 2


async def test_a_reload_keeps_the_register_image_and_swaps_the_polls(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        one_connection_device() as device,
    ):
        table = {**base(device), "cache-ttl": "30s", "poll": ["1:holding:0:10:100ms"]}
        async with reloadable(path, table) as app:
            bridge = app.bridges["inverter"]
            await eventually(lambda: bridge.metrics.events["poll_reads"] >= 2, message="polls")
            await reload(app, path, {**table, "poll": ["1:holding:100:10:100ms"]})
            await eventually(
                lambda: (
                    device.stats.answers > 0
                    and bridge.targets[0].background is not None
                    and [row["address"] for row in bridge.targets[0].background.rows(0.0)] == [100]
                ),
                message="the new poll",
            )
            polled = bridge.metrics.events["poll_reads"]
            await eventually(
                lambda: bridge.metrics.events["poll_reads"] >= polled + 2, message="new polls"
            )
            answer = await _read_once(ports(app)[LOOPBACK], 3)
            assert answer == read_answer(1, 1, 3), "the first poll's range, still in the image"
            assert bridge.metrics.events["image_answers"] == 1, "answered from the image"
            assert device.stats.max_open_connections == 1


async def _read_once(port: int, address: int) -> bytes:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(read_request(1, 1, address))
        return await read_adu(reader)
    finally:
        writer.close()
