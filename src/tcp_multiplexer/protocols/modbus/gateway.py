"""Modbus gateway policy: what the multiplexer does with a request before and after
the device sees it.

- Writes go first: a write waits in the urgent round of the dispatcher's queue, ahead
  of every client's reads (and those ahead of the bridge's own polls).
- `read-only`: writes (function codes 5, 6, 15, 16, 22, 23) are never sent. ``deny``
  answers them with exception 0x01 (illegal function); ``ignore`` answers 5, 6, 15 and
  16 as the device would (5 and 6 echo the request, 15 and 16 its address and
  quantity) and 22 and 23, whose answers only the device knows, with 0x01. (A bridge's
  own ``deny`` is its clients' write filter's, access.py; a route's is here.)
- Coalescing: reads (1, 2, 3, 4) with the same unit, function, address and count
  share one device round trip while one is waiting or in flight.
- The register image (`cache-ttl` > 0; image.py): a read inside one device answer
  younger than the TTL is answered from it. A write makes what it overlaps unusable for
  the registers it writes when it is queued and again when it is answered or fails.
- Stale answers (`serve-stale` > 0): when the target cannot be reached or does not
  answer a read in time, a read inside one answer younger than that is answered from
  the image instead of with 0x0A or 0x0B.

Writes are never coalesced, held or retried. Device exception answers pass through
unchanged and are never held. Every message the policy sees is in client form: the
client's own transaction id, as the target codec restores it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from typing import Final

from tcp_multiplexer.core.interfaces import Clock, FailureReason, Priority, Request
from tcp_multiplexer.logs import NOTICE
from tcp_multiplexer.options import format_duration
from tcp_multiplexer.protocols.modbus.access import DENY, IGNORE
from tcp_multiplexer.protocols.modbus.functions import (
    READ_FUNCTIONS,
    READ_REQUEST_SIZE,
    WRITE_FUNCTIONS,
    written_range,
)
from tcp_multiplexer.protocols.modbus.image import RegisterImage
from tcp_multiplexer.protocols.modbus.mbap import (
    EXCEPTION_FLAG,
    MBAP_HEADER_SIZE,
    ExceptionCode,
    FunctionCode,
    exception_response,
)
from tcp_multiplexer.protocols.modbus.options import ModbusOptions

WRITE_LOG: Final = 64
"""Writes remembered per unit, to cut what they wrote out of reads answered meanwhile."""
_STALE_REASONS: Final = frozenset(
    {FailureReason.UNAVAILABLE, FailureReason.TIMEOUT, FailureReason.BROKEN}
)
_ECHOED: Final = frozenset({FunctionCode.WRITE_SINGLE_COIL, FunctionCode.WRITE_SINGLE_REGISTER})
_ECHO_RANGE: Final = frozenset(
    {FunctionCode.WRITE_MULTIPLE_COILS, FunctionCode.WRITE_MULTIPLE_REGISTERS}
)
_NAMES_LOGGED: Final = 1024
"""Clients remembered as told about read-only acknowledgements (then forgotten)."""


class ModbusGatewayPolicy:
    """Read-only answers, read coalescing keys, the register image and stale answers.

    Each unit has a write generation, bumped when a write is submitted and again when
    it is answered or fails, and a log of the last writes with their generations. A
    read's coalescing key includes the generation it was submitted in, so a read never
    shares an answer with one sent before a write it follows; and its answer joins the
    image without the registers written since it was submitted (or not at all if that
    is no longer in the log).
    """

    __slots__ = (
        "_acknowledged",
        "_clock",
        "_events",
        "_generation",
        "_image",
        "_log",
        "_read_only",
        "_stale",
        "_stale_served",
        "_stale_since",
        "_timeout",
        "_ttl",
        "_writes",
        "coalescing",
    )

    def __init__(
        self,
        options: ModbusOptions,
        events: Counter[str],
        clock: Clock,
        log: logging.LoggerAdapter[logging.Logger] | None = None,
        previous: object = None,
        *,
        timeout: float = 0.0,
    ) -> None:
        """`previous`: the policy this one replaces (a reload); its image and write
        generations carry over when both keep an image. `timeout`: the target's answer
        timeout (a request's deadline, once sent, is when it was sent plus that)."""
        self.coalescing = options.coalesce
        self._ttl = options.cache_ttl
        self._timeout = timeout
        self._stale = options.serve_stale
        self._read_only = options.read_only
        keep = max(options.cache_ttl, options.serve_stale)
        self._image = RegisterImage(keep) if keep > 0 else None
        self._events = events
        self._clock = clock
        self._log = log
        self._generation = [0] * 256
        """Write generation per unit id (a list: read on every request, faster than a dict)."""
        self._writes: dict[int, deque[tuple[int, int, int, int]]] = {}
        """Per unit, its last writes: (generation, read function, first address, end)."""
        self._stale_since: float | None = None
        self._stale_served = 0
        self._acknowledged: set[str] = set()
        if isinstance(previous, ModbusGatewayPolicy):
            self._generation = previous._generation
            self._writes = previous._writes
            if self._image is not None and previous._image is not None:
                self._image = previous._image
                self._image.keep = keep

    @property
    def image(self) -> RegisterImage | None:
        return self._image

    def admit(self, request: Request) -> bytes | None:
        payload = request.payload
        function = payload[7]
        if function in WRITE_FUNCTIONS:
            # Refused writes never come this far: the client's write filter answered them.
            if self._read_only:
                return self._write_here(request)
            self._written(payload)
            request.observed = True
            # A control write (a battery's limit, a wallbox's current) must not wait
            # behind every client's polling.
            request.priority = Priority.URGENT
            return None
        if len(payload) != READ_REQUEST_SIZE or function not in READ_FUNCTIONS:
            return None
        image = self._image
        if image is not None:
            request.observed = True
            # The bridge's own polls always ask the device: they are what keeps it fresh.
            if self._ttl and request.priority != Priority.BACKGROUND:
                answer = image.answer(payload, self._clock.time(), self._ttl)
                if answer is not None:
                    self._events["image_answers"] += 1
                    return answer
                self._events["image_misses"] += 1
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
        if self._stale_since is not None:
            self._answering_again()
        if payload[7] in WRITE_FUNCTIONS:
            self._written(payload)
            return
        image = self._image
        key = request.coalesce_key
        if image is None or key is None or len(answer) < 9 or answer[7] & EXCEPTION_FLAG:
            return  # nothing to hold: off, no answer (a broadcast), an exception
        unit = payload[6]
        generation = key[1] if isinstance(key, tuple) else 0
        now = self._clock.time()
        # When it was sent: the device read the values after that.
        sent = request.deadline - self._timeout
        if generation == self._generation[unit]:
            image.put(payload, answer, sent, now)
            return
        written = self._written_since(unit, payload[7], generation)
        if written is not None:
            image.put(payload, answer, sent, now, cut=written)

    def observe_gateway_answer(self, request: bytes, answer: bytes | None) -> None:
        if answer is not None and answer[7] & EXCEPTION_FLAG:
            self._events[f"exceptions_sent_0x{answer[8]:02x}"] += 1
        if request[7] in WRITE_FUNCTIONS:
            # The write may have reached the device even though its answer did not.
            self._written(request)

    def fallback(self, request: Request, reason: FailureReason) -> bytes | None:
        """A stale answer to a read the target could not answer (`serve-stale`)."""
        image = self._image
        if not self._stale or image is None or reason not in _STALE_REASONS:
            return None
        payload = request.payload
        if (
            request.priority == Priority.BACKGROUND
            or len(payload) != READ_REQUEST_SIZE
            or payload[7] not in READ_FUNCTIONS
        ):
            return None
        now = self._clock.time()
        answer = image.answer(payload, now, self._stale)
        if answer is None:
            return None
        self._events["stale_answers"] += 1
        self._stale_served += 1
        if self._stale_since is None:
            self._stale_since = now
            if self._log is not None:
                self._log.log(
                    NOTICE,
                    "serving stale reads since %s (%s): answers up to %s old from the "
                    "register image",
                    time.strftime("%H:%M:%S"),
                    reason,
                    format_duration(self._stale),
                )
        return answer

    def _answering_again(self) -> None:
        since = self._stale_since
        self._stale_since = None
        if self._log is not None and since is not None:
            self._log.log(
                NOTICE,
                "the target answers again: served %d stale read(s) over %.1fs",
                self._stale_served,
                self._clock.time() - since,
            )
        self._stale_served = 0

    def _write_here(self, request: Request) -> bytes:
        """The read-only answer to a write: refused, or acknowledged and never sent."""
        payload = request.payload
        function = payload[7]
        if self._read_only == DENY or function not in _ECHOED | _ECHO_RANGE:
            self._events["writes_refused"] += 1
            return exception_response(payload, ExceptionCode.ILLEGAL_FUNCTION)
        if len(payload) < MBAP_HEADER_SIZE + 5:
            return exception_response(payload, ExceptionCode.ILLEGAL_DATA_VALUE)
        self._events["writes_ignored"] += 1
        name = getattr(request.owner, "name", None)
        if isinstance(name, str) and name not in self._acknowledged:
            if len(self._acknowledged) >= _NAMES_LOGGED:
                self._acknowledged.clear()
            self._acknowledged.add(name)
            if self._log is not None:
                self._log.log(
                    NOTICE,
                    "read-only = %s: acknowledging writes from %s without sending them",
                    IGNORE,
                    name,
                )
        if function in _ECHOED:
            return payload[: MBAP_HEADER_SIZE + 5]
        return payload[:4] + b"\x00\x06" + payload[6 : MBAP_HEADER_SIZE + 5]

    def _written(self, request: bytes) -> None:
        """A write to `request`'s unit was submitted, answered or failed."""
        unit = request[6]
        generation = self._generation[unit] = self._generation[unit] + 1
        written = written_range(request)
        if written is None:
            return
        functions, address, count = written
        log = self._writes.get(unit)
        if log is None:
            log = self._writes[unit] = deque(maxlen=WRITE_LOG)
        for function in functions:
            log.append((generation, function, address, address + count))
            if self._image is not None:
                self._image.forget(unit, function, address, count)

    def _written_since(
        self, unit: int, function: int, generation: int
    ) -> list[tuple[int, int]] | None:
        """The ranges of `function`'s table written to `unit` since `generation`, or
        None if the log no longer reaches back that far."""
        log = self._writes.get(unit)
        if not log or log[0][0] > generation + 1:
            return None
        return [
            (start, end)
            for written, table, start, end in log
            if written > generation and table == function
        ]
