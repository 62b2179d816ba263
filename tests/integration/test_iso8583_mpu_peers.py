"""ISO-8583 (pyiso8583 messages) and MPU through the multiplexer to asyncio targets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from tcp_multiplexer.protocols.spec import ProtocolName
from tests.helpers import eventually, mux_config, open_client, running_multiplexer
from tests.peers import (
    Iso8583Target,
    MpuEchoTarget,
    StreamTarget,
    iso_decode,
    iso_request,
    mpu_frame,
    mpu_reply,
    refused_port,
)

TEST_TIMEOUT = 8.0


@pytest.fixture
async def iso_target() -> AsyncIterator[StreamTarget]:
    async with Iso8583Target().running() as target:
        yield target


@pytest.fixture
async def mpu_target() -> AsyncIterator[StreamTarget]:
    async with MpuEchoTarget().running() as target:
        yield target


async def read_iso(reader: asyncio.StreamReader) -> bytes:
    prefix = await reader.readexactly(2)
    return prefix + await reader.readexactly(int.from_bytes(prefix, "big"))


async def read_mpu(reader: asyncio.StreamReader) -> bytes:
    prefix = await reader.readexactly(4)
    return prefix + await reader.readexactly(int(prefix))


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the peer sends until it closes (or resets) the connection."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := await reader.read(4096):
            received += chunk
    return received


def assert_iso_approval(framed: bytes, stan: str) -> None:
    answer = iso_decode(framed)
    assert answer["t"] == "0210"
    assert answer["11"] == stan
    assert answer["39"] == "00"


# ---------------------------------------------------------------------------- ISO-8583


async def test_iso8583_concurrent_clients_get_their_own_stan(iso_target: StreamTarget) -> None:
    clients, per_client = 20, 5

    async def terminal(index: int) -> list[str]:
        stans: list[str] = []
        async with open_client(mux.port) as (reader, writer):
            for number in range(per_client):
                stan = f"{index * 100 + number:06d}"
                writer.write(iso_request(stan, terminal=f"TERM{index:04d}"))
                answer = iso_decode(await read_iso(reader))
                assert answer["t"] == "0210"
                assert answer["39"] == "00"
                assert answer["41"] == f"TERM{index:04d}"
                stans.append(answer["11"])
        return stans

    async with (
        asyncio.timeout(TEST_TIMEOUT),
        running_multiplexer(mux_config(iso_target.port, protocol=ProtocolName.ISO8583)) as mux,
    ):
        results = await asyncio.gather(*(terminal(index) for index in range(clients)))

    for index, stans in enumerate(results):
        assert stans == [f"{index * 100 + number:06d}" for number in range(per_client)]
    assert iso_target.connections == 1
    assert iso_target.messages == clients * per_client


async def test_iso8583_message_in_one_byte_writes(iso_target: StreamTarget) -> None:
    message = iso_request("424242")
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        running_multiplexer(mux_config(iso_target.port, protocol=ProtocolName.ISO8583)) as mux,
        open_client(mux.port) as (reader, writer),
    ):
        for index in range(len(message)):
            writer.write(message[index : index + 1])
            await writer.drain()
        assert_iso_approval(await read_iso(reader), "424242")
        # The connection is still good for a whole message afterwards.
        writer.write(iso_request("424243"))
        assert_iso_approval(await read_iso(reader), "424243")
    assert iso_target.messages == 2


async def test_iso8583_two_messages_in_one_write(iso_target: StreamTarget) -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        running_multiplexer(mux_config(iso_target.port, protocol=ProtocolName.ISO8583)) as mux,
        open_client(mux.port) as (reader, writer),
    ):
        writer.write(iso_request("000001") + iso_request("000002"))
        assert_iso_approval(await read_iso(reader), "000001")
        assert_iso_approval(await read_iso(reader), "000002")
        # The second message's first half glued to the first message.
        third, fourth = iso_request("000003"), iso_request("000004")
        writer.write(third + fourth[:5])
        assert_iso_approval(await read_iso(reader), "000003")
        writer.write(fourth[5:])
        assert_iso_approval(await read_iso(reader), "000004")
    assert iso_target.messages == 4


async def test_iso8583_target_down_closes_the_client() -> None:
    """ISO-8583 has no gateway answer: the client's connection is closed instead, quickly."""
    loop = asyncio.get_running_loop()
    with refused_port() as port:
        async with (
            asyncio.timeout(TEST_TIMEOUT),
            running_multiplexer(
                mux_config(port, protocol=ProtocolName.ISO8583, timeout=5.0)
            ) as mux,
            open_client(mux.port) as (reader, writer),
        ):
            started = loop.time()
            writer.write(iso_request("000777"))
            assert await read_until_closed(reader) == b""
            assert loop.time() - started < 1.5


# ---------------------------------------------------------------------------- MPU


async def test_mpu_partial_writes(mpu_target: StreamTarget) -> None:
    body = b"PAYMENT-0001|amount=1500|currency=840"
    message = mpu_frame(body)
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        running_multiplexer(mux_config(mpu_target.port, protocol=ProtocolName.MPU)) as mux,
        open_client(mux.port) as (reader, writer),
    ):
        # Prefix split inside the digits, then the body in uneven pieces.
        for piece in (message[:2], message[2:3], message[3:9], message[9:10], message[10:]):
            writer.write(piece)
            await writer.drain()
        assert await read_mpu(reader) == mpu_reply(body)
        for index in range(len(message)):
            writer.write(message[index : index + 1])
            await writer.drain()
        assert await read_mpu(reader) == mpu_reply(body)
    assert mpu_target.messages == 2


async def test_mpu_several_messages_in_one_write(mpu_target: StreamTarget) -> None:
    bodies = [b"first", b"", b"third message"]
    # The target answers "ack:" + body, so this is the longest body whose answer still
    # fits in 4 digits of length.
    largest = b"y" * (9999 - len(b"ack:"))
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        running_multiplexer(mux_config(mpu_target.port, protocol=ProtocolName.MPU)) as mux,
        open_client(mux.port) as (reader, writer),
    ):
        writer.write(b"".join(mpu_frame(body) for body in bodies))
        assert [await read_mpu(reader) for _ in bodies] == [mpu_reply(body) for body in bodies]
        writer.write(mpu_frame(largest) + mpu_frame(b"after"))
        assert await read_mpu(reader) == mpu_reply(largest)
        assert await read_mpu(reader) == mpu_reply(b"after")
    assert mpu_target.messages == 5


async def test_mpu_concurrent_clients(mpu_target: StreamTarget) -> None:
    clients, per_client = 15, 6

    async def client(index: int) -> list[bytes]:
        replies: list[bytes] = []
        async with open_client(mux.port) as (reader, writer):
            for number in range(per_client):
                writer.write(mpu_frame(b"client %d message %d" % (index, number)))
                replies.append(await read_mpu(reader))
        return replies

    async with (
        asyncio.timeout(TEST_TIMEOUT),
        running_multiplexer(mux_config(mpu_target.port, protocol=ProtocolName.MPU)) as mux,
    ):
        results = await asyncio.gather(*(client(index) for index in range(clients)))
    for index, replies in enumerate(results):
        assert replies == [
            mpu_reply(b"client %d message %d" % (index, number)) for number in range(per_client)
        ]
    assert mpu_target.connections == 1


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"12a4hello", id="letter-in-prefix"),
        pytest.param(b" 005hello", id="space-in-prefix"),
        pytest.param(b"-005hello", id="sign-in-prefix"),
    ],
)
async def test_mpu_non_digit_prefix_disconnects_only_that_client(
    mpu_target: StreamTarget, garbage: bytes
) -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        running_multiplexer(mux_config(mpu_target.port, protocol=ProtocolName.MPU)) as mux,
        open_client(mux.port) as (good_reader, good_writer),
    ):
        good_writer.write(mpu_frame(b"before"))
        assert await read_mpu(good_reader) == mpu_reply(b"before")

        async with open_client(mux.port) as (bad_reader, bad_writer):
            bad_writer.write(garbage)
            assert await read_until_closed(bad_reader) == b""
        await eventually(lambda: mux.metrics.clients == 1, message="the bad client to be gone")

        good_writer.write(mpu_frame(b"after"))
        assert await read_mpu(good_reader) == mpu_reply(b"after")
        # A new client is served too: nothing about the target connection was touched.
        async with open_client(mux.port) as (reader, writer):
            writer.write(mpu_frame(b"newcomer"))
            assert await read_mpu(reader) == mpu_reply(b"newcomer")

    assert mpu_target.messages == 3
    assert mpu_target.connections == 1
