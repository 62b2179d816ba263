"""Length-prefixed framers: ISO-8583 (2-byte binary) and MPU (4 ASCII digits)."""

from __future__ import annotations

from functools import partial

import pytest

from tcp_multiplexer.errors import IncompleteMessage, MalformedMessage, MessageTooLarge
from tcp_multiplexer.protocols.length_prefix import (
    ISO8583_MAX_MESSAGE_SIZE,
    MPU_MAX_MESSAGE_SIZE,
    iso8583_framer,
    mpu_framer,
)
from tests.framing.builders import iso, mpu
from tests.framing.splitting import MakeFramer, assert_frames, assert_poisoned, assert_rejected


@pytest.mark.parametrize(
    "messages",
    [
        pytest.param([iso(b"\x02\x00" + bytes(range(40)))], id="one"),
        pytest.param([iso(b"")], id="empty body"),
        pytest.param([iso(b"\n" * 3), iso(b"\x00\x05"), iso(b"")], id="three"),
        pytest.param([iso(b"m" * 0xFFFF)], id="largest a 2-byte length announces"),
    ],
)
def test_iso8583_frames(messages: list[bytes]) -> None:
    assert_frames(iso8583_framer, messages, then=iso(b"next"))


@pytest.mark.parametrize(
    "messages",
    [
        pytest.param([mpu(b"0200hello")], id="one"),
        pytest.param([mpu(b"")], id="empty body"),
        pytest.param([mpu(b"1234"), mpu(b"\x00"), mpu(b"")], id="three, bodies of digits"),
        pytest.param([mpu(b"m" * 9999)], id="largest 4 digits announce"),
    ],
)
def test_mpu_frames(messages: list[bytes]) -> None:
    assert_frames(mpu_framer, messages, then=mpu(b"next"))


def test_ceilings_count_the_prefix() -> None:
    assert ISO8583_MAX_MESSAGE_SIZE == 2 + 65535
    assert MPU_MAX_MESSAGE_SIZE == 4 + 9999


def test_iso8583_limit_is_checked_when_the_prefix_arrives() -> None:
    small = partial(iso8583_framer, max_message_size=10)
    assert_frames(small, [iso(b"x" * 8)])
    assert_rejected(small, iso(b"", length=9), MessageTooLarge, "11 bytes exceeds .* 10")


def test_mpu_limit_is_checked_when_the_prefix_arrives() -> None:
    small = partial(mpu_framer, max_message_size=10)
    assert_frames(small, [mpu(b"x" * 6)])
    assert_rejected(small, mpu(b"", prefix=b"0007"), MessageTooLarge, "11 bytes exceeds")


def test_a_limit_above_the_protocol_ceiling_is_capped() -> None:
    framer = iso8583_framer(max_message_size=10**9)
    largest = iso(b"m" * 0xFFFF)
    assert framer.feed(largest) == [largest]


@pytest.mark.parametrize(
    "prefix",
    [
        pytest.param(b" 123", id="leading space"),
        pytest.param(b"123 ", id="trailing space"),
        pytest.param(b"+012", id="plus sign"),
        pytest.param(b"-001", id="minus sign"),
        pytest.param(b"1_23", id="underscore"),
        pytest.param(b"0x1f", id="hex"),
        pytest.param(b"\xd9\xa1\xd9\xa2", id="non-ascii"),
    ],
)
def test_mpu_prefix_must_be_ascii_digits(prefix: bytes) -> None:
    assert_rejected(mpu_framer, mpu(b"", prefix=prefix), MalformedMessage, "is not digits")


@pytest.mark.parametrize(
    ("make_framer", "partial"),
    [
        pytest.param(iso8583_framer, iso(b"abc")[:1], id="iso8583 in the prefix"),
        pytest.param(iso8583_framer, iso(b"abc")[:-1], id="iso8583 in the body"),
        pytest.param(mpu_framer, mpu(b"abc")[:3], id="mpu in the prefix"),
        pytest.param(mpu_framer, mpu(b"abc")[:-1], id="mpu in the body"),
    ],
)
def test_eof_inside_a_message_is_incomplete(make_framer: MakeFramer, partial: bytes) -> None:
    framer = make_framer()
    assert framer.feed(partial) == []
    with pytest.raises(IncompleteMessage, match="inside a message"):
        framer.feed_eof()
    assert_poisoned(framer, IncompleteMessage, "inside a message")


@pytest.mark.parametrize("make_framer", [iso8583_framer, mpu_framer])
def test_eof_between_messages_returns_nothing(make_framer: MakeFramer) -> None:
    framer = make_framer()
    assert framer.feed_eof() == []


def test_expect_response_changes_nothing() -> None:
    framer = iso8583_framer()
    framer.expect_response(iso(b"request"))
    assert framer.feed(iso(b"reply")) == [iso(b"reply")]
