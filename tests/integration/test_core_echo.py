"""Core behaviour: framing of client streams, answer order, many concurrent clients.

Every answer must reach the client that asked, in that client's request order, however
the bytes were cut into segments and however many clients share the one target link.
"""

from __future__ import annotations

import asyncio
from typing import Final

import pytest

from tcp_multiplexer.config.model import DEFAULT_BUSY_POLL
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets.server import TargetConfig, TargetServer
from tests.helpers import (
    mux_config,
    open_client,
    running_multiplexer,
    wait_for_target_connection,
)
from tests.integration.core_support import (
    Client,
    open_clients,
    read_answer,
    read_request,
    yield_to_loop,
)
from tests.modbus.adu import read_adu

TEST_TIMEOUT: Final = 5.0
MANY_CLIENTS: Final = 200
PIPELINED: Final = 3
SEQUENTIAL: Final = 3


async def test_two_echo_messages_in_one_segment_are_both_answered_in_order() -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(TargetConfig()) as target,
        running_multiplexer(mux_config(target.port)) as mux,
        open_client(mux.port) as (reader, writer),
    ):
        writer.write(b"first\nsecond\n")
        assert await reader.readline() == b"first\n"
        assert await reader.readline() == b"second\n"
        assert target.stats.requests == 2


async def test_two_modbus_requests_in_one_segment_get_their_own_answers_in_order() -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(TargetConfig(protocol=ProtocolName.MODBUS)) as target,
        running_multiplexer(mux_config(target.port, protocol=ProtocolName.MODBUS)) as mux,
        open_client(mux.port) as (reader, writer),
    ):
        writer.write(read_request(0x0101, 3, 40) + read_request(0x0102, 4, 50, 2))
        assert await read_adu(reader) == read_answer(0x0101, 3, 40)
        assert await read_adu(reader) == read_answer(0x0102, 4, 50, 2)
        assert target.stats.requests == 2


async def test_an_echo_message_split_byte_by_byte_is_answered_whole() -> None:
    message = b"trickled one byte at a time\n"
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(TargetConfig()) as target,
        running_multiplexer(mux_config(target.port)) as mux,
        open_client(mux.port) as (reader, writer),
    ):
        for byte in message:
            writer.write(bytes((byte,)))
            await writer.drain()
            await yield_to_loop()
        assert await reader.readline() == message
        # A framer that cut at a segment boundary would have sent pieces.
        assert target.stats.requests == 1


async def test_a_modbus_request_split_byte_by_byte_is_answered_whole() -> None:
    request = read_request(0xBEEF, 9, 1000, 3)
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(TargetConfig(protocol=ProtocolName.MODBUS)) as target,
        running_multiplexer(mux_config(target.port, protocol=ProtocolName.MODBUS)) as mux,
        open_client(mux.port) as (reader, writer),
    ):
        for byte in request:
            writer.write(bytes((byte,)))
            await writer.drain()
            await yield_to_loop()
        assert await read_adu(reader) == read_answer(0xBEEF, 9, 1000, 3)
        assert target.stats.requests == 1


@pytest.mark.parametrize("busy_poll", [DEFAULT_BUSY_POLL, 0.0], ids=["polling", "no-polling"])
async def test_200_concurrent_clients_get_only_their_own_answers_over_one_connection(
    busy_poll: float,
) -> None:
    """Unique payloads, pipelined then one by one; the target takes ONE connection.

    With `--busy-poll 0` the event loop sleeps between events: answers must flow the same.
    """

    async def converse(index: int, client: Client) -> None:
        reader, writer = client
        batch = [
            f"client {index:03} pipelined {n} {'x' * index}\n".encode() for n in range(PIPELINED)
        ]
        writer.write(b"".join(batch))
        assert [await reader.readline() for _ in batch] == batch
        for n in range(SEQUENTIAL):
            payload = f"client {index:03} sequential {n} {'y' * (MANY_CLIENTS - index)}\n"
            writer.write(payload.encode())
            assert await reader.readline() == payload.encode()

    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(TargetConfig(max_connections=1)) as target,
        running_multiplexer(mux_config(target.port, busy_poll=busy_poll)) as mux,
    ):
        await wait_for_target_connection(mux)
        async with open_clients(mux.port, MANY_CLIENTS) as clients:
            await asyncio.gather(*(converse(index, client) for index, client in enumerate(clients)))
        stats = target.stats
        assert (stats.accepted, stats.rejected, stats.max_open_connections) == (1, 0, 1)
        assert stats.requests == MANY_CLIENTS * (PIPELINED + SEQUENTIAL)
        assert mux.metrics.replies == MANY_CLIENTS * (PIPELINED + SEQUENTIAL)
        assert dict(mux.metrics.failures) == {}
