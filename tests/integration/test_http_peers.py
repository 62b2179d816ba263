"""HTTP through the multiplexer: http.server as the target, requests and curl as clients.

The target runs in a background thread as HTTP/1.1 (keep-alive, Content-Length) or as
HTTP/1.0 (close-delimited bodies: it closes after every response, so the multiplexer
reconnects for each request). `requests` runs in worker threads, curl as a subprocess.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest
import requests

from tcp_multiplexer.protocols.spec import ProtocolName
from tests.helpers import LOOPBACK, mux_config, open_client, running_multiplexer
from tests.peers import PeerHTTPServer, SilentTarget, http_body, http_server, refused_port

TEST_TIMEOUT = 8.0
CURL = shutil.which("curl")
CURL_OPTIONS = ("--silent", "--show-error", "--noproxy", "*", "--max-time", "5")
"""Per-URL curl options (`--next` resets them)."""

needs_curl = pytest.mark.skipif(CURL is None, reason="the curl binary is not installed")


@pytest.fixture
def http11() -> Iterator[PeerHTTPServer]:
    with http_server("HTTP/1.1") as server:
        yield server


@pytest.fixture
def http10() -> Iterator[PeerHTTPServer]:
    with http_server("HTTP/1.0") as server:
        yield server


def url(port: int, path: str) -> str:
    return f"http://{LOOPBACK}:{port}{path}"


async def curl(*segments: Sequence[str]) -> bytes:
    """Run curl with one segment of arguments per URL (joined by `--next`); its stdout.

    Every segment gets `CURL_OPTIONS`; curl keeps its connection across segments when
    it can.
    """
    assert CURL is not None
    args: list[str] = []
    for index, segment in enumerate(segments):
        if index:
            args.append("--next")
        args.extend((*CURL_OPTIONS, *segment))
    process = await asyncio.create_subprocess_exec(
        CURL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, f"curl {args} failed ({process.returncode}): {stderr!r}"
    return stdout


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    connection: str | None
    content_length: str | None


def requests_calls(port: int, calls: Sequence[tuple[str, str, bytes | None]]) -> list[Reply]:
    """Make `calls` (method, path, body) in order on one `requests` session (keep-alive)."""
    with requests.Session() as session:
        session.trust_env = False  # no proxies from the environment
        replies = []
        for method, path, data in calls:
            with session.request(method, url(port, path), data=data, timeout=5) as response:
                replies.append(
                    Reply(
                        response.status_code,
                        response.content,
                        response.headers.get("Connection"),
                        response.headers.get("Content-Length"),
                    )
                )
        return replies


def split_response(raw: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """(status line, header fields by lower-case name, body) of one raw response."""
    head, _blank, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    fields = {}
    for line in lines:
        name, _colon, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    return status_line, fields, body


# ---------------------------------------------------------------------------- HTTP/1.1


async def test_requests_keep_alive_session_uses_one_client_and_one_target_connection(
    http11: PeerHTTPServer,
) -> None:
    calls: list[tuple[str, str, bytes | None]] = [
        ("GET", "/one", None),
        ("POST", "/form", b"a=1&b=2"),
        ("GET", "/two?x=y", None),
        ("HEAD", "/three", None),
        ("GET", "/four", None),
    ]
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        running_multiplexer(mux_config(http11.port, protocol=ProtocolName.HTTP)) as mux,
    ):
        replies = await asyncio.to_thread(requests_calls, mux.port, calls)
        assert mux.metrics.clients_total == 1

    assert [reply.status for reply in replies] == [200] * len(calls)
    assert [reply.body for reply in replies] == [
        http_body("GET", "/one"),
        http_body("POST", "/form", b"a=1&b=2"),
        http_body("GET", "/two?x=y"),
        b"",
        http_body("GET", "/four"),
    ]
    assert replies[3].content_length == str(len(http_body("HEAD", "/three")))
    assert http11.connections == 1
    assert http11.requests == [(method, path) for method, path, _body in calls]
    assert http11.errors == []


@needs_curl
async def test_curl_get_head_post(http11: PeerHTTPServer) -> None:
    big = bytes(range(256)) * 400  # 100 KiB each way
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        running_multiplexer(mux_config(http11.port, protocol=ProtocolName.HTTP)) as mux,
    ):
        port = mux.port
        get = await curl(["--write-out", "%{http_code}\n", url(port, "/hello")])
        assert get == http_body("GET", "/hello") + b"200\n"

        head = await curl(
            [
                "--head",
                "--output",
                "/dev/null",
                "--write-out",
                "%{http_code} %header{content-length}\n",
                url(port, "/head"),
            ]
        )
        assert head == b"200 %d\n" % len(http_body("HEAD", "/head"))

        post = await curl(
            [
                "--data-binary",
                "name=value&other=1",
                "--write-out",
                "%{http_code}\n",
                url(port, "/submit"),
            ]
        )
        assert post == http_body("POST", "/submit", b"name=value&other=1") + b"200\n"

        big_post = await asyncio.to_thread(requests_calls, port, [("POST", "/big", big)])
        assert big_post == [
            Reply(
                200, http_body("POST", "/big", big), None, str(len(http_body("POST", "/big", big)))
            )
        ]
    assert http11.requests == [
        ("GET", "/hello"),
        ("HEAD", "/head"),
        ("POST", "/submit"),
        ("POST", "/big"),
    ]
    assert http11.connections == 1


@needs_curl
async def test_curl_sequential_requests_on_one_keep_alive_connection(
    http11: PeerHTTPServer,
) -> None:
    write_out = ["--write-out", "%{http_code} %{num_connects}\n"]
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        running_multiplexer(mux_config(http11.port, protocol=ProtocolName.HTTP)) as mux,
    ):
        output = await curl(
            [*write_out, url(mux.port, "/first"), url(mux.port, "/second")],
            ["--head", "--output", "/dev/null", *write_out, url(mux.port, "/third")],
            [*write_out, url(mux.port, "/fourth")],
        )
        assert mux.metrics.clients_total == 1
    # num_connects 0: curl reused the connection it opened for the first URL.
    assert output == (
        http_body("GET", "/first")
        + b"200 1\n"
        + http_body("GET", "/second")
        + b"200 0\n"
        + b"200 0\n"
        + http_body("GET", "/fourth")
        + b"200 0\n"
    )
    assert http11.connections == 1


@needs_curl
async def test_concurrent_clients_get_their_own_bodies(http11: PeerHTTPServer) -> None:
    curl_clients, requests_clients = 8, 4
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        running_multiplexer(mux_config(http11.port, protocol=ProtocolName.HTTP)) as mux,
    ):
        port = mux.port
        curl_runs = [
            curl(
                ["--write-out", "%{http_code}\n", url(port, f"/curl/{index}/a")],
                ["--write-out", "%{http_code}\n", url(port, f"/curl/{index}/b")],
            )
            for index in range(curl_clients)
        ]
        requests_runs = [
            asyncio.to_thread(
                requests_calls,
                port,
                [("GET", f"/requests/{index}/{n}", None) for n in range(5)]
                + [("POST", f"/requests/{index}/post", b"client=%d" % index)],
            )
            for index in range(requests_clients)
        ]
        results = await asyncio.gather(*curl_runs, *requests_runs)

    for index, output in enumerate(results[:curl_clients]):
        assert output == (
            http_body("GET", f"/curl/{index}/a")
            + b"200\n"
            + http_body("GET", f"/curl/{index}/b")
            + b"200\n"
        )
    for index, replies in enumerate(results[curl_clients:]):
        assert isinstance(replies, list)
        assert [(reply.status, reply.body) for reply in replies] == [
            (200, http_body("GET", f"/requests/{index}/{n}")) for n in range(5)
        ] + [(200, http_body("POST", f"/requests/{index}/post", b"client=%d" % index))]
    assert http11.connections == 1
    assert len(http11.requests) == 2 * curl_clients + 6 * requests_clients


@needs_curl
async def test_post_with_expect_100_continue(http11: PeerHTTPServer) -> None:
    """curl sends `Expect: 100-continue`: the multiplexer answers 100 Continue at once
    (it forwards only whole requests), then http.server sends its own 100 and the 200.

    The interim 100 must not be taken as the answer: the 200 has to reach curl, and the
    connection must stay usable for the next request.
    """
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        running_multiplexer(mux_config(http11.port, protocol=ProtocolName.HTTP)) as mux,
    ):
        output = await curl(
            [
                "--header",
                "Expect: 100-continue",
                # curl would wait 10 s for 100 Continue but may take 3 s in all: the
                # multiplexer must send it itself, as it forwards only whole requests.
                "--expect100-timeout",
                "10",
                "--max-time",
                "3",
                "--data-binary",
                "continued",
                "--write-out",
                "%{http_code}\n",
                url(mux.port, "/expect"),
            ],
            ["--write-out", "%{http_code}\n", url(mux.port, "/after")],
        )
    assert output == (
        http_body("POST", "/expect", b"continued")
        + b"200\n"
        + http_body("GET", "/after")
        + b"200\n"
    )
    assert http11.requests == [("POST", "/expect"), ("GET", "/after")]


# ---------------------------------------------------------------------------- HTTP/1.0


@needs_curl
async def test_http10_close_delimited_answers_reconnect_each_time(
    http10: PeerHTTPServer,
) -> None:
    write_out = ["--write-out", "%{http_code} %{num_connects}\n"]
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        running_multiplexer(mux_config(http10.port, protocol=ProtocolName.HTTP)) as mux,
    ):
        output = await curl(
            [*write_out, url(mux.port, "/a"), url(mux.port, "/b")],
            ["--data-binary", "posted", *write_out, url(mux.port, "/c")],
        )
        head = await curl(
            [
                "--head",
                "--output",
                "/dev/null",
                "--write-out",
                "%{http_code}\n",
                url(mux.port, "/d"),
            ]
        )
    # The answer ends the connection (HTTP/1.0, no keep-alive): curl connects anew.
    assert output == (
        http_body("GET", "/a")
        + b"200 1\n"
        + http_body("GET", "/b")
        + b"200 1\n"
        + http_body("POST", "/c", b"posted")
        + b"200 1\n"
    )
    assert head == b"200\n"
    assert http10.requests == [("GET", "/a"), ("GET", "/b"), ("POST", "/c"), ("HEAD", "/d")]
    # One connection per answer, plus perhaps the next one opened ahead of demand.
    assert 4 <= http10.connections <= 5


async def test_http10_many_sequential_requests_stay_fast(http10: PeerHTTPServer) -> None:
    """A target that closes after every answer is normal HTTP/1.0, not a failing target.

    Each request needs a fresh target connection; opening it must not wait for a
    reconnect backoff that grows with every (perfectly healthy) close.
    """
    count = 7  # with a backoff doubling from 0.05 s, the 7th waits >= 0.8 s
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        running_multiplexer(mux_config(http10.port, protocol=ProtocolName.HTTP)) as mux,
    ):
        for index in range(count):
            started = loop.time()
            replies = await asyncio.to_thread(
                requests_calls, mux.port, [("GET", f"/{index}", None)]
            )
            latencies.append(loop.time() - started)
            assert replies == [Reply(200, http_body("GET", f"/{index}"), None, None)]
    assert count <= http10.connections <= count + 1
    assert max(latencies) < 0.5, [f"{latency:.3f}s" for latency in latencies]


# ---------------------------------------------------------------------------- gateway answers


async def test_target_down_answers_502_with_connection_close() -> None:
    with refused_port() as port:
        async with (
            asyncio.timeout(TEST_TIMEOUT),
            running_multiplexer(mux_config(port, protocol=ProtocolName.HTTP)) as mux,
        ):
            replies = await asyncio.to_thread(requests_calls, mux.port, [("GET", "/down", None)])
            assert len(replies) == 1
            assert replies[0].status == 502
            assert replies[0].connection == "close"
            assert replies[0].content_length == str(len(replies[0].body))

            # HEAD: the same head, no body; the multiplexer closes the connection after it.
            async with open_client(mux.port) as (reader, writer):
                writer.write(b"HEAD /down HTTP/1.1\r\nHost: example.test\r\n\r\n")
                raw = await reader.read()
            status_line, fields, body = split_response(raw)
            assert status_line == b"HTTP/1.1 502 Bad Gateway"
            assert fields[b"connection"] == b"close"
            assert fields[b"content-length"] == replies[0].content_length.encode()
            assert body == b""


@needs_curl
async def test_target_down_curl_sees_502() -> None:
    with refused_port() as port:
        async with (
            asyncio.timeout(TEST_TIMEOUT),
            running_multiplexer(mux_config(port, protocol=ProtocolName.HTTP)) as mux,
        ):
            output = await curl(
                [
                    "--output",
                    "/dev/null",
                    "--write-out",
                    "%{http_code} %header{connection}\n",
                    url(mux.port, "/"),
                ]
            )
    assert output == b"502 close\n"


async def test_silent_target_answers_504_after_the_timeout() -> None:
    loop = asyncio.get_running_loop()
    async with (
        SilentTarget().running() as silent,
        asyncio.timeout(TEST_TIMEOUT),
        running_multiplexer(
            mux_config(silent.port, protocol=ProtocolName.HTTP, timeout=0.5)
        ) as mux,
    ):
        started = loop.time()
        replies = await asyncio.to_thread(requests_calls, mux.port, [("GET", "/slow", None)])
        elapsed = loop.time() - started
        assert len(replies) == 1
        assert replies[0].status == 504
        assert replies[0].connection == "close"
        assert 0.5 <= elapsed < 2.0, elapsed
        assert silent.connections >= 1
        assert silent.messages >= 1  # the request did reach the target
