"""Modbus gateway policy: what the multiplexer does with a request before and after
the device sees it.

- `read_only`: writes (function codes 5, 6, 15, 16, 22, 23) are answered with
  exception 0x01 (illegal function) and never sent.
- Coalescing: reads (1, 2, 3, 4) with the same unit, function, address and count
  share one device round trip while one is waiting or in flight.
- Cache (`cache_ttl` > 0): read answers are kept for the TTL; a write drops what
  it overlaps when it is queued and again when it is answered or fails.

Writes are never coalesced, cached or retried. Device exception answers pass through
unchanged and are never cached. Every message the policy sees is in client form: the
client's own transaction id, as the target codec restores it.
"""

from __future__ import annotations

from collections import Counter

from tcp_multiplexer.core.interfaces import Clock, Priority, Request
from tcp_multiplexer.protocols.modbus.cache import ReadCache
from tcp_multiplexer.protocols.modbus.functions import (
    READ_FUNCTIONS,
    READ_REQUEST_SIZE,
    WRITE_FUNCTIONS,
    read_key,
    written_range,
)
from tcp_multiplexer.protocols.modbus.mbap import EXCEPTION_FLAG
from tcp_multiplexer.protocols.modbus.options import ModbusOptions


class ModbusGatewayPolicy:
    """Read-only refusal, read coalescing keys and the read cache for Modbus.

    Each unit has a write generation, bumped when a write is submitted and again when
    it is answered or fails. A read's coalescing key includes the generation it was
    submitted in, so a read never shares an answer with one sent before a write it
    follows; and its answer is cached only if no write to the unit came in between.
    """

    __slots__ = ("_cache", "_clock", "_events", "_generation", "coalescing")

    def __init__(self, options: ModbusOptions, events: Counter[str], clock: Clock) -> None:
        self.coalescing = options.coalesce
        self._cache = ReadCache(options.cache_ttl) if options.cache_ttl > 0 else None
        self._events = events
        self._clock = clock
        self._generation = [0] * 256
        """Write generation per unit id (a list: read on every request, faster than a dict)."""

    def admit(self, request: Request) -> bytes | None:
        payload = request.payload
        function = payload[7]
        if function in WRITE_FUNCTIONS:
            # Refused writes never come this far: the client's write filter answered them.
            self._written(payload)
            request.observed = True
            # A control write (a battery's limit, a wallbox's current) must not wait
            # behind every client's polling.
            request.priority = Priority.URGENT
            return None
        if len(payload) != READ_REQUEST_SIZE or function not in READ_FUNCTIONS:
            return None
        cache = self._cache
        if cache is not None:
            key = read_key(payload)
            if key is not None:
                cached = cache.get(key, self._clock.time())
                if cached is not None:
                    self._events["cache_hits"] += 1
                    return payload[:2] + cached[2:]
                self._events["cache_misses"] += 1
                request.observed = True
        # Unit, function, address and count, and the unit's write generation: reads only
        # share an answer with reads submitted since the same write. Before any write to
        # the unit the bytes alone do (a bytes key caches its hash; a tuple does not).
        generation = self._generation[payload[6]]
        request.coalesce_key = (payload[6:], generation) if generation else payload[6:]
        return None

    def share(self, request: bytes, answer: bytes) -> bytes:
        """`answer` to an identical read, with `request`'s own transaction id."""
        return request[:2] + answer[2:]

    def observe(self, request: Request, answer: bytes) -> None:
        payload = request.payload
        if payload[7] in WRITE_FUNCTIONS:
            self._written(payload)
            return
        cache = self._cache
        key = request.coalesce_key
        if cache is None or key is None or len(answer) < 9 or answer[7] & EXCEPTION_FLAG:
            return  # nothing to cache: off, a write, no answer (a broadcast), an exception
        read = read_key(payload)
        generation = key[1] if isinstance(key, tuple) else 0
        if read is not None and generation == self._generation[read.unit]:
            cache.put(read, answer, self._clock.time())

    def observe_gateway_answer(self, request: bytes, answer: bytes | None) -> None:
        if answer is not None and answer[7] & EXCEPTION_FLAG:
            self._events[f"exceptions_sent_0x{answer[8]:02x}"] += 1
        if request[7] in WRITE_FUNCTIONS:
            # The write may have reached the device even though its answer did not.
            self._written(request)

    def _written(self, request: bytes) -> None:
        """A write to `request`'s unit was submitted, answered or failed."""
        unit = request[6]
        self._generation[unit] += 1
        cache = self._cache
        if cache is None:
            return
        written = written_range(request)
        if written is not None:
            functions, address, count = written
            cache.invalidate(unit, functions, address, count)


def gateway_policy(
    options: ModbusOptions, events: Counter[str], clock: Clock
) -> ModbusGatewayPolicy:
    return ModbusGatewayPolicy(options, events, clock)
