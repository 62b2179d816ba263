"""Supervision: a long-lived task that raises is logged with its traceback, counted and
started again, and the bridge it belongs to goes on serving."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

import pytest

from tcp_multiplexer.config.model import BridgeConfig
from tcp_multiplexer.supervise import Supervisor
from tcp_multiplexer.targets.server import TargetConfig, TargetServer
from tcp_multiplexer.transports.tcp import TcpConnector
from tests.helpers import mux_config, open_client, running_app
from tests.integration.core_support import echo

TEST_TIMEOUT: Final = 10.0


class FlakyConnector:
    """TCP to the target, except that the first attempt raises an unexpected error."""

    def __init__(self, inner: TcpConnector) -> None:
        self._inner = inner
        self.raised = 0

    @property
    def target(self) -> str:
        return self._inner.target

    async def connect(
        self, protocol_factory: Callable[[], asyncio.Protocol]
    ) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
        if not self.raised:
            self.raised += 1
            raise RuntimeError("a connector bug, on purpose")
        return await self._inner.connect(protocol_factory)


def flaky(bridge: BridgeConfig) -> FlakyConnector:
    assert bridge.target is not None
    assert bridge.target.address is not None
    address = bridge.target.address
    return FlakyConnector(TcpConnector(address, connect_timeout=1.0, keepalive_idle=30.0))


async def test_a_slot_task_that_raises_is_restarted_and_the_bridge_serves_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="tcp_multiplexer.supervise")
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(TargetConfig()) as target,
        running_app(mux_config(target.port), connector_for=flaky) as app,
    ):
        bridge = app.bridges["test"]
        async with open_client(bridge.port) as client:
            assert await echo(client, b"still served\n") == b"still served\n"
        assert app.supervisor.restarts == {"test target slot 0": 1}
        assert target.stats.accepted == 1
    (record,) = [record for record in caplog.records if "failed" in record.getMessage()]
    assert "'test target slot 0' failed" in record.getMessage()
    assert record.exc_info is not None, "the traceback is logged"
    assert "a connector bug, on purpose" in caplog.text
    assert "Traceback" in caplog.text


async def test_a_task_is_restarted_until_it_returns_and_stops_when_cancelled() -> None:
    supervisor = Supervisor()
    runs: list[int] = []

    async def fails_twice() -> None:
        runs.append(len(runs))
        if len(runs) <= 2:
            raise ValueError(f"failure {len(runs)}")

    async with asyncio.timeout(TEST_TIMEOUT):
        await supervisor.spawn("fails twice", fails_twice)
    assert runs == [0, 1, 2]
    assert supervisor.restarts == {"fails twice": 2}

    started = asyncio.Event()

    async def runs_for_ever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = supervisor.spawn("runs for ever", runs_for_ever)
    await started.wait()
    await supervisor.stop()
    assert task.cancelled()
    assert supervisor.failures == 2, "a cancellation is not a failure"
