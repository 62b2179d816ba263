"""Modbus/TCP: MbapFramer, the ADU helpers and the Modbus client and target codecs."""

from __future__ import annotations

from collections import Counter

import pytest

from tcp_multiplexer.core.interfaces import Correlation, FailureReason
from tcp_multiplexer.errors import (
    FramingError,
    IncompleteMessage,
    MalformedMessage,
    MessageTooLarge,
)
from tcp_multiplexer.protocols.modbus.codec import (
    LenientModbusTargetCodec,
    ModbusClientCodec,
    ModbusTargetCodec,
)
from tcp_multiplexer.protocols.modbus.mbap import (
    MODBUS_MAX_MESSAGE_SIZE,
    ExceptionCode,
    FunctionCode,
    MbapFramer,
    build_adu,
    exception_response,
    function_code,
    read_request,
    transaction_id,
    unit_id,
    with_transaction_id,
)
from tcp_multiplexer.protocols.spec import ProtocolName
from tests.framing.builders import mbap, mbap_header
from tests.framing.splitting import assert_frames, assert_poisoned, assert_rejected

READ_HOLDING = bytes((0x03, 0x00, 0x10, 0x00, 0x02))
"""Read holding registers: function 3, start address 0x0010, 2 registers."""
READ_HOLDING_REPLY = bytes((0x03, 0x04, 0x12, 0x34, 0x56, 0x78))
WRITE_SINGLE = bytes((0x06, 0x00, 0x01, 0x00, 0x03))


@pytest.mark.parametrize(
    "messages",
    [
        pytest.param([mbap(1, 1, READ_HOLDING)], id="request"),
        pytest.param([mbap(0xFFFF, 0xFF, READ_HOLDING_REPLY)], id="reply, largest ids"),
        pytest.param([mbap(7, 1, b"\x07")], id="shortest: length 2"),
        pytest.param([mbap(7, 1, b"\x10" + b"\xaa" * 252)], id="longest: 260 bytes"),
        pytest.param([mbap(9, 2, b"\x83\x02")], id="exception reply"),
        pytest.param(
            [mbap(1, 1, READ_HOLDING), mbap(2, 1, WRITE_SINGLE), mbap(3, 5, b"\x07")],
            id="three in one stream",
        ),
    ],
)
def test_frames_adus(messages: list[bytes]) -> None:
    assert_frames(MbapFramer, messages, then=mbap(0x1234, 1, WRITE_SINGLE))


def test_longest_adu_is_260_bytes() -> None:
    assert MODBUS_MAX_MESSAGE_SIZE == 260
    assert len(mbap(1, 1, b"\x10" + bytes(252))) == MODBUS_MAX_MESSAGE_SIZE


@pytest.mark.parametrize(
    ("header", "error", "match"),
    [
        pytest.param(
            mbap_header(1, protocol=1, length=6), MalformedMessage, "protocol id 1", id="proto 1"
        ),
        pytest.param(
            mbap_header(1, protocol=0xFFFF, length=6),
            MalformedMessage,
            "protocol id 65535",
            id="protocol id 0xffff",
        ),
        pytest.param(mbap_header(1, length=1), MalformedMessage, "length 1 is below 2", id="len 1"),
        pytest.param(mbap_header(1, length=0), MalformedMessage, "length 0 is below", id="len 0"),
        pytest.param(mbap_header(1, length=255), MessageTooLarge, "255 exceeds 254", id="len 255"),
        pytest.param(mbap_header(1, length=0xFFFF), MessageTooLarge, "65535", id="len 0xffff"),
    ],
)
def test_bad_header_is_rejected_as_soon_as_it_is_in(
    header: bytes, error: type[FramingError], match: str
) -> None:
    assert_rejected(MbapFramer, header, error, match)


def test_bad_header_after_a_good_adu_in_one_read() -> None:
    framer = MbapFramer()
    with pytest.raises(MalformedMessage, match="protocol id 2"):
        framer.feed(mbap(1, 1, READ_HOLDING) + mbap(2, 1, READ_HOLDING, protocol=2))
    assert_poisoned(framer, MalformedMessage, "protocol id 2")


def test_bad_adu_of_its_own_announced_size_is_not_taken_by_the_fast_path() -> None:
    framer = MbapFramer()
    with pytest.raises(MalformedMessage, match="protocol id 1"):
        framer.feed(mbap(1, 1, READ_HOLDING, protocol=1))


@pytest.mark.parametrize(
    "partial",
    [
        pytest.param(mbap(1, 1, READ_HOLDING)[:3], id="in the header"),
        pytest.param(mbap(1, 1, READ_HOLDING)[:-1], id="in the pdu"),
    ],
)
def test_eof_inside_an_adu_is_incomplete(partial: bytes) -> None:
    framer = MbapFramer()
    assert framer.feed(partial) == []
    assert framer.buffered == len(partial)
    with pytest.raises(IncompleteMessage, match="inside a message"):
        framer.feed_eof()
    assert_poisoned(framer, IncompleteMessage, "inside a message")


def test_eof_between_adus_returns_nothing() -> None:
    framer = MbapFramer()
    framer.feed(mbap(1, 1, READ_HOLDING))
    assert framer.feed_eof() == []


def test_expect_response_changes_nothing() -> None:
    framer = MbapFramer()
    framer.expect_response(mbap(1, 1, READ_HOLDING))
    assert framer.feed(mbap(1, 1, READ_HOLDING_REPLY)) == [mbap(1, 1, READ_HOLDING_REPLY)]


def test_adu_helpers() -> None:
    adu = build_adu(0xBEEF, 0x11, READ_HOLDING)
    assert adu == mbap(0xBEEF, 0x11, READ_HOLDING)
    assert transaction_id(adu) == 0xBEEF
    assert unit_id(adu) == 0x11
    assert function_code(adu) == 0x03
    assert with_transaction_id(adu, 7) == mbap(7, 0x11, READ_HOLDING)


@pytest.mark.parametrize(
    ("function", "code"),
    [
        pytest.param(0x03, ExceptionCode.GATEWAY_PATH_UNAVAILABLE, id="read, 0x0a"),
        pytest.param(0x10, ExceptionCode.GATEWAY_TARGET_FAILED, id="write multiple, 0x0b"),
        pytest.param(0x81, ExceptionCode.ILLEGAL_FUNCTION, id="flag already set stays one byte"),
    ],
)
def test_exception_response_keeps_ids_and_flags_the_function(function: int, code: int) -> None:
    request = mbap(0x0102, 9, bytes((function, 0, 0, 0, 1)))
    assert exception_response(request, code) == mbap(0x0102, 9, bytes((function | 0x80, code)))


def test_codec_identity() -> None:
    assert ModbusClientCodec().name is ProtocolName.MODBUS
    codec = ModbusTargetCodec()
    assert codec.correlation is Correlation.BY_ID
    assert codec.id_space == 0x10000
    assert LenientModbusTargetCodec(lenient_ids=True).correlation is Correlation.FIFO


def test_codec_framers_frame_adus() -> None:
    request = mbap(1, 1, READ_HOLDING)
    reply = mbap(1, 1, READ_HOLDING_REPLY)
    assert ModbusClientCodec().request_framer().feed(request) == [request]
    responses = ModbusTargetCodec().response_framer()
    responses.expect_response(request)
    assert responses.feed(reply) == [reply]


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        pytest.param(FailureReason.UNAVAILABLE, 0x0A, id="unavailable"),
        pytest.param(FailureReason.BUSY, 0x06, id="busy"),
        pytest.param(FailureReason.TIMEOUT, 0x0B, id="timeout"),
        pytest.param(FailureReason.BROKEN, 0x0B, id="broken"),
    ],
)
def test_codec_error_reply_is_an_exception_adu(reason: FailureReason, code: int) -> None:
    request = mbap(0x4242, 3, READ_HOLDING)
    assert ModbusClientCodec().gateway_answer(request, reason) == mbap(
        0x4242, 3, bytes((0x83, code))
    )
    assert not ModbusClientCodec().gateway_answers_close


def test_codec_keeps_connections() -> None:
    requests = ModbusClientCodec().request_framer()
    assert requests.feed(mbap(1, 1, READ_HOLDING)) == [mbap(1, 1, READ_HOLDING)]
    assert requests.closing_at == -1
    answers = ModbusTargetCodec().response_framer()
    assert answers.feed(mbap(1, 1, READ_HOLDING_REPLY)) == [mbap(1, 1, READ_HOLDING_REPLY)]
    assert answers.closing_at == -1


def test_codec_rewrites_and_restores_ids() -> None:
    codec = ModbusTargetCodec()
    request = mbap(0x0A0B, 7, READ_HOLDING)
    wire = codec.encode(request, 3)
    assert wire == mbap(3, 7, READ_HOLDING)
    assert codec.answer_id(wire) == 3
    target_reply = mbap(3, 0, READ_HOLDING_REPLY)
    assert codec.decode(request, target_reply) == mbap(0x0A0B, 7, READ_HOLDING_REPLY)


def test_the_lenient_codec_sends_the_clients_own_id() -> None:
    request = mbap(0x0A0B, 7, READ_HOLDING)
    assert LenientModbusTargetCodec(lenient_ids=True).encode(request, 3) == request


def test_the_target_codec_counts_device_exceptions() -> None:
    events: Counter[str] = Counter()
    codec = ModbusTargetCodec(events=events)
    request = mbap(1, 1, READ_HOLDING)
    codec.decode(request, mbap(9, 1, READ_HOLDING_REPLY))
    assert events["device_exceptions"] == 0
    codec.decode(request, mbap(9, 1, bytes((0x83, 0x02))))
    assert events["device_exceptions"] == 1


def test_read_request_builds_a_read_adu() -> None:
    request = read_request(0x1234, 7, 40000, 10, FunctionCode.READ_INPUT_REGISTERS)
    assert request == bytes.fromhex("1234 0000 0006 07 04 9c40 000a")
    assert MbapFramer().feed(request) == [request]
    assert read_request(1, 1, 0, 1)[7] == FunctionCode.READ_HOLDING_REGISTERS
