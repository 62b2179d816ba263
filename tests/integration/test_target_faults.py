"""A target that is down, restarts, hangs or answers late never kills the multiplexer.

Modbus clients get the gateway exception with their own ids (0x0A unreachable, 0x0B no
answer) and keep their connection; echo clients, which have no gateway answer, get
their connection closed. A late answer never reaches anyone: a FIFO connection that
timed out is retired, and with Modbus ids the late answer is dropped.
"""

from __future__ import annotations

import asyncio
from typing import Final

import pytest

from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets.faults import Fault
from tcp_multiplexer.targets.server import TargetConfig, TargetServer
from tests.helpers import (
    eventually,
    mux_config,
    open_client,
    running_multiplexer,
    wait_for_target_connection,
)
from tests.integration.core_support import (
    GATEWAY_PATH_UNAVAILABLE,
    GATEWAY_TARGET_FAILED,
    Client,
    echo,
    exception_answer,
    open_clients,
    read_answer,
    read_request,
    read_until_closed,
    seed_for,
)
from tests.modbus.adu import read_adu
from tests.peers import refused_port

TEST_TIMEOUT: Final = 5.0
ANSWER_TIMEOUT: Final = 0.3
"""--timeout of the hang and late tests."""
CLOCK_SLACK: Final = 0.01
"""Timer granularity allowed below an expected duration."""


async def ask(client: Client, protocol: ProtocolName, tag: int) -> None:
    """One request through `client`; assert it gets the target's correct answer."""
    reader, writer = client
    if protocol is ProtocolName.MODBUS:
        writer.write(read_request(tag, 1, tag))
        assert await read_adu(reader) == read_answer(tag, 1, tag)
    else:
        payload = f"request {tag}\n".encode()
        assert await echo(client, payload) == payload


# ---------------------------------------------------------------------- target down


async def test_target_down_at_start_gets_0x0a_at_once_then_recovers_without_restart() -> None:
    loop = asyncio.get_running_loop()
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(TargetConfig(protocol=ProtocolName.MODBUS)) as target,
    ):
        await target.go_down()
        config = mux_config(
            target.port, protocol=ProtocolName.MODBUS, timeout=2.0, reconnect_backoff=0.05
        )
        async with running_multiplexer(config) as mux, open_client(mux.port) as (reader, writer):
            started = loop.time()
            writer.write(read_request(0x1234, 17, 100))
            assert await read_adu(reader) == exception_answer(0x1234, 17, GATEWAY_PATH_UNAVAILABLE)
            assert loop.time() - started < 0.5, "0x0A must not wait for --timeout (2 s)"
            assert target.stats.accepted == 0

            await target.come_up()
            await target.wait_for(lambda stats: stats.accepted == 1)
            await wait_for_target_connection(mux)
            writer.write(read_request(0x1235, 17, 100))
            assert await read_adu(reader) == read_answer(0x1235, 17, 100)
            assert mux.metrics.clients_total == 1  # the same client connection throughout


async def test_closed_target_port_gets_0x0a_with_the_clients_own_ids() -> None:
    loop = asyncio.get_running_loop()
    with refused_port() as port:
        config = mux_config(port, protocol=ProtocolName.MODBUS, timeout=2.0)
        async with (
            asyncio.timeout(TEST_TIMEOUT),
            running_multiplexer(config) as mux,
            open_client(mux.port) as (reader, writer),
        ):
            for tid, unit in ((0x0001, 1), (0xFFFE, 247), (0x8000, 0)):
                started = loop.time()
                writer.write(read_request(tid, unit, 7))
                assert await read_adu(reader) == exception_answer(
                    tid, unit, GATEWAY_PATH_UNAVAILABLE
                )
                assert loop.time() - started < 0.5, "0x0A must not wait for --timeout (2 s)"


async def test_closed_target_port_closes_an_echo_client_at_once() -> None:
    loop = asyncio.get_running_loop()
    with refused_port() as port:
        async with (
            asyncio.timeout(TEST_TIMEOUT),
            running_multiplexer(mux_config(port, timeout=2.0)) as mux,
            open_client(mux.port) as (reader, writer),
            open_client(mux.port) as bystander,
        ):
            started = loop.time()
            writer.write(b"nobody home\n")
            assert await read_until_closed(reader) == b""
            assert loop.time() - started < 0.5, "must not wait for --timeout (2 s)"
            assert not bystander[0].at_eof()
            assert mux.metrics.clients == 1


@pytest.mark.parametrize("protocol", [ProtocolName.ECHO, ProtocolName.MODBUS])
async def test_target_restart_mid_run_clients_keep_their_connections(
    protocol: ProtocolName,
) -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(TargetConfig(protocol=protocol)) as target,
        running_multiplexer(mux_config(target.port, protocol=protocol)) as mux,
        open_clients(mux.port, 3) as clients,
    ):
        for index, client in enumerate(clients):
            await ask(client, protocol, 10 + index)

        await target.go_down()
        await eventually(lambda: mux.pool.connections == 0, message="the link to be seen down")
        await target.come_up()
        await target.wait_for(lambda stats: stats.accepted == 2)
        await wait_for_target_connection(mux)

        for index, client in enumerate(clients):
            await ask(client, protocol, 20 + index)
        assert mux.metrics.clients == 3
        assert mux.metrics.clients_total == 3
        assert mux.metrics.reconnects == 1
        assert dict(mux.metrics.failures) == {}


async def test_clients_paused_by_a_full_queue_are_read_again_when_the_target_goes_down() -> None:
    """Queue full (slow target), then the target goes down: every request, also the
    next one of a client that was paused because the queue was full, gets 0x0A.
    """
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(TargetConfig(protocol=ProtocolName.MODBUS, delay=0.3)) as target,
        running_multiplexer(
            mux_config(target.port, protocol=ProtocolName.MODBUS, queue_size=2)
        ) as mux,
    ):
        await wait_for_target_connection(mux)
        async with open_clients(mux.port, 4) as clients:
            clients[0][1].write(read_request(1, 1, 1))
            await target.wait_for(lambda stats: stats.requests == 1)
            for tid, (_reader, writer) in enumerate(clients[1:], start=2):
                writer.write(read_request(tid, 1, tid))
            await eventually(lambda: mux.dispatcher.waiting == 3, message="3 queued requests")

            await target.go_down()
            # Sent and then cut off: 0x0B. Queued, then the reconnect failed: 0x0A.
            assert await read_adu(clients[0][0]) == exception_answer(1, 1, GATEWAY_TARGET_FAILED)
            for tid, (reader, _writer) in enumerate(clients[1:], start=2):
                assert await read_adu(reader) == exception_answer(tid, 1, GATEWAY_PATH_UNAVAILABLE)

            for _reader, writer in clients:
                writer.write(read_request(0x77, 1, 5))

            async def next_answer(reader: asyncio.StreamReader) -> bytes | None:
                try:
                    async with asyncio.timeout(1.0):
                        return await read_adu(reader)
                except TimeoutError:
                    return None

            answers = await asyncio.gather(*(next_answer(reader) for reader, _ in clients))
            expected = exception_answer(0x77, 1, GATEWAY_PATH_UNAVAILABLE)
            assert answers == [expected] * 4, "None = request never read: client still paused"


# ---------------------------------------------------------------------- hangs and timeouts


async def test_modbus_request_the_target_never_answers_gets_0x0b_after_the_timeout() -> None:
    loop = asyncio.get_running_loop()
    faults = ((Fault.NO_ANSWER, 0.5),)
    target_config = TargetConfig(
        protocol=ProtocolName.MODBUS,
        faults=faults,
        seed=seed_for(faults, [Fault.NO_ANSWER, None, None]),
    )
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(target_config) as target,
        running_multiplexer(
            mux_config(target.port, protocol=ProtocolName.MODBUS, timeout=ANSWER_TIMEOUT)
        ) as mux,
        open_client(mux.port) as (reader, writer),
    ):
        await wait_for_target_connection(mux)
        started = loop.time()
        writer.write(read_request(0x0A0A, 5, 300))
        assert await read_adu(reader) == exception_answer(0x0A0A, 5, GATEWAY_TARGET_FAILED)
        elapsed = loop.time() - started
        assert ANSWER_TIMEOUT - CLOCK_SLACK <= elapsed < ANSWER_TIMEOUT + 1.0

        # The same client connection, and the same target connection, serve on.
        writer.write(read_request(0x0A0B, 5, 301))
        assert await read_adu(reader) == read_answer(0x0A0B, 5, 301)
        writer.write(read_request(0x0A0C, 5, 302))
        assert await read_adu(reader) == read_answer(0x0A0C, 5, 302)
        assert target.stats.accepted == 1
        assert dict(mux.metrics.failures) == {"timeout": 1}


async def test_echo_client_is_closed_when_the_target_hangs() -> None:
    loop = asyncio.get_running_loop()
    target_config = TargetConfig(faults=((Fault.NO_ANSWER, 1.0),))
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(target_config) as target,
        running_multiplexer(mux_config(target.port, timeout=ANSWER_TIMEOUT)) as mux,
        open_client(mux.port) as (reader, writer),
    ):
        await wait_for_target_connection(mux)
        started = loop.time()
        writer.write(b"anyone there?\n")
        assert await read_until_closed(reader) == b""
        elapsed = loop.time() - started
        assert ANSWER_TIMEOUT - CLOCK_SLACK <= elapsed < ANSWER_TIMEOUT + 1.0
        assert dict(mux.metrics.failures) == {"timeout": 1}


async def test_an_echo_timeout_retires_the_target_connection() -> None:
    faults = ((Fault.NO_ANSWER, 0.5),)
    target_config = TargetConfig(faults=faults, seed=seed_for(faults, [Fault.NO_ANSWER, None]))
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(target_config) as target,
        running_multiplexer(mux_config(target.port, timeout=ANSWER_TIMEOUT)) as mux,
    ):
        await wait_for_target_connection(mux)
        async with open_client(mux.port) as (reader, writer):
            writer.write(b"lost\n")
            assert await read_until_closed(reader) == b""
        await target.wait_for(lambda stats: stats.accepted == 2 and stats.open_connections == 1)
        async with open_client(mux.port) as client:
            assert await echo(client, b"works again\n") == b"works again\n"
        assert target.stats.accepted == 2
        assert mux.metrics.reconnects == 1


# ---------------------------------------------------------------------- late answers


async def test_late_echo_answer_never_reaches_the_next_request() -> None:
    """FIFO: the timed-out connection is closed, so the late answer is never delivered."""
    faults = ((Fault.LATE, 0.5),)
    target_config = TargetConfig(
        faults=faults, seed=seed_for(faults, [Fault.LATE, None, None]), late_delay=0.6
    )
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(target_config) as target,
        running_multiplexer(mux_config(target.port, timeout=ANSWER_TIMEOUT)) as mux,
    ):
        await wait_for_target_connection(mux)
        async with open_client(mux.port) as first, open_client(mux.port) as second:
            first[1].write(b"first\n")
            assert await read_until_closed(first[0]) == b""
            # Sent at once: had the old connection been kept, "first" would answer it.
            assert await echo(second, b"second\n") == b"second\n"
            assert await echo(second, b"third\n") == b"third\n"
        assert target.stats.accepted == 2
        # The late answer was never even written: its connection was closed first.
        assert target.stats.answers == 2
        assert dict(mux.metrics.failures) == {"timeout": 1}


async def test_late_modbus_answer_is_dropped_and_the_next_request_gets_its_own() -> None:
    """Ids: the connection stays; the late answer (wire id of the timed-out request) is
    dropped, and the next request, queued behind it at the target, gets its own answer.
    """
    faults = ((Fault.LATE, 0.5),)
    target_config = TargetConfig(
        protocol=ProtocolName.MODBUS,
        faults=faults,
        seed=seed_for(faults, [Fault.LATE, None, None]),
        late_delay=0.45,
    )
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(target_config) as target,
        running_multiplexer(
            mux_config(target.port, protocol=ProtocolName.MODBUS, timeout=ANSWER_TIMEOUT)
        ) as mux,
        open_client(mux.port) as (reader, writer),
    ):
        await wait_for_target_connection(mux)
        writer.write(read_request(1, 1, 10))
        assert await read_adu(reader) == exception_answer(1, 1, GATEWAY_TARGET_FAILED)
        # Sent while the late answer is still due: both come back from the target together.
        writer.write(read_request(2, 1, 20))
        assert await read_adu(reader) == read_answer(2, 1, 20)
        assert mux.metrics.events["ids_dropped"] == 1
        writer.write(read_request(3, 1, 30))
        assert await read_adu(reader) == read_answer(3, 1, 30)
        assert target.stats.accepted == 1
        assert target.stats.answers == 3
        assert dict(mux.metrics.failures) == {"timeout": 1}


async def test_answer_timeout_is_kept_when_an_idle_limit_is_armed() -> None:
    """With --max-idle much longer than --timeout, the idle timer is armed when a request
    is sent; the request must still time out after --timeout, not at the idle limit."""
    loop = asyncio.get_running_loop()
    target_config = TargetConfig(protocol=ProtocolName.MODBUS, faults=((Fault.NO_ANSWER, 1.0),))
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(target_config) as target,
        running_multiplexer(
            mux_config(
                target.port, protocol=ProtocolName.MODBUS, timeout=ANSWER_TIMEOUT, max_idle=30.0
            )
        ) as mux,
        open_client(mux.port) as (reader, writer),
    ):
        await wait_for_target_connection(mux)
        started = loop.time()
        writer.write(read_request(0x0B0B, 3, 400))
        assert await read_adu(reader) == exception_answer(0x0B0B, 3, GATEWAY_TARGET_FAILED)
        assert loop.time() - started < ANSWER_TIMEOUT + 1.0
