"""ClientSession: one client connection, its requests, and its answers in order."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Final, cast

from tcp_multiplexer.errors import FramingError
from tcp_multiplexer.framing.base import Codec
from tcp_multiplexer.keepalive import configure_keepalive
from tcp_multiplexer.logtext import format_peer, hex_dump
from tcp_multiplexer.request import Request, RequestState

if TYPE_CHECKING:
    from tcp_multiplexer.dispatch import Dispatcher
    from tcp_multiplexer.server import Multiplexer

logger = logging.getLogger(__name__)


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
        "_closing",
        "_codec",
        "_debug",
        "_dispatcher",
        "_eof",
        "_framer",
        "_loop",
        "_outstanding",
        "_paused",
        "_pending_interim",
        "_server",
        "_spinner",
        "_transport",
        "closed",
        "name",
        "number",
        "waiting",
    )

    def __init__(self, server: Multiplexer, number: int) -> None:
        self._server = server
        self._codec: Codec = server.codec
        self._dispatcher: Dispatcher = server.dispatcher
        self._backlog = server.config.client_backlog
        self._framer = self._codec.request_framer()
        self._loop = asyncio.get_running_loop()
        self.number = number
        self.name = f"client #{number}"
        self._transport: asyncio.Transport | None = None
        self._outstanding: deque[Request] = deque()
        self.waiting: deque[Request] = deque()
        """Requests of this client in the dispatcher's wait queue (owned by it)."""
        self._paused = 0
        self._eof = False
        self._pending_interim: bytes | None = None
        """An interim reply waiting for the answers to earlier requests."""
        self._closing = False
        self.closed = False
        self._debug = logger.isEnabledFor(logging.DEBUG)
        self._spinner = server.spinner

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        configure_keepalive(transport, self._server.config.health_check_interval)
        peer = transport.get_extra_info("peername")
        self.name = f"client #{self.number} {format_peer(peer)}"
        self._server.session_opened(self)
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "%s connected (to %s)", self.name, format_peer(transport.get_extra_info("sockname"))
            )

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            messages = self._framer.feed(data)
        except FramingError as exc:
            logger.warning("%s sent a bad request (%s); closing its connection", self.name, exc)
            self._close(abort=True)
            return
        dispatcher = self._dispatcher
        now = self._loop.time()
        self._spinner.touch(now)
        if len(messages) == 1:
            self._submit(messages[0], now)
        elif messages:
            # Pipelined requests: those sent at once leave in one write per target link.
            dispatcher.begin_batch()
            try:
                for payload in messages:
                    if self.closing:
                        return
                    self._submit(payload, now)
            finally:
                dispatcher.end_batch()
        interim = self._framer.take_interim_reply()
        if interim is not None:
            self._send_interim(interim)
        if len(self._outstanding) >= self._backlog:
            self._pause(PAUSE_BACKLOG)

    def _send_interim(self, interim: bytes) -> None:
        """Write an interim reply (HTTP 100 Continue) once earlier answers are out."""
        if self._outstanding:
            self._pending_interim = interim
        elif self._transport is not None and not self._closing:
            self._transport.write(interim)

    def _submit(self, payload: bytes, now: float) -> None:
        if self._debug:
            logger.debug("%s -> %s", self.name, hex_dump(payload))
        request = Request(self, payload, now)
        self._outstanding.append(request)
        self._dispatcher.submit(request)

    def eof_received(self) -> bool:
        self._eof = True
        try:
            self._framer.feed_eof()
        except FramingError as exc:
            logger.info("%s closed in the middle of a request (%s)", self.name, exc)
        # Half-close: the client sent everything; answer what is outstanding, then close.
        return bool(self._outstanding)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._closing = True
        self._server.session_closed(self)
        self._dispatcher.session_closed(self)
        self._outstanding.clear()
        if logger.isEnabledFor(logging.INFO):
            if exc is None:
                logger.info("%s disconnected", self.name)
            else:
                logger.info("%s disconnected: %s", self.name, exc)

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
        while outstanding and outstanding[0].state is RequestState.DONE:
            done = outstanding.popleft()
            if done.close_client:
                logger.info("%s: no answer from the target; closing the client", self.name)
                close_after = True
                break
            reply = done.reply
            if self._debug:
                logger.debug("%s <- %s", self.name, hex_dump(reply))
            chunks.append(reply)
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
