"""HttpCodec: gateway answers, and which messages the framers say end a connection."""

from __future__ import annotations

import h11
import pytest

from tcp_multiplexer.core.interfaces import Correlation, FailureReason
from tcp_multiplexer.protocols.http.codec import HttpCodec
from tcp_multiplexer.protocols.http.framing import HttpRequestFramer, HttpResponseFramer
from tcp_multiplexer.protocols.spec import ProtocolName
from tests.framing.builders import CHUNKED, chunked, http_request, http_response, ok, post

CODEC = HttpCodec()
CONTINUE = http_response(100, reason=b"Continue")


def test_identity() -> None:
    assert CODEC.name is ProtocolName.HTTP
    assert CODEC.correlation is Correlation.FIFO
    assert CODEC.transparent
    assert CODEC.framing_needs_requests, "a response to HEAD has no body"


def request_ends_connection(request: bytes) -> bool:
    """Whether the request framer says `request` ends the connection."""
    framer = HttpRequestFramer()
    assert framer.feed(request) == [request]
    return framer.closing_at == 0


def reply_ends_connection(reply: bytes) -> bool:
    """Whether the response framer says `reply`, answering a GET, ends the connection
    (a close-delimited reply is complete at EOF)."""
    framer = HttpResponseFramer()
    framer.expect_response(http_request())
    messages = framer.feed(reply)
    if not messages:
        messages = framer.feed_eof()
    assert messages == [reply]
    return framer.closing_at == 0


def test_framers_frame_http() -> None:
    request = post(b"payload")
    assert CODEC.request_framer().feed(request + request) == [request, request]
    responses = CODEC.response_framer()
    responses.expect_response(http_request(b"HEAD"))
    responses.expect_response(request)
    head_reply = http_response(200, (b"Content-Length: 7",))
    assert responses.feed(head_reply + CONTINUE + ok(b"created")) == [
        head_reply,
        CONTINUE + ok(b"created"),
    ]


def read_with_h11(reply: bytes, method: bytes) -> tuple[h11.Response, bytes]:
    """`reply` as an h11 client reads it after sending a `method` request."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("Host", "example.test")]))
    client.send(h11.EndOfMessage())
    client.receive_data(reply)
    response = client.next_event()
    assert isinstance(response, h11.Response)
    body = b""
    while not isinstance(event := client.next_event(), h11.EndOfMessage):
        assert isinstance(event, h11.Data)
        body += event.data
    assert client.their_state is h11.MUST_CLOSE
    assert client.trailing_data == (b"", False)
    return response, body


@pytest.mark.parametrize(
    ("reason", "status", "phrase"),
    [
        pytest.param(FailureReason.UNAVAILABLE, 502, b"Bad Gateway", id="unavailable"),
        pytest.param(FailureReason.BUSY, 503, b"Service Unavailable", id="busy"),
        pytest.param(FailureReason.TIMEOUT, 504, b"Gateway Timeout", id="timeout"),
        pytest.param(FailureReason.BROKEN, 502, b"Bad Gateway", id="broken"),
    ],
)
@pytest.mark.parametrize("method", [b"GET", b"POST", b"HEAD"])
def test_error_reply_is_a_complete_closing_response(
    reason: FailureReason, status: int, phrase: bytes, method: bytes
) -> None:
    request = http_request(method)
    reply = CODEC.gateway_answer(request, reason)
    response, body = read_with_h11(reply, method)
    assert response.status_code == status
    assert response.reason == phrase
    fields = dict(response.headers)
    assert fields[b"connection"] == b"close"
    assert fields[b"content-type"] == b"text/plain"
    if method == b"HEAD":
        assert body == b""
        assert reply.endswith(b"\r\n\r\n")
    else:
        assert body == phrase + b": " + reason.value.encode() + b"\n"
        assert fields[b"content-length"] == b"%d" % len(body)
    assert CODEC.gateway_answers_close
    framer = CODEC.response_framer()
    framer.expect_response(request)
    assert framer.feed(reply) == [reply]
    assert framer.closing_at == 0


@pytest.mark.parametrize(
    ("request_", "ends"),
    [
        pytest.param(http_request(), False, id="http/1.1 persists"),
        pytest.param(http_request(fields=(b"Connection: close",)), True, id="close"),
        pytest.param(http_request(fields=(b"connection:  CLOSE ",)), True, id="close, any case"),
        pytest.param(http_request(fields=(b"Connection: te, close",)), True, id="token list"),
        pytest.param(
            http_request(fields=(b"Connection: keep-alive", b"Connection: Close")),
            True,
            id="close in a second field",
        ),
        pytest.param(http_request(fields=(b"Connection: closed",)), False, id="tokens are exact"),
        pytest.param(http_request(fields=(b"X-Connection: close",)), False, id="other field"),
        pytest.param(http_request(version=b"HTTP/1.0", fields=()), True, id="http/1.0 closes"),
        pytest.param(
            http_request(version=b"HTTP/1.0", fields=(b"Connection: Keep-Alive",)),
            False,
            id="http/1.0 keep-alive",
        ),
        pytest.param(
            http_request(version=b"HTTP/1.0", fields=(b"Connection: keep-alive, close",)),
            True,
            id="http/1.0 keep-alive and close",
        ),
        pytest.param(post(b"Connection: close\r\n\r\n"), False, id="body is not header"),
    ],
)
def test_request_ends_connection(request_: bytes, ends: bool) -> None:
    assert request_ends_connection(request_) is ends


@pytest.mark.parametrize(
    ("reply", "ends"),
    [
        pytest.param(ok(b"x"), False, id="content-length"),
        pytest.param(http_response(200, (CHUNKED,), chunked(b"x")), False, id="chunked"),
        pytest.param(
            http_response(200, (b"Content-Length: 0", b"Connection: close")), True, id="c"
        ),
        pytest.param(
            http_response(200, (b"Content-Length: 0",), version=b"HTTP/1.0"), True, id="http/1.0"
        ),
        pytest.param(
            http_response(
                200, (b"Content-Length: 0", b"Connection: keep-alive"), version=b"HTTP/1.0"
            ),
            False,
            id="http/1.0 keep-alive",
        ),
        pytest.param(http_response(200, (), b"to eof"), True, id="close-delimited"),
        pytest.param(http_response(404, (), b"to eof"), True, id="close-delimited 404"),
        pytest.param(http_response(204), False, id="204 has no body"),
        pytest.param(http_response(304), False, id="304 has no body"),
        # Interim (1xx) responses joined before the final one are skipped, even when
        # they say otherwise (h11 ignores their Connection field too).
        pytest.param(CONTINUE + ok(b"x"), False, id="interim, then content-length"),
        pytest.param(CONTINUE + http_response(200, (), b"to eof"), True, id="interim, then eof"),
        pytest.param(
            http_response(100, (b"Connection: close",)) + ok(b"x"),
            False,
            id="interim says close",
        ),
        pytest.param(
            http_response(103, version=b"HTTP/1.0") + ok(b"x"), False, id="interim is http/1.0"
        ),
        pytest.param(
            http_response(103, (b"Link: </a>",), b"", reason=b"Early Hints")
            + http_response(102, reason=b"Processing")
            + http_response(200, (b"Content-Length: 0", b"Connection: close")),
            True,
            id="interim responses, then close",
        ),
        pytest.param(CONTINUE + http_response(204), False, id="interim, then 204"),
        pytest.param(
            http_response(100, eol=b"\n") + http_response(200, (), b"1\r\n", version=b"HTTP/1.0"),
            True,
            id="interim with bare LF, then http/1.0",
        ),
        # Without Content-Length, an answer to GET is close-delimited.
        pytest.param(http_response(200), True, id="reply without length"),
        pytest.param(http_response(304, version=b"HTTP/1.0"), True, id="http/1.0 304"),
        pytest.param(
            http_response(304, (b"Connection: keep-alive",), version=b"HTTP/1.0"),
            False,
            id="http/1.0 304 keep-alive",
        ),
        pytest.param(
            http_response(200, (b"X-Note: content-length: 5",), b"eof"),
            True,
            id="field value naming content-length",
        ),
    ],
)
def test_reply_ends_connection(reply: bytes, ends: bool) -> None:
    assert reply_ends_connection(reply) is ends


def test_a_head_reply_without_length_keeps_the_connection() -> None:
    """The framer knows the request was HEAD: no body, and no reason to close."""
    framer = HttpResponseFramer()
    framer.expect_response(http_request(b"HEAD"))
    assert framer.feed(http_response(200)) == [http_response(200)]
    assert framer.closing_at == -1


def test_connection_checks_need_a_complete_header_block() -> None:
    requests = HttpRequestFramer()
    assert requests.feed(b"GET / HTTP/1.1\r\nConnection: close\r\n") == []
    assert requests.closing_at == -1
    responses = HttpResponseFramer()
    responses.expect_response(http_request())
    assert responses.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\n") == []
    assert responses.closing_at == -1


def test_a_reply_needs_a_final_response() -> None:
    responses = HttpResponseFramer()
    responses.expect_response(http_request())
    assert responses.feed(http_response(100, (b"Connection: close",))) == []
    assert responses.closing_at == -1


def test_the_first_closing_message_of_a_feed_is_named() -> None:
    requests = HttpRequestFramer()
    first, closing = http_request(), http_request(fields=(b"Connection: close",))
    assert requests.feed(first + closing + first) == [first, closing, first]
    assert requests.closing_at == 1
    assert requests.feed(first) == [first]
    assert requests.closing_at == -1, "each feed says it anew"


def test_no_request_ids_and_replies_pass_unchanged() -> None:
    request = http_request()
    with pytest.raises(NotImplementedError, match="not by id"):
        CODEC.answer_id(request)
    assert CODEC.encode(request, 1) == request
    assert CODEC.decode(request, ok(b"x")) == ok(b"x")
