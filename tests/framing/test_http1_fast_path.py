"""The one-regex reading of a usual header block agrees with the line-by-line reading.

The framers try their `_plain_head` regex first, on a header block's first bytes, and
fall back to reading the block line by line. Hypothesis writes header blocks from pieces that are
valid, nearly valid and invalid (bare LF, bare CR, NUL, whitespace before a colon,
repeated or malformed Content-Length, Transfer-Encoding, Upgrade, Expect, CONNECT, bad
start lines); each block, with a few body bytes after it, is fed once as it is and once
with the fast path switched off. Both must give the same messages, body state and
connection end (`closing_at`, also after EOF), or the same error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Final

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tcp_multiplexer.errors import FramingError
from tcp_multiplexer.protocols.http import framing as http1
from tcp_multiplexer.protocols.http.framing import HttpRequestFramer, HttpResponseFramer

EXAMPLES = settings(max_examples=400, deadline=None)
NEVER: re.Pattern[bytes] = re.compile(rb"(?!)")

EOLS = st.sampled_from([b"\r\n"] * 12 + [b"\n", b"\r\r\n"])
"""Mostly CRLF, so that most blocks are one slip away from the usual shape."""
OTHER_NAMES = st.sampled_from(
    [
        b"Host",
        b"Accept",
        b"Cache-Control",
        b"X-Content-Length",
        b"Content-Lengths",
        b"Connection",
        b"connection",
        b"Connections",
        b"Expect",
    ]
)
BAD_NAMES = st.sampled_from([b"Bad Name", b"Content-Length ", b" Folded", b"", b"X\x00"])
LENGTH_NAMES = st.sampled_from([b"Content-Length", b"content-length", b"CONTENT-LENGTH"])
LENGTH_VALUES = st.sampled_from(
    [b"5", b"0", b"05", b" 5 ", b"\t7", b"5, 5", b"5,6", b"", b"abc", b"-1", b"1" * 19, b"1" * 20]
)
OTHER_VALUES = st.sampled_from(
    [
        b"text",
        b"",
        b"keep-alive",
        b"Keep-Alive",
        b"keep-alive ",
        b"keep-alive, close",
        b"close",
        b"Upgrade",
        b"100-continue",
        b"chunked",
        b"caf\xc3\xa9",
        b"x:y",
        b"a\rb",
        b"a\x00b",
    ]
)
FIELDS = st.one_of(
    st.tuples(OTHER_NAMES, OTHER_VALUES),
    st.tuples(LENGTH_NAMES, LENGTH_VALUES),
    st.tuples(st.sampled_from([b"Transfer-Encoding", b"Upgrade"]), OTHER_VALUES),
    st.tuples(BAD_NAMES, OTHER_VALUES),
)
REQUEST_LINES = st.sampled_from(
    [
        b"GET / HTTP/1.1",
        b"POST /upload?x=1 HTTP/1.1",
        b"HEAD * HTTP/1.0",
        b"PUT /a HTTP/1.9",
        b"CONNECT example.test:443 HTTP/1.1",
        b"GET  / HTTP/1.1",
        b"GET / HTTP/2.0",
        b"GET /\x7f HTTP/1.1",
        b"G(T / HTTP/1.1",
        b"GET / HTTP/1.1 ",
        b"GET /",
    ]
)
STATUS_LINES = st.sampled_from(
    [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 200",
        b"HTTP/1.1 200 ",
        b"HTTP/1.0 404 Not Found",
        b"HTTP/1.1 204 No Content",
        b"HTTP/1.1 304 Not Modified",
        b"HTTP/1.1 100 Continue",
        b"HTTP/1.1 101 Switching Protocols",
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1 200 O\x00K",
        b"HTTP/1.1 200 O\rK",
        b"HTTP/2 200 OK",
    ]
)


def usually(common: bytes, others: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """`common` or one of `others`."""
    return st.one_of(st.just(common), others)


@st.composite
def header_blocks(draw: st.DrawFn, start_lines: st.SearchStrategy[bytes]) -> bytes:
    """A start line, up to five field lines and the blank line, each with its own end."""
    lines = [draw(start_lines)]
    for _ in range(draw(st.integers(0, 5))):
        name, value = draw(FIELDS)
        lines.append(name + b":" + draw(st.sampled_from([b"", b" ", b" ", b"\t"])) + value)
    return b"".join(line + draw(EOLS) for line in lines) + draw(EOLS)


FRAMER_FAST_PATHS: Final = ((HttpRequestFramer, "_plain_head"), (HttpResponseFramer, "_plain_head"))


@contextmanager
def switched_off(places: Iterable[tuple[object, str]]) -> Iterator[None]:
    """Each (owner, name) regex replaced by one that never matches, for the block."""
    saved = [(owner, name, getattr(owner, name)) for owner, name in places]
    for owner, name, _pattern in saved:
        setattr(owner, name, NEVER)
    try:
        yield
    finally:
        for owner, name, pattern in saved:
            setattr(owner, name, pattern)


def outcome(framer: HttpRequestFramer | HttpResponseFramer, wire: bytes) -> object:
    """What feeding `wire` gives: the messages and the state for the body, or the error."""
    try:
        messages = framer.feed(wire)
    except FramingError as error:
        return type(error), str(error)
    return (
        messages,
        framer._state,
        framer._target,
        framer.take_interim_reply(),
        framer.closing_at,
    )


def read_request(block: bytes) -> object:
    return outcome(HttpRequestFramer(), block + b"body")


def read_response(block: bytes, request: bytes) -> object:
    framer = HttpResponseFramer()
    framer.expect_response(request)
    return outcome(framer, block + b"body"), len(framer._head_requests)


@EXAMPLES
@given(block=header_blocks(usually(b"GET / HTTP/1.1", REQUEST_LINES)))
@example(block=b"GET /c1/n2 HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n")
@example(block=b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n")
def test_request_fast_path_reads_as_the_line_by_line_path(block: bytes) -> None:
    fast = read_request(block)
    with switched_off(FRAMER_FAST_PATHS):
        slow = read_request(block)
    assert fast == slow


@EXAMPLES
@given(
    block=header_blocks(usually(b"HTTP/1.1 200 OK", STATUS_LINES)),
    request=st.sampled_from([b"GET / HTTP/1.1\r\n\r\n", b"HEAD / HTTP/1.1\r\n\r\n"]),
)
@example(
    block=b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 23\r\n\r\n",
    request=b"GET / HTTP/1.1\r\n\r\n",
)
def test_response_fast_path_reads_as_the_line_by_line_path(block: bytes, request: bytes) -> None:
    fast = read_response(block, request)
    with switched_off(FRAMER_FAST_PATHS):
        slow = read_response(block, request)
    assert fast == slow


def until_eof(framer: HttpRequestFramer | HttpResponseFramer, block: bytes) -> object:
    """What `block` and then EOF give: each call's messages and connection end, or the
    error."""
    outcomes: list[object] = []
    for feed in (lambda: framer.feed(block), framer.feed_eof):
        try:
            outcomes.append((feed(), framer.closing_at))
        except FramingError as error:
            outcomes.append((type(error), str(error)))
            break
    return outcomes


@EXAMPLES
@given(block=header_blocks(usually(b"GET / HTTP/1.1", REQUEST_LINES)))
@example(block=b"GET /c1/n2 HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n")
@example(block=b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
def test_request_ends_connection_reads_as_the_field_by_field_path(block: bytes) -> None:
    fast = until_eof(HttpRequestFramer(), block)
    with switched_off(FRAMER_FAST_PATHS):
        slow = until_eof(HttpRequestFramer(), block)
    assert fast == slow


@EXAMPLES
@given(block=header_blocks(usually(b"HTTP/1.1 200 OK", STATUS_LINES)))
@example(block=b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
@example(block=b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n")
def test_reply_ends_connection_reads_as_the_field_by_field_path(block: bytes) -> None:
    def framer() -> HttpResponseFramer:
        responses = HttpResponseFramer()
        responses.expect_response(b"GET / HTTP/1.1\r\n\r\n")
        return responses

    fast = until_eof(framer(), block)
    with switched_off(FRAMER_FAST_PATHS):
        slow = until_eof(framer(), block)
    assert fast == slow


def test_the_usual_blocks_take_the_fast_path() -> None:
    """The loadgen's and curl's requests and a usual response match the regexes."""
    assert http1._PLAIN_REQUEST_HEAD.fullmatch(
        b"GET /c1/n2 HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: loadgen\r\n"
        b"Accept: */*\r\nConnection: keep-alive\r\n\r\n"
    )
    assert http1._PLAIN_REQUEST_HEAD.fullmatch(
        b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Type: a/b\r\n\r\n"
    )
    response = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 23\r\n\r\n"
    assert http1._PLAIN_RESPONSE_HEAD.fullmatch(response)
    assert http1._PLAIN_REQUEST_HEAD.fullmatch(
        b"GET /c1/n2 HTTP/1.1\r\nHost: h\r\nConnection: Keep-Alive\r\n\r\n"
    )


def read_in_one_and_in_pieces(
    make: type[HttpRequestFramer] | type[HttpResponseFramer], wire: bytes, request: bytes
) -> tuple[object, object]:
    """`wire` fed in one piece (where the whole-message fast path may take it) and in
    two (where it cannot): each the messages, which one ends the connection, the state
    left and what is still expected, or the error."""

    def read(pieces: list[bytes]) -> object:
        framer = make()
        if isinstance(framer, HttpResponseFramer):
            framer.expect_response(request)
            framer.expect_response(request)
        messages: list[bytes] = []
        closing = -1
        try:
            for piece in pieces:
                got = framer.feed(piece)
                if framer.closing_at >= 0 and closing < 0:
                    closing = len(messages) + framer.closing_at
                messages += got
        except FramingError as error:
            return type(error), str(error)
        pending = len(framer._head_requests) if isinstance(framer, HttpResponseFramer) else 0
        # Between messages the body offset means nothing.
        target = None if framer._state == http1._HEAD else framer._target
        return messages, closing, framer._state, target, framer.buffered, pending

    return read([wire]), read([wire[:1], wire[1:]])


@EXAMPLES
@given(
    block=header_blocks(usually(b"GET / HTTP/1.1", REQUEST_LINES)),
    body=st.sampled_from([b"", b"x", b"body", b"12345", b"1234567"]),
)
@example(block=b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n", body=b"12345")
@example(block=b"GET / HTTP/1.0\r\n\r\n", body=b"")
def test_a_whole_request_reads_as_it_does_in_pieces(block: bytes, body: bytes) -> None:
    whole, pieces = read_in_one_and_in_pieces(HttpRequestFramer, block + body, b"")
    assert whole == pieces


@EXAMPLES
@given(
    block=header_blocks(usually(b"HTTP/1.1 200 OK", STATUS_LINES)),
    body=st.sampled_from([b"", b"x", b"body", b"12345", b"1234567"]),
    request=st.sampled_from([b"GET / HTTP/1.1\r\n\r\n", b"HEAD / HTTP/1.1\r\n\r\n"]),
)
@example(block=b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", body=b"12345", request=b"GET / ")
@example(block=b"HTTP/1.0 204 No Content\r\n\r\n", body=b"", request=b"GET / ")
@example(block=b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", body=b"", request=b"HEAD / ")
@example(block=b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", body=b"12345", request=b"HEAD / ")
@example(block=b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", body=b"x", request=b"GET / ")
def test_a_whole_response_reads_as_it_does_in_pieces(
    block: bytes, body: bytes, request: bytes
) -> None:
    whole, pieces = read_in_one_and_in_pieces(HttpResponseFramer, block + body, request)
    assert whole == pieces


def test_the_usual_whole_messages_take_the_whole_message_path() -> None:
    """Checked by switching the incremental parser off: these must not need it."""
    request = b"GET /c1/n2 HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n"
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
    saved = http1._HttpFramer.feed
    http1._HttpFramer.feed = None  # type: ignore[assignment]
    try:
        assert HttpRequestFramer().feed(request) == [request]
        responses = HttpResponseFramer()
        responses.expect_response(request)
        assert responses.feed(response) == [response]
        assert responses.closing_at == -1
    finally:
        http1._HttpFramer.feed = saved  # type: ignore[method-assign]
