"""Modbus gateway policy: what the multiplexer does with a request before and after
the device sees it.

- `read_only`: writes (function codes 5, 6, 15, 16, 22, 23) are answered with
  exception 0x01 (illegal function) and never sent.
- Coalescing: reads (1, 2, 3, 4) with the same unit, function, address and count
  share one device round trip while one is waiting or in flight.
- Cache (`cache_ttl` > 0): read answers are kept for the TTL; a write drops what
  it overlaps when it is queued and again when it is answered or fails.

Writes are never coalesced, cached or retried. Device exception answers pass through
unchanged and are never cached.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Hashable
from typing import Final

from tcp_multiplexer.config import ModbusOptions
from tcp_multiplexer.framing.base import Codec
from tcp_multiplexer.framing.modbus import (
    EXCEPTION_FLAG,
    MBAP_HEADER_SIZE,
    ExceptionCode,
    FunctionCode,
    exception_response,
)
from tcp_multiplexer.metrics import Metrics
from tcp_multiplexer.modbus.cache import ReadCache, ReadKey

READ_FUNCTIONS: Final = frozenset(
    {
        FunctionCode.READ_COILS,
        FunctionCode.READ_DISCRETE_INPUTS,
        FunctionCode.READ_HOLDING_REGISTERS,
        FunctionCode.READ_INPUT_REGISTERS,
    }
)
WRITE_FUNCTIONS: Final = frozenset(
    {
        FunctionCode.WRITE_SINGLE_COIL,
        FunctionCode.WRITE_SINGLE_REGISTER,
        FunctionCode.WRITE_MULTIPLE_COILS,
        FunctionCode.WRITE_MULTIPLE_REGISTERS,
        FunctionCode.MASK_WRITE_REGISTER,
        FunctionCode.READ_WRITE_MULTIPLE_REGISTERS,
    }
)
_COIL_READS: Final = frozenset({FunctionCode.READ_COILS})
_REGISTER_READS: Final = frozenset({FunctionCode.READ_HOLDING_REGISTERS})
_READ_REQUEST_SIZE: Final = MBAP_HEADER_SIZE + 5
"""A read request ADU: header, function, address (2), quantity (2)."""
_TWO_WORDS: Final = struct.Struct(">HH")


def read_key(request: bytes) -> ReadKey | None:
    """The key of a well-formed read request (function 1-4), else None."""
    if len(request) != _READ_REQUEST_SIZE or request[7] not in READ_FUNCTIONS:
        return None
    address, count = _TWO_WORDS.unpack_from(request, 8)
    return ReadKey(request[6], request[7], address, count)


def written_range(request: bytes) -> tuple[frozenset[int], int, int] | None:
    """(reads affected, first address, count) for a write request, else None."""
    if len(request) < MBAP_HEADER_SIZE + 5:
        return None
    function = request[7]
    address, quantity = _TWO_WORDS.unpack_from(request, 8)
    if function == FunctionCode.WRITE_SINGLE_COIL:
        return _COIL_READS, address, 1
    if function == FunctionCode.WRITE_MULTIPLE_COILS:
        return _COIL_READS, address, quantity
    if function in (FunctionCode.WRITE_SINGLE_REGISTER, FunctionCode.MASK_WRITE_REGISTER):
        return _REGISTER_READS, address, 1
    if function == FunctionCode.WRITE_MULTIPLE_REGISTERS:
        return _REGISTER_READS, address, quantity
    if (
        function == FunctionCode.READ_WRITE_MULTIPLE_REGISTERS
        and len(request) >= MBAP_HEADER_SIZE + 9
    ):
        write_address, write_quantity = _TWO_WORDS.unpack_from(request, 12)
        return _REGISTER_READS, write_address, write_quantity
    return None


class ModbusGatewayPolicy:
    """Read-only refusal, read coalescing keys and the read cache for Modbus.

    Each unit has a write generation, bumped when a write is submitted and again when
    it is answered or fails. A read's coalescing key includes the generation it was
    submitted in, so a read never shares an answer with one sent before a write it
    follows; and its answer is cached only if no write to the unit came in between.
    """

    def __init__(self, options: ModbusOptions, metrics: Metrics, codec: Codec) -> None:
        self._read_only = options.read_only
        self._cache = ReadCache(options.cache_ttl) if options.cache_ttl > 0 else None
        self._events = metrics.events
        self._codec = codec
        self._loop = asyncio.get_running_loop()
        self._generation: dict[int, int] = {}

    def local_reply(self, request: bytes) -> bytes | None:
        function = request[7]
        if function in WRITE_FUNCTIONS:
            if self._read_only:
                self._events["writes_refused"] += 1
                self._events["exceptions_sent_0x01"] += 1
                return exception_response(request, ExceptionCode.ILLEGAL_FUNCTION)
            self._written(request)
            return None
        cache = self._cache
        if cache is not None:
            key = read_key(request)
            if key is not None:
                cached = cache.get(key, self._loop.time())
                if cached is not None:
                    self._events["cache_hits"] += 1
                    return self._codec.restore_reply(request, cached)
                self._events["cache_misses"] += 1
        return None

    def coalesce_key(self, request: bytes) -> tuple[bytes, int] | None:
        """Unit, function, address and count as they are on the wire, and the unit's
        write generation; None for anything but a read."""
        if len(request) != _READ_REQUEST_SIZE or request[7] not in READ_FUNCTIONS:
            return None
        return request[6:], self._generation.get(request[6], 0)

    def observe(self, request: bytes, reply: bytes, key: Hashable | None) -> None:
        if request[7] in WRITE_FUNCTIONS:
            self._written(request)
        if reply[7] & EXCEPTION_FLAG:
            self._events["device_exceptions"] += 1
            return
        cache = self._cache
        if cache is None or not isinstance(key, tuple):
            return
        read = read_key(request)
        if read is not None and key[1] == self._generation.get(read.unit, 0):
            cache.put(read, reply, self._loop.time())

    def observe_gateway_reply(self, request: bytes, reply: bytes | None) -> None:
        if reply is not None and reply[7] & EXCEPTION_FLAG:
            self._events[f"exceptions_sent_0x{reply[8]:02x}"] += 1
        if request[7] in WRITE_FUNCTIONS:
            # The write may have reached the device even though its answer did not.
            self._written(request)

    def _written(self, request: bytes) -> None:
        """A write to `request`'s unit was submitted, answered or failed."""
        unit = request[6]
        self._generation[unit] = self._generation.get(unit, 0) + 1
        cache = self._cache
        if cache is None:
            return
        written = written_range(request)
        if written is not None:
            functions, address, count = written
            cache.invalidate(unit, functions, address, count)
