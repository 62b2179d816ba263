"""HTTP framing agrees with h11: the same streams are cut at the same byte offsets.

Hypothesis writes pipelined requests and responses with every framing this project
accepts (Content-Length in its several spellings, chunked with extensions and trailers,
interim responses, bodiless statuses, HEAD, close-delimited bodies, bare-LF lines), our
framer reads them cut anywhere, and h11 reads them whole; message boundaries must match.
h11 reports each interim (1xx) response as an event of its own, where our framer joins
them to the final response: one message per request, from its first interim response
to the end of its final one. Whether a request waits for ``100 Continue`` is compared
with h11's view too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import h11
from hypothesis import given, settings
from hypothesis import strategies as st

from tcp_multiplexer.protocols.http.framing import (
    HTTP_CONTINUE,
    HttpRequestFramer,
    HttpResponseFramer,
)
from tests.framing.builders import http_request
from tests.framing.splitting import feed_pieces

EXAMPLES = settings(max_examples=200, deadline=None)

EOLS = st.sampled_from([b"\r\n", b"\r\n", b"\n"])
"""Header and trailer lines may end in a bare LF (RFC 9112 section 2.2); CRLF is likelier."""
OWS = st.sampled_from([b"", b" ", b"\t", b"  "])
RESERVED_NAMES = frozenset(
    (b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"host", b"expect")
)
TOKENS = st.from_regex(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]{1,12}", fullmatch=True)
FIELD_NAMES = TOKENS.filter(lambda name: name.lower() not in RESERVED_NAMES)
FIELD_VALUES = st.from_regex(
    rb"(?:[!-~\x80-\xff]{1,8}(?:[ \t][!-~\x80-\xff]{1,8}){0,3})?", fullmatch=True
)
BODIES = st.binary(max_size=64)


@st.composite
def field_line(draw: st.DrawFn, name: bytes | None = None, value: bytes | None = None) -> bytes:
    """`name: value` with random optional whitespace; random name and value if not given."""
    name = draw(FIELD_NAMES) if name is None else name
    value = draw(FIELD_VALUES) if value is None else value
    return name + b":" + draw(OWS) + value + draw(OWS)


@st.composite
def spelled(draw: st.DrawFn, name: bytes) -> bytes:
    """`name` in one of the spellings peers use: canonical, lower or upper case."""
    return draw(st.sampled_from([name, name.lower(), name.upper()]))


@st.composite
def length_fields(draw: st.DrawFn, length: int) -> list[bytes]:
    """Content-Length for `length`: once, as an identical list, or repeated."""
    name = draw(spelled(b"Content-Length"))
    value = b"%d" % length
    form = draw(st.sampled_from(["once", "list", "repeated"]))
    if form == "once":
        return [draw(field_line(name, value))]
    if form == "list":
        return [draw(field_line(name, value + b"," + draw(OWS) + value))]
    return [draw(field_line(name, value)), draw(field_line(draw(spelled(name)), value))]


@st.composite
def chunked_body(draw: st.DrawFn) -> bytes:
    """A chunked body: sizes in any hex spelling, extensions, optional trailers."""
    extensions = st.sampled_from([b"", b";a=b", b";x", b';q="v w"', b";e=1;f"])
    body = b""
    for data in draw(st.lists(st.binary(min_size=1, max_size=24), max_size=4)):
        size = draw(st.sampled_from([b"%x", b"%X", b"%04x"])) % len(data)
        body += size + draw(extensions) + b"\r\n" + data + b"\r\n"
    body += b"0" + draw(extensions) + b"\r\n"
    for _ in range(draw(st.integers(0, 2))):
        body += draw(field_line()) + draw(EOLS)
    return body + draw(EOLS)


@st.composite
def framing(draw: st.DrawFn, *, allow_none: bool) -> tuple[list[bytes], bytes]:
    """Framing field lines and the body they frame (none, Content-Length or chunked)."""
    kind = draw(
        st.sampled_from(["length", "chunked", "none"] if allow_none else ["length", "chunked"])
    )
    if kind == "length":
        body = draw(BODIES)
        return draw(length_fields(len(body))), body
    if kind == "chunked":
        coding = draw(st.sampled_from([b"chunked", b"Chunked", b"CHUNKED"]))
        return [draw(field_line(draw(spelled(b"Transfer-Encoding")), coding))], draw(chunked_body())
    return [], b""


@st.composite
def head(draw: st.DrawFn, start_line: bytes, fields: Sequence[bytes]) -> bytes:
    """A header block: `fields` plus random ones, shuffled, each line with its own ending."""
    extra = draw(st.lists(field_line(), max_size=3))
    lines = [start_line, *draw(st.permutations([*fields, *extra]))]
    return b"".join(line + draw(EOLS) for line in lines) + draw(EOLS)


EXPECT_VALUES = st.sampled_from(
    [b"100-continue", b"100-Continue", b"100-CONTINUE", b"foo, 100-continue", b"100-continued"]
)
"""Expect values: the expectation in any case, in a list, and a token that only looks like it."""


@st.composite
def request_parts(draw: st.DrawFn, *, expect: bool = False) -> tuple[bytes, bytes]:
    """(header block, body) of a request; with `expect`, maybe an Expect field too."""
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS"]))
    target = draw(st.sampled_from([b"/", b"/a/b?c=d&e=%20", b"*", b"http://example.test/x"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    fields, body = draw(framing(allow_none=True))
    host = draw(field_line(draw(spelled(b"Host")), b"example.test"))
    if expect and draw(st.booleans()):
        fields.append(draw(field_line(draw(spelled(b"Expect")), draw(EXPECT_VALUES))))
    return draw(head(b"%s %s %s" % (method, target, version), [host, *fields])), body


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    return b"".join(draw(request_parts()))


@dataclass(frozen=True)
class Exchange:
    """What one request gets back: interim responses, then the final one."""

    method: bytes
    responses: list[bytes]
    close_delimited: bool


def status_line(draw: st.DrawFn, status: int) -> bytes:
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    reason = draw(st.sampled_from([b" OK", b" Some Reason", b" ", b""]))
    return b"%s %d%s" % (version, status, reason)


@st.composite
def exchanges(draw: st.DrawFn, *, last: bool) -> Exchange:
    """A request method and its responses; only the `last` may be close-delimited."""
    method = draw(st.sampled_from([b"GET", b"GET", b"HEAD"]))
    interim = [
        draw(head(status_line(draw, status), []))
        for status in draw(st.lists(st.sampled_from([100, 102, 103]), max_size=2))
    ]
    status = draw(st.sampled_from([200, 201, 204, 304, 404, 500]))
    bodiless = method == b"HEAD" or status in (204, 304)
    fields, body = draw(framing(allow_none=last or bodiless))
    if bodiless:
        body = b""
    final = draw(head(status_line(draw, status), fields)) + body
    return Exchange(method, [*interim, final], close_delimited=not fields and not bodiless)


def h11_request_ends(wire: bytes) -> list[int]:
    """Where h11, as a server, finds each request to end (offsets into `wire`)."""
    ends: list[int] = []
    while not ends or ends[-1] < len(wire):
        server = h11.Connection(h11.SERVER)
        server.receive_data(wire[ends[-1] if ends else 0 :])
        server.receive_data(b"")
        while not isinstance(server.next_event(), h11.EndOfMessage):
            pass
        ends.append(len(wire) - len(server.trailing_data[0]))
    return ends


def h11_response_ends(wire: bytes, methods: Sequence[bytes]) -> list[list[int]]:
    """Where h11, as a client that sent `methods`, finds responses to end: for each
    request, the end of every interim response, then the end of the final one."""
    exchanges: list[list[int]] = []
    start = 0
    for method in methods:
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method=method, target="/", headers=[("Host", "example.test")]))
        client.send(h11.EndOfMessage())
        client.receive_data(wire[start:])
        client.receive_data(b"")
        ends: list[int] = []
        while True:
            event = client.next_event()
            if isinstance(event, (h11.InformationalResponse, h11.EndOfMessage)):
                ends.append(len(wire) - len(client.trailing_data[0]))
            if isinstance(event, h11.EndOfMessage):
                break
        exchanges.append(ends)
        start = ends[-1]
    return exchanges


def message_ends(messages: Sequence[bytes]) -> list[int]:
    ends: list[int] = []
    for message in messages:
        ends.append((ends[-1] if ends else 0) + len(message))
    return ends


@EXAMPLES
@given(data=st.data())
def test_request_boundaries_agree_with_h11(data: st.DataObject) -> None:
    stream = data.draw(st.lists(requests(), min_size=1, max_size=4), label="requests")
    wire = b"".join(stream)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=8), label="cuts")
    framer = HttpRequestFramer()
    messages = feed_pieces(framer, wire, cuts) + framer.feed_eof()
    assert messages == stream
    assert message_ends(messages) == h11_request_ends(wire)


@EXAMPLES
@given(data=st.data())
def test_response_boundaries_agree_with_h11(data: st.DataObject) -> None:
    count = data.draw(st.integers(1, 4), label="count")
    stream = [data.draw(exchanges(last=index == count - 1)) for index in range(count)]
    expected = [b"".join(exchange.responses) for exchange in stream]
    wire = b"".join(expected)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=8), label="cuts")
    framer = HttpResponseFramer()
    for exchange in stream:
        framer.expect_response(http_request(exchange.method))
    fed = feed_pieces(framer, wire, cuts)
    at_eof = framer.feed_eof()
    assert fed + at_eof == expected
    assert len(at_eof) == int(stream[-1].close_delimited)
    h11_ends = h11_response_ends(wire, [exchange.method for exchange in stream])
    # One message per request: it starts where the previous one ended (at its first
    # interim response, if any) and ends where h11's EndOfMessage does.
    assert message_ends(fed + at_eof) == [ends[-1] for ends in h11_ends]
    # Inside it, h11 finds each interim response where it was written.
    written = [response for exchange in stream for response in exchange.responses]
    assert [end for ends in h11_ends for end in ends] == message_ends(written)


@EXAMPLES
@given(data=st.data())
def test_100_continue_is_offered_when_h11_would_wait_for_it(data: st.DataObject) -> None:
    block, body = data.draw(request_parts(expect=True), label="request")
    # The first read ends anywhere from the end of the header block to the end of the body.
    held = data.draw(st.integers(0, len(body)), label="body bytes in the first read")
    framer = HttpRequestFramer()
    messages = framer.feed(block + body[:held])
    reply = framer.take_interim_reply()
    server = h11.Connection(h11.SERVER)
    server.receive_data(block)
    assert isinstance(server.next_event(), h11.Request)
    # h11 waits for 100-continue from the header block until body data arrives; we offer
    # it only while there is body data still to come.
    waits = server.they_are_waiting_for_100_continue and held < len(body)
    assert reply == (HTTP_CONTINUE if waits else None)
    assert framer.take_interim_reply() is None
    messages += framer.feed(body[held:])
    assert messages == [block + body]
    assert framer.take_interim_reply() is None
