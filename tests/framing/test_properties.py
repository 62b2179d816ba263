"""Properties every framer keeps, checked with Hypothesis.

- Valid messages, concatenated and cut anywhere, come back unchanged.
- Arbitrary bytes only ever raise `FramingError`; until then the messages handed back
  are exactly the stream's leading bytes, and what is held stays within the limit
  (h11's fuzzing invariant). An interim reply is only ever HTTP's ``100 Continue``,
  offered while part of a message is held.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcp_multiplexer.core.interfaces import Framer
from tcp_multiplexer.errors import FramingError
from tcp_multiplexer.protocols.echo.framing import LineFramer
from tcp_multiplexer.protocols.http.framing import (
    HTTP_CONTINUE,
    HttpRequestFramer,
    HttpResponseFramer,
)
from tcp_multiplexer.protocols.length_prefix import iso8583_framer, mpu_framer
from tcp_multiplexer.protocols.modbus.mbap import MODBUS_MAX_MESSAGE_SIZE, MbapFramer
from tests.framing.builders import http_request, iso, line, mbap, mpu
from tests.framing.splitting import MakeFramer, feed_pieces

EXAMPLES = settings(max_examples=200, deadline=None)

VALID = [
    pytest.param(
        LineFramer,
        st.binary(max_size=80).map(lambda text: line(text.replace(b"\n", b""))),
        id="echo",
    ),
    pytest.param(iso8583_framer, st.binary(max_size=300).map(iso), id="iso8583"),
    pytest.param(mpu_framer, st.binary(max_size=300).map(mpu), id="mpu"),
    pytest.param(
        MbapFramer,
        st.builds(
            mbap,
            st.integers(0, 0xFFFF),
            st.integers(0, 0xFF),
            st.binary(min_size=1, max_size=253),
        ),
        id="modbus",
    ),
]


@pytest.mark.parametrize(("make_framer", "messages"), VALID)
@EXAMPLES
@given(data=st.data())
def test_messages_come_back_unchanged_however_cut(
    make_framer: MakeFramer, messages: st.SearchStrategy[bytes], data: st.DataObject
) -> None:
    stream = data.draw(st.lists(messages, min_size=1, max_size=6), label="messages")
    wire = b"".join(stream)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=12), label="cuts")
    framer = make_framer()
    assert feed_pieces(framer, wire, cuts) == stream
    assert framer.buffered == 0
    assert framer.feed_eof() == []


def http_responses() -> HttpResponseFramer:
    """A response framer with a few requests outstanding, one of them HEAD."""
    framer = HttpResponseFramer(max_header_size=64, max_body_size=64)
    for method in (b"GET", b"HEAD", b"GET", b"POST"):
        framer.expect_response(http_request(method))
    return framer


HTTP_PIECES = st.sampled_from(
    [
        b"GET / HTTP/1.1\r\n",
        b"POST /x HTTP/1.0\r\n",
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 100 Continue\r\n",
        b"HTTP/1.0 204 \r\n",
        b"Content-Length: 3\r\n",
        b"Content-Length: 70\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Connection: close\r\n",
        b"Expect: 100-continue\r\n",
        b"Host: x\r\n",
        b"\r\n",
        b"\n",
        b"\r",
        b"3\r\nabc\r\n",
        b"0\r\n",
        b"a;ext=1\r\n",
        b":",
        b" ",
    ]
)
"""Fragments of HTTP that steer random streams past the first line into every state."""

ARBITRARY = [
    pytest.param(partial(LineFramer, max_message_size=32), 32, st.binary(max_size=40), id="echo"),
    pytest.param(partial(iso8583_framer, 64), 64, st.binary(max_size=40), id="iso8583"),
    pytest.param(
        partial(mpu_framer, 64),
        64,
        st.binary(max_size=12) | st.from_regex(rb"\A[0-9]{1,4}\Z"),
        id="mpu",
    ),
    pytest.param(
        MbapFramer,
        MODBUS_MAX_MESSAGE_SIZE,
        st.binary(max_size=40) | st.sampled_from([b"\x00\x01\x00\x00", b"\x00\x06\x01"]),
        id="modbus",
    ),
    pytest.param(
        partial(HttpRequestFramer, max_header_size=64, max_body_size=64),
        128,
        st.binary(max_size=12) | HTTP_PIECES,
        id="http requests",
    ),
    pytest.param(http_responses, 128, st.binary(max_size=12) | HTTP_PIECES, id="http responses"),
]


@pytest.mark.parametrize(("make_framer", "limit", "chunk"), ARBITRARY)
@EXAMPLES
@given(data=st.data())
def test_arbitrary_bytes_raise_only_framing_errors_and_stay_bounded(
    make_framer: Callable[[], Framer],
    limit: int,
    chunk: st.SearchStrategy[bytes],
    data: st.DataObject,
) -> None:
    chunks = data.draw(st.lists(chunk, max_size=30), label="chunks")
    framer = make_framer()
    fed = b""
    framed = b""
    try:
        for piece in chunks:
            framed += b"".join(framer.feed(piece))
            fed += piece
            assert framer.buffered <= limit
            assert fed.startswith(framed)
            assert len(fed) - len(framed) == framer.buffered
            interim = framer.take_interim_reply()
            assert interim is None or (interim == HTTP_CONTINUE and framer.buffered)
        framed += b"".join(framer.feed_eof())
        assert framed == fed
    except FramingError:
        with pytest.raises(FramingError):
            framer.feed(b"")
