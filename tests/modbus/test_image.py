"""The register image: a read is served from ONE held answer younger than the limit,
cut as the device would answer it; writes cut what they overlap; memory is bounded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tcp_multiplexer.protocols.modbus.device import pack_bits
from tcp_multiplexer.protocols.modbus.image import RegisterImage
from tcp_multiplexer.protocols.modbus.mbap import build_adu
from tests.modbus.adu import READ_COILS, READ_HOLDING, READ_INPUT, read_request, registers_answer

TTL = 0.5


def coils_answer(tid: int, unit: int, bits: list[bool]) -> bytes:
    packed = pack_bits(bits)
    return build_adu(tid, unit, bytes((READ_COILS, len(packed))) + packed)


def held(address: int = 100, values: list[int] | None = None, at: float = 10.0) -> RegisterImage:
    """An image holding one answer: holding registers from `address` of unit 1."""
    image = RegisterImage(TTL)
    values = list(range(address, address + 10)) if values is None else values
    request = read_request(7, 1, address, len(values))
    assert image.put(request, registers_answer(7, 1, values), at, at)
    return image


def test_a_read_is_served_until_just_before_its_ttl_ends_and_never_at_or_past_it() -> None:
    image = held()
    ask = read_request(9, 1, 100, 10)
    assert image.answer(ask, 10.0, TTL) == registers_answer(9, 1, list(range(100, 110)))
    assert image.answer(ask, 10.0 + TTL - 1e-6, TTL) is not None
    assert image.answer(ask, 10.0 + TTL, TTL) is None
    assert image.answer(ask, 10.0 + TTL + 1e-6, TTL) is None


def test_a_range_inside_one_answer_is_cut_from_it_with_the_clients_id_and_unit() -> None:
    image = held()
    assert image.answer(read_request(0xABCD, 1, 105, 2), 10.1, TTL) == registers_answer(
        0xABCD, 1, [105, 106]
    )
    assert image.answer(read_request(1, 1, 100, 1), 10.1, TTL) == registers_answer(1, 1, [100])
    assert image.answer(read_request(1, 1, 109, 1), 10.1, TTL) == registers_answer(1, 1, [109])


def test_a_read_reaching_past_the_answer_or_into_another_table_or_unit_is_not_served() -> None:
    image = held()
    for ask in (
        read_request(1, 1, 99, 2),
        read_request(1, 1, 109, 2),
        read_request(1, 2, 100, 2),
        read_request(1, 1, 100, 2, READ_INPUT),
    ):
        assert image.answer(ask, 10.1, TTL) is None


def test_two_answers_that_only_cover_a_read_together_never_answer_it() -> None:
    """No stitching: a 32-bit value over registers 109 and 110 would mix two moments."""
    image = held(100)
    assert image.put(read_request(2, 1, 110, 10), registers_answer(2, 1, [0] * 10), 10.2, 10.2)
    assert image.answer(read_request(3, 1, 109, 2), 10.3, TTL) is None
    assert image.answer(read_request(3, 1, 110, 2), 10.3, TTL) == registers_answer(3, 1, [0, 0])


def test_the_youngest_answer_holding_a_range_serves_it() -> None:
    image = held(100, [1] * 10, at=10.0)
    assert image.put(read_request(2, 1, 104, 20), registers_answer(2, 1, [2] * 20), 10.2, 10.2)
    assert image.answer(read_request(3, 1, 104, 2), 10.3, TTL) == registers_answer(3, 1, [2, 2])
    assert image.answer(read_request(3, 1, 100, 2), 10.3, TTL) == registers_answer(3, 1, [1, 1])


def test_an_older_answer_a_newer_one_covers_is_dropped() -> None:
    image = held(100, at=10.0)
    assert image.put(read_request(2, 1, 90, 30), registers_answer(2, 1, [5] * 30), 10.2, 10.2)
    assert image.answers_held() == 1


def test_a_write_cuts_what_it_wrote_out_of_every_answer_it_overlaps() -> None:
    image = held(100)
    assert image.forget(1, READ_HOLDING, 104, 2) == 1
    assert image.answer(read_request(1, 1, 100, 10), 10.1, TTL) is None
    assert image.answer(read_request(1, 1, 104, 1), 10.1, TTL) is None
    assert image.answer(read_request(1, 1, 105, 1), 10.1, TTL) is None
    assert image.answer(read_request(1, 1, 100, 4), 10.1, TTL) == registers_answer(
        1, 1, [100, 101, 102, 103]
    )
    assert image.answer(read_request(1, 1, 106, 4), 10.1, TTL) == registers_answer(
        1, 1, [106, 107, 108, 109]
    )
    assert image.forget(1, READ_HOLDING, 200, 5) == 0, "no overlap, nothing cut"
    assert image.forget(1, READ_INPUT, 100, 10) == 0, "another table"


def test_an_answer_arriving_with_a_range_written_meanwhile_is_held_without_it() -> None:
    image = RegisterImage(TTL)
    request = read_request(1, 1, 0, 10)
    assert image.put(request, registers_answer(1, 1, list(range(10))), 10.0, 10.0, cut=[(3, 5)])
    assert image.answer(read_request(2, 1, 0, 3), 10.1, TTL) == registers_answer(2, 1, [0, 1, 2])
    assert image.answer(read_request(2, 1, 2, 2), 10.1, TTL) is None
    assert image.answer(read_request(2, 1, 5, 5), 10.1, TTL) == registers_answer(
        2, 1, [5, 6, 7, 8, 9]
    )


def test_an_answer_that_does_not_fit_its_read_is_not_held() -> None:
    image = RegisterImage(TTL)
    assert not image.put(read_request(1, 1, 0, 10), registers_answer(1, 1, [1, 2]), 10.0, 10.0)
    assert image.answers_held() == 0


def test_each_table_holds_at_most_max_held_answers_the_oldest_go_first() -> None:
    image = RegisterImage(10.0, max_held=3)
    for index in range(5):
        request = read_request(1, 1, 100 * index, 2)
        assert image.put(
            request, registers_answer(1, 1, [index, index]), 10.0 + index, 10.0 + index
        )
    assert image.answers_held() == 3
    assert image.answer(read_request(1, 1, 0, 2), 14.5, 10.0) is None
    assert image.answer(read_request(1, 1, 400, 2), 14.5, 10.0) == registers_answer(1, 1, [4, 4])


def test_answers_older_than_keep_go_when_their_table_next_changes() -> None:
    image = held(100, at=10.0)
    assert image.put(read_request(1, 1, 500, 1), registers_answer(1, 1, [1]), 11.0, 11.0)
    assert image.answers_held() == 1
    assert image.values_held(11.0) == 1


def test_oldest_age_is_the_age_of_the_oldest_youngest_answer_over_the_range() -> None:
    image = held(100, at=10.0)
    assert image.put(read_request(2, 1, 105, 10), registers_answer(2, 1, [0] * 10), 10.2, 10.2)
    assert abs((image.oldest_age(1, READ_HOLDING, 100, 15, 10.3) or 0) - 0.3) < 1e-9
    assert abs((image.oldest_age(1, READ_HOLDING, 105, 10, 10.3) or 0) - 0.1) < 1e-9
    assert image.oldest_age(1, READ_HOLDING, 100, 16, 10.3) is None, "115 was never read"


@given(
    bits=st.lists(st.booleans(), min_size=1, max_size=200),
    data=st.data(),
)
def test_coils_are_re_packed_from_their_first_bit(bits: list[bool], data: st.DataObject) -> None:
    origin = data.draw(st.integers(0, 1000))
    first = data.draw(st.integers(0, len(bits) - 1))
    count = data.draw(st.integers(1, len(bits) - first))
    image = RegisterImage(TTL)
    assert image.put(
        read_request(1, 1, origin, len(bits), READ_COILS), coils_answer(1, 1, bits), 10.0, 10.0
    )
    ask = read_request(5, 1, origin + first, count, READ_COILS)
    assert image.answer(ask, 10.1, TTL) == coils_answer(5, 1, bits[first : first + count])


@given(
    values=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=125),
    data=st.data(),
)
def test_any_range_inside_an_answer_is_what_the_device_would_answer(
    values: list[int], data: st.DataObject
) -> None:
    origin = data.draw(st.integers(0, 65536 - len(values)))
    first = data.draw(st.integers(0, len(values) - 1))
    count = data.draw(st.integers(1, len(values) - first))
    image = RegisterImage(TTL)
    assert image.put(read_request(1, 1, origin, len(values)), registers_answer(1, 1, values), 1, 1)
    ask = read_request(3, 1, origin + first, count)
    assert image.answer(ask, 1.2, TTL) == registers_answer(3, 1, values[first : first + count])
