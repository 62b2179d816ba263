"""Misbehaving and quiet clients: each loses (or keeps) only its own connection.

A client that vanishes, sends garbage or does not read its answers must not disturb
the target link or the other clients; a quiet client keeps its connection.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Final

import pytest

from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets.server import TargetConfig, TargetServer
from tests.framing.builders import mbap, mbap_header
from tests.helpers import (
    LOOPBACK,
    eventually,
    mux_config,
    open_client,
    running_multiplexer,
    wait_for_target_connection,
)
from tests.integration.core_support import (
    echo,
    read_answer,
    read_request,
    read_until_closed,
    reset_connection,
)
from tests.modbus.adu import read_adu

TEST_TIMEOUT: Final = 5.0
ECHO_LINE_LIMIT: Final = 64 * 1024


# ---------------------------------------------------------------------- vanishing clients


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_a_client_leaving_mid_request_leaves_the_target_link_alone(how: str) -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(TargetConfig(delay=0.1)) as target,
        running_multiplexer(mux_config(target.port)) as mux,
    ):
        await wait_for_target_connection(mux)
        async with open_client(mux.port) as (_reader, writer):
            writer.write(b"asked and gone\n")
            await target.wait_for(lambda stats: stats.requests == 1)
            if how == "reset":
                reset_connection(writer)
        await target.wait_for(lambda stats: stats.answers == 1)
        await eventually(lambda: mux.metrics.clients == 0, message="the client to be gone")
        async with open_client(mux.port) as other:
            assert await echo(other, b"still served\n") == b"still served\n"
        assert mux.metrics.reconnects == 0
        assert (target.stats.accepted, target.stats.requests) == (1, 2)
        assert dict(mux.metrics.failures) == {}


async def test_a_request_queued_for_a_client_that_vanished_is_never_sent() -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(TargetConfig(delay=0.1)) as target,
        running_multiplexer(mux_config(target.port)) as mux,
    ):
        await wait_for_target_connection(mux)
        async with open_client(mux.port) as busy, open_client(mux.port) as (_reader, writer):
            busy[1].write(b"in flight\n")
            await target.wait_for(lambda stats: stats.requests == 1)
            writer.write(b"queued, then abandoned\n")
            await eventually(lambda: mux.dispatcher.waiting == 1, message="a queued request")
            reset_connection(writer)
            await eventually(lambda: mux.metrics.clients == 1, message="the client to be gone")
            assert mux.dispatcher.waiting == 0
            assert await busy[0].readline() == b"in flight\n"
            assert await echo(busy, b"next\n") == b"next\n"
        assert target.stats.requests == 2  # "in flight" and "next"; never the abandoned one
        assert target.stats.accepted == 1
        assert mux.metrics.reconnects == 0


# ---------------------------------------------------------------------- garbage


@pytest.mark.parametrize(
    ("protocol", "garbage"),
    [
        pytest.param(
            ProtocolName.MODBUS,
            mbap(1, 1, b"\x03\x00\x00\x00\x01", protocol=1),
            id="modbus-protocol-id-1",
        ),
        pytest.param(ProtocolName.MODBUS, mbap_header(1, length=255), id="modbus-length-255"),
        pytest.param(ProtocolName.MODBUS, mbap_header(1, length=0xFFFF), id="modbus-length-65535"),
        pytest.param(ProtocolName.MODBUS, mbap_header(1, length=1), id="modbus-length-1"),
        pytest.param(ProtocolName.ECHO, b"x" * (ECHO_LINE_LIMIT + 1), id="echo-line-over-64k"),
    ],
)
async def test_a_garbage_client_is_disconnected_and_nobody_else_notices(
    protocol: ProtocolName, garbage: bytes
) -> None:
    def request(tag: int) -> bytes:
        if protocol is ProtocolName.MODBUS:
            return read_request(tag, 2, tag)
        return f"good {tag}\n".encode()

    def answer(tag: int) -> bytes:
        if protocol is ProtocolName.MODBUS:
            return read_answer(tag, 2, tag)
        return f"good {tag}\n".encode()

    async def read_one(reader: asyncio.StreamReader) -> bytes:
        if protocol is ProtocolName.MODBUS:
            return await read_adu(reader)
        return await reader.readline()

    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(TargetConfig(protocol=protocol, delay=0.05)) as target,
        running_multiplexer(mux_config(target.port, protocol=protocol)) as mux,
    ):
        await wait_for_target_connection(mux)
        async with open_client(mux.port) as good, open_client(mux.port) as bad:
            good[1].write(request(1))
            await target.wait_for(lambda stats: stats.requests == 1)
            bad[1].write(garbage)
            assert await read_until_closed(bad[0]) == b""
            assert await read_one(good[0]) == answer(1)
            good[1].write(request(2))
            assert await read_one(good[0]) == answer(2)
        assert (target.stats.accepted, target.stats.requests) == (1, 2)
        assert target.stats.framing_errors == 0
        assert mux.metrics.reconnects == 0


# ---------------------------------------------------------------------- quiet clients


async def test_a_quiet_client_keeps_its_connection_longer_than_the_timeout() -> None:
    timeout = 0.2
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(TargetConfig()) as target,
        running_multiplexer(mux_config(target.port, timeout=timeout)) as mux,
        open_client(mux.port) as client,
    ):
        assert await echo(client, b"before\n") == b"before\n"
        await asyncio.sleep(3 * timeout)  # idleness is the behaviour under test
        assert await echo(client, b"after a quiet spell\n") == b"after a quiet spell\n"
        assert mux.metrics.clients_total == 1


# ---------------------------------------------------------------------- back-pressure


SMALL_RECEIVE_BUFFER: Final = 16 * 1024
LINE_SIZE: Final = 32 * 1024
LINES: Final = 1024
"""32 MiB of requests: far more than the socket buffers and the multiplexer may hold."""


async def test_a_client_that_does_not_read_is_paused_and_loses_nothing() -> None:
    """It is no longer read from once its answers back up; others keep being served;
    when it reads again, every answer arrives, complete and in order.
    """
    lines = [b"%06d " % n + b"z" * (LINE_SIZE - 8) + b"\n" for n in range(LINES)]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A small receive buffer makes its answers back up soon. Its send buffer keeps the
    # default: a small one would throttle the writer itself and prove nothing.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RECEIVE_BUFFER)
    sock.setblocking(False)
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(TargetConfig()) as target,
        running_multiplexer(mux_config(target.port)) as mux,
    ):
        await wait_for_target_connection(mux)
        await asyncio.get_running_loop().sock_connect(sock, (LOOPBACK, mux.port))
        reader, writer = await asyncio.open_connection(sock=sock)

        async def write_all() -> None:
            for line in lines:
                writer.write(line)
                await writer.drain()

        writing = asyncio.create_task(write_all())
        try:
            # Quiet: everything read from the client is answered (into its buffers).
            await eventually(
                lambda: (
                    mux.metrics.requests > 0
                    and mux.dispatcher.unanswered == 0
                    and target.stats.in_progress == 0
                ),
                message="the non-reading client's requests to be answered",
            )
            taken = mux.metrics.requests
            assert not writing.done(), "the multiplexer read everything the client sent"
            async with open_client(mux.port) as other:
                for n in range(5):
                    payload = f"other {n}\n".encode()
                    assert await echo(other, payload) == payload
            # Not read from meanwhile: only the other client's 5 requests came in.
            assert mux.metrics.requests == taken + 5
            assert taken < LINES // 2

            for expected in lines:
                assert await reader.readexactly(LINE_SIZE) == expected
            await writing
        finally:
            writing.cancel()
            writer.close()
            await asyncio.gather(writing, writer.wait_closed(), return_exceptions=True)
        assert target.stats.requests == LINES + 5
        assert dict(mux.metrics.failures) == {}
