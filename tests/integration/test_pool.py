"""Target connections and the wait queue: --max-connections, --queue-size, busy answers.

Parallelism is counted at the target (`max_concurrent`, `open_connections`), never
inferred from timings.
"""

from __future__ import annotations

import asyncio
from typing import Final

import pytest

from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets.server import OverLimit, TargetConfig, TargetServer
from tests.helpers import mux_config, running_multiplexer, wait_for_target_connection
from tests.integration.core_support import (
    SERVER_DEVICE_BUSY,
    Client,
    echo,
    exception_answer,
    open_clients,
    read_answer,
    read_request,
)
from tests.modbus.adu import read_adu

TEST_TIMEOUT: Final = 5.0


@pytest.mark.parametrize("over_limit", list(OverLimit), ids=str)
async def test_a_one_connection_target_serves_ten_clients(over_limit: OverLimit) -> None:
    """Like an inverter with ONE TCP slot: a second connection would be closed (or left
    hanging), so every answer proves the multiplexer kept to one connection.
    """
    target_config = TargetConfig(max_connections=1, over_limit=over_limit, delay=0.002)

    async def converse(index: int, client: Client) -> None:
        for n in range(5):
            payload = f"client {index} request {n}\n".encode()
            assert await echo(client, payload) == payload

    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(target_config) as target,
        running_multiplexer(mux_config(target.port)) as mux,
        open_clients(mux.port, 10) as clients,
    ):
        await asyncio.gather(*(converse(index, client) for index, client in enumerate(clients)))
        stats = target.stats
        assert (stats.accepted, stats.rejected, stats.hanging) == (1, 0, 0)
        assert stats.requests == 50
        assert dict(mux.metrics.failures) == {}


@pytest.mark.parametrize("max_connections", [1, 4])
async def test_max_connections_are_really_used_in_parallel(max_connections: int) -> None:
    """16 clients at once against a 50 ms target: N requests in progress at the target."""
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(TargetConfig(delay=0.05)) as target,
        running_multiplexer(mux_config(target.port, max_connections=max_connections)) as mux,
    ):
        await wait_for_target_connection(mux)
        async with open_clients(mux.port, 16) as clients:
            payloads = [f"client {index}\n".encode() for index in range(16)]
            for (_reader, writer), payload in zip(clients, payloads, strict=True):
                writer.write(payload)
            answers = await asyncio.gather(*(reader.readline() for reader, _writer in clients))
            assert answers == payloads
        stats = target.stats
        assert stats.max_concurrent == max_connections
        assert stats.open_connections == max_connections
        assert stats.accepted == max_connections
        assert mux.pool.connections == max_connections


async def test_a_burst_opens_the_connections_it_needs_at_once() -> None:
    """One connection up, three requests at once, a post-connect delay that keeps a new
    connection opening for a while: each request gets a connection of its own, instead
    of the third waiting for another's answer."""
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(TargetConfig(delay=0.6)) as target,
        running_multiplexer(mux_config(target.port, max_connections=3, delay=0.3)) as mux,
    ):
        await wait_for_target_connection(mux)
        async with open_clients(mux.port, 3) as clients:
            payloads = [f"burst {index}\n".encode() for index in range(3)]
            for (_reader, writer), payload in zip(clients[:2], payloads, strict=False):
                writer.write(payload)
            # The second connection is open and in its post-connect delay: the third
            # request arrives while it is still on its way.
            await target.wait_for(lambda stats: stats.accepted == 2)
            clients[2][1].write(payloads[2])
            answers = await asyncio.gather(*(reader.readline() for reader, _writer in clients))
            assert answers == payloads
        assert target.stats.max_concurrent == 3, "all three at the target together"
        assert target.stats.accepted == 3


async def test_a_full_queue_pushes_back_and_refuses_nothing() -> None:
    """queue_size=2, one slow connection, 12 clients pipelining 2 requests each."""
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(TargetConfig(delay=0.02)) as target,
        running_multiplexer(mux_config(target.port, queue_size=2)) as mux,
    ):
        await wait_for_target_connection(mux)
        async with open_clients(mux.port, 12) as clients:
            batches = [
                [f"client {index} request {n}\n".encode() for n in range(2)]
                for index in range(len(clients))
            ]
            for (_reader, writer), batch in zip(clients, batches, strict=True):
                writer.write(b"".join(batch))

            async def answers(client: Client) -> list[bytes]:
                reader, _writer = client
                return [await reader.readline(), await reader.readline()]

            assert await asyncio.gather(*(answers(client) for client in clients)) == batches
        assert target.stats.requests == 24
        assert mux.metrics.replies == 24
        assert dict(mux.metrics.failures) == {}


async def test_requests_that_wait_longer_than_the_timeout_get_0x06_and_are_never_sent() -> None:
    """timeout 0.3 s, 0.2 s per request, 6 requests at once on one connection.

    The first is sent at once (answered at 0.2 s); the second leaves the queue at 0.2 s,
    before its 0.3 s deadline (answered at 0.4 s); the other four are still waiting at
    0.3 s: busy, never sent. 0.1 s of margin on each side.
    """
    loop = asyncio.get_running_loop()
    timeout = 0.3
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(TargetConfig(protocol=ProtocolName.MODBUS, delay=0.2)) as target,
        running_multiplexer(
            mux_config(target.port, protocol=ProtocolName.MODBUS, timeout=timeout)
        ) as mux,
    ):
        await wait_for_target_connection(mux)
        async with open_clients(mux.port, 6) as clients:
            started = loop.time()
            # Distinct addresses: identical reads would be coalesced into one round trip.
            for index, (_reader, writer) in enumerate(clients):
                writer.write(read_request(0x100 + index, 1, index))

            async def outcome(index: int, client: Client) -> tuple[str, float]:
                answer = await read_adu(client[0])
                elapsed = loop.time() - started
                if answer == read_answer(0x100 + index, 1, index):
                    return "answered", elapsed
                assert answer == exception_answer(0x100 + index, 1, SERVER_DEVICE_BUSY)
                return "busy", elapsed

            outcomes = await asyncio.gather(
                *(outcome(index, client) for index, client in enumerate(clients))
            )
            kinds = [kind for kind, _elapsed in outcomes]
            assert sorted(kinds) == ["answered"] * 2 + ["busy"] * 4
            assert all(elapsed >= timeout - 0.01 for kind, elapsed in outcomes if kind == "busy")
            assert target.stats.requests == kinds.count("answered")
            assert dict(mux.metrics.failures) == {"busy": 4}

            # A busy answer leaves the client connected: its next request is served.
            busy_index = kinds.index("busy")
            reader, writer = clients[busy_index]
            writer.write(read_request(0x200, 1, 99))
            assert await read_adu(reader) == read_answer(0x200, 1, 99)
            assert target.stats.requests == 3


async def test_round_robin_serves_a_single_request_before_a_pipelined_backlog() -> None:
    """One client pipelines 20 requests, another then sends one: it is served within a
    couple of requests, long before the first client's 20th.
    """
    order: list[str] = []
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(TargetConfig(delay=0.01)) as target,
        running_multiplexer(mux_config(target.port)) as mux,
    ):
        await wait_for_target_connection(mux)
        async with open_clients(mux.port, 2) as (greedy, polite):
            batch = [f"greedy {n:02}\n".encode() for n in range(20)]
            greedy[1].write(b"".join(batch))
            await target.wait_for(lambda stats: stats.requests >= 1)

            async def read_greedy() -> None:
                for expected in batch:
                    assert await greedy[0].readline() == expected
                    order.append(expected.decode().strip())

            async def read_polite() -> None:
                assert await polite[0].readline() == b"polite\n"
                order.append("polite")

            polite[1].write(b"polite\n")
            await asyncio.gather(read_greedy(), read_polite())
        # Sent while greedy 00 is at the target: greedy 01 was already next in turn.
        assert order.index("polite") <= 3, order
        assert len(order) == 21
