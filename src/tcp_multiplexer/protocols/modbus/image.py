"""The register image: what a Modbus device said lately, to answer reads without
asking it again.

Per unit and table (coils, discrete inputs, holding and input registers, by their read
function code) the image keeps the device's recent answers to reads, each as it came
(`Held`: the answer's bytes, the range it covers, and when it was read). A read is
answered from the image only if ONE held answer covers all of it and is young enough:
never stitched together from answers read at different moments, so a 32-bit or 64-bit
value spread over several registers never mixes halves of two moments. The answer is
built as the device would build it: function, byte count, the values (coils re-packed
from their first bit), the client's own transaction id and unit.

A write makes held answers unusable for the registers it writes (`forget`): each one it
overlaps is cut into what lies before and after them. A newer answer that covers an
older one replaces it; answers older than `keep` go when their table next changes, and
each table holds at most `max_held` answers (the oldest go first), so memory grows only
with what was read.

An answer's time is when its request was sent to the device (the device read the
values at some moment after that), so a value is never served older than the limit.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from itertools import pairwise
from typing import Final

from tcp_multiplexer.protocols.modbus.mbap import MBAP_HEADER_SIZE

MAX_HELD: Final = 1024
"""Answers held per unit and table at most: more than a whole register table read in
reads of 125 (525 answers)."""
VALUES_OFFSET: Final = MBAP_HEADER_SIZE + 2
"""Where the values begin in a read's answer ADU: header, function, byte count."""
_RANGE: Final = struct.Struct(">HH")
_ANSWER_HEAD: Final = struct.Struct(">HHBBB")
"""After the transaction id: protocol id, length, unit, function, byte count."""
BIT_READS: Final = frozenset({1, 2})
"""Read coils, read discrete inputs: one bit a value."""


class Held:
    """One device answer to a read, or the part of it a write left usable."""

    __slots__ = ("end", "key", "origin", "reply", "stamp", "start")

    def __init__(
        self, reply: bytes, origin: int, start: int, end: int, stamp: float, key: bytes | None
    ) -> None:
        self.reply = reply
        """The answer ADU as the client got it (client form)."""
        self.origin = origin
        """The address of the answer's first value."""
        self.start = start
        self.end = end
        """The usable range, [start, end): all of the answer until a write cuts it."""
        self.stamp = stamp
        """When the request that got it was sent to the device (loop time)."""
        self.key = key
        """The read it answers whole (unit, function, address, count as on the wire),
        None once a write cut it."""


def _table_key(unit: int, function: int) -> int:
    return unit << 8 | function


def reply_fits(function: int, count: int, reply: bytes) -> bool:
    """True if `reply` is a well-formed answer to a read of `count` values."""
    if len(reply) < VALUES_OFFSET:
        return False
    size = (count + 7) // 8 if function in BIT_READS else 2 * count
    return reply[VALUES_OFFSET - 1] == size and len(reply) == VALUES_OFFSET + size


def values_for(function: int, held: Held, address: int, count: int) -> bytes:
    """The values of [address, address + count) as `held`'s answer carries them,
    re-packed from the first bit for coils and discrete inputs."""
    offset = address - held.origin
    reply = held.reply
    if function in BIT_READS:
        bits = int.from_bytes(reply[VALUES_OFFSET:], "little") >> offset
        return (bits & ((1 << count) - 1)).to_bytes((count + 7) // 8, "little")
    first = VALUES_OFFSET + 2 * offset
    return reply[first : first + 2 * count]


class RegisterImage:
    """The device's recent answers by unit and table (see the module docstring)."""

    __slots__ = ("_exact", "_keep", "_max_held", "_tables")

    def __init__(self, keep: float, max_held: int = MAX_HELD) -> None:
        if keep <= 0:
            raise ValueError("keep must be positive")
        self._keep = keep
        self._max_held = max_held
        self._tables: dict[int, list[Held]] = {}
        """Held answers by unit and function (`_table_key`), oldest first."""
        self._exact: dict[bytes, Held] = {}
        """Whole answers by the read they answer (request bytes 6 to 12): most reads
        ask again what they asked before, and find it with one lookup."""

    @property
    def keep(self) -> float:
        """How long answers are kept (a reload may change it)."""
        return self._keep

    @keep.setter
    def keep(self, keep: float) -> None:
        self._keep = keep

    # ------------------------------------------------------------------ answering

    def answer(self, request: bytes, now: float, limit: float) -> bytes | None:
        """The answer to the read `request` (a well-formed read ADU) from one held
        answer read less than `limit` seconds before `now`, or None."""
        held = self._exact.get(request[6:12])
        if held is not None and now - held.stamp < limit:
            return request[:2] + held.reply[2:]
        address, count = _RANGE.unpack_from(request, 8)
        best = self._youngest(request[6], request[7], address, count, now, limit)
        if best is None:
            return None
        function = request[7]
        values = values_for(function, best, address, count)
        size = len(values)
        return request[:2] + _ANSWER_HEAD.pack(0, 3 + size, request[6], function, size) + values

    def values(
        self, unit: int, function: int, address: int, count: int, now: float, limit: float
    ) -> tuple[bytes, float] | None:
        """The values of [address, address + count) from the youngest ONE held answer
        read less than `limit` seconds before `now` (registers as on the wire, bits
        packed from the first), and when it was read; None if no answer holds them all."""
        best = self._youngest(unit, function, address, count, now, limit)
        if best is None:
            return None
        return values_for(function, best, address, count), best.stamp

    def _youngest(
        self, unit: int, function: int, address: int, count: int, now: float, limit: float
    ) -> Held | None:
        """The youngest held answer read less than `limit` before `now` that holds all
        of [address, address + count)."""
        table = self._tables.get(_table_key(unit, function))
        if not table:
            return None
        end = address + count
        best: Held | None = None
        for candidate in table:
            if (
                candidate.start <= address
                and end <= candidate.end
                and now - candidate.stamp < limit
                and (best is None or candidate.stamp > best.stamp)
            ):
                best = candidate
        return best

    # ------------------------------------------------------------------ learning

    def put(
        self,
        request: bytes,
        reply: bytes,
        stamp: float,
        now: float,
        *,
        cut: Iterable[tuple[int, int]] = (),
    ) -> bool:
        """Hold `reply`, the device's answer to the read `request` sent at `stamp`,
        except the ranges [start, end) in `cut` (written while it was on its way).
        Returns False if the answer does not fit the read (nothing is held)."""
        unit, function = request[6], request[7]
        address, count = _RANGE.unpack_from(request, 8)
        if not reply_fits(function, count, reply):
            return False
        end = address + count
        pieces = [(address, end)]
        for cut_start, cut_end in cut:
            pieces = [
                part
                for start, stop in pieces
                for part in ((start, min(stop, cut_start)), (max(start, cut_end), stop))
                if part[0] < part[1]
            ]
        if not pieces:
            return True
        whole = pieces == [(address, end)]
        fresh = [
            Held(reply, address, start, stop, stamp, request[6:12] if whole else None)
            for start, stop in pieces
        ]
        table_key = _table_key(unit, function)
        table = self._tables.get(table_key)
        if table is None:
            table = self._tables[table_key] = []
        keep = self._keep
        kept: list[Held] = []
        for held in table:
            if now - held.stamp >= keep or (
                held.stamp <= stamp
                and any(new.start <= held.start and held.end <= new.end for new in fresh)
            ):
                self._unlist(held)
            else:
                kept.append(held)
        kept.extend(fresh)
        if whole:
            self._exact[fresh[0].key] = fresh[0]  # type: ignore[index]
        if len(kept) > self._max_held:
            kept.sort(key=lambda held: held.stamp)
            for held in kept[: len(kept) - self._max_held]:
                self._unlist(held)
            del kept[: len(kept) - self._max_held]
        self._tables[table_key] = kept
        return True

    def forget(self, unit: int, function: int, address: int, count: int) -> int:
        """Make held answers of `unit` read with `function` unusable for
        [address, address + count): a write to them. Returns the answers it cut."""
        table = self._tables.get(_table_key(unit, function))
        if not table:
            return 0
        end = address + count
        kept: list[Held] = []
        cut = 0
        for held in table:
            if held.end <= address or end <= held.start:
                kept.append(held)
                continue
            cut += 1
            self._unlist(held)
            for start, stop in ((held.start, address), (end, held.end)):
                if start < stop:
                    kept.append(Held(held.reply, held.origin, start, stop, held.stamp, None))
        table[:] = kept
        return cut

    def _unlist(self, held: Held) -> None:
        """`held` is no longer whole or held: drop it from the exact lookup."""
        key = held.key
        if key is not None and self._exact.get(key) is held:
            del self._exact[key]

    # ------------------------------------------------------------------ what it holds

    def values_held(self, now: float) -> int:
        """Registers, coils and inputs held in answers younger than `keep` (a value two
        answers hold counts twice)."""
        keep = self._keep
        return sum(
            held.end - held.start
            for table in self._tables.values()
            for held in table
            if now - held.stamp < keep
        )

    def answers_held(self) -> int:
        return sum(len(table) for table in self._tables.values())

    def oldest_age(
        self, unit: int, function: int, address: int, count: int, now: float
    ) -> float | None:
        """The age of the oldest value of [address, address + count), each value's age
        being that of the youngest answer holding it; None if some value is not held."""
        table = self._tables.get(_table_key(unit, function), [])
        end = address + count
        covering = [held for held in table if held.start < end and address < held.end]
        edges = sorted(
            {address, end, *(held.start for held in covering), *(held.end for held in covering)}
        )
        oldest = 0.0
        for start, stop in pairwise(edges):
            if stop <= address or start >= end:
                continue
            stamps = [held.stamp for held in covering if held.start <= start and stop <= held.end]
            if not stamps:
                return None
            oldest = max(oldest, now - max(stamps))
        return oldest
