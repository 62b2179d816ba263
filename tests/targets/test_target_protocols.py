"""The echo, ISO-8583, MPU and HTTP example targets, over real sockets."""

from __future__ import annotations

import asyncio
import http.client

import h11
import iso8583
import pytest
from iso8583.specs import default_ascii

from tcp_multiplexer.errors import (
    FramingError,
    IncompleteMessage,
    MalformedMessage,
    MessageTooLarge,
)
from tcp_multiplexer.protocols.http.framing import HttpRequestFramer
from tcp_multiplexer.protocols.http.responder import (
    HTTP_MAX_BODY_SIZE,
    HTTP_MAX_HEAD_SIZE,
    HttpResponder,
    parse_request,
)
from tcp_multiplexer.protocols.iso8583.responder import response_message
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets import TargetConfig, TargetServer
from tests.helpers import open_client
from tests.targets.helpers import TEST_TIMEOUT, read_http_response


def _target(protocol: ProtocolName) -> TargetServer:
    return TargetServer(TargetConfig(protocol=protocol))


async def test_echo_answers_each_line_in_pieces_and_pipelined() -> None:
    async with asyncio.timeout(TEST_TIMEOUT), _target(ProtocolName.ECHO) as target:
        async with open_client(target.port) as (reader, writer):
            writer.write(b"hel")
            await target.wait_for(lambda stats: stats.accepted == 1)
            writer.write(b"lo\nsecond\nthird")
            assert await reader.readline() == b"hello\n"
            assert await reader.readline() == b"second\n"
            writer.write(b"\n")
            assert await reader.readline() == b"third\n"
        assert target.stats.requests == 3
        assert target.stats.answers == 3


async def test_echo_answers_pending_lines_after_client_eof() -> None:
    config = TargetConfig(protocol=ProtocolName.ECHO, delay=0.05)
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(config) as target:
        async with open_client(target.port) as (reader, writer):
            writer.write(b"a\nb\n")
            writer.write_eof()
            assert await reader.read() == b"a\nb\n"
        assert target.stats.answers == 2


async def test_echo_throughput_of_pipelined_lines() -> None:
    lines = [f"line {index}\n".encode() for index in range(5000)]
    async with asyncio.timeout(TEST_TIMEOUT), _target(ProtocolName.ECHO) as target:
        async with open_client(target.port) as (reader, writer):
            writer.write(b"".join(lines))
            received = await reader.readexactly(sum(map(len, lines)))
        assert received == b"".join(lines)
        assert target.stats.answers == len(lines)


def _iso_message(mti: str) -> bytes:
    document = {"t": mti, "2": "4111111111111111", "3": "000000", "11": "123456"}
    raw, _encoded = iso8583.encode(document, default_ascii)
    return len(raw).to_bytes(2, "big") + bytes(raw)


async def test_iso8583_answers_0200_with_0210() -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        _target(ProtocolName.ISO8583) as target,
        open_client(target.port) as (reader, writer),
    ):
        writer.write(_iso_message("0200") + _iso_message("0800"))
        answers = []
        for _ in range(2):
            prefix = await reader.readexactly(2)
            answers.append(await reader.readexactly(int.from_bytes(prefix, "big")))
    first, _ = iso8583.decode(bytearray(answers[0]), default_ascii)
    second, _ = iso8583.decode(bytearray(answers[1]), default_ascii)
    assert (first["t"], first["11"], first["2"]) == ("0210", "123456", "4111111111111111")
    assert second["t"] == "0810"


@pytest.mark.parametrize(
    ("request_message", "answer"),
    [
        pytest.param(b"\x00\x060200ab", b"\x00\x060210ab", id="mti"),
        pytest.param(b"\x00\x040190", b"\x00\x040100", id="wraps-9"),
        pytest.param(b"\x00\x04\x02\x00\x00\x00", b"\x00\x04\x02\x00\x00\x00", id="binary-echo"),
        pytest.param(b"\x00\x03020", b"\x00\x03020", id="short-echo"),
        pytest.param(b"\x00\x0402a0", b"\x00\x0402a0", id="not-digits-echo"),
    ],
)
def test_iso8583_response_message(request_message: bytes, answer: bytes) -> None:
    assert response_message(request_message) == answer


async def test_mpu_echoes_messages() -> None:
    messages = [b"0005hello", b"0000", b"0011hello world"]
    async with asyncio.timeout(TEST_TIMEOUT), _target(ProtocolName.MPU) as target:
        async with open_client(target.port) as (reader, writer):
            stream = b"".join(messages)
            writer.write(stream[:7])
            await target.wait_for(lambda stats: stats.accepted == 1)
            writer.write(stream[7:])
            assert await reader.readexactly(len(stream)) == stream
        assert target.stats.requests == 3


async def test_mpu_bad_prefix_closes() -> None:
    async with asyncio.timeout(TEST_TIMEOUT), _target(ProtocolName.MPU) as target:
        async with open_client(target.port) as (reader, writer):
            writer.write(b"00x5hello")
            assert await reader.read() == b""
        assert target.stats.framing_errors == 1


def _http_client_session(port: int) -> list[tuple[int, bytes, str | None]]:
    """Keep-alive GET, POST, HEAD and a closing GET with the stdlib client (a real peer)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    results: list[tuple[int, bytes, str | None]] = []
    try:
        for method, path, body, headers in (
            ("GET", "/first?x=1", None, {}),
            ("POST", "/submit", b"payload", {}),
            ("HEAD", "/head", None, {}),
            ("GET", "/last", None, {"Connection": "close"}),
        ):
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            results.append((response.status, response.read(), response.getheader("Connection")))
    finally:
        connection.close()
    return results


async def test_http_keep_alive_with_stdlib_client() -> None:
    async with asyncio.timeout(TEST_TIMEOUT), _target(ProtocolName.HTTP) as target:
        results = await asyncio.to_thread(_http_client_session, target.port)
        assert results == [
            (200, b"GET /first?x=1\n", None),
            (200, b"POST /submit\npayload", None),
            (200, b"", None),
            (200, b"GET /last\n", "close"),
        ]
        assert target.stats.accepted == 1
        await target.wait_for(lambda stats: stats.open_connections == 0)


async def test_http_with_h11_client_and_chunked_body() -> None:
    client = h11.Connection(h11.CLIENT)
    request = client.send(
        h11.Request(
            method="PUT",
            target="/chunked",
            headers=[("Host", "target"), ("Transfer-Encoding", "chunked")],
        )
    )
    request += client.send(h11.Data(data=b"abc")) + client.send(h11.Data(data=b"defgh"))
    request += client.send(h11.EndOfMessage())
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        _target(ProtocolName.HTTP) as target,
        open_client(target.port) as (reader, writer),
    ):
        writer.write(request)
        body = b""
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(await reader.read(4096))
            elif isinstance(event, h11.Response):
                assert event.status_code == 200
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
    assert body == b"PUT /chunked\nabcdefgh"


async def test_http_pipelined_requests_answered_in_order() -> None:
    requests = (
        b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\n"
        b"HEAD /2 HTTP/1.1\r\nHost: t\r\n\r\n"
        b"POST /3 HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi"
        b"GET /4 HTTP/1.0\r\n\r\n"
    )
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        _target(ProtocolName.HTTP) as target,
        open_client(target.port) as (reader, writer),
    ):
        writer.write(requests)
        first = await read_http_response(reader)
        second = await read_http_response(reader, head=True)
        third = await read_http_response(reader)
        fourth = await read_http_response(reader)
        assert await reader.read() == b""  # HTTP/1.0 without keep-alive closes
    assert first.endswith(b"Content-Length: 7\r\n\r\nGET /1\n")
    assert second.endswith(b"Content-Length: 8\r\n\r\n")
    assert third.endswith(b"\r\n\r\nPOST /3\nhi")
    assert b"Connection: close\r\n" in fourth
    assert fourth.endswith(b"GET /4\n")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(b"GARBAGE\r\n\r\n", b"400", id="request-line"),
        pytest.param(
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"400",
            id="cl-and-te",
        ),
        pytest.param(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", b"400", id="te-gzip"),
        pytest.param(
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"400",
            id="two-lengths",
        ),
        pytest.param(b"GET / HTTP/2.0\r\n\r\n", b"400", id="version"),
        pytest.param(b"GET / HTTP/1.1\r\n bad: fold\r\n\r\n", b"400", id="folding"),
        pytest.param(
            b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (HTTP_MAX_BODY_SIZE + 1),
            b"413",
            id="body-too-large",
        ),
        pytest.param(b"GET / HTTP/1.1\r\nX: " + b"a" * HTTP_MAX_HEAD_SIZE, b"413", id="head"),
    ],
)
async def test_http_rejects_bad_requests(request_bytes: bytes, status: bytes) -> None:
    async with asyncio.timeout(TEST_TIMEOUT), _target(ProtocolName.HTTP) as target:
        async with open_client(target.port) as (reader, writer):
            writer.write(request_bytes)
            reply = await reader.read()
        assert reply.startswith(b"HTTP/1.1 " + status)
        assert b"Connection: close\r\n" in reply
        assert target.stats.framing_errors == 1


_PIPELINE = (
    b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nwiki\r\n0\r\nT: v\r\n\r\n",
    b"PUT /c HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz",
)


@pytest.mark.parametrize("split", range(sum(map(len, _PIPELINE)) + 1))
def test_http_framer_any_split(split: int) -> None:
    stream = b"".join(_PIPELINE)
    framer = HttpRequestFramer()
    messages = framer.feed(stream[:split]) + framer.feed(stream[split:])
    assert messages == list(_PIPELINE)
    assert framer.buffered == 0
    assert framer.feed_eof() == []


def test_http_framer_byte_by_byte_and_poisoned_after_error() -> None:
    stream = b"".join(_PIPELINE)
    framer = HttpRequestFramer()
    messages = [
        message
        for index in range(len(stream))
        for message in framer.feed(stream[index : index + 1])
    ]
    assert messages == list(_PIPELINE)
    with pytest.raises(MalformedMessage):
        framer.feed(b"BAD\r\n\r\n")
    with pytest.raises(MalformedMessage):
        framer.feed(b"GET / HTTP/1.1\r\n\r\n")


@pytest.mark.parametrize(
    ("data", "error"),
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost", IncompleteMessage, id="partial-head"),
        pytest.param(
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", IncompleteMessage, id="body"
        ),
    ],
)
def test_http_framer_eof_inside_request(data: bytes, error: type[FramingError]) -> None:
    framer = HttpRequestFramer()
    assert framer.feed(data) == []
    with pytest.raises(error):
        framer.feed_eof()


@pytest.mark.parametrize(
    "chunked",
    [
        pytest.param(b"zz\r\n", id="size-not-hex"),
        pytest.param(b"3\r\nabcX\r\n", id="no-crlf-after-data"),
    ],
)
def test_http_bad_chunks(chunked: bytes) -> None:
    with pytest.raises(MalformedMessage):
        parse_request(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)


def test_http_chunked_body_limit() -> None:
    with pytest.raises(MessageTooLarge):
        parse_request(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n"
            % (HTTP_MAX_BODY_SIZE + 1)
        )


def test_http_head_answer_has_length_of_get_but_no_body() -> None:
    answer = HttpResponder().answer(b"HEAD /x HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n")
    assert answer.close
    assert answer.data.endswith(b"Content-Length: 8\r\nConnection: close\r\n\r\n")


def test_http_10_keep_alive() -> None:
    answer = HttpResponder().answer(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert not answer.close
    assert b"Connection: keep-alive\r\n" in answer.data
