"""LineFramer: newline-delimited echo messages."""

from __future__ import annotations

import pytest

from tcp_multiplexer.errors import IncompleteMessage, MessageTooLarge
from tcp_multiplexer.protocols.echo.framing import LINE_MAX_MESSAGE_SIZE, LineFramer
from tests.framing.builders import line
from tests.framing.splitting import assert_frames, assert_poisoned, assert_rejected

SMALL_LIMIT = 8


def small_framer() -> LineFramer:
    return LineFramer(max_message_size=SMALL_LIMIT)


@pytest.mark.parametrize(
    "messages",
    [
        pytest.param([line(b"hello")], id="one line"),
        pytest.param([line(b"")], id="empty line"),
        pytest.param([line(b"a\rb\x00\xff")], id="binary bytes"),
        pytest.param([line(b"one"), line(b"two"), line(b"")], id="three in one stream"),
    ],
)
def test_frames_lines(messages: list[bytes]) -> None:
    assert_frames(LineFramer, messages, then=line(b"next"))


def test_line_of_exactly_the_limit_passes() -> None:
    assert_frames(small_framer, [line(b"x" * (SMALL_LIMIT - 1))], then=line(b"y"))


def test_default_limit_is_64_kib() -> None:
    longest = line(b"x" * (LINE_MAX_MESSAGE_SIZE - 1))
    assert LineFramer().feed(longest) == [longest]
    with pytest.raises(MessageTooLarge):
        LineFramer().feed(longest[:-1] + line(b"x"))


def test_partial_line_over_the_limit_is_rejected_as_soon_as_held() -> None:
    assert_rejected(small_framer, b"x" * (SMALL_LIMIT + 1), MessageTooLarge, "exceeds the limit")


def test_complete_line_over_the_limit_in_one_read_is_rejected() -> None:
    framer = small_framer()
    with pytest.raises(MessageTooLarge, match="exceeds the limit of 8"):
        framer.feed(line(b"ok") + line(b"x" * SMALL_LIMIT))
    assert_poisoned(framer, MessageTooLarge, "exceeds the limit")


def test_empty_feed_returns_nothing() -> None:
    framer = LineFramer()
    assert framer.feed(b"") == []
    assert framer.feed(line(b"a")) == [line(b"a")]


def test_search_resumes_where_it_stopped() -> None:
    framer = LineFramer()
    assert framer.feed(b"abc") == []
    assert framer.buffered == 3
    assert framer.feed(b"def") == []
    assert framer.feed(b"\nxy") == [line(b"abcdef")]
    assert framer.buffered == 2


def test_eof_with_nothing_buffered_returns_nothing() -> None:
    framer = LineFramer()
    framer.feed(line(b"done"))
    assert framer.feed_eof() == []


def test_eof_inside_a_line_is_incomplete() -> None:
    framer = LineFramer()
    framer.feed(b"partial")
    with pytest.raises(IncompleteMessage, match="7 bytes"):
        framer.feed_eof()
    assert_poisoned(framer, IncompleteMessage, "inside a message")


def test_expect_response_changes_nothing() -> None:
    framer = LineFramer()
    framer.expect_response(line(b"request"))
    assert framer.feed(line(b"reply")) == [line(b"reply")]


@pytest.mark.parametrize("limit", [0, -1])
def test_limit_must_be_positive(limit: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        LineFramer(max_message_size=limit)
