"""The observability listener with real peers: /metrics read by prometheus-client's own
parser against the traffic sent, /healthz following the target, the capture's pcap read
back with dpkt, bad requests, and the health and capture commands."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import struct
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import dpkt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tcp_multiplexer import __version__
from tcp_multiplexer.app import App
from tcp_multiplexer.options import Address
from tcp_multiplexer.protocols.modbus.options import ModbusOptions
from tcp_multiplexer.protocols.modbus.polls import parse_poll
from tcp_multiplexer.protocols.modbus.routes import parse_route
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets.server import TargetConfig, TargetServer
from tests.helpers import LOOPBACK, eventually, mux_config, open_client, run_cli, running_app
from tests.integration.core_support import read_answer, read_request
from tests.modbus.adu import exchange, read_adu, write_register

TEST_TIMEOUT: Final = 20.0
SAMPLES = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def fetch(url: str) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback http
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


async def get(app: App, path: str) -> tuple[int, bytes, dict[str, str]]:
    assert app.observability is not None
    return await asyncio.to_thread(fetch, f"http://{LOOPBACK}:{app.observability.port}{path}")


async def scrape(app: App) -> SAMPLES:
    """Every sample of /metrics, parsed by prometheus-client, by name and labels."""
    status, body, headers = await get(app, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    samples: SAMPLES = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: SAMPLES, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@contextlib.asynccontextmanager
async def observed_modbus(**options: object) -> AsyncIterator[tuple[TargetServer, App]]:
    async with TargetServer(TargetConfig(protocol=ProtocolName.MODBUS)) as target:
        config = mux_config(
            target.port,
            protocol=ProtocolName.MODBUS,
            metrics_listen=Address(LOOPBACK, 0),
            **options,
        )
        async with running_app(config) as app:
            yield target, app


async def test_metrics_count_the_traffic_sent() -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        observed_modbus(metrics_per_client=True) as (
            target,
            app,
        ),
    ):
        bridge = app.bridges["test"]
        reads = [read_request(tid, 1, 10 * tid) for tid in range(1, 8)]
        answers = await exchange(bridge.port, reads)
        assert answers == [read_answer(tid, 1, 10 * tid) for tid in range(1, 8)]
        await eventually(lambda: bridge.metrics.clients == 0, message="the client gone")
        samples = await scrape(app)
        who = {"bridge": "test", "target": f"{LOOPBACK}:{target.port}"}
        assert value(samples, "tcp_multiplexer_requests_total", **who) == 7
        assert value(samples, "tcp_multiplexer_answers_total", **who) == 7
        assert value(samples, "tcp_multiplexer_gateway_answers_total", reason="busy", **who) == 0
        assert value(samples, "tcp_multiplexer_target_up", **who) == 1
        assert value(samples, "tcp_multiplexer_target_connections", **who) == 1
        assert value(samples, "tcp_multiplexer_answer_latency_seconds_count", **who) == 7
        assert (
            value(samples, "tcp_multiplexer_answer_latency_seconds_bucket", le="+Inf", **who) == 7
        )
        assert 0 < value(samples, "tcp_multiplexer_answer_latency_seconds_sum", **who) < 7
        assert value(samples, "tcp_multiplexer_last_answer_age_seconds", **who) < 10
        assert value(samples, "tcp_multiplexer_clients", bridge="test") == 0
        assert value(samples, "tcp_multiplexer_clients_accepted_total", bridge="test") == 1
        assert (
            value(samples, "tcp_multiplexer_client_requests_total", bridge="test", client=LOOPBACK)
            == 7
        )
        assert (
            value(
                samples,
                "tcp_multiplexer_client_latency_seconds_count",
                bridge="test",
                client=LOOPBACK,
            )
            == 7
        )
        assert value(samples, "tcp_multiplexer_events_total", event="image_answers", **who) == 0
        assert value(samples, "tcp_multiplexer_info", version=__version__) == 1


async def test_metrics_count_gateway_answers_and_protocol_events() -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(TargetConfig(protocol=ProtocolName.MODBUS)) as target,
    ):
        config = mux_config(
            target.port,
            protocol=ProtocolName.MODBUS,
            metrics_listen=Address(LOOPBACK, 0),
            modbus=ModbusOptions(read_only="deny"),
        )
        async with running_app(config) as app:
            bridge = app.bridges["test"]
            refused = write_register(9, 1, 10, 5)
            await exchange(bridge.port, [refused, refused])
            await target.stop()
            await eventually(lambda: bridge.pool.unreachable, message="the target known down")
            (down,) = await exchange(bridge.port, [read_request(3, 1, 0)])
            assert down[7:9] == bytes((0x83, 0x0A))
            samples = await scrape(app)
            who = {"bridge": "test", "target": f"{LOOPBACK}:{target.port}"}
            assert (
                value(samples, "tcp_multiplexer_events_total", event="writes_refused", **who) == 2
            )
            assert value(samples, "tcp_multiplexer_local_answers_total", **who) == 2
            assert (
                value(samples, "tcp_multiplexer_gateway_answers_total", reason="unavailable", **who)
                == 1
            )
            assert (
                value(samples, "tcp_multiplexer_events_total", event="exceptions_sent_0x0a", **who)
                == 1
            )
            assert value(samples, "tcp_multiplexer_target_up", **who) == 0
            assert value(samples, "tcp_multiplexer_target_connect_failures_total", **who) >= 1


async def wait_for_status(app: App, path: str, status: int) -> dict[str, object]:
    """Ask `path` until it answers `status` (a state change the listener reports)."""
    found: list[tuple[int, bytes]] = []

    async def ask_once() -> bool:
        code, body, _headers = await get(app, path)
        found.append((code, body))
        return code == status

    async with asyncio.timeout(10.0):
        while not await ask_once():  # noqa: ASYNC110 - asking is the point
            await asyncio.sleep(0.05)
    document: dict[str, object] = json.loads(found[-1][1])
    return document


async def test_healthz_turns_503_when_the_target_goes_and_200_when_it_is_back() -> None:
    # A good answer within the timeout still counts as reachable: keep it short.
    async with asyncio.timeout(TEST_TIMEOUT), observed_modbus(timeout=0.5) as (target, app):
        bridge = app.bridges["test"]
        await eventually(lambda: bridge.pool.connections == 1, message="a target connection")
        await exchange(bridge.port, [read_request(1, 1, 1)])
        status, body, _headers = await get(app, "/healthz")
        assert status == 200
        assert json.loads(body)["bridges"]["test"]["state"] == "up"
        await target.go_down()
        document = await wait_for_status(app, "/healthz", 503)
        assert document["healthy"] is False
        part = document["bridges"]["test"]  # type: ignore[index]
        assert part["state"] == "down"
        assert part["last_error"]
        assert part["last_answer_age_seconds"] > 0.5
        await target.come_up()
        await wait_for_status(app, "/healthz", 200)
        status, body, _headers = await get(app, "/readyz")
        assert (status, json.loads(body)) == (200, {"ready": True})


async def test_a_routed_bridge_is_healthy_only_while_every_target_is() -> None:
    """Unit 2 routed to a second device: its outage makes the bridge unhealthy while
    the first target is up, and both are listed with their units."""
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(TargetConfig(protocol=ProtocolName.MODBUS)) as meter,
        observed_modbus(
            timeout=0.5,
            modbus=ModbusOptions(routes=(parse_route(f"2={LOOPBACK}:{meter.port}"),)),
        ) as (_inverter, app),
    ):
        bridge = app.bridges["test"]
        await exchange(bridge.port, [read_request(1, 1, 1), read_request(2, 2, 1)])
        await wait_for_status(app, "/healthz", 200)
        await meter.go_down()
        document = await wait_for_status(app, "/healthz", 503)
        part = document["bridges"]["test"]  # type: ignore[index]
        assert part["state"] == "down"
        rows = {row["units"]: row for row in part["targets"]}
        assert set(rows) == {"others", "2"}
        assert (rows["others"]["healthy"], rows["2"]["healthy"]) == (True, False)
        answers = await exchange(bridge.port, [read_request(3, 2, 1)])
        assert answers[0][7:] == bytes((0x83, 0x0A)), "the meter is known down"
        _status, body, _headers = await get(app, "/api/status")
        (card,) = json.loads(body)["bridges"]
        assert card["healthy"] is False
        assert card["gateway_answers"]["unavailable"] >= 1, "counted over every target"
        assert [row["units"] for row in card["targets"]] == ["others", "2"]
        await meter.come_up()
        await wait_for_status(app, "/healthz", 200)


def packets(pcap_bytes: bytes) -> list[dpkt.tcp.TCP]:
    reader = dpkt.pcap.Reader(io.BytesIO(pcap_bytes))
    assert reader.datalink() == dpkt.pcap.DLT_EN10MB
    segments = []
    for _timestamp, frame in reader:
        ip = dpkt.ethernet.Ethernet(frame).data
        segments.append(ip.data)
    return segments


async def test_the_capture_holds_each_transaction_and_its_pcap_reads_back() -> None:
    async with asyncio.timeout(TEST_TIMEOUT), observed_modbus(capture=50) as (target, app):
        bridge = app.bridges["test"]
        requests = [read_request(0x0100 + unit, unit, 5 * unit) for unit in (1, 2, 3)]
        async with open_client(bridge.port) as (reader, writer):
            client_port = writer.get_extra_info("sockname")[1]
            for request in requests:
                writer.write(request)
                await read_adu(reader)
        status, body, _headers = await get(app, "/capture")
        assert status == 200
        lines = [json.loads(line) for line in body.decode().splitlines()]
        assert [line["request"] for line in lines] == [request.hex() for request in requests]
        assert all(line["outcome"] == "answer" for line in lines)
        assert lines[0]["client"] == f"{LOOPBACK}:{client_port}"
        status, body, headers = await get(app, "/capture.pcap")
        assert status == 200
        assert headers["Content-Type"] == "application/vnd.tcpdump.pcap"
        segments = packets(body)
        data = [segment for segment in segments if segment.data]
        asked = [segment.data for segment in data if segment.dport == target.port]
        answered = [segment.data for segment in data if segment.sport == target.port]
        assert all(segment.sport == client_port for segment in data if segment.dport == target.port)
        assert [struct.unpack(">H", adu[:2])[0] for adu in asked] == [0x0101, 0x0102, 0x0103]
        assert [adu[6] for adu in asked] == [1, 2, 3], "unit ids"
        assert [adu[7] for adu in asked] == [0x03] * 3, "function codes"
        assert answered == [read_answer(0x0100 + unit, unit, 5 * unit) for unit in (1, 2, 3)]
        syn = segments[0]
        assert syn.flags & dpkt.tcp.TH_SYN, "each client connection opens with a handshake"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404, id="unknown-path"),
        pytest.param(b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 405, id="wrong-method"),
        pytest.param(
            b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, id="huge-headers"
        ),
        pytest.param(b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 413, id="a-body"),
        pytest.param(b"\x00\x01garbage\r\n\r\n", 400, id="not-http"),
        pytest.param(b"GET /capture HTTP/1.1\r\n\r\n", 404, id="capture-off"),
    ],
)
async def test_bad_requests_get_their_status_and_change_nothing(
    request_bytes: bytes, status: int
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT), observed_modbus() as (_target, app):
        assert app.observability is not None
        async with open_client(app.observability.port) as (reader, writer):
            writer.write(request_bytes)
            answer = await reader.read()
        assert answer.startswith(b"HTTP/1.1 %d " % status)
        bridge = app.bridges["test"]
        assert await exchange(bridge.port, [read_request(1, 1, 1)]) == [read_answer(1, 1, 1)]
        status_code, _body, _headers = await get(app, "/healthz")
        assert status_code in (200, 503)


async def test_the_health_and_capture_commands(tmp_path: Path) -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        observed_modbus(capture=10, timeout=0.5) as (
            target,
            app,
        ),
    ):
        bridge = app.bridges["test"]
        await eventually(lambda: bridge.pool.connections == 1, message="a target connection")
        await exchange(bridge.port, [read_request(7, 1, 70)])
        assert app.observability is not None
        base = f"http://{LOOPBACK}:{app.observability.port}"
        result = await asyncio.to_thread(run_cli, "health", f"{base}/healthz")
        assert (result.returncode, result.stdout.strip()) == (0, "healthy: test up")
        saved = tmp_path / "capture.pcap"
        result = await asyncio.to_thread(run_cli, "capture", base, "-o", str(saved))
        assert result.returncode == 0, result.stderr
        first = next(segment.data for segment in packets(saved.read_bytes()) if segment.data)
        assert first == read_request(7, 1, 70)
        await target.go_down()
        await wait_for_status(app, "/healthz", 503)
        result = await asyncio.to_thread(run_cli, "health", f"{base}/healthz")
        assert (result.returncode, result.stdout.strip()) == (1, "unhealthy: test down")
    result = await asyncio.to_thread(run_cli, "health", f"{base}/healthz")
    assert result.returncode == 1
    assert result.stdout.startswith("unhealthy: cannot ask")


async def test_the_commands_take_the_listeners_base_url_and_a_bridge(tmp_path: Path) -> None:
    """`capture` and `health` take the address the listener prints, with or without a
    page and a ``?bridge=``; a bridge that does not exist is a 404 naming the bridges,
    and a file that cannot be written one line and exit 1."""
    async with asyncio.timeout(TEST_TIMEOUT), observed_modbus(capture=10) as (_target, app):
        bridge = app.bridges["test"]
        await exchange(bridge.port, [read_request(9, 1, 90)])
        assert app.observability is not None
        base = f"http://{LOOPBACK}:{app.observability.port}"
        for url in (f"{base}/", base, f"{LOOPBACK}:{app.observability.port}"):
            result = await asyncio.to_thread(run_cli, "health", url)
            assert (result.returncode, result.stdout.strip()) == (0, "healthy: test up"), url
        for index, url in enumerate(
            (f"{base}/?bridge=test", f"{base}/capture.pcap?bridge=test", f"{base}?bridge=test")
        ):
            saved = tmp_path / f"one-{index}.pcap"
            result = await asyncio.to_thread(run_cli, "capture", url, "-o", str(saved))
            assert result.returncode == 0, (url, result.stderr)
            data = [segment.data for segment in packets(saved.read_bytes()) if segment.data]
            assert data[0] == read_request(9, 1, 90), url
        lines = tmp_path / "capture.jsonl"
        result = await asyncio.to_thread(
            run_cli, "capture", f"{base}/capture?bridge=test", "-o", str(lines)
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(lines.read_text().splitlines()[0])["bridge"] == "test"
        status, body, _headers = await get(app, "/capture.pcap?bridge=NOSUCH")
        assert status == 404
        assert b"'NOSUCH'" in body
        assert b"'test'" in body
        result = await asyncio.to_thread(
            run_cli, "capture", f"{base}/?bridge=NOSUCH", "-o", str(tmp_path / "no.pcap")
        )
        assert result.returncode == 1
        assert "404" in result.stderr
        assert "'test'" in result.stderr
        assert not (tmp_path / "no.pcap").exists()
        unwritable = tmp_path / "missing-folder" / "x.pcap"
        result = await asyncio.to_thread(run_cli, "capture", base, "-o", str(unwritable))
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1, result.stderr
        assert f"cannot write {unwritable}" in result.stderr
        assert "Traceback" not in result.stderr


async def test_the_chart_starts_when_a_bridge_starts_and_quiet_windows_have_no_latency() -> None:
    async with asyncio.timeout(TEST_TIMEOUT), observed_modbus() as (_target, app):
        app.history.sample(app.now())
        (quiet,) = app.history.points("test", app.now())
        assert quiet["requests_per_second"] == 0
        assert (quiet["p50_ms"], quiet["p99_ms"], quiet["mean_ms"]) == (None, None, None)
        async with open_client(app.bridges["test"].port) as (reader, writer):
            writer.write(read_request(1, 1, 2))
            assert await read_adu(reader) == read_answer(1, 1, 2)
        app.history.sample(app.now())
        busy = app.history.points("test", app.now())[-1]
        assert busy["requests_per_second"] > 0
        assert busy["p99_ms"] is not None
        assert busy["p99_ms"] > 0
        _status, _body, headers = await get(app, "/")
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"


async def test_the_register_image_and_its_polls_are_in_metrics_and_the_status_document() -> None:
    polls = tuple(parse_poll(text) for text in ("1:holding:0:10:100ms", "1:holding:12:8:100ms"))
    async with observed_modbus(modbus=ModbusOptions(cache_ttl=1.0, poll=polls)) as (target, app):
        (bridge,) = app.bridges.values()
        await eventually(lambda: bridge.metrics.events["poll_reads"] >= 2, message="two polls")
        assert await exchange(bridge.port, [read_request(1, 1, 3, 4)]) == [read_answer(1, 1, 3, 4)]
        samples = await scrape(app)
        who = {"bridge": "test", "target": f"{LOOPBACK}:{target.port}"}
        assert value(samples, "tcp_multiplexer_image_values", **who) == 20
        assert value(samples, "tcp_multiplexer_events_total", event="image_answers", **who) == 1
        assert value(samples, "tcp_multiplexer_events_total", event="merged_reads", **who) >= 2
        status, body, _headers = await get(app, "/api/status")
        assert status == 200
        (document,) = json.loads(body)["bridges"]
        (row,) = document["targets"]
        assert row["image_values"] == 20
        (poll,) = row["polls"]
        assert (poll["unit"], poll["table"], poll["address"], poll["count"]) == (
            1,
            "holding",
            0,
            20,
        )
        assert (poll["every"], poll["merged"], poll["last_error"]) == (0.1, 2, None)
        assert 0 <= poll["oldest_age"] < 1.0
        assert document["held"] == {"image_values": 20}
        assert "image_values=20" in bridge.metrics.snapshot().log_line()
