"""ClientSession: one client connection, its requests, and its answers in order.

A session frames what its client sends, hands each request to its host's dispatch,
and writes the answers back in request order. It knows its bridge only as a
`SessionHost`: the codec, where requests go, the client backlog, the poller and the
logger, and whom to tell when the client comes and goes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Final, cast

from tcp_multiplexer.core.interfaces import (
    ClientCounters,
    LatencyObserver,
    Request,
    RequestFilter,
    RequestState,
    SessionHost,
    TimerHandle,
)
from tcp_multiplexer.errors import FramingError
from tcp_multiplexer.logs import format_peer, hex_dump

# Why a client is not being read from; reading resumes when no reason is left. Plain
# int bits, not an IntFlag: flag arithmetic is on the per-request path.
PAUSE_QUEUE: Final = 1
"""The shared wait queue is full."""
PAUSE_BACKLOG: Final = 2
"""This client has too many requests outstanding."""
PAUSE_WRITE: Final = 4
"""This client does not read its answers fast enough."""


class ClientSession(asyncio.Protocol):
    """Frames a client's requests, submits them, and writes answers in request order."""

    # Slots: one session per client (memory), attributes read on every request (speed).
    __slots__ = (
        "_backlog",
        "_clock",
        "_closing",
        "_debug",
        "_dispatch",
        "_eof",
        "_filter",
        "_framer",
        "_host",
        "_idle",
        "_idle_timer",
        "_interim",
        "_last_data",
        "_log",
        "_outstanding",
        "_paused",
        "_pending_interim",
        "_poller",
        "_refusals",
        "_stats",
        "_timed",
        "_transport",
        "closed",
        "name",
        "number",
        "origin",
        "peer",
    )

    def __init__(self, host: SessionHost, number: int) -> None:
        self._host = host
        self._dispatch = host.dispatch
        self._backlog = host.client_backlog
        self._framer = host.codec.request_framer()
        self._interim = self._framer.offers_interim_replies
        self._clock = host.clock
        self._poller = host.poller
        self._log = host.log
        self.number = number
        self.name = f"client #{number}"
        self.peer: object = None
        """The client's address as the socket gives it (a (host, port) tuple for TCP)."""
        self.origin: object = None
        """Which of its host's listeners accepted it (the host's tag; never read here)."""
        self._transport: asyncio.Transport | None = None
        self._refusals = 0
        self._idle = host.client_idle_timeout
        self._idle_timer: TimerHandle | None = None
        self._last_data = 0.0
        """Clock time of the client's last bytes (kept only with an idle timeout)."""
        self._filter: RequestFilter | None = None
        """What this client may not ask (write rules); None: anything."""
        self._stats: ClientCounters | None = None
        self._timed: LatencyObserver | None = None
        """Where each answer's latency goes, if this client's address is timed."""
        self._outstanding: deque[Request] = deque()
        self._paused = 0
        self._eof = False
        self._pending_interim: bytes | None = None
        """An interim reply waiting for the answers to earlier requests."""
        self._closing = False
        self.closed = False
        self._debug = self._log.isEnabledFor(logging.DEBUG)

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self.peer = transport.get_extra_info("peername")
        self.name = f"client #{self.number} {format_peer(self.peer)}"
        if not self._host.client_connected(self, transport):
            self._closing = True
            self._transport.abort()
            return
        # Again: a reload may have changed where requests go since this was made (a TLS
        # handshake takes a while).
        self._dispatch = self._host.dispatch
        if self._idle:
            self._last_data = self._clock.time()
            self._idle_timer = self._clock.call_later(self._idle, self._idle_check)
        self._filter = self._host.filter_for(transport)
        stats = self._stats = self._host.counters_for(self.peer)
        if stats is not None:
            stats.connections += 1
            stats.last_seen = self._clock.time()
            self._timed = stats.latency
        if self._log.isEnabledFor(logging.INFO):
            self._log.info(
                "%s connected (to %s)",
                self.name,
                format_peer(transport.get_extra_info("sockname")),
                extra={"client": format_peer(self.peer)},
            )

    def data_received(self, data: bytes) -> None:
        if self._closing or self._eof:
            return
        framer = self._framer
        try:
            messages = framer.feed(data)
        except FramingError as exc:
            if self._stats is not None:
                self._stats.errors += 1
            self._log.warning(
                "%s sent a bad request (%s); closing its connection",
                self.name,
                exc,
                extra={"client": format_peer(self.peer), "reason": str(exc)},
            )
            self._close(abort=True)
            return
        now = self._clock.time()
        self._poller.touch(now)
        if self._idle:
            self._last_data = now
        stats = self._stats
        if stats is not None:
            stats.requests += len(messages)
            stats.last_seen = now
        closing = framer.closing_at
        if closing >= 0:
            # A request that ends the connection (the framer says so) is the last one
            # served: the client is closed once it is answered.
            del messages[closing + 1 :]
            self._eof = True
        if len(messages) == 1 and self._filter is None:
            # _submit(), inlined for the usual single request.
            payload = messages[0]
            if self._debug:
                self._log.debug("%s -> %s", self.name, hex_dump(payload))
            request = Request(self, payload, now)
            if closing == 0:
                request.closes_target = True
            self._outstanding.append(request)
            self._dispatch.submit(request)
        elif messages:
            # Pipelined requests: those sent at once leave in one write per target link.
            dispatch = self._dispatch
            dispatch.begin_batch()
            try:
                for index, payload in enumerate(messages):
                    # A request may close this client (an answer that ends its connection).
                    if self.closing:
                        return
                    self._submit(payload, now, index == closing)
            finally:
                dispatch.end_batch()
        if self._interim:
            interim = framer.take_interim_reply()
            if interim is not None:
                self._send_interim(interim)
        if len(self._outstanding) >= self._backlog:
            self._pause(PAUSE_BACKLOG)

    def _send_interim(self, interim: bytes) -> None:
        """Write an interim reply (the framer's) once earlier answers are out."""
        if self._outstanding:
            self._pending_interim = interim
        elif self._transport is not None and not self._closing:
            self._transport.write(interim)

    def _submit(self, payload: bytes, now: float, closes_target: bool) -> None:
        if self._debug:
            self._log.debug("%s -> %s", self.name, hex_dump(payload))
        request = Request(self, payload, now)
        if closes_target:
            request.closes_target = True
        self._outstanding.append(request)
        if self._filter is not None:
            refused = self._filter.refusal(payload)
            if refused is not None:
                self._refuse(request, refused)
                return
        self._dispatch.submit(request)

    def _refuse(self, request: Request, answer: bytes) -> None:
        """Answer `request` here, in its turn: the client may not ask it."""
        if self._stats is not None:
            self._stats.refused += 1
        self._log.log(
            logging.WARNING if self._refusals == 0 else logging.INFO,
            "%s may not ask that: refused it (%s)%s",
            self.name,
            hex_dump(request.payload[:16]),
            "; further refusals are logged at info level" if self._refusals == 0 else "",
            extra={"client": format_peer(self.peer), "reason": "refused by the write rules"},
        )
        self._refusals += 1
        self._dispatch.answer_here(request, answer)

    def eof_received(self) -> bool:
        self._eof = True
        try:
            self._framer.feed_eof()
        except FramingError as exc:
            self._log.info("%s closed in the middle of a request (%s)", self.name, exc)
        # Half-close: the client sent everything; answer what is outstanding, then close.
        return bool(self._outstanding)

    def _idle_check(self) -> None:
        """Close the client if it sent nothing for the idle timeout and waits for nothing."""
        self._idle_timer = None
        if self._closing:
            return
        quiet = self._clock.time() - self._last_data
        if quiet >= self._idle and not self._outstanding:
            self._log.info("%s sent nothing for %.3gs; closing it", self.name, self._idle)
            self._close()
            return
        wait = self._idle - quiet if quiet < self._idle else self._idle
        self._idle_timer = self._clock.call_later(wait, self._idle_check)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self.closed = True
        self._closing = True
        if self._stats is not None:
            self._stats.connections -= 1
        self._host.client_disconnected(self)
        self._dispatch.owner_closed(self)
        self._outstanding.clear()
        if self._log.isEnabledFor(logging.INFO):
            client = {"client": format_peer(self.peer)}
            if exc is None:
                self._log.info("%s disconnected", self.name, extra=client)
            else:
                self._log.info("%s disconnected: %s", self.name, exc, extra=client)

    def pause_writing(self) -> None:
        self._pause(PAUSE_WRITE)

    def resume_writing(self) -> None:
        self._resume(PAUSE_WRITE)

    # ------------------------------------------------------------------ from the dispatcher

    def request_done(self, request: Request) -> None:
        """`request` has its answer: write every answer that is now next in order."""
        if self._closing:
            return
        outstanding = self._outstanding
        if not outstanding or outstanding[0] is not request:
            return
        chunks: list[bytes] = []
        close_after = False
        timed = self._timed
        while outstanding and outstanding[0].state == RequestState.DONE:
            done = outstanding.popleft()
            if timed is not None:
                timed.observe(self._clock.time() - done.submitted_at)
            if done.close_client:
                self._log.info("%s: no answer from the target; closing the client", self.name)
                close_after = True
                break
            answer = done.answer
            if self._debug:
                self._log.debug("%s <- %s", self.name, hex_dump(answer))
            chunks.append(answer)
            if done.ends_connection:
                close_after = True
                break
        transport = self._transport
        if transport is None:
            return
        if not outstanding and self._pending_interim is not None:
            chunks.append(self._pending_interim)
            self._pending_interim = None
        if chunks:
            transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if close_after or (self._eof and not outstanding):
            self._close()
        elif self._paused & PAUSE_BACKLOG and len(outstanding) < self._backlog:
            self._resume(PAUSE_BACKLOG)

    def pause_for_queue(self) -> None:
        self._pause(PAUSE_QUEUE)

    def resume_for_queue(self) -> None:
        self._resume(PAUSE_QUEUE)

    # ------------------------------------------------------------------ a reload

    def refresh(self) -> None:
        """Take the host's settings again (a reload): where requests go, the backlog, the
        idle timeout and what this client may ask, for its next request. Requests
        already submitted are answered where they went."""
        host = self._host
        self._dispatch = host.dispatch
        self._backlog = host.client_backlog
        idle = host.client_idle_timeout
        if idle != self._idle:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
            self._idle = idle
            if idle and not self._closing:
                self._last_data = self._clock.time()
                self._idle_timer = self._clock.call_later(idle, self._idle_check)
        if self._transport is not None and not self._closing:
            self._filter = host.filter_for(self._transport)
        if self._paused & PAUSE_BACKLOG and len(self._outstanding) < self._backlog:
            self._resume(PAUSE_BACKLOG)
        elif len(self._outstanding) >= self._backlog:
            self._pause(PAUSE_BACKLOG)

    @property
    def transport(self) -> asyncio.BaseTransport | None:
        """The client's connection, once made."""
        return self._transport

    # ------------------------------------------------------------------ helpers

    @property
    def closing(self) -> bool:
        """True once this client is being closed (its remaining requests are moot)."""
        return self._closing

    def _pause(self, reason: int) -> None:
        if not self._paused and self._transport is not None and not self._closing:
            self._transport.pause_reading()
        self._paused |= reason

    def _resume(self, reason: int) -> None:
        if not self._paused & reason:
            return
        self._paused &= ~reason
        if not self._paused and self._transport is not None and not self._closing:
            self._transport.resume_reading()

    def _close(self, *, abort: bool = False) -> None:
        """Close this client; written answers are flushed first unless `abort`."""
        if self._closing:
            return
        self._closing = True
        transport = self._transport
        if transport is None:
            return
        if abort:
            transport.abort()
        else:
            transport.close()

    def close(self) -> None:
        """Close at shutdown, after the answers already written."""
        self._close()
