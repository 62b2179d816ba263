"""The CLI as a subprocess: stop signals, graceful shutdown, and what -v and -d log.

The target runs in-process (TargetServer); the multiplexer is `python -m
tcp_multiplexer server ...`. Blocking waits on the subprocess run in a thread so the
target keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import re
import signal
from typing import Final

import pytest

from tcp_multiplexer.targets.server import TargetConfig, TargetServer
from tests.helpers import LOOPBACK, CliProcess, cli_process, open_client
from tests.integration.core_support import echo

TEST_TIMEOUT: Final = 10.0
EXIT_TIMEOUT: Final = 5.0


def server_args(target_port: int, *options: str) -> list[str]:
    return [
        "server",
        "-p",
        "echo",
        "-t",
        f"{LOOPBACK}:{target_port}",
        "-l",
        f"{LOOPBACK}:0",
        *options,
    ]


async def wait_for_line(process: CliProcess, pattern: str) -> re.Match[str]:
    return await asyncio.to_thread(process.wait_for_line, pattern, EXIT_TIMEOUT)


async def exit_status(process: CliProcess) -> int:
    """Wait (in a thread) for the process to end; its exit status."""
    return await asyncio.to_thread(process.process.wait, EXIT_TIMEOUT)


@pytest.mark.parametrize(
    "sig",
    [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP],
    ids=lambda sig: sig.name,
)
async def test_each_stop_signal_exits_0(sig: signal.Signals) -> None:
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(TargetConfig()) as target:
        with cli_process(server_args(target.port, "-v")) as process:
            port = await asyncio.to_thread(process.listening_port)
            # One round trip: the loop is serving, so the signal handlers are installed.
            async with open_client(port) as client:
                assert await echo(client, b"ready\n") == b"ready\n"
            process.process.send_signal(sig)
            assert await exit_status(process) == 0
            await wait_for_line(process, rf"received {sig.name}; stopping")
            await wait_for_line(process, r"stopped after ")


async def test_sigterm_lets_a_request_in_flight_finish_then_exits_0() -> None:
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(TargetConfig(delay=0.5)) as target:
        with cli_process(server_args(target.port, "-v")) as process:
            port = await asyncio.to_thread(process.listening_port)
            async with open_client(port) as (reader, writer):
                # Logged from the serving loop: the signal handlers are installed.
                await wait_for_line(process, r"client #1 \S+ connected")
                writer.write(b"hello\n")
                await target.wait_for(lambda stats: stats.requests == 1)
                process.process.send_signal(signal.SIGTERM)
                await wait_for_line(process, r"waiting up to .* for 1 request\(s\) in flight")
                # It no longer accepts new clients...
                with pytest.raises(ConnectionRefusedError):
                    await asyncio.open_connection(LOOPBACK, port)
                # ...but the request in flight gets its answer, then the client is closed.
                assert await reader.readline() == b"hello\n"
                assert await reader.read() == b""
            assert await exit_status(process) == 0
            assert target.stats.answers == 1


async def test_verbose_logs_clients_and_target_connections_but_no_hex() -> None:
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(TargetConfig()) as target:
        with cli_process(server_args(target.port, "-v")) as process:
            port = await asyncio.to_thread(process.listening_port)
            await wait_for_line(
                process,
                rf"new target connection: {re.escape(LOOPBACK)}:\d+ <-> target #1 "
                rf"{re.escape(LOOPBACK)}:{target.port}",
            )
            async with open_client(port) as client:
                client_port = client[1].get_extra_info("sockname")[1]
                assert await echo(client, b"hello\n") == b"hello\n"
            peer = rf"client #1 {re.escape(LOOPBACK)}:{client_port}"
            await wait_for_line(process, rf"{peer} connected \(to {re.escape(LOOPBACK)}:{port}\)")
            await wait_for_line(process, rf"{peer} disconnected")
            process.process.send_signal(signal.SIGTERM)
            assert await exit_status(process) == 0
            await wait_for_line(process, r"stopped after ")
            assert "68 65 6c 6c 6f" not in process.output()


async def test_debug_logs_every_message_in_hex() -> None:
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(TargetConfig()) as target:
        with cli_process(server_args(target.port, "-d")) as process:
            port = await asyncio.to_thread(process.listening_port)
            async with open_client(port) as client:
                assert await echo(client, b"hello\n") == b"hello\n"
            hello = "68 65 6c 6c 6f 0a"
            await wait_for_line(process, rf"client #1 \S+ -> {hello}$")
            await wait_for_line(process, rf"target #1 \S+ <- {hello}$")
            await wait_for_line(process, rf"target #1 \S+ -> {hello}$")
            await wait_for_line(process, rf"client #1 \S+ <- {hello}$")
            process.process.send_signal(signal.SIGTERM)
            assert await exit_status(process) == 0


async def test_verbose_logs_a_periodic_metrics_line() -> None:
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(TargetConfig()) as target:
        args = server_args(target.port, "-v", "--metrics-interval", "100ms")
        with cli_process(args) as process:
            port = await asyncio.to_thread(process.listening_port)
            async with open_client(port) as client:
                for index in range(3):
                    line = b"metric %d\n" % index
                    assert await echo(client, line) == line
                match = await wait_for_line(
                    process,
                    r"\[127\.0\.0\.1:\d+\] metrics: clients=1 \(total 1\) target_connections=1 "
                    r"requests=3 "
                    r"replies=3 failures=\[\] reconnects=0 "
                    r"latency mean=(\d+\.\d+)ms p99=(\d+\.\d+)ms",
                )
            assert float(match.group(2)) > 0
            process.process.send_signal(signal.SIGTERM)
            assert await exit_status(process) == 0


async def test_without_verbose_no_metrics_line() -> None:
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(TargetConfig()) as target:
        args = server_args(target.port, "--metrics-interval", "100ms")
        with cli_process(args) as process:
            port = await asyncio.to_thread(process.listening_port)
            async with open_client(port) as client:
                assert await echo(client, b"quiet\n") == b"quiet\n"
                # Three metrics intervals pass: the time is what is under test here.
                await asyncio.sleep(0.35)
            process.process.send_signal(signal.SIGTERM)
            assert await exit_status(process) == 0
            await wait_for_line(process, r"stopped after ")
            assert "metrics:" not in process.output()
