"""ReadCache: answers kept for their TTL and never past it, dropped by overlapping writes."""

from __future__ import annotations

import pytest

from tcp_multiplexer.protocols.modbus.cache import ReadCache, ReadKey

TTL = 0.5
HOLDING = frozenset({3})
COILS = frozenset({1})


def key(unit: int = 1, function: int = 3, address: int = 100, quantity: int = 10) -> ReadKey:
    return ReadKey(unit, function, address, quantity)


def reply(tag: int) -> bytes:
    """A stand-in answer; the cache never looks inside."""
    return bytes((0, tag, 0, 0, 0, 3, 1, 3, tag))


def test_an_entry_is_served_until_just_before_its_ttl_ends() -> None:
    cache = ReadCache(TTL)
    cache.put(key(), reply(1), now=10.0)
    assert cache.get(key(), now=10.0) == reply(1)
    assert cache.get(key(), now=10.0 + TTL - 1e-6) == reply(1)


@pytest.mark.parametrize(
    "age",
    [pytest.param(TTL, id="exactly-ttl"), pytest.param(TTL + 1e-6, id="past-ttl")],
)
def test_an_entry_is_never_served_at_or_past_its_ttl(age: float) -> None:
    cache = ReadCache(TTL)
    cache.put(key(), reply(1), now=10.0)
    assert cache.get(key(), now=10.0 + age) is None
    assert len(cache) == 0, "an expired entry is dropped when found"
    assert cache.get(key(), now=10.0) is None, "and does not come back"


def test_a_new_answer_replaces_the_old_one_and_restarts_its_ttl() -> None:
    cache = ReadCache(TTL)
    cache.put(key(), reply(1), now=10.0)
    cache.put(key(), reply(2), now=10.4)
    assert len(cache) == 1
    assert cache.get(key(), now=10.0 + TTL + 0.1) == reply(2)
    assert cache.get(key(), now=10.4 + TTL) is None


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(key(unit=2), id="unit"),
        pytest.param(key(function=4), id="function"),
        pytest.param(key(address=101), id="address"),
        pytest.param(key(quantity=11), id="quantity"),
    ],
)
def test_entries_are_kept_apart_by_every_field_of_the_key(other: ReadKey) -> None:
    cache = ReadCache(TTL)
    cache.put(key(), reply(1), now=0.0)
    assert cache.get(other, now=0.0) is None
    cache.put(other, reply(2), now=0.0)
    assert cache.get(key(), now=0.0) == reply(1)
    assert cache.get(other, now=0.0) == reply(2)


@pytest.mark.parametrize(
    ("start", "count", "dropped"),
    [
        pytest.param(100, 1, True, id="first-register"),
        pytest.param(109, 1, True, id="last-register"),
        pytest.param(95, 6, True, id="overlaps-the-start"),
        pytest.param(105, 20, True, id="overlaps-the-end"),
        pytest.param(90, 40, True, id="covers-all"),
        pytest.param(103, 2, True, id="inside"),
        pytest.param(99, 1, False, id="just-before"),
        pytest.param(110, 1, False, id="just-after"),
        pytest.param(90, 10, False, id="ends-where-it-starts"),
    ],
)
def test_a_write_drops_exactly_the_reads_it_overlaps(start: int, count: int, dropped: bool) -> None:
    """The cached read covers registers 100..109."""
    cache = ReadCache(TTL)
    cache.put(key(), reply(1), now=0.0)
    assert cache.invalidate(1, HOLDING, start, count) == int(dropped)
    assert (cache.get(key(), now=0.0) is None) is dropped


def test_a_write_leaves_other_units_and_other_tables_alone() -> None:
    cache = ReadCache(TTL)
    cache.put(key(unit=1), reply(1), now=0.0)
    cache.put(key(unit=2), reply(2), now=0.0)
    cache.put(key(function=4), reply(4), now=0.0)
    cache.put(key(function=1), reply(5), now=0.0)
    assert cache.invalidate(1, HOLDING, 100, 10) == 1
    assert cache.get(key(unit=1), now=0.0) is None
    assert cache.get(key(unit=2), now=0.0) == reply(2)
    assert cache.get(key(function=4), now=0.0) == reply(4), "input registers are not written"
    assert cache.get(key(function=1), now=0.0) == reply(5), "coils are another table"
    assert cache.invalidate(1, COILS, 100, 1) == 1
    assert cache.get(key(function=1), now=0.0) is None


def test_one_write_drops_every_read_it_overlaps() -> None:
    cache = ReadCache(TTL)
    for address in (0, 5, 10, 20):
        cache.put(key(address=address, quantity=10), reply(address), now=0.0)
    assert cache.invalidate(1, HOLDING, 9, 3) == 3
    assert len(cache) == 1
    assert cache.get(key(address=20, quantity=10), now=0.0) == reply(20)


def test_when_full_the_oldest_entry_goes_first() -> None:
    cache = ReadCache(10.0, max_entries=3)
    for address in range(3):
        cache.put(key(address=address), reply(address), now=float(address))
    cache.put(key(address=3), reply(3), now=3.0)
    assert len(cache) == 3
    assert cache.get(key(address=0), now=3.0) is None
    for address in (1, 2, 3):
        assert cache.get(key(address=address), now=3.0) == reply(address)


def test_when_full_expired_entries_go_before_younger_ones() -> None:
    cache = ReadCache(1.0, max_entries=3)
    cache.put(key(address=0), reply(0), now=0.0)
    cache.put(key(address=1), reply(1), now=0.0)
    cache.put(key(address=2), reply(2), now=5.0)
    cache.put(key(address=3), reply(3), now=5.5)
    assert len(cache) == 2, "both expired entries were evicted, not just one"
    assert cache.get(key(address=2), now=5.5) == reply(2)
    assert cache.get(key(address=3), now=5.5) == reply(3)


def test_memory_stays_bounded() -> None:
    cache = ReadCache(10.0, max_entries=16)
    for address in range(1000):
        cache.put(key(address=address), reply(address & 0xFF), now=0.0)
    assert len(cache) == 16
    assert cache.get(key(address=999), now=0.0) == reply(999 & 0xFF)


@pytest.mark.parametrize("ttl", [pytest.param(0.0, id="zero"), pytest.param(-1.0, id="negative")])
def test_a_cache_needs_a_positive_ttl(ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        ReadCache(ttl)
