"""Recovery within a second: while clients ask and the target is down, a request brings
the next connect attempt forward (at most one a second); once the target is back, the
first good answer follows within about a second, however long the outage was."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final

import pytest

from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets.server import TargetConfig, TargetServer
from tests.helpers import LOOPBACK, eventually, mux_config, running_multiplexer
from tests.integration.core_support import read_answer, read_request
from tests.modbus.adu import read_adu

POLL_EVERY: Final = 0.2
LONG_OUTAGE: Final = 60.0
SHORT_OUTAGE: Final = 8.0
BACK_WITHIN: Final = 1.5


@dataclass
class PollLog:
    """What one client polling every POLL_EVERY saw: (time, good answer?) per request."""

    answers: list[tuple[float, bool]] = field(default_factory=list)
    slowest_refusal: float = 0.0
    """The longest a gateway answer took: the target being down is said at once."""

    def good_after(self, moment: float) -> float | None:
        return next((at for at, good in self.answers if good and at >= moment), None)


@contextlib.asynccontextmanager
async def polling(port: int, log: PollLog) -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()

    async def run() -> None:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        tid = 0
        try:
            while True:
                tid = (tid + 1) & 0xFFFF
                asked = loop.time()
                writer.write(read_request(tid, 1, 100))
                answer = await read_adu(reader)
                now = loop.time()
                good = answer == read_answer(tid, 1, 100)
                if not good:
                    log.slowest_refusal = max(log.slowest_refusal, now - asked)
                log.answers.append((now, good))
                await asyncio.sleep(max(0.0, asked + POLL_EVERY - now))
        finally:
            writer.close()

    task = asyncio.create_task(run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def config(target: TargetServer) -> object:
    return mux_config(
        target.port,
        protocol=ProtocolName.MODBUS,
        timeout=2.0,
        connect_timeout=1.0,
        reconnect_backoff=1.0,
    )


@pytest.mark.timeout(LONG_OUTAGE + 60)
async def test_a_long_outage_is_tried_once_a_second_and_the_return_served_at_once() -> None:
    """During the outage the device's host accepts and resets every connection, so the
    target counts each attempt."""
    log = PollLog()
    loop = asyncio.get_running_loop()
    async with (
        asyncio.timeout(LONG_OUTAGE + 30),
        TargetServer(TargetConfig(protocol=ProtocolName.MODBUS)) as target,
        running_multiplexer(config(target)) as mux,  # type: ignore[arg-type]
        polling(mux.port, log),
    ):
        await eventually(lambda: log.good_after(0.0) is not None, message="a first answer")
        target.resetting = True
        await target.drop_connections()
        attempts_before = target.stats.rejected
        await asyncio.sleep(LONG_OUTAGE)
        attempts = target.stats.rejected - attempts_before
        target.resetting = False
        back = loop.time()
        await eventually(
            lambda: log.good_after(back) is not None, within=10.0, message="an answer again"
        )
        first_good = log.good_after(back)
    assert first_good is not None
    assert first_good - back <= BACK_WITHIN
    assert attempts <= LONG_OUTAGE + 2, "no more than one attempt a second"
    assert log.slowest_refusal < 1.0, "while it was away clients were told at once"


async def test_a_refusing_target_that_comes_back_is_served_within_a_second() -> None:
    log = PollLog()
    loop = asyncio.get_running_loop()
    async with (
        asyncio.timeout(SHORT_OUTAGE + 30),
        TargetServer(TargetConfig(protocol=ProtocolName.MODBUS)) as target,
        running_multiplexer(config(target)) as mux,  # type: ignore[arg-type]
        polling(mux.port, log),
    ):
        await eventually(lambda: log.good_after(0.0) is not None, message="a first answer")
        await target.go_down()
        await asyncio.sleep(SHORT_OUTAGE)
        await target.come_up()
        back = loop.time()
        await eventually(
            lambda: log.good_after(back) is not None, within=10.0, message="an answer again"
        )
        first_good = log.good_after(back)
        connects = mux.metrics.targets[0].connect_attempts
    assert first_good is not None
    assert first_good - back <= BACK_WITHIN
    assert connects <= SHORT_OUTAGE + 4, "no more than one attempt a second"


async def test_the_log_says_when_the_next_attempt_is_due_and_a_first_connect_is_no_return(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A target not up at start: the failure once as a warning, each retry when it is
    really due (a request brings a long backoff forward), then "reachable", and
    "reachable again" only for a target that was reached before."""
    caplog.set_level(logging.INFO, logger="tcp_multiplexer")

    def messages(needle: str) -> list[logging.LogRecord]:
        return [record for record in caplog.records if needle in record.getMessage()]

    async with (
        asyncio.timeout(20),
        TargetServer(TargetConfig(protocol=ProtocolName.MODBUS)) as target,
    ):
        await target.go_down()
        where = f"{LOOPBACK}:{target.port}"
        settings = mux_config(target.port, protocol=ProtocolName.MODBUS, reconnect_backoff=0.05)
        async with running_multiplexer(settings):
            await eventually(
                lambda: bool(
                    messages("retrying on the next request (at most every 0.05s), else in")
                ),
                message="a retry past the first backoff step",
            )
            failures = messages(f"cannot connect to target {where}")
            assert [record.levelno for record in failures[:1]] == [logging.WARNING]
            assert all(record.levelno == logging.INFO for record in failures[1:])
            assert "; retrying in 0.0" in failures[0].getMessage()
            await target.come_up()
            await eventually(
                lambda: bool(messages(f"target {where} is reachable")), message="reachable"
            )
            assert not messages("reachable again"), "never reached before"
            await target.go_down()
            await eventually(lambda: len(messages("cannot connect")) > len(failures))
            await target.come_up()
            await eventually(
                lambda: bool(messages(f"target {where} is reachable again")),
                message="reachable again",
            )
