"""One target connection: sends requests, matches answers, enforces answer timeouts.

Answers are matched first-in first-out, or by an id from the target codec's id space
that the multiplexer puts on every request and the codec
takes off the answer again. A FIFO connection that times out is retired: a late
answer on it would otherwise answer the next request. A connection with ids stays: a
late answer carries an id nobody waits for, and is dropped and counted. A SOLE
connection (a serial line with one master) carries one request at a time, and its
framer knows the answer it waits for: a timeout or a damaged answer fails that one
request and the line serves the next at once; a request nobody answers (a broadcast)
is done after the codec's turnaround delay, with an empty answer.

Requests leave in the target's form (`TargetCodec.encode`) and answers come back in
the client's (`TargetCodec.decode`): everything past this module sees client form.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Final, cast

from tcp_multiplexer.core.interfaces import (
    Clock,
    ConnectionSink,
    Correlation,
    FailureReason,
    Poller,
    Request,
    RequestState,
    SoleTargetCodec,
    TargetCodec,
    TimerHandle,
    after_io,
)
from tcp_multiplexer.errors import DamagedMessage, FramingError
from tcp_multiplexer.logs import NOTICE, hex_dump
from tcp_multiplexer.observability.metrics import TargetMetrics

DEFAULT_RECYCLE_AFTER: Final = 3
"""Timeouts in a row, nothing answered between them, after which a connection that
stays up is closed and reopened (--recycle-after-timeouts)."""
"""One unanswered request may be a dropped frame; two in a row with not a byte from the
target in between mean it will not answer on this connection."""


class UpstreamConnection(asyncio.Protocol):
    """A target connection carrying up to `max_inflight` requests at a time."""

    # Slots: attributes read on every request; past 30 attributes an instance dict no
    # longer shares its keys, and every attribute read gets slower.
    __slots__ = (
        "_age_timer",
        "_announce",
        "_by_id",
        "_capacity",
        "_clock",
        "_codec",
        "_corked",
        "_debug",
        "_draining",
        "_fifo",
        "_framer",
        "_gap",
        "_gap_timer",
        "_id_space",
        "_ids",
        "_inflight",
        "_last_activity",
        "_log",
        "_max_age",
        "_max_idle",
        "_metrics",
        "_next_id",
        "_poller",
        "_quiet_timer",
        "_ready",
        "_recycle_after",
        "_sink",
        "_sole",
        "_timeout",
        "_timeouts_in_row",
        "_timer",
        "_transparent",
        "_transport",
        "answers",
        "closed",
        "closed_as_expected",
        "name",
        "pipelined",
        "retired",
    )

    def __init__(
        self,
        name: str,
        codec: TargetCodec,
        sink: ConnectionSink,
        metrics: TargetMetrics,
        poller: Poller,
        *,
        clock: Clock,
        log: logging.LoggerAdapter[logging.Logger],
        timeout: float,
        max_inflight: int,
        request_gap: float = 0.0,
        max_idle: float = 0.0,
        recycle_after: int = DEFAULT_RECYCLE_AFTER,
        max_age: float = 0.0,
    ) -> None:
        self.name = name
        self._codec = codec
        self._sink = sink
        self._metrics = metrics
        self._poller = poller
        self._clock = clock
        self._log = log
        self._timeout = timeout
        self._sole = codec.correlation is Correlation.SOLE
        """One request at a time; failures fail only their request (see the module doc)."""
        if self._sole:
            max_inflight = 1
        self._capacity = max_inflight
        self.pipelined = max_inflight > 1
        """More than one request may be outstanding (--max-inflight above 1)."""
        self._gap = request_gap
        self._max_idle = max_idle
        self._recycle_after = recycle_after
        self._max_age = max_age
        self._age_timer: TimerHandle | None = None
        self._framer = codec.response_framer()
        self._by_id = codec.correlation is Correlation.BY_ID
        self._id_space = codec.id_space
        self._transparent = codec.transparent
        self._announce = codec.framing_needs_requests
        self._fifo: deque[Request] = deque()
        self._ids: dict[int, Request] = {}
        self._inflight = 0
        self._next_id = 0
        self._transport: asyncio.Transport | None = None
        self._ready = False
        self._draining = False
        self._timer: TimerHandle | None = None
        self._gap_timer: TimerHandle | None = None
        self._quiet_timer: TimerHandle | None = None
        """Ends a request nobody answers (SOLE), after the codec's turnaround."""
        self._corked: list[bytes] | None = None
        """Writes held back while corked, sent as one write by uncork()."""
        self._last_activity = clock.time()
        self.retired = False
        self.closed_as_expected = False
        """The connection ended as planned: after an answer that said so, for being
        idle, or at shutdown (not counted as a reconnect)."""
        self.answers = 0
        """Answers received: a connection that answered had a live target behind it."""
        self._timeouts_in_row = 0
        """Timeouts with no answer matched since (reset by every answer)."""
        self.closed: asyncio.Future[None] = clock.create_future()
        self._debug = log.isEnabledFor(logging.DEBUG)

    # ------------------------------------------------------------------ state

    def mark_ready(self) -> None:
        """The connection may carry requests (after the post-connect delay)."""
        self._ready = True
        now = self._last_activity = self._clock.time()
        self._schedule_timer()
        if self._max_age:
            self._age_timer = self._clock.call_at(now + self._max_age, self._aged)

    def _aged(self) -> None:
        """--max-connection-age: take no more requests, close once those on it are
        answered (at once if none), and let the pool open a new one."""
        self._age_timer = None
        if self.closed.done() or not self._ready:
            return
        self._log.info(
            "%s: open for %.3gs (max-connection-age); reopening it once idle",
            self.name,
            self._max_age,
        )
        self.closed_as_expected = True
        self._draining = True
        if not self._inflight and self._transport is not None:
            self._ready = False
            self._transport.close()

    @property
    def closed_for_idle(self) -> bool:
        """True if it was closed for being idle (--max-idle): reopened on demand."""
        return self.closed_as_expected and not self._draining

    @property
    def can_send(self) -> bool:
        """True if a request could be written now."""
        if not self._ready or self._draining or self._inflight >= self._capacity:
            return False
        if self._gap:
            if self._gap_timer is not None:
                return False
            # The pause runs from the last request or answer, whichever came later:
            # the device gets `gap` of quiet after answering before the next request.
            due = self._last_activity + self._gap
            if due > self._clock.time():
                self._gap_timer = self._clock.call_at_precise(due, self._gap_elapsed)
                return False
        return True

    # ------------------------------------------------------------------ sending

    def send(self, request: Request, now: float) -> None:
        """Write `request` to the target at clock time `now`; the caller checked
        `can_send`."""
        transport = self._transport
        if transport is None:
            raise RuntimeError(f"{self.name}: send() before connection_made()")
        payload = request.payload
        if self._by_id:
            # The next id nobody waits for (_allocate_id, inlined: once per request).
            ids = self._ids
            request_id = self._next_id + 1
            if request_id == self._id_space:
                request_id = 0
            if request_id in ids:
                request_id = self._allocate_id()
            self._next_id = request_id
            request.wire_id = request_id
            ids[request_id] = request
            wire = self._codec.encode(payload, request_id)
        else:
            self._fifo.append(request)
            wire = payload if self._transparent else self._codec.encode(payload, 0)
        self._inflight += 1
        if self._announce:
            self._framer.expect_response(wire)
        if request.state == RequestState.WAITING:
            # It waited for a free connection (a sum, not a histogram: this runs for
            # most requests under load, and a bisect costs more than the rest of it).
            metrics = self._metrics
            metrics.queued += 1
            metrics.queue_wait_seconds += now - request.submitted_at
        request.state = RequestState.SENT
        request.deadline = now + self._timeout
        self._last_activity = now
        if self._debug:
            self._log.debug("%s <- %s", self.name, hex_dump(wire))
        if self._corked is None:
            transport.write(wire)
        else:
            self._corked.append(wire)
        if request.closes_target:
            self._draining = True
        if self._sole and not cast(SoleTargetCodec, self._codec).answer_expected(wire):
            turnaround = cast(SoleTargetCodec, self._codec).turnaround
            self._quiet_timer = self._clock.call_later(turnaround, self._quiet_done)
        timer = self._timer
        if timer is None or timer.when() > request.deadline:
            # Usually armed already for an earlier, sooner deadline; an idle-limit timer
            # may be later than this answer's deadline, though.
            if timer is not None:
                timer.cancel()
            self._timer = self._clock.call_at(request.deadline, self._timer_fired)

    def cork(self) -> None:
        """Hold writes until uncork(): several requests then leave in one write."""
        if self._corked is None:
            self._corked = []

    def uncork(self) -> None:
        """Write everything held since cork()."""
        chunks = self._corked
        self._corked = None
        if chunks and self._transport is not None and not self._transport.is_closing():
            self._transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def _allocate_id(self) -> int:
        ids = self._ids
        candidate = self._next_id
        space = self._id_space
        while True:
            candidate = (candidate + 1) % space
            if candidate not in ids:
                self._next_id = candidate
                return candidate

    def _quiet_done(self) -> None:
        """A request nobody answers has had its turnaround: it is done, unanswered."""
        self._quiet_timer = None
        if not self._fifo:
            return
        now = self._clock.time()
        request = self._release_sole(now)
        self._offer(now)
        self._sink.finish(request, b"", now, False)

    def _release_sole(self, now: float) -> Request:
        """The line's one request is over (unanswered, timed out, or answered damaged):
        take it off the line, which is free from `now`."""
        request = self._fifo.popleft()
        self._inflight -= 1
        self._last_activity = now
        if self._quiet_timer is not None:
            self._quiet_timer.cancel()
            self._quiet_timer = None
        return request

    def _offer(self, now: float) -> None:
        """Tell the sink this connection can take a request, if it can."""
        if self._ready and self.can_send:
            self._sink.connection_available(self, now)

    def _gap_elapsed(self) -> None:
        self._gap_timer = None
        if self.can_send:
            self._sink.connection_available(self, self._clock.time())

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._framer.feed(data)
        except DamagedMessage as exc:
            if not self._sole:
                raise
            self._answer_damaged(exc)
            return
        except FramingError as exc:
            self._log.warning(
                "%s: target sent a malformed answer (%s); reconnecting",
                self.name,
                exc,
                extra={"target": self.name, "reason": str(exc)},
            )
            self._retire(FailureReason.BROKEN)
            return
        if messages:
            self._handle_answers(messages)

    def eof_received(self) -> bool:
        try:
            messages = self._framer.feed_eof()
        except FramingError as exc:
            self._log.warning("%s: target closed mid-answer (%s)", self.name, exc)
            messages = []
        if messages:
            self._handle_answers(messages)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._draining and not self._inflight:
            # Closed after the answer that said it would be (the framer said so).
            self.closed_as_expected = True
        self._ready = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._gap_timer is not None:
            self._gap_timer.cancel()
            self._gap_timer = None
        if self._quiet_timer is not None:
            self._quiet_timer.cancel()
            self._quiet_timer = None
        if self._age_timer is not None:
            self._age_timer.cancel()
            self._age_timer = None
        self._fail_all(FailureReason.BROKEN)
        if not self.closed.done():
            self.closed.set_result(None)

    # ------------------------------------------------------------------ answers

    def _handle_answers(self, messages: list[bytes]) -> None:
        now = self._clock.time()
        self._poller.touch(now)
        codec = self._codec
        transparent = self._transparent
        by_id = self._by_id
        closing = self._framer.closing_at
        if closing >= 0:
            # The target closes after that answer; anything after it answers nothing.
            del messages[closing + 1 :]
            self._draining = True
        answered: list[tuple[Request, bytes]] = []
        for message in messages:
            if self._debug:
                self._log.debug("%s -> %s", self.name, hex_dump(message))
            # Matching by id, inlined: once per answer.
            request = self._ids.pop(codec.answer_id(message), None) if by_id else None
            if request is None:
                request = self._match(message)
                if request is None:
                    if self._transport is None or self._transport.is_closing():
                        break
                    continue
            self._inflight -= 1
            answered.append(
                (request, message if transparent else codec.decode(request.payload, message))
            )
        if not answered:
            return
        self._timeouts_in_row = 0
        self.answers += len(answered)
        self._last_activity = now
        sink = self._sink
        # The next request goes out before these answers are delivered: the target
        # works on it while the answers are written to their clients.
        if self._draining:
            if not self._inflight and self._transport is not None:
                self._transport.close()
        elif self._ready:
            if not self._inflight and self._max_idle:
                # Re-arm for the idle limit even if an answer deadline timer is set.
                self._schedule_timer()
            # can_send, inlined for a connection without a request gap.
            if self.can_send if self._gap else self._inflight < self._capacity:
                sink.connection_available(self, now)
        if len(answered) == 1:
            request, answer = answered[0]
            sink.finish(request, answer, now, closing >= 0)
            return
        last = len(answered) - 1 if closing >= 0 else -1
        for index, (request, answer) in enumerate(answered):
            sink.finish(request, answer, now, index == last)

    def _match(self, message: bytes) -> Request | None:
        """The request `message` answers: the oldest (FIFO); with ids the caller found
        none waiting for its id, and the answer is dropped."""
        if self._by_id:
            self._metrics.ids_dropped += 1
            self._log.info(
                "%s: dropped an answer with id %d that no request is waiting for",
                self.name,
                self._codec.answer_id(message),
            )
            return None
        if self._fifo:
            return self._fifo.popleft()
        if self._sole:
            # A late answer on a line: the framer took it for the one it waited for
            # after that one had timed out. Nothing else is wrong with the line.
            self._metrics.unexpected_answers += 1
            self._log.info("%s: dropped an answer nobody waits for any more", self.name)
            return None
        self._log.warning("%s: target sent an answer nobody asked for; reconnecting", self.name)
        self._metrics.unexpected_answers += 1
        self._retire(FailureReason.BROKEN)
        return None

    # ------------------------------------------------------------------ timeouts

    def _schedule_timer(self) -> None:
        """Arm the single timer for the oldest answer deadline or the idle limit."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when: float | None = None
        oldest = self._oldest()
        if oldest is not None:
            when = oldest.deadline
        elif self._max_idle and self._ready:
            when = self._last_activity + self._max_idle
        if when is not None:
            self._timer = self._clock.call_at(when, self._timer_fired)

    def _oldest(self) -> Request | None:
        if self._by_id:
            return next(iter(self._ids.values()), None)
        return self._fifo[0] if self._fifo else None

    def _timer_fired(self) -> None:
        """Check deadlines once the loop has read what arrived meanwhile: an answer may
        be waiting in the socket. The fired timer stays in `_timer` until then."""
        after_io(self._clock, self._on_timer)

    def _on_timer(self) -> None:
        """Deadlines are checked lazily: one timer per connection, not one per request."""
        self._timer = None
        if self.closed.done():
            return
        now = self._clock.time()
        oldest = self._oldest()
        if oldest is not None and oldest.deadline <= now:
            if self._by_id:
                self._expire_ids(now)
            elif self._sole:
                self._expire_sole(now)
                return
            else:
                self._log.warning(
                    "%s: no answer within %.3gs; closing the connection so a late answer "
                    "cannot reach another request",
                    self.name,
                    self._timeout,
                )
                self._retire(FailureReason.TIMEOUT)
                return
        elif (
            oldest is None
            and self._max_idle
            and self._ready
            and now - self._last_activity >= self._max_idle
        ):
            self._log.info("%s: idle for %.3gs; closing until needed", self.name, self._max_idle)
            self.closed_as_expected = True
            self._ready = False
            if self._transport is not None:
                self._transport.close()
            return
        self._schedule_timer()

    def _expire_ids(self, now: float) -> None:
        """Answer every request past its deadline with the timeout answer.

        The link stays while the target answers: a late answer carries an id nobody
        waits for and is dropped. After `recycle_after` timeouts in a row with no answer
        between them the target is taken as hung on this connection (or its one slot is
        held by someone else): the connection is retired and reopened.
        """
        while (oldest := self._oldest()) is not None and oldest.deadline <= now:
            if self._recycled():
                return
            del self._ids[oldest.wire_id]
            self._inflight -= 1
            self._log.warning(
                "%s: no answer to request id %d within %.3gs",
                self.name,
                oldest.wire_id,
                self._timeout,
            )
            self._sink.fail(oldest, FailureReason.TIMEOUT)
        self._offer(now)

    def _recycled(self) -> bool:
        """Count a timeout; after `recycle_after` in a row, retire the connection (its
        requests get the timeout answer) so the pool opens a new one. True if it did."""
        self._timeouts_in_row += 1
        if not self._recycle_after or self._timeouts_in_row < self._recycle_after:
            return False
        self._log.log(
            NOTICE,
            "%s: %d timeouts in a row; closing it and opening a new connection",
            self.name,
            self._timeouts_in_row,
        )
        self._retire(FailureReason.TIMEOUT)
        return True

    def _expire_sole(self, now: float) -> None:
        """The one request on a line had no answer in time: it fails, the line goes on
        (never reopened for timeouts: one unit absent from a bus says nothing of the
        others)."""
        request = self._release_sole(now)
        self._log.warning(
            "%s: no answer within %.3gs; serving the next request",
            self.name,
            self._timeout,
            extra={"target": self.name, "reason": "timeout"},
        )
        self._sink.fail(request, FailureReason.TIMEOUT)
        self._offer(now)
        self._schedule_timer()

    def _answer_damaged(self, exc: DamagedMessage) -> None:
        """An answer arrived damaged (a bad CRC): its request fails, the line goes on."""
        self._metrics.damaged_answers += 1
        now = self._clock.time()
        self._timeouts_in_row = 0  # the device answers, if damaged: not hung
        self._log.warning(
            "%s: damaged answer (%s); the request gets the gateway's failure answer",
            self.name,
            exc.reason,
            extra={"target": self.name, "reason": exc.reason},
        )
        if not self._fifo:
            return
        request = self._release_sole(now)
        self._sink.fail(request, FailureReason.BROKEN)
        self._offer(now)
        self._schedule_timer()

    # ------------------------------------------------------------------ closing

    def _fail_all(self, reason: FailureReason) -> None:
        failed = list(self._fifo)
        failed.extend(self._ids.values())
        self._fifo.clear()
        self._ids.clear()
        self._inflight = 0
        for request in failed:
            self._sink.fail(request, reason)

    def _retire(self, reason: FailureReason) -> None:
        """Stop using this connection: fail what is on it and close it at once."""
        self._ready = False
        self.retired = True
        self._fail_all(reason)
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        """Close the connection (shutdown); outstanding requests get the broken answer."""
        self._ready = False
        self.closed_as_expected = True
        if self._transport is not None:
            self._transport.close()
