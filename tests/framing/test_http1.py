"""HttpRequestFramer and HttpResponseFramer: RFC 9112 message framing."""

from __future__ import annotations

from functools import partial

import pytest

from tcp_multiplexer.errors import (
    FramingError,
    IncompleteMessage,
    MalformedMessage,
    MessageTooLarge,
)
from tcp_multiplexer.protocols.http.framing import (
    HTTP_CONTINUE,
    HTTP_MAX_BODY_SIZE,
    HTTP_MAX_HEADER_SIZE,
    HttpRequestFramer,
    HttpResponseFramer,
)
from tests.framing.builders import (
    CHUNKED,
    chunk,
    chunked,
    content_length,
    http_head,
    http_request,
    http_response,
    last_chunk,
    ok,
    post,
)
from tests.framing.splitting import (
    MakeFramer,
    assert_frames,
    assert_poisoned,
    assert_rejected,
    cuttings,
)

SMALL_HEADER = 64
SMALL_BODY = 32
small_requests = partial(HttpRequestFramer, max_header_size=SMALL_HEADER, max_body_size=SMALL_BODY)
short_header_requests = partial(HttpRequestFramer, max_header_size=SMALL_HEADER)

CHUNKED_POST = http_request(b"POST", b"/", (CHUNKED,))
"""The header block of a chunked request; the body follows."""
CONTINUE = http_response(100, reason=b"Continue")
"""The commonest interim response (25 bytes)."""


def responses_to(
    *methods: bytes,
    max_body_size: int = HTTP_MAX_BODY_SIZE,
    max_header_size: int = HTTP_MAX_HEADER_SIZE,
) -> MakeFramer:
    """A factory of response framers told that requests with `methods` were sent."""

    def make() -> HttpResponseFramer:
        framer = HttpResponseFramer(max_body_size=max_body_size, max_header_size=max_header_size)
        for method in methods:
            framer.expect_response(http_request(method))
        return framer

    return make


def chunked_post(body: bytes) -> bytes:
    return CHUNKED_POST + body


# --------------------------------------------------------------------------- requests

REQUESTS = [
    pytest.param([http_request()], id="get"),
    pytest.param([http_request(fields=())], id="no fields at all"),
    pytest.param([http_request(version=b"HTTP/1.0", fields=())], id="http/1.0"),
    pytest.param([http_request(version=b"HTTP/1.9")], id="later minor version"),
    pytest.param([http_request(b"HEAD")], id="head"),
    pytest.param([http_request(b"OPTIONS", b"*")], id="asterisk-form target"),
    pytest.param([http_request(target=b"http://example.test:80/a?b=c&d=%20")], id="absolute"),
    pytest.param([http_request(b"get")], id="methods are case-sensitive tokens"),
    pytest.param([post(b"hello")], id="content-length"),
    pytest.param([post(b"")], id="content-length 0"),
    pytest.param([post(b"\r\n\r\n\n\n")], id="body of blank lines"),
    pytest.param([post(http_request())], id="body that looks like a request"),
    pytest.param(
        [http_request(b"PUT", fields=(b"Content-Length: 3", b"content-length: 3"), body=b"abc")],
        id="identical content-length repeated",
    ),
    pytest.param(
        [http_request(b"PUT", fields=(b"Content-Length: 3 ,3,\t3",), body=b"abc")],
        id="identical content-length list",
    ),
    pytest.param(
        [http_request(b"PUT", fields=(b"Content-Length:007",), body=b"1234567")],
        id="content-length with leading zeros",
    ),
    pytest.param([chunked_post(chunked(b"abc", b"\r\n", b"x" * 40))], id="chunked"),
    pytest.param([chunked_post(chunked())], id="chunked, no data"),
    pytest.param(
        [
            chunked_post(chunk(b"abc", b";name=value") + chunk(b"de", b' ; q="a;b"'))
            + last_chunk(extension=b";end")
        ],
        id="chunk extensions",
    ),
    pytest.param(
        [chunked_post(chunked(b"abc", trailers=(b"Checksum: 123", b"X-Note: a b")))],
        id="trailers",
    ),
    pytest.param(
        [chunked_post(b"000A\r\n" + b"x" * 10 + b"\r\n" + b"0\r\n\r\n")],
        id="upper-case hex with leading zeros",
    ),
    pytest.param([chunked_post(b"3 \r\nabc\r\n0\t\r\n\r\n")], id="whitespace after chunk size"),
    pytest.param([chunked_post(b"0\r\nX: 1\n\n")], id="trailers with bare LF"),
    pytest.param(
        [http_request(b"POST", fields=(b"Transfer-Encoding: \t CHUNKED ",), body=chunked(b"a"))],
        id="chunked in any case, with whitespace",
    ),
    pytest.param([http_request(eol=b"\n")], id="bare LF line ends"),
    pytest.param([b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\n"], id="mixed line ends"),
    pytest.param(
        [http_request(fields=(b"Host: x", b"X-Bytes: \x80\xff caf\xc3\xa9", b"Empty:", b"T:\tv"))],
        id="field values: obs-text, empty, tabs",
    ),
    pytest.param(
        [post(b"a"), http_request(), chunked_post(chunked(b"x")), http_request(b"DELETE")],
        id="pipelined",
    ),
]


@pytest.mark.parametrize("messages", REQUESTS)
def test_frames_requests(messages: list[bytes]) -> None:
    assert_frames(HttpRequestFramer, messages, then=http_request(b"GET", b"/next"))


def test_pipelined_requests_in_one_read() -> None:
    pipelined = [http_request(), post(b"body"), chunked_post(chunked(b"chunk")), http_request()]
    framer = HttpRequestFramer()
    assert framer.feed(b"".join(pipelined)) == pipelined
    assert framer.buffered == 0


def test_a_request_without_length_fields_has_no_body() -> None:
    framer = HttpRequestFramer()
    assert framer.feed(http_request(b"POST") + b"not a body") == [http_request(b"POST")]
    assert framer.buffered == len(b"not a body")


def test_partial_message_after_complete_ones_is_kept() -> None:
    framer = HttpRequestFramer()
    assert framer.feed(http_request() + post(b"12345")[:-2]) == [http_request()]
    assert framer.feed(b"45") == [post(b"12345")]


# -------------------------------------------------------------------------- responses

RESPONSES = [
    pytest.param([ok(b"hello")], [b"GET"], id="content-length"),
    pytest.param(
        [http_response(200, (CHUNKED,), chunked(b"ab", b"cd", trailers=(b"T: 1",)))],
        [b"GET"],
        id="chunked with trailers",
    ),
    pytest.param([http_response(404, (content_length(b"nope"),), b"nope")], [b"GET"], id="404"),
    pytest.param(
        [http_response(200, (content_length(b"hi"),), b"hi", version=b"HTTP/1.0")],
        [b"GET"],
        id="http/1.0 with content-length",
    ),
    pytest.param([http_response(204, (b"Content-Length: 5",))], [b"DELETE"], id="204"),
    pytest.param([http_response(304, (CHUNKED,))], [b"GET"], id="304"),
    pytest.param([http_response(200, (b"Content-Length: 1234",))], [b"HEAD"], id="head, length"),
    pytest.param([http_response(200, (CHUNKED,))], [b"HEAD"], id="head, chunked"),
    pytest.param([http_response(200)], [b"HEAD"], id="head, no framing fields"),
    pytest.param(
        [http_response(200, (b"Content-Length: 99999999999",))],
        [b"HEAD"],
        id="head, length over the body limit",
    ),
    # Interim (1xx) responses are joined to the final response: one message per request.
    pytest.param([CONTINUE + ok(b"created")], [b"POST"], id="100 continue joined to the final"),
    pytest.param(
        [
            http_response(103, (b"Link: </style.css>; rel=preload",), reason=b"Early Hints")
            + http_response(102, reason=b"Processing")
            + ok(b"")
        ],
        [b"GET"],
        id="several interim responses joined",
    ),
    pytest.param(
        [http_response(100, (b"Content-Length: 9",)) + http_response(200, (b"Content-Length: 3",))],
        [b"HEAD"],
        id="interim, then final to head",
    ),
    pytest.param(
        [http_response(100, (CHUNKED,)) + http_response(200, (CHUNKED,), chunked(b"ab"))],
        [b"POST"],
        id="interim with framing fields, then chunked",
    ),
    pytest.param(
        [http_response(102, reason=b"Processing") + http_response(204)],
        [b"DELETE"],
        id="interim, then 204",
    ),
    pytest.param(
        [http_response(100, eol=b"\n") + ok(b"x")], [b"POST"], id="interim with bare LF lines"
    ),
    pytest.param(
        [ok(b"1"), CONTINUE + ok(b"2"), http_response(103) + CONTINUE + http_response(304)],
        [b"GET", b"POST", b"GET"],
        id="pipelined, with interim responses",
    ),
    pytest.param(
        [
            ok(b"1"),
            http_response(204),
            http_response(200, (b"Content-Length: 3",)),
            http_response(200, (CHUNKED,), chunked(b"4")),
        ],
        [b"GET", b"GET", b"HEAD", b"GET"],
        id="pipelined",
    ),
    pytest.param([http_head(b"HTTP/1.1 200", (b"Content-Length: 0",))], [b"GET"], id="no reason"),
    pytest.param([http_response(200, (b"Content-Length: 0",), reason=b"")], [b"GET"], id="empty"),
    pytest.param([http_response(200, (b"Content-Length: 0",), eol=b"\n")], [b"GET"], id="bare LF"),
]


@pytest.mark.parametrize(("messages", "methods"), RESPONSES)
def test_frames_responses(messages: list[bytes], methods: list[bytes]) -> None:
    assert_frames(responses_to(*methods, b"GET"), messages, then=ok(b"next"))


CLOSE_DELIMITED = [
    pytest.param([], http_response(200, (), b"until close"), [b"GET"], id="body to eof"),
    pytest.param([], http_response(200), [b"GET"], id="empty body"),
    pytest.param([], http_response(200, (), b"old", version=b"HTTP/1.0"), [b"GET"], id="http/1.0"),
    pytest.param([ok(b"1")], http_response(500, (), b"bye"), [b"GET", b"GET"], id="after one"),
    pytest.param(
        [],
        CONTINUE + http_response(200, (), b"x\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"),
        [b"POST"],
        id="joined to an interim response",
    ),
]


@pytest.mark.parametrize(("messages", "final", "methods"), CLOSE_DELIMITED)
def test_frames_close_delimited_responses_at_eof(
    messages: list[bytes], final: bytes, methods: list[bytes]
) -> None:
    assert_frames(responses_to(*methods), messages, at_eof=final)


def test_close_delimited_response_is_held_until_eof() -> None:
    framer = responses_to(b"GET")()
    final = http_response(200, (), b"streamed")
    assert framer.feed(final) == []
    assert framer.buffered == len(final)
    assert framer.feed(b" more") == []
    assert framer.feed_eof() == [final + b" more"]
    assert framer.buffered == 0
    assert framer.feed_eof() == []


# ------------------------------------------------------------------------- rejections

HEAD_REJECTIONS = [
    # Body framing that another parser could read differently (request smuggling).
    pytest.param(
        (b"Content-Length: 3", CHUNKED), "Content-Length with Transfer-Encoding", id="cl and te"
    ),
    pytest.param(
        (CHUNKED, b"Content-Length: 3"), "Content-Length with Transfer-Encoding", id="te and cl"
    ),
    pytest.param((b"Transfer-Encoding: gzip",), "unsupported Transfer-Encoding", id="te gzip"),
    pytest.param((b"Transfer-Encoding: gzip, chunked",), "unsupported", id="te gzip, chunked"),
    pytest.param((b"Transfer-Encoding: chunked, chunked",), "unsupported", id="te chunked twice"),
    pytest.param((CHUNKED, CHUNKED), "unsupported Transfer-Encoding", id="two te fields"),
    pytest.param((b"Transfer-Encoding: identity",), "unsupported", id="te identity"),
    pytest.param((b"Transfer-Encoding:",), "unsupported Transfer-Encoding", id="te empty"),
    pytest.param((b"Transfer-Encoding: chunk",), "unsupported", id="te chunk"),
    pytest.param(
        (b"Content-Length: 3", b"Content-Length: 4"), "differing Content-Length", id="cl 3 and 4"
    ),
    pytest.param((b"Content-Length: 3, 4",), "differing Content-Length", id="cl list 3, 4"),
    pytest.param(
        (b"Content-Length: 3", b"Content-Length: 03"), "differing Content-Length", id="cl 3, 03"
    ),
    pytest.param((b"Content-Length: 3,",), "differing Content-Length", id="cl list empty item"),
    pytest.param((b"Content-Length: abc",), "is not digits", id="cl letters"),
    pytest.param((b"Content-Length: -1",), "is not digits", id="cl negative"),
    pytest.param((b"Content-Length: +3",), "is not digits", id="cl plus sign"),
    pytest.param((b"Content-Length: 3.0",), "is not digits", id="cl decimal"),
    pytest.param((b"Content-Length: 0x3",), "is not digits", id="cl hex"),
    pytest.param((b"Content-Length: 3 3",), "is not digits", id="cl inner space"),
    pytest.param((b"Content-Length: 1_0",), "is not digits", id="cl underscore"),
    pytest.param((b"Content-Length:",), "is not digits", id="cl empty"),
    pytest.param((b"Content-Length: " + b"1" * 20,), "of 20 digits", id="cl 20 digits"),
    # Field lines.
    pytest.param((b"Host example.test",), "without a colon", id="no colon"),
    pytest.param((b"Content-Length : 3",), "whitespace before the colon", id="space before :"),
    pytest.param((b"Host\t: x",), "whitespace before the colon", id="tab before colon"),
    pytest.param((b"X-A: 1", b" folded"), "obsolete line folding", id="obs-fold"),
    pytest.param((b"X-A: 1", b"\tfolded: x"), "obsolete line folding", id="obs-fold tab"),
    pytest.param((b": empty name",), "invalid field name", id="empty name"),
    pytest.param((b"X(y): 1",), "invalid field name", id="name not a token"),
    pytest.param((b"X-\xc3\xa9: 1",), "invalid field name", id="name not ascii"),
    pytest.param((b"X-A: a\rb",), "bare CR or NUL", id="bare CR in a value"),
    pytest.param((b"X-A: a\r",), "bare CR or NUL", id="CR CR LF"),
    pytest.param((b"X-A: a\x00b",), "bare CR or NUL", id="NUL in a value"),
]


@pytest.mark.parametrize(("fields", "match"), HEAD_REJECTIONS)
def test_request_header_block_is_rejected(fields: tuple[bytes, ...], match: str) -> None:
    request = http_request(b"POST", fields=(b"Host: example.test", *fields))
    assert_rejected(HttpRequestFramer, request, MalformedMessage, match)


@pytest.mark.parametrize(("fields", "match"), HEAD_REJECTIONS)
def test_response_header_block_is_rejected(fields: tuple[bytes, ...], match: str) -> None:
    assert_rejected(responses_to(b"GET"), http_response(200, fields), MalformedMessage, match)


def test_framing_fields_are_checked_where_they_are_ignored() -> None:
    response = http_response(200, (b"Content-Length: many",))
    assert_rejected(responses_to(b"HEAD"), response, MalformedMessage, "is not digits")


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        pytest.param(http_head(b"GET /"), "bad request line", id="two parts"),
        pytest.param(http_head(b"GET"), "bad request line", id="method only"),
        pytest.param(http_request(target=b" /"), "bad request line", id="double space"),
        pytest.param(http_head(b"GET / HTTP/1.1 x"), "bad request line", id="four parts"),
        pytest.param(http_request(method=b""), "bad request line", id="empty method"),
        pytest.param(http_request(method=b"G(T"), "bad request line", id="method not a token"),
        pytest.param(http_request(target=b""), "bad request line", id="empty target"),
        pytest.param(http_request(target=b"/caf\xc3\xa9"), "bad request line", id="target utf-8"),
        pytest.param(http_request(target=b"/\x7f"), "bad request line", id="target DEL"),
        pytest.param(http_request(target=b"/a\tb"), "bad request line", id="target tab"),
        pytest.param(http_request(version=b"HTTP/2.0"), "bad request line", id="http/2.0"),
        pytest.param(http_request(version=b"HTTP/1.10"), "bad request line", id="http/1.10"),
        pytest.param(http_request(version=b"HTTP/1.x"), "bad request line", id="http/1.x"),
        pytest.param(http_request(version=b"http/1.1"), "bad request line", id="lower-case"),
        pytest.param(http_request(version=b"HTTP/1"), "bad request line", id="http/1"),
        pytest.param(http_head(b""), "bad request line", id="blank line only"),
        pytest.param(b"\r\n" + http_request(), "bad request line", id="leading blank line"),
        pytest.param(http_request(version=b"HTTP/1.1\r"), "bare CR", id="CR CR LF"),
        pytest.param(
            http_request(b"CONNECT", b"example.test:443"), "CONNECT is not supported", id="connect"
        ),
        pytest.param(
            http_request(fields=(b"Host: x", b"Connection: Upgrade", b"Upgrade: websocket")),
            "Upgrade is not supported",
            id="upgrade",
        ),
        pytest.param(
            http_request(fields=(b"Host: x", b"upgrade: h2c")), "Upgrade is not", id="upgrade lc"
        ),
    ],
)
def test_request_line_and_tunnels_are_rejected(wire: bytes, match: str) -> None:
    assert_rejected(HttpRequestFramer, wire, MalformedMessage, match)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        pytest.param(b"xyz\r\n", "bad chunk size", id="not hex"),
        pytest.param(b"\r\n", "bad chunk size", id="empty size"),
        pytest.param(b";ext\r\n", "bad chunk size", id="extension without size"),
        pytest.param(b"+5\r\n", "bad chunk size", id="plus sign"),
        pytest.param(b"-5\r\n", "bad chunk size", id="minus sign"),
        pytest.param(b"0x5\r\n", "bad chunk size", id="0x prefix"),
        pytest.param(b" 5\r\n", "bad chunk size", id="leading space"),
        pytest.param(b"5_0\r\n", "bad chunk size", id="underscore"),
        pytest.param(b"1" + b"0" * 16 + b"\r\n", "bad chunk size", id="17 hex digits"),
        pytest.param(b"0" * 16 + b"1\r\n", "bad chunk size", id="17 digits, leading zeros"),
        pytest.param(b"5\n", "not ended by CRLF", id="bare LF"),
        pytest.param(b"\n", "not ended by CRLF", id="bare LF only"),
        pytest.param(b"5;a\rb\r\n", "not ended by CRLF", id="bare CR in extension"),
        pytest.param(b"5;\x00\r\n", "not ended by CRLF", id="NUL in extension"),
        pytest.param(b"3\r\nabcXY", "not followed by CRLF", id="data not followed by CRLF"),
        pytest.param(b"3\r\nabc\nX", "not followed by CRLF", id="data followed by bare LF"),
        pytest.param(b"3\r\nabcd\r", "not followed by CRLF", id="data longer than its size"),
        pytest.param(b"0\r\nno colon\r\n\r\n", "without a colon", id="bad trailer line"),
        pytest.param(b"0\r\nX: 1\r\n folded\r\n\r\n", "obsolete line folding", id="trailer fold"),
        pytest.param(b"0\r\nX: a\rb\r\n\r\n", "bare CR", id="bare CR in a trailer"),
    ],
)
def test_chunked_body_is_rejected(body: bytes, match: str) -> None:
    assert_rejected(HttpRequestFramer, chunked_post(body), MalformedMessage, match)


# ----------------------------------------------------------------------------- limits


def test_limits_are_16_kib_of_header_and_16_mib_of_body() -> None:
    assert HTTP_MAX_HEADER_SIZE == 16 * 1024
    assert HTTP_MAX_BODY_SIZE == 16 * 1024 * 1024


def request_of_head_size(size: int) -> bytes:
    """A GET whose header block is exactly `size` bytes (padded with one field)."""
    bare = http_request(fields=(b"Host: x", b"X-Pad: "))
    return http_request(fields=(b"Host: x", b"X-Pad: " + b"p" * (size - len(bare))))


def test_header_block_of_exactly_the_limit_passes() -> None:
    assert_frames(small_requests, [request_of_head_size(SMALL_HEADER)], then=http_request())
    largest = request_of_head_size(HTTP_MAX_HEADER_SIZE)
    assert HttpRequestFramer().feed(largest) == [largest]


def test_header_block_over_the_limit_is_rejected_as_soon_as_held() -> None:
    # One byte over the limit, the blank line still incomplete ("\r\n\r" held).
    wire = request_of_head_size(SMALL_HEADER + 2)[: SMALL_HEADER + 1]
    assert_rejected(small_requests, wire, MessageTooLarge, "header block of 65")
    default = request_of_head_size(HTTP_MAX_HEADER_SIZE + 2)[: HTTP_MAX_HEADER_SIZE + 1]
    assert_rejected(HttpRequestFramer, default, MessageTooLarge, "limit of 16384")


def test_complete_header_block_over_the_limit_in_one_read_is_rejected() -> None:
    framer = small_requests()
    with pytest.raises(MessageTooLarge, match="header block of 65"):
        framer.feed(request_of_head_size(SMALL_HEADER + 1))
    assert_poisoned(framer, MessageTooLarge, "header block")


def test_content_length_over_the_limit_is_rejected_with_the_header_block() -> None:
    largest = b"x" * SMALL_BODY
    assert_frames(
        small_requests, [http_request(b"PUT", fields=(content_length(largest),), body=largest)]
    )
    head = http_request(b"POST", fields=(b"Content-Length: 33",))
    assert_rejected(small_requests, head, MessageTooLarge, "Content-Length body of 33")


def test_default_body_limit() -> None:
    framer = HttpRequestFramer()
    head = http_request(b"POST", fields=(b"Content-Length: %d" % HTTP_MAX_BODY_SIZE,))
    assert framer.feed(head) == []
    too_long = http_request(b"POST", fields=(b"Content-Length: %d" % (HTTP_MAX_BODY_SIZE + 1),))
    assert_rejected(HttpRequestFramer, too_long, MessageTooLarge, "limit of 16777216")


def test_chunked_body_at_the_limit_passes() -> None:
    body = chunk(b"x" * 10) + chunk(b"y" * 7) + last_chunk()  # 15 + 12 + 5 bytes
    assert len(body) == SMALL_BODY
    assert_frames(small_requests, [chunked_post(body)], then=http_request())


@pytest.mark.parametrize(
    ("make_framer", "body", "match"),
    [
        pytest.param(small_requests, b"1b\r\n", "chunked body of 33", id="one chunk too large"),
        pytest.param(
            small_requests,
            chunk(b"x" * 10) + b"f\r\n",
            "chunked body of 35",
            id="chunks add up too large",
        ),
        pytest.param(
            small_requests, b"1;" + b"e" * 31, "chunked body of 33", id="chunk line, body limit"
        ),
        pytest.param(
            short_header_requests,
            b"1;" + b"e" * 63,
            "chunk-size line of 65",
            id="chunk line, header limit",
        ),
        pytest.param(
            small_requests, b"0\r\nX: " + b"v" * 27, "chunked body of 33", id="trailer, body limit"
        ),
        pytest.param(
            short_header_requests,
            b"0\r\nX: " + b"v" * 62,
            "trailer section of 65",
            id="trailer, header limit",
        ),
    ],
)
def test_chunked_body_over_a_limit_is_rejected_as_soon_as_known(
    make_framer: MakeFramer, body: bytes, match: str
) -> None:
    assert_rejected(make_framer, chunked_post(body), MessageTooLarge, match)


@pytest.mark.parametrize(
    ("make_framer", "body", "match"),
    [
        pytest.param(
            short_header_requests,
            b"1;" + b"e" * 70 + b"\r\nx\r\n0\r\n\r\n",
            "chunk-size line of 73",
            id="chunk line, header limit",
        ),
        pytest.param(
            short_header_requests,
            b"0\r\nX: " + b"v" * 70 + b"\r\n\r\n",
            "trailer section of 77",
            id="trailer, header limit",
        ),
        pytest.param(
            small_requests,
            b"0\r\nX: " + b"v" * 24 + b"\r\n\r\n",
            "chunked body of 34",
            id="trailer, body limit",
        ),
    ],
)
def test_complete_chunked_parts_over_a_limit_in_one_read_are_rejected(
    make_framer: MakeFramer, body: bytes, match: str
) -> None:
    framer = make_framer()
    with pytest.raises(MessageTooLarge, match=match):
        framer.feed(chunked_post(body))
    assert_poisoned(framer, MessageTooLarge, match)


def test_close_delimited_body_over_the_limit_is_rejected() -> None:
    small = responses_to(b"GET", max_body_size=SMALL_BODY)
    assert_frames(small, [], at_eof=http_response(200, (), b"x" * SMALL_BODY))
    too_long = http_response(200, (), b"x" * (SMALL_BODY + 1))
    assert_rejected(small, too_long, MessageTooLarge, "close-delimited body of 33")


def test_response_content_length_over_the_limit_is_rejected() -> None:
    small = responses_to(b"GET", max_body_size=SMALL_BODY)
    head = http_response(200, (b"Content-Length: 33",))
    assert_rejected(small, head, MessageTooLarge, "Content-Length body of 33")


@pytest.mark.parametrize(
    "make_framer",
    [
        pytest.param(partial(HttpRequestFramer, max_body_size=-1), id="request, body"),
        pytest.param(partial(HttpRequestFramer, max_header_size=0), id="request, header"),
        pytest.param(partial(HttpResponseFramer, max_body_size=-1), id="response, body"),
        pytest.param(partial(HttpResponseFramer, max_header_size=0), id="response, header"),
    ],
)
def test_limits_must_be_sensible(make_framer: MakeFramer) -> None:
    with pytest.raises(ValueError, match="max_"):
        make_framer()


def test_zero_body_limit_allows_bodiless_messages_only() -> None:
    framer = HttpRequestFramer(max_body_size=0)
    assert framer.feed(http_request() + post(b"")) == [http_request(), post(b"")]
    with pytest.raises(MessageTooLarge):
        framer.feed(post(b"x"))


# ------------------------------------------------------------------ response specifics


@pytest.mark.parametrize(
    ("make_framer", "wire", "match"),
    [
        pytest.param(responses_to(), ok(b""), "without an outstanding request", id="none sent"),
        pytest.param(
            responses_to(),
            http_response(100, reason=b"Continue"),
            "without an outstanding",
            id="interim, none sent",
        ),
        pytest.param(
            responses_to(b"GET"),
            ok(b"a") + http_response(200, (content_length(b"b"),)),
            "without an outstanding request",
            id="one more than sent",
        ),
        pytest.param(
            responses_to(b"GET"),
            ok(b"a") + CONTINUE,
            "without an outstanding request",
            id="interim, one more than sent",
        ),
        pytest.param(
            responses_to(b"GET"),
            http_response(101, (b"Upgrade: websocket",), reason=b"Switching Protocols"),
            "101 Switching Protocols",
            id="101",
        ),
        pytest.param(
            responses_to(b"GET"),
            CONTINUE + http_response(101, reason=b"Switching Protocols"),
            "101 Switching Protocols",
            id="101 after an interim",
        ),
        pytest.param(
            responses_to(b"GET"),
            CONTINUE + b"\r\n" + http_head(b"HTTP/1.1 200 OK"),
            "bad status line b''",
            id="blank line after an interim",
        ),
        pytest.param(
            responses_to(b"GET"),
            CONTINUE + http_head(b"HTTP/1.1 20 OK"),
            "bad status",
            id="bad status after an interim",
        ),
        pytest.param(responses_to(b"GET"), http_head(b"HTTP/1.1 20 OK"), "bad status", id="2 d"),
        pytest.param(responses_to(b"GET"), http_head(b"HTTP/1.1 2000 OK"), "bad status", id="4d"),
        # Found by fuzzing: 001 was a final response read whole, an interim one cut.
        pytest.param(responses_to(b"HEAD"), http_head(b"HTTP/1.2 001 O"), "bad status", id="001"),
        pytest.param(responses_to(b"GET"), http_head(b"HTTP/1.1 600 X"), "bad status", id="600"),
        pytest.param(responses_to(b"GET"), http_head(b"HTTP/1.1 200OK"), "bad status", id="no SP"),
        pytest.param(responses_to(b"GET"), http_head(b"HTTP/1.1  200 OK"), "bad status", id="SP"),
        pytest.param(responses_to(b"GET"), http_head(b"HTTP/1.1 abc OK"), "bad status", id="abc"),
        pytest.param(responses_to(b"GET"), http_head(b"HTTP/1.1"), "bad status", id="short"),
        pytest.param(responses_to(b"GET"), http_head(b"HTTP/2 200 OK"), "bad status", id="h2"),
        pytest.param(responses_to(b"GET"), http_head(b"ICY 200 OK"), "bad status", id="icy"),
        pytest.param(responses_to(b"GET"), http_head(b"HTTP/1.1X200 OK"), "bad status", id="X"),
    ],
)
def test_response_is_rejected(make_framer: MakeFramer, wire: bytes, match: str) -> None:
    assert_rejected(make_framer, wire, MalformedMessage, match)


def test_interim_responses_are_held_until_the_final_response() -> None:
    framer = responses_to(b"HEAD", b"GET")()
    head_reply = http_response(200, (b"Content-Length: 10",))
    assert framer.feed(CONTINUE) == []
    assert framer.buffered == len(CONTINUE)
    assert framer.take_interim_reply() is None
    # The interim responses do not answer HEAD: the final response after them does.
    assert framer.feed(CONTINUE + head_reply) == [CONTINUE + CONTINUE + head_reply]
    assert framer.buffered == 0
    assert framer.feed(ok(b"0123456789")) == [ok(b"0123456789")]


def final_of_head_size(size: int, interim: bytes = CONTINUE) -> bytes:
    """`interim`, then a bodiless 200 whose header block brings the total to `size`."""
    bare = http_response(200, (b"Content-Length: 0",), reason=b"")
    return interim + http_response(
        200, (b"Content-Length: 0",), reason=b"r" * (size - len(interim) - len(bare))
    )


def test_interim_and_final_header_blocks_share_the_header_limit() -> None:
    small = responses_to(b"POST", b"GET", max_header_size=SMALL_HEADER)
    assert_frames(small, [final_of_head_size(SMALL_HEADER)], then=ok(b"next"))
    over = final_of_head_size(SMALL_HEADER + 1)
    assert_rejected(small, over, MessageTooLarge, "header block, 1xx responses included, of 65")


def test_endless_interim_responses_are_rejected_at_the_header_limit() -> None:
    small = responses_to(b"GET", max_header_size=SMALL_HEADER)
    wire = (CONTINUE * 3)[: SMALL_HEADER + 1]
    assert_rejected(small, wire, MessageTooLarge, "1xx responses included, of 65\\+ bytes")


def test_expect_response_may_come_after_earlier_responses() -> None:
    framer = HttpResponseFramer()
    framer.expect_response(http_request(b"HEAD"))
    assert framer.feed(ok(b"")) == [ok(b"")]
    framer.expect_response(http_request(b"GET"))
    assert framer.feed(ok(b"body")) == [ok(b"body")]


# ---------------------------------------------------------------------------- feed_eof


@pytest.mark.parametrize(
    ("make_framer", "partial_message"),
    [
        pytest.param(HttpRequestFramer, http_request()[:-1], id="request, in the header"),
        pytest.param(HttpRequestFramer, post(b"body")[:-1], id="request, in the body"),
        pytest.param(HttpRequestFramer, chunked_post(b"4"), id="request, in a chunk line"),
        pytest.param(HttpRequestFramer, chunked_post(b"4\r\nab"), id="request, in chunk data"),
        pytest.param(HttpRequestFramer, chunked_post(b"0\r\n"), id="request, in the trailers"),
        pytest.param(responses_to(b"GET"), ok(b"body")[:-1], id="response, in the body"),
        pytest.param(responses_to(b"GET"), b"HTTP/1.1 200 OK\r\n", id="response, in the header"),
        pytest.param(responses_to(b"GET"), CONTINUE, id="response, after an interim one"),
        pytest.param(
            responses_to(b"GET"), CONTINUE + ok(b"body")[:-1], id="response, interim then body"
        ),
    ],
)
def test_eof_inside_a_message_is_incomplete(
    make_framer: MakeFramer, partial_message: bytes
) -> None:
    framer = make_framer()
    assert framer.feed(partial_message) == []
    assert framer.buffered == len(partial_message)
    with pytest.raises(IncompleteMessage, match="inside a message"):
        framer.feed_eof()
    assert_poisoned(framer, IncompleteMessage, "inside a message")


@pytest.mark.parametrize("make_framer", [HttpRequestFramer, responses_to(b"GET")])
def test_eof_with_nothing_buffered_returns_nothing(make_framer: MakeFramer) -> None:
    assert make_framer().feed_eof() == []


def test_eof_after_a_complete_message_returns_nothing() -> None:
    framer = HttpRequestFramer()
    assert framer.feed(post(b"x")) == [post(b"x")]
    assert framer.feed_eof() == []


def test_error_after_good_messages_in_one_read_poisons() -> None:
    framer = HttpRequestFramer()
    with pytest.raises(MalformedMessage, match="bad request line"):
        framer.feed(http_request() + http_head(b"BAD"))
    assert_poisoned(framer, MalformedMessage, "bad request line")
    with pytest.raises(FramingError):
        framer.feed(http_request())


# ------------------------------------------------------------------------ 100-continue

HOST = b"Host: example.test"
EXPECT = b"Expect: 100-continue"
PAYLOAD = b"payload"


def upload(
    fields: tuple[bytes, ...], body: bytes = PAYLOAD, *, version: bytes = b"HTTP/1.1"
) -> tuple[bytes, bytes]:
    """(header block, body) of a POST with `fields` after Host."""
    return http_request(b"POST", b"/upload", (HOST, *fields), version=version), body


EXPECTATIONS = [
    pytest.param(*upload((EXPECT, content_length(PAYLOAD))), True, id="content-length"),
    pytest.param(*upload((CHUNKED, EXPECT), chunked(PAYLOAD)), True, id="chunked"),
    pytest.param(*upload((EXPECT, CHUNKED), chunked()), True, id="chunked, last chunk only"),
    pytest.param(
        *upload((b"expect:  100-CONTINUE ", content_length(PAYLOAD))), True, id="any case"
    ),
    pytest.param(
        *upload((b"Expect: foo=bar, 100-continue", content_length(PAYLOAD))), True, id="in a list"
    ),
    pytest.param(
        *upload((b"Expect: foo", b"Expect:100-continue", content_length(PAYLOAD))),
        True,
        id="in a second field",
    ),
    pytest.param(
        *upload((EXPECT, content_length(PAYLOAD)), version=b"HTTP/1.9"),
        True,
        id="later minor version",
    ),
    pytest.param(
        *upload((EXPECT, content_length(PAYLOAD)), version=b"HTTP/1.0"),
        False,
        id="http/1.0 ignores it",
    ),
    pytest.param(*upload((EXPECT,), b""), False, id="no body"),
    pytest.param(*upload((EXPECT, b"Content-Length: 0"), b""), False, id="content-length 0"),
    pytest.param(*upload((content_length(PAYLOAD),)), False, id="no expectation"),
    pytest.param(
        *upload((b"Expect: 100-continued", content_length(PAYLOAD))), False, id="other token"
    ),
    pytest.param(
        *upload((b"X-Expect: 100-continue", content_length(PAYLOAD))), False, id="other field"
    ),
]


def continue_offsets(messages: list[tuple[bytes, bytes, bool]], bounds: list[int]) -> list[int]:
    """Where 100 Continue is due in a stream of (head, body, expects it) requests fed in
    pieces ending at `bounds`: once for each request that expects it, after the first
    piece that completes its header block but not its body (never if none does)."""
    offsets: list[int] = []
    start = 0
    for head, body, due in messages:
        waiting = [
            bound for bound in bounds if start + len(head) <= bound < start + len(head + body)
        ]
        if due and waiting:
            offsets.append(waiting[0])
        start += len(head + body)
    return offsets


@pytest.mark.parametrize(("head", "body", "due"), EXPECTATIONS)
def test_100_continue_is_offered_once_while_the_body_is_awaited(
    head: bytes, body: bytes, due: bool
) -> None:
    # The request twice (each needs its own reply) with another request between them.
    requests = [(head, body, due), (http_request(), b"", False), (head, body, due)]
    stream = b"".join(head + body for head, body, _due in requests)
    for how, chunks in cuttings(stream):
        framer = HttpRequestFramer()
        messages: list[bytes] = []
        offered: list[int] = []
        bounds: list[int] = []
        for piece in chunks:
            messages += framer.feed(piece)
            bounds.append(len(piece) + (bounds[-1] if bounds else 0))
            reply = framer.take_interim_reply()
            if reply is not None:
                assert reply == HTTP_CONTINUE, how
                offered.append(bounds[-1])
            assert framer.take_interim_reply() is None, how
        assert messages == [head + body for head, body, _due in requests], how
        assert offered == continue_offsets(requests, bounds), how


def test_100_continue_is_the_exact_interim_reply() -> None:
    assert HTTP_CONTINUE == b"HTTP/1.1 100 Continue\r\n\r\n"
    head, body = upload((EXPECT, content_length(PAYLOAD)))
    framer = HttpRequestFramer()
    assert framer.feed(head) == []
    assert framer.take_interim_reply() == HTTP_CONTINUE
    assert framer.feed(body[:3]) == []
    assert framer.take_interim_reply() is None
    assert framer.feed(body[3:]) == [head + body]
    assert framer.take_interim_reply() is None


def test_100_continue_not_taken_stays_due_until_the_body_is_in() -> None:
    head, body = upload((EXPECT, content_length(PAYLOAD)))
    framer = HttpRequestFramer()
    assert framer.feed(http_request() + head) == [http_request()]
    assert framer.feed(body[:1]) == []
    assert framer.take_interim_reply() == HTTP_CONTINUE
    assert framer.feed(body[1:]) == [head + body]


def test_no_100_continue_from_a_poisoned_framer() -> None:
    head, _body = upload((EXPECT, CHUNKED), b"")
    framer = HttpRequestFramer()
    assert framer.feed(head) == []
    with pytest.raises(MalformedMessage, match="bad chunk size"):
        framer.feed(b"xyz\r\n")
    assert framer.take_interim_reply() is None
