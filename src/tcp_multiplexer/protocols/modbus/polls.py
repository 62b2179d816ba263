"""Background polls: what a bridge reads from its device on its own, and how polls of
neighbouring ranges are merged into fewer reads.

    --poll 1:holding:40000:50:5s      unit 1, holding registers 40000-40049, every 5 s

In a config file, `[[bridge.poll]]` tables with the keys unit, table, address, count
and every (or the same strings in a list). TABLE is holding, input, coils or discrete;
ADDRESS is the protocol address, 0-based, as on the wire.

Polls of one unit and table whose ranges lie within `poll-merge-gap` values of each
other are read together, at the shortest of their intervals, in reads of at most
`poll-max-registers` registers (or 16 times as many coils and inputs, at most 2,000).
Nothing here does I/O: `plan_reads` is a pure function the poller (polling.py) runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.options import duration_value, format_duration

TABLES: Final = {"coils": 1, "discrete": 2, "holding": 3, "input": 4}
"""Table names and the function code that reads each."""
TABLE_NAMES: Final = {function: name for name, function in TABLES.items()}
MAX_READ: Final = {1: 2000, 2: 2000, 3: 125, 4: 125}
"""The most values one read may ask for (Modbus application protocol 1.1b3, 6.1-6.4)."""
DEFAULT_MERGE_GAP: Final = 8
DEFAULT_MAX_REGISTERS: Final = 125
_POLL_KEYS: Final = ("unit", "table", "address", "count", "every")
_POLL_TEXT: Final = re.compile(r"\s*(\d+):([a-z]+):(\d+):(\d+):(\S+)\s*")


@dataclass(frozen=True, slots=True)
class Poll:
    """One poll as configured: a range read every `every` seconds."""

    unit: int
    table: str
    address: int
    count: int
    every: float
    text: str = ""
    """As it was given (``1:holding:40000:50:5s``), for messages."""

    @property
    def function(self) -> int:
        """The function code that reads its table."""
        return TABLES[self.table]

    @property
    def end(self) -> int:
        return self.address + self.count

    def __str__(self) -> str:
        return self.text or (
            f"{self.unit}:{self.table}:{self.address}:{self.count}:{format_duration(self.every)}"
        )


def _checked(unit: int, table: str, address: int, count: int, every: float, text: str) -> Poll:
    if not 0 <= unit <= 255:
        raise ConfigError(f"{text}: unit {unit} is outside 0..255")
    if table not in TABLES:
        raise ConfigError(f"{text}: table {table!r} is not one of {', '.join(TABLES)}")
    if count < 1:
        raise ConfigError(f"{text}: the count must be at least 1")
    if address + count > 65536:
        raise ConfigError(f"{text}: the range ends past address 65535")
    if every <= 0:
        raise ConfigError(f"{text}: every must be longer than 0")
    return Poll(unit, table, address, count, every, text)


def _number(value: object, key: str, text: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise ConfigError(f"{text}: {key} must be a whole number, got {value!r}")


def parse_poll(value: object) -> Poll:
    """A poll: ``UNIT:TABLE:ADDRESS:COUNT:EVERY`` or a table with those keys.

    Raises:
        ConfigError: naming the poll as it was given.
    """
    if isinstance(value, Poll):
        return value
    if isinstance(value, str):
        match = _POLL_TEXT.fullmatch(value.lower())
        if match is None:
            raise ConfigError(
                f"{value!r} is not UNIT:TABLE:ADDRESS:COUNT:EVERY, such as "
                "1:holding:40000:50:5s (TABLE: holding, input, coils or discrete)"
            )
        unit, table, address, count, every = match.groups()
        try:
            interval = duration_value(every)
        except ConfigError as exc:
            raise ConfigError(f"{value.strip()}: {exc.message}") from None
        return _checked(int(unit), table, int(address), int(count), interval, value.strip())
    if isinstance(value, Mapping):
        text = json.dumps(dict(value), default=str)
        unknown = set(value) - set(_POLL_KEYS)
        if unknown:
            raise ConfigError(
                f"{text}: unknown key {sorted(unknown)[0]!r} (use {', '.join(_POLL_KEYS)})"
            )
        missing = [key for key in _POLL_KEYS if key not in value]
        if missing:
            raise ConfigError(f"{text}: {missing[0]} is missing")
        table = value["table"]
        if not isinstance(table, str):
            raise ConfigError(f"{text}: table must be a string")
        try:
            interval = duration_value(value["every"])
        except ConfigError as exc:
            raise ConfigError(f"{text}: every: {exc.message}") from None
        unit = _number(value["unit"], "unit", text)
        address = _number(value["address"], "address", text)
        count = _number(value["count"], "count", text)
        given = f"{unit}:{table}:{address}:{count}:{format_duration(interval)}"
        return _checked(unit, table.strip().lower(), address, count, interval, given)
    raise ConfigError(f"expected a poll such as '1:holding:40000:50:5s', got {value!r}")


def polls_toml(polls: tuple[Poll, ...]) -> str:
    """Polls as TOML that reads back as the same polls (check-config)."""
    return "[" + ", ".join(json.dumps(str(poll)) for poll in polls) + "]"


def check_polls(
    polls: Iterable[Poll], cache_ttl: float, key: str = "poll", where: str = ""
) -> None:
    """Polls need the image, and each must come round before its range grows stale.

    Raises:
        ConfigError: naming the first poll that cannot keep its range fresh, under `key`
            (`where` says where it was given, for a route's).
    """
    for poll in polls:
        if cache_ttl <= 0:
            raise ConfigError(
                f"{where}{poll} fills the register image, which needs --cache-ttl", key=key
            )
        if poll.every >= cache_ttl:
            raise ConfigError(
                f"{where}{poll}: every {format_duration(poll.every)} is not shorter than "
                f"cache-ttl {format_duration(cache_ttl)}, so it could never keep its range fresh",
                key=key,
            )


# ---------------------------------------------------------------------------- merging


@dataclass(frozen=True, slots=True)
class PollRead:
    """One read the poller makes: one poll's range, part of one, or several merged."""

    unit: int
    function: int
    address: int
    count: int
    every: float
    parts: tuple[PollRead, ...] = ()
    """The separate reads it merges (empty: it is one range of one poll)."""

    @property
    def end(self) -> int:
        return self.address + self.count

    @property
    def merged(self) -> bool:
        return bool(self.parts)

    def __str__(self) -> str:
        return f"unit {self.unit} {TABLE_NAMES[self.function]} {self.address}-{self.end - 1}"


def max_read(function: int, max_registers: int) -> int:
    """The most values one poll read asks for: `max_registers` registers, or 16 times
    as many coils or inputs (at most 2,000)."""
    if function in (1, 2):
        return min(MAX_READ[function], 16 * max_registers)
    return min(MAX_READ[function], max_registers)


def single_reads(poll: Poll, max_registers: int) -> list[PollRead]:
    """A poll's range in reads of at most what one read may ask for."""
    step = max_read(poll.function, max_registers)
    return [
        PollRead(poll.unit, poll.function, start, min(step, poll.end - start), poll.every)
        for start in range(poll.address, poll.end, step)
    ]


def plan_reads(polls: Sequence[Poll], merge_gap: int, max_registers: int) -> list[PollRead]:
    """The reads that cover `polls`: per unit and table, ranges within `merge_gap` of
    each other merged (at the shortest interval among them) while the read stays within
    the limit; identical and overlapping ranges are read once."""
    groups: dict[tuple[int, int], list[PollRead]] = {}
    for poll in polls:
        groups.setdefault((poll.unit, poll.function), []).extend(single_reads(poll, max_registers))
    reads: list[PollRead] = []
    for (unit, function), singles in sorted(groups.items()):
        limit = max_read(function, max_registers)
        singles.sort(key=lambda read: (read.address, read.count))
        run: list[PollRead] = []
        for single in singles:
            if run:
                start = run[0].address
                end = max(read.end for read in run)
                if single.address - end <= merge_gap and max(end, single.end) - start <= limit:
                    run.append(single)
                    continue
                reads.append(_merge(unit, function, run))
            run = [single]
        if run:
            reads.append(_merge(unit, function, run))
    return reads


def _merge(unit: int, function: int, run: list[PollRead]) -> PollRead:
    if len(run) == 1:
        return run[0]
    start = run[0].address
    end = max(read.end for read in run)
    every = min(read.every for read in run)
    # Identical ranges polled at two paces are one range (at the faster pace).
    by_range: dict[tuple[int, int], PollRead] = {}
    for read in run:
        known = by_range.get((read.address, read.count))
        if known is None or read.every < known.every:
            by_range[read.address, read.count] = read
    distinct = tuple(by_range.values())
    if len(distinct) == 1:
        return PollRead(unit, function, start, end - start, every)
    return PollRead(unit, function, start, end - start, every, distinct)


def setting_value(polls: object) -> tuple[Poll, ...]:
    """A route's `poll` setting: one poll or a list of them."""
    items = polls if isinstance(polls, list | tuple) else [polls]
    return tuple(parse_poll(item) for item in items)
