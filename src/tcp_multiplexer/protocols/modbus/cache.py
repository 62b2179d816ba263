"""A time-bounded cache of Modbus read answers, invalidated by overlapping writes."""

from __future__ import annotations

from typing import Final, NamedTuple

DEFAULT_CACHE_ENTRIES: Final = 4096
"""Distinct reads remembered at most: a home setup polls tens, so this only bounds memory."""


class ReadKey(NamedTuple):
    """What identifies a read: unit, function code, first address, quantity."""

    unit: int
    function: int
    address: int
    quantity: int


class _Entry(NamedTuple):
    expires_at: float
    reply: bytes


class ReadCache:
    """Read answers by `ReadKey`, each valid for `ttl` seconds after it arrived.

    An entry is never served at or past its expiry time. Memory is bounded by
    `max_entries`: when full, expired entries go first, then the oldest.
    """

    __slots__ = ("_entries", "_max_entries", "_ttl")

    def __init__(self, ttl: float, max_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self._ttl = ttl
        self._max_entries = max_entries
        self._entries: dict[ReadKey, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: ReadKey, now: float) -> bytes | None:
        """The cached answer for `key`, or None if absent or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now >= entry.expires_at:
            del self._entries[key]
            return None
        return entry.reply

    def put(self, key: ReadKey, reply: bytes, now: float) -> None:
        """Remember `reply` for `key` until `now + ttl`."""
        entries = self._entries
        entries.pop(key, None)
        if len(entries) >= self._max_entries:
            self._evict(now)
        entries[key] = _Entry(now + self._ttl, reply)

    def invalidate(self, unit: int, functions: frozenset[int], start: int, count: int) -> int:
        """Drop entries of `unit` read with one of `functions` that overlap [start, start+count).

        Returns the number of entries dropped.
        """
        end = start + count
        stale = [
            key
            for key in self._entries
            if key.unit == unit
            and key.function in functions
            and key.address < end
            and start < key.address + key.quantity
        ]
        for key in stale:
            del self._entries[key]
        return len(stale)

    def _evict(self, now: float) -> None:
        entries = self._entries
        expired = [key for key, entry in entries.items() if now >= entry.expires_at]
        for key in expired:
            del entries[key]
        while len(entries) >= self._max_entries:
            del entries[next(iter(entries))]
