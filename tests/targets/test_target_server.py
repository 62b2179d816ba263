"""Connection-level behaviour of the example target and its test API."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets import OverLimit, TargetConfig, TargetServer
from tests.helpers import open_client
from tests.targets.helpers import HOST, TEST_TIMEOUT, read_to_end


async def test_port_is_bound_after_start_and_kept() -> None:
    target = TargetServer(TargetConfig())
    with pytest.raises(RuntimeError):
        _ = target.port
    async with asyncio.timeout(TEST_TIMEOUT):
        await target.start()
        try:
            assert target.port > 0
            assert str(target.address) == f"{HOST}:{target.port}"
            assert target.stats.listening
            with pytest.raises(RuntimeError):
                await target.start()
        finally:
            await target.stop()
        assert not target.is_listening
        await target.stop()  # idempotent


async def test_delay_serves_pipelined_requests_one_after_another() -> None:
    delay = 0.05
    config = TargetConfig(protocol=ProtocolName.ECHO, delay=delay)
    lines = [f"request {index}\n".encode() for index in range(5)]
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(config) as target:
        async with open_client(target.port) as (reader, writer):
            started = time.monotonic()
            writer.write(b"".join(lines))
            await target.wait_for(lambda stats: stats.requests == 5)
            assert target.stats.answers == 0
            received = [await reader.readline() for _ in lines]
            elapsed = time.monotonic() - started
        assert received == lines
        assert elapsed >= len(lines) * delay
        assert target.stats.max_pipelined == 5
        assert target.stats.max_concurrent == 5


async def test_max_concurrent_counts_requests_across_connections() -> None:
    config = TargetConfig(protocol=ProtocolName.ECHO, delay=0.2)
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(config) as target:
        async with contextlib.AsyncExitStack() as stack:
            streams = [await stack.enter_async_context(open_client(target.port)) for _ in range(4)]
            for index, (_reader, writer) in enumerate(streams):
                writer.write(f"{index}\n".encode())
            await target.wait_for(lambda stats: stats.in_progress == 4)
            answers = [await reader.readline() for reader, _writer in streams]
        assert answers == [f"{index}\n".encode() for index in range(4)]
        assert target.stats.max_concurrent == 4
        assert target.stats.max_pipelined == 1
        assert target.stats.max_open_connections == 4
        await target.wait_for(lambda stats: stats.open_connections == 0)
        assert target.stats.in_progress == 0


async def test_over_limit_close() -> None:
    config = TargetConfig(protocol=ProtocolName.ECHO, max_connections=1)
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(config) as target:
        async with open_client(target.port) as (reader, writer):
            writer.write(b"first\n")
            assert await reader.readline() == b"first\n"
            async with open_client(target.port) as (extra_reader, _extra_writer):
                assert await read_to_end(extra_reader) == (b"", False)
            assert (target.stats.accepted, target.stats.rejected) == (2, 1)
        await target.wait_for(lambda stats: stats.open_connections == 0)
        async with open_client(target.port) as (reader, writer):
            writer.write(b"again\n")
            assert await reader.readline() == b"again\n"
        assert target.stats.rejected == 1


async def test_over_limit_hang() -> None:
    config = TargetConfig(protocol=ProtocolName.ECHO, max_connections=1, over_limit=OverLimit.HANG)
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(config) as target:
        async with open_client(target.port) as (reader, writer):
            async with open_client(target.port) as (hung_reader, hung_writer):
                await target.wait_for(lambda stats: stats.hanging == 1)
                hung_writer.write(b"anyone?\n")
                writer.write(b"served\n")
                assert await reader.readline() == b"served\n"
                # The hung connection was written to before the served one and got nothing.
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.1):
                        await hung_reader.readline()
            await target.wait_for(lambda stats: stats.hanging == 0)
        assert (target.stats.rejected, target.stats.requests) == (1, 1)


async def test_stop_closes_hanging_connections() -> None:
    config = TargetConfig(max_connections=1, over_limit=OverLimit.HANG)
    async with asyncio.timeout(TEST_TIMEOUT):
        target = TargetServer(config)
        await target.start()
        async with open_client(target.port), open_client(target.port) as (hung_reader, _writer):
            await target.wait_for(lambda stats: stats.hanging == 1)
            await target.stop()
            assert (await read_to_end(hung_reader))[0] == b""
        assert target.stats.hanging == 0


async def test_go_down_and_come_up_on_the_same_port() -> None:
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(TargetConfig()) as target:
        port = target.port
        async with open_client(port) as (reader, writer):
            writer.write(b"before\n")
            assert await reader.readline() == b"before\n"
            await target.go_down()
            assert (await read_to_end(reader))[0] == b""
        assert not target.stats.listening
        assert target.stats.open_connections == 0
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(HOST, port)
        await target.come_up()
        assert target.port == port
        async with open_client(port) as (reader, writer):
            writer.write(b"after\n")
            assert await reader.readline() == b"after\n"
        assert target.stats.accepted == 2


async def test_drop_connections_keeps_listening() -> None:
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(TargetConfig()) as target:
        async with open_client(target.port) as (reader, _writer):
            await target.wait_for(lambda stats: stats.open_connections == 1)
            await target.drop_connections(reset=True)
            assert await read_to_end(reader) == (b"", True)
        async with open_client(target.port) as (reader, writer):
            writer.write(b"still here\n")
            assert await reader.readline() == b"still here\n"


async def test_accept_close_resets_every_connection() -> None:
    config = TargetConfig(accept_close=True)
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(config) as target:
        for _ in range(2):
            async with open_client(target.port) as (reader, _writer):
                assert await read_to_end(reader) == (b"", True)
        assert (target.stats.accepted, target.stats.rejected) == (2, 2)
        assert target.stats.open_connections == 0


async def test_close_after_closes_each_connection() -> None:
    config = TargetConfig(close_after=0.1)
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(config) as target:
        async with open_client(target.port) as (reader, writer):
            writer.write(b"quick\n")
            assert await reader.readline() == b"quick\n"
            assert await read_to_end(reader) == (b"", False)
        assert target.stats.closed_after == 1


async def test_outage_cycle_refuses_then_recovers() -> None:
    config = TargetConfig(outage_every=0.05, outage_for=0.5)
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(config) as target:
        port = target.port
        async with open_client(port) as (reader, _writer):
            await target.wait_for(lambda stats: stats.outages == 1 and not stats.listening)
            assert (await read_to_end(reader))[0] == b""
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(HOST, port)
        await target.wait_for(lambda stats: stats.listening)
        async with open_client(port) as (reader, writer):
            writer.write(b"back\n")
            assert await reader.readline() == b"back\n"


async def test_wait_for_times_out() -> None:
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(TargetConfig()) as target:
        with pytest.raises(TimeoutError):
            await target.wait_for(lambda stats: stats.requests > 0, timeout=0.05)


async def test_wait_for_passes_on_predicate_errors() -> None:
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(TargetConfig()) as target:

        def broken(stats: object) -> bool:
            if target.stats.accepted:
                raise ZeroDivisionError
            return False

        waiter = asyncio.create_task(target.wait_for(broken))
        async with open_client(target.port):
            with pytest.raises(ZeroDivisionError):
                await waiter


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"delay": -1.0}, id="negative-delay"),
        pytest.param({"max_connections": -1}, id="negative-limit"),
        pytest.param({"outage_every": 1.0}, id="outage-every-alone"),
        pytest.param({"outage_for": 1.0}, id="outage-for-alone"),
        pytest.param({"port": 70000}, id="port"),
        pytest.param({"late_delay": -0.1}, id="late-delay"),
    ],
)
def test_config_validation(options: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        TargetConfig(**options)  # type: ignore[arg-type]


async def test_client_that_does_not_read_is_paused_then_served_in_full() -> None:
    # 32 MiB of answers: more than loopback socket buffers hold, so the target's writes
    # back up, it stops reading, and resumes once the client reads.
    lines = [b"%07d" % index + b"x" * 1016 + b"\n" for index in range(32 * 1024)]
    async with (
        asyncio.timeout(TEST_TIMEOUT * 2),
        TargetServer(TargetConfig()) as target,
        open_client(target.port) as (reader, writer),
    ):
        writer.write(b"".join(lines))
        await target.wait_for(lambda stats: stats.read_pauses > 0)
        received = await reader.readexactly(sum(map(len, lines)))
    assert received == b"".join(lines)
    assert target.stats.answers == len(lines)
