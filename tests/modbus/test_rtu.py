"""Modbus RTU framing: the CRC, answer lengths from function codes, the answer framer
(cut anywhere, damaged frames, late and foreign frames, noise), the request framer and
the translation to and from Modbus/TCP."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcp_multiplexer.errors import DamagedMessage, IncompleteMessage, MessageTooLarge
from tcp_multiplexer.protocols.modbus.codec import RtuTargetCodec
from tcp_multiplexer.protocols.modbus.rtu import (
    RtuAnswerFramer,
    RtuRequestFramer,
    adu_from_rtu,
    answer_length,
    crc16,
    crc_ok,
    request_length,
    rtu_from_adu,
    with_crc,
)
from tests.modbus.adu import read_request, registers_answer, write_register, write_registers


def test_the_crc_of_the_specification_examples() -> None:
    # Modbus over serial line v1.02, 6.2.2: "11 03 00 6B 00 03" has CRC 0x8776, sent 76 87.
    assert crc16(bytes.fromhex("11 03 00 6B 00 03")) == 0x8776
    assert with_crc(bytes.fromhex("01 03 00 00 00 0A")).hex(" ") == "01 03 00 00 00 0a c5 cd"
    assert crc_ok(bytes.fromhex("01 03 00 00 00 0A C5 CD"))
    assert not crc_ok(bytes.fromhex("01 03 00 00 00 0A C5 CE"))


@pytest.mark.parametrize(
    ("frame", "size"),
    [
        pytest.param("01 03 14", 3 + 20 + 2, id="read-byte-count"),
        pytest.param("01 83", 5, id="exception"),
        pytest.param("01 06", 8, id="write-single"),
        pytest.param("01 10", 8, id="write-multiple"),
        pytest.param("01 16", 10, id="mask-write"),
        pytest.param("01 17 04", 3 + 4 + 2, id="read-write"),
        pytest.param("01 18 00 06", 4 + 6 + 2, id="read-fifo"),
        pytest.param("01 2b 0e 01 01 00 00 02 00 03 41 42 43 01 01 58", 8 + 5 + 3 + 2, id="mei"),
    ],
)
def test_answer_lengths_come_from_the_function_code(frame: str, size: int) -> None:
    assert answer_length(bytes.fromhex(frame)) == size


def test_an_answer_length_needs_its_byte_count_and_an_unknown_function_is_damaged() -> None:
    assert answer_length(b"\x01") is None
    assert answer_length(b"\x01\x03") is None
    with pytest.raises(DamagedMessage, match="function code 100"):
        answer_length(b"\x01\x64")


@pytest.mark.parametrize(
    ("adu", "size"),
    [
        pytest.param(read_request(1, 1, 0, 10), 8, id="read"),
        pytest.param(write_register(1, 1, 0, 5), 8, id="write-single"),
        pytest.param(write_registers(1, 1, 0, [1, 2, 3]), 9 + 6, id="write-multiple"),
    ],
)
def test_request_lengths(adu: bytes, size: int) -> None:
    frame = rtu_from_adu(adu)
    assert request_length(frame) == len(frame) == size


def expecting(request: bytes) -> RtuAnswerFramer:
    framer = RtuAnswerFramer()
    framer.expect_response(rtu_from_adu(request))
    return framer


READ = read_request(7, 3, 100, 2)
ANSWER = with_crc(registers_answer(0, 3, [0x1234, 0x5678])[6:])


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(0, len(ANSWER)), max_size=6))
def test_an_answer_cut_anywhere_is_one_frame_without_its_crc(cuts: list[int]) -> None:
    framer = expecting(READ)
    bounds = [0, *sorted(set(cuts)), len(ANSWER)]
    frames: list[bytes] = []
    for start, end in itertools.pairwise(bounds):
        frames += framer.feed(ANSWER[start:end])
    assert frames == [ANSWER[:-2]]
    assert framer.buffered == 0


def test_a_bad_crc_is_damaged_and_the_next_answer_frames() -> None:
    framer = expecting(READ)
    with pytest.raises(DamagedMessage, match="bad CRC"):
        framer.feed(ANSWER[:-1] + bytes([ANSWER[-1] ^ 0xFF]))
    assert framer.buffered == 0
    assert framer.feed(ANSWER) == [], "nothing is expected until the next request"
    framer.expect_response(rtu_from_adu(READ))
    assert framer.feed(ANSWER) == [ANSWER[:-2]]


def test_a_late_answer_from_another_unit_is_skipped() -> None:
    framer = expecting(READ)
    other = with_crc(registers_answer(0, 9, [1, 2])[6:])
    assert framer.feed(other + ANSWER[:4]) == []
    assert framer.feed(ANSWER[4:]) == [ANSWER[:-2]]


def test_noise_before_a_request_is_dropped_when_it_is_sent() -> None:
    framer = RtuAnswerFramer()
    assert framer.feed(b"\x00\xff\x13") == []
    framer.expect_response(rtu_from_adu(READ))
    assert framer.feed(ANSWER) == [ANSWER[:-2]]


def test_a_broadcast_expects_nothing() -> None:
    framer = expecting(write_register(1, 0, 5, 1))
    assert framer.feed(ANSWER) == []


def test_an_answer_cut_short_at_eof_is_incomplete() -> None:
    framer = expecting(READ)
    assert framer.feed(ANSWER[:5]) == []
    with pytest.raises(IncompleteMessage):
        framer.feed_eof()


def test_the_request_framer_cuts_requests_and_drops_damaged_ones() -> None:
    framer = RtuRequestFramer()
    one, two = rtu_from_adu(READ), rtu_from_adu(write_registers(2, 1, 9, [1, 2]))
    assert framer.feed(one + two[:3]) == [one]
    assert framer.feed(two[3:]) == [two]
    with pytest.raises(DamagedMessage):
        framer.feed(one[:-1] + b"\x00")
    assert framer.feed(one) == [one]


def test_good_requests_before_an_oversized_one_are_kept_and_the_size_is_known_early() -> None:
    """Found by the fuzzer: a request announcing more than 256 bytes after a good one
    lost the good one when read together, not when read apart."""
    framer = RtuRequestFramer()
    one = rtu_from_adu(READ)
    oversized = bytes((1, 15, 0, 0, 0, 8, 255))  # write coils, 255 data bytes: 264 in all
    assert framer.feed(one + oversized) == [one]
    with pytest.raises(MessageTooLarge):
        framer.feed(b"")
    with pytest.raises(MessageTooLarge, match="264 bytes"):
        RtuRequestFramer().feed(oversized)


def test_good_requests_before_a_damaged_one_in_the_same_read_are_kept() -> None:
    framer = RtuRequestFramer()
    one = rtu_from_adu(READ)
    damaged = one[:-1] + bytes((one[-1] ^ 0xFF,))
    assert framer.feed(one + one + damaged) == [one, one]
    with pytest.raises(DamagedMessage):
        framer.feed(b"")
    assert framer.buffered == 0
    assert framer.feed(one) == [one]


def test_the_codec_translates_both_ways_with_the_unit_map() -> None:
    events: Counter[str] = Counter()
    codec = RtuTargetCodec({3: 1}, events)
    wire = codec.encode(READ, 0)
    assert wire == with_crc(b"\x01" + READ[7:]), "MBAP off, unit mapped, CRC on"
    answer = with_crc(registers_answer(0, 1, [5, 6])[6:])
    assert codec.decode(READ, answer[:-2]) == registers_answer(7, 3, [5, 6]), (
        "the client's transaction id and unit come back"
    )
    assert codec.answer_expected(wire)
    assert not codec.answer_expected(with_crc(b"\x00\x06\x00\x05\x00\x01"))
    exception = bytes.fromhex("01 83 02")
    assert codec.decode(READ, exception)[7:] == b"\x83\x02"
    assert events["device_exceptions"] == 1


def test_adu_and_rtu_round_trip() -> None:
    request = write_registers(0x1234, 9, 40100, [1, 2, 3])
    frame = rtu_from_adu(request)
    assert adu_from_rtu(request, frame[:-2]) == request


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(0, 8 + len(ANSWER)), max_size=6))
def test_with_local_echo_the_echo_then_the_answer_cut_anywhere_is_the_answer(
    cuts: list[int],
) -> None:
    framer = RtuAnswerFramer(echo=True)
    sent = rtu_from_adu(READ)
    framer.expect_response(sent)
    stream = sent + ANSWER
    bounds = [0, *sorted(set(cuts)), len(stream)]
    frames: list[bytes] = []
    for start, end in itertools.pairwise(bounds):
        frames += framer.feed(stream[start:end])
    assert frames == [ANSWER[:-2]]


def test_an_echo_that_differs_from_the_request_is_damaged() -> None:
    framer = RtuAnswerFramer(echo=True)
    sent = rtu_from_adu(READ)
    framer.expect_response(sent)
    assert framer.feed(sent[:3]) == []
    with pytest.raises(DamagedMessage, match="echo"):
        framer.feed(bytes([sent[3] ^ 1]) + sent[4:] + ANSWER)
    # The next request frames again.
    framer.expect_response(sent)
    assert framer.feed(sent + ANSWER) == [ANSWER[:-2]]
