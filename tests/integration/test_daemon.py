"""The daemon run from a config file: several bridges, reload without dropping clients,
SIGUSR1, and what the log says (levels alerting can trust, JSON lines)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets.server import TargetConfig, TargetServer
from tests.helpers import LOOPBACK, CliProcess, cli_process, eventually, open_client
from tests.integration.core_support import echo, read_answer, read_request
from tests.integration.daemon_support import (
    bridge,
    bridge_port,
    bridge_ports,
    line,
    log_mark,
    refused,
    write_config,
)
from tests.modbus.adu import read_adu

TEST_TIMEOUT: Final = 30.0


@contextlib.asynccontextmanager
async def echo_targets(count: int) -> AsyncIterator[list[TargetServer]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(TargetServer(TargetConfig())) for _ in range(count)]


async def exit_status(process: CliProcess) -> int:
    return await asyncio.to_thread(process.process.wait, 10.0)


async def test_several_bridges_serve_their_own_targets_and_name_themselves(
    tmp_path: Path,
) -> None:
    config = tmp_path / "site.toml"
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(TargetConfig()) as lines_target,
        TargetServer(TargetConfig(protocol=ProtocolName.MODBUS)) as device,
    ):
        write_config(
            config,
            [bridge("lines", lines_target.port), bridge("inverter", device.port, "modbus")],
        )
        with cli_process(["server", "--config", str(config), "-v"]) as process:
            ports = await bridge_ports(process, ["lines", "inverter"])
            async with open_client(ports["lines"]) as client:
                assert await echo(client, b"hello\n") == b"hello\n"
            async with open_client(ports["inverter"]) as (reader, writer):
                writer.write(read_request(0x0101, 3, 40))
                assert await read_adu(reader) == read_answer(0x0101, 3, 40)
            await line(process, r"\[lines\] client #1 \S+ connected")
            await line(process, r"\[inverter\] client #1 \S+ connected")
            await line(process, r"\[inverter\] new target connection")
            process.process.send_signal(signal.SIGTERM)
            assert await exit_status(process) == 0
            await line(process, r"\[lines\] stopped after ")
            await line(process, r"\[inverter\] stopped after ")


class Poller:
    """A client that keeps asking through one connection and counts what goes wrong."""

    def __init__(self, port: int, name: str) -> None:
        self.port = port
        self.name = name
        self.answers = 0
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Poller:
        reader, writer = await asyncio.open_connection(LOOPBACK, self.port)
        self._task = asyncio.create_task(self._run(reader, writer))
        return self

    async def _run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while not self._stop.is_set():
                message = b"%s %d\n" % (self.name.encode(), self.answers)
                writer.write(message)
                try:
                    async with asyncio.timeout(5.0):
                        answer = await reader.readline()
                except TimeoutError:
                    self.failures.append("no answer in 5 s")
                    return
                if answer != message:
                    self.failures.append(f"got {answer!r} for {message!r}")
                    return
                self.answers += 1
                await asyncio.sleep(0.01)
        finally:
            writer.close()

    async def wait_for(self, answers: int) -> None:
        await eventually(
            lambda: self.answers >= answers or bool(self.failures),
            message=f"{self.name}: {answers} answers",
        )

    async def __aexit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


async def test_reload_keeps_every_bridges_clients_and_changes_the_changed_in_place(
    tmp_path: Path,
) -> None:
    config = tmp_path / "site.toml"
    async with asyncio.timeout(TEST_TIMEOUT), echo_targets(4) as (kept, changed, gone, added):
        before = [
            bridge("kept", kept.port),
            bridge("changed", changed.port),
            bridge("gone", gone.port),
        ]
        write_config(config, before)
        with cli_process(["server", "--config", str(config)]) as process:
            ports = await bridge_ports(process, ["kept", "changed", "gone"])
            async with (
                Poller(ports["kept"], "a") as first,
                Poller(ports["kept"], "b") as second,
            ):
                await first.wait_for(5)
                await second.wait_for(5)
                accepted = kept.stats.accepted
                write_config(
                    config,
                    [
                        bridge("kept", kept.port),
                        bridge("changed", changed.port, timeout="2s"),
                        bridge("added", added.port),
                    ],
                )
                mark = log_mark(process)
                process.process.send_signal(signal.SIGHUP)
                await line(process, r"reloaded .*: 3 bridge\(s\)", after=mark)
                answers = first.answers
                await first.wait_for(answers + 20)
                await second.wait_for(answers + 20)
            assert first.failures == second.failures == []
            assert kept.stats.accepted == accepted, "the kept bridge's target link stayed"
            new_ports = await bridge_ports(process, ["added"], after=mark)
            for port in (new_ports["added"], ports["changed"]):
                async with open_client(port) as client:
                    assert await echo(client, b"after\n") == b"after\n"
            assert await refused(ports["gone"]), "a removed bridge stops listening"
            await line(process, r"\[gone\] removed by the reload; draining", after=mark)
            await line(process, r"\[changed\] reload changed timeout 5s -> 2s$", after=mark)
            process.process.send_signal(signal.SIGTERM)
            assert await exit_status(process) == 0


async def test_a_bad_reload_keeps_the_running_configuration(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    async with asyncio.timeout(TEST_TIMEOUT), echo_targets(1) as (target,):
        write_config(config, [bridge("lines", target.port)])
        with cli_process(["server", "--config", str(config)]) as process:
            port = await bridge_port(process, "lines")
            async with open_client(port) as client:
                assert await echo(client, b"one\n") == b"one\n"
                config.write_text(config.read_text() + 'delay = "soon"\n')
                mark = log_mark(process)
                process.process.send_signal(signal.SIGHUP)
                found = await line(process, r"ERROR reload failed", after=mark)
                assert (
                    f'keeping the running configuration: {config}: bridge "lines": delay: '
                    "invalid duration 'soon'" in found.string
                )
                assert await echo(client, b"two\n") == b"two\n"
            async with open_client(port) as client:
                assert await echo(client, b"three\n") == b"three\n"
            process.process.send_signal(signal.SIGTERM)
            assert await exit_status(process) == 0


async def test_a_port_taken_at_reload_disturbs_no_other_bridge(tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    taken = socket.socket()
    taken.bind((LOOPBACK, 0))
    taken.listen()
    try:
        async with asyncio.timeout(TEST_TIMEOUT), echo_targets(2) as (target, other):
            write_config(config, [bridge("lines", target.port)])
            with cli_process(["server", "--config", str(config)]) as process:
                port = await bridge_port(process, "lines")
                taken_port = taken.getsockname()[1]
                write_config(
                    config,
                    [
                        bridge("lines", target.port),
                        bridge("late", other.port, listen=f"{LOOPBACK}:{taken_port}"),
                    ],
                )
                mark = log_mark(process)
                process.process.send_signal(signal.SIGHUP)
                await line(process, r"ERROR reload: bridge 'late': .*not started", after=mark)
                await line(process, r"reloaded .*: 1 bridge\(s\)", after=mark)
                async with open_client(port) as client:
                    assert await echo(client, b"still\n") == b"still\n"
                process.process.send_signal(signal.SIGTERM)
                assert await exit_status(process) == 0
    finally:
        taken.close()


async def test_sigusr1_logs_every_bridges_metrics_line_and_stops_nothing(
    tmp_path: Path,
) -> None:
    config = tmp_path / "site.toml"
    async with asyncio.timeout(TEST_TIMEOUT), echo_targets(2) as (one, two):
        write_config(config, [bridge("one", one.port), bridge("two", two.port)])
        with cli_process(["server", "--config", str(config), "--log-level", "warning"]) as process:
            # At warning level nothing is logged: the targets see when it has started (a
            # signal before its handlers are installed would end it, as for any daemon).
            await one.wait_for(lambda stats: stats.accepted == 1, timeout=10.0)
            await two.wait_for(lambda stats: stats.accepted == 1, timeout=10.0)
            for _attempt in range(100):  # until both target links are up
                mark = log_mark(process)
                process.process.send_signal(signal.SIGUSR1)
                first = await line(process, r"\[one\] metrics: clients=0 \(total 0\)", after=mark)
                second = await line(process, r"\[two\] metrics: clients=0 \(total 0\)", after=mark)
                lines = first.string + second.string
                if lines.count("target_connections=1") == 2:
                    break
                await asyncio.sleep(0.05)
            assert lines.count("target_connections=1") == 2
            assert process.process.poll() is None, "SIGUSR1 stops nothing"
            assert "WARNING" not in process.output()
            assert " INFO " not in process.output()
            process.process.send_signal(signal.SIGTERM)
            assert await exit_status(process) == 0


def levels(output: str) -> set[str]:
    """The levels of the plain log lines in `output`."""
    return {line.split()[2] for line in output.splitlines() if len(line.split()) > 2}


async def test_a_clean_start_a_session_and_a_clean_stop_log_nothing_at_warning() -> None:
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(TargetConfig()) as target:
        for verbosity in ([], ["-v"]):
            args = ["server", "-t", f"{LOOPBACK}:{target.port}", "-l", f"{LOOPBACK}:0", *verbosity]
            with cli_process(args) as process:
                port = await asyncio.to_thread(process.listening_port)
                async with open_client(port) as client:
                    assert await echo(client, b"fine\n") == b"fine\n"
                process.process.send_signal(signal.SIGTERM)
                assert await exit_status(process) == 0
                await line(process, r"stopped after ")
            found = levels(process.output())
            assert found <= {"NOTICE", "INFO"}, process.output()
            assert "NOTICE" in found, "starting and stopping are shown by default"


async def test_json_lines_carry_time_level_logger_bridge_message_and_event_fields() -> None:
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(TargetConfig()) as target:
        args = [
            "server",
            "-t",
            f"{LOOPBACK}:{target.port}",
            "-l",
            f"{LOOPBACK}:0",
            "--name",
            "lines",
            "--log-format",
            "json",
            "-v",
        ]
        with cli_process(args) as process:
            port = await asyncio.to_thread(process.listening_port)
            async with open_client(port) as client:
                assert await echo(client, b"json\n") == b"json\n"
                sockname = client[1].get_extra_info("sockname")
            await line(process, r'"message": "client #1 \S+ disconnected"')
            await target.stop()
            await line(process, r'"level": "warning".*cannot connect to target')
            process.process.send_signal(signal.SIGTERM)
            assert await exit_status(process) == 0
        records = [json.loads(text) for text in process.output().splitlines() if text]
        assert all({"time", "level", "logger", "bridge", "message"} <= set(r) for r in records)
        connected = next(
            r for r in records if r["message"].endswith(f"connected (to {LOOPBACK}:{port})")
        )
        assert connected["bridge"] == "lines"
        assert connected["client"] == f"{LOOPBACK}:{sockname[1]}"
        assert connected["level"] == "info"
        down = next(r for r in records if "cannot connect to target" in r["message"])
        assert down["target"] == f"{LOOPBACK}:{target.port}"
        assert "refused" in down["reason"].lower()
        assert records[0]["time"].endswith("Z")
