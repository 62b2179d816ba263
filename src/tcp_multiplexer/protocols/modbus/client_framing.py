"""Clients that speak Modbus RTU over TCP, or either framing, told per connection.

`RtuClientProtocol` sits between a listener's TCP connection and the bridge's
`ClientSession`, which speaks Modbus/TCP (MBAP) as everything behind it does:

- each RTU request frame from the client (unit id, PDU, CRC) becomes an MBAP request
  with a transaction id of the connection's own, and goes to the session;
- each MBAP answer the session writes (in the client's request order, gateway
  exceptions included) goes back as an RTU frame with its CRC;
- a broadcast (unit 0) is passed on and its answer dropped: on a bus nobody answers it;
- a frame with a bad CRC, an unknown function or a frame cut short loses this client's
  connection only (logged).

On a serial line (``serial`` mode: the multiplexer is a slave there) only requests for
the units it serves go to the session; other slaves' answers and damaged frames are
passed by (never closing the line), and a frame begins afresh after 3.5 characters of
silence.

In ``auto`` mode the first request decides, once for the connection: an RTU request
whose CRC checks is RTU; a whole MBAP request with protocol id 0 and a length that fits
is MBAP (then the connection is passed through untouched); anything else goes to the
session as MBAP, whose framer refuses it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
import time
from typing import Any, Final, cast

from tcp_multiplexer.errors import DamagedMessage, FramingError
from tcp_multiplexer.protocols.modbus.rtu import (
    RtuRequestFramer,
    crc_ok,
    request_length,
    with_crc,
)

logger = logging.getLogger("tcp_multiplexer.bridge")

RTU: Final = "rtu"
MBAP: Final = "mbap"
AUTO: Final = "auto"
SERIAL: Final = "serial"
BROADCAST: Final = 0
_MBAP: Final = struct.Struct(">HHHB")
_DECIDE_AFTER: Final = 260
"""Bytes after which an undecided auto connection is taken as MBAP."""


class _FramedTransport(asyncio.Transport):
    """What the session writes to: MBAP answers, written to the client as RTU frames."""

    def __init__(self, outer: asyncio.Transport, adapter: RtuClientProtocol) -> None:
        super().__init__()
        self._outer = outer
        self._adapter = adapter

    def write(self, data: bytes | bytearray | memoryview) -> None:
        frames = self._adapter.rtu_answers(bytes(data))
        if frames:
            self._outer.write(frames)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._outer.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._outer.is_closing()

    def close(self) -> None:
        self._outer.close()

    def abort(self) -> None:
        self._outer.abort()

    def pause_reading(self) -> None:
        self._outer.pause_reading()

    def resume_reading(self) -> None:
        self._outer.resume_reading()

    def is_reading(self) -> bool:
        return self._outer.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._outer.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._outer.get_write_buffer_size()


class RtuClientProtocol(asyncio.Protocol):
    """An RTU-over-TCP client (or, in ``auto`` mode, either) in front of `inner`, a
    session speaking MBAP (see the module docstring)."""

    def __init__(
        self,
        inner: asyncio.Protocol,
        mode: str,
        units: frozenset[int] | None = None,
        silence: float = 0.0,
    ) -> None:
        self._inner = inner
        self._line = mode == SERIAL
        """A serial line the multiplexer is a slave on: other slaves' frames and noise
        pass by; only requests for `units` are answered."""
        self._rtu = mode in (RTU, SERIAL)
        self._decided = self._rtu
        self._units = units
        self._silence = silence
        self._last_byte = -math.inf
        self._held = bytearray()
        self._framer = RtuRequestFramer()
        self._next_id = 0
        self._broadcasts: list[int] = []
        """The transaction ids given to broadcasts whose answers are dropped."""
        self._pending = bytearray()
        """MBAP answer bytes written by the session, not yet a whole answer."""
        self._transport: asyncio.Transport | None = None

    @property
    def framing(self) -> str:
        """``rtu``, ``mbap``, or ``""`` while an auto connection is undecided."""
        if not self._decided:
            return ""
        return RTU if self._rtu else MBAP

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        outer = cast(asyncio.Transport, transport)
        self._transport = outer
        self._inner.connection_made(_FramedTransport(outer, self))

    def data_received(self, data: bytes) -> None:
        if not self._decided:
            self._held += data
            decision = _decide(self._held)
            if decision is None:
                return
            self._decided = True
            self._rtu = decision == RTU
            data = bytes(self._held)
            self._held.clear()
        if not self._rtu:
            self._inner.data_received(data)
            return
        if self._line:
            # A frame ends with 3.5 characters of silence: what came before it is over.
            now = time.monotonic()
            if now - self._last_byte > self._silence and self._framer.buffered:
                self._framer = RtuRequestFramer()
            self._last_byte = now
        try:
            frames = self._framer.feed(data)
        except FramingError as exc:
            if self._line:
                # Another slave's answer, or noise: not for us; the framer dropped it.
                logger.debug("serial listener: %s", exc)
                return
            self._bad_input(exc)
            return
        if self._units is not None:
            frames = [f for f in frames if f[0] in self._units or f[0] == BROADCAST]
        if frames:
            self._inner.data_received(b"".join(self._mbap(frame) for frame in frames))

    def _mbap(self, frame: bytes) -> bytes:
        """An RTU request frame as an MBAP request of this connection."""
        self._next_id = (self._next_id + 1) & 0xFFFF
        unit = frame[0]
        if unit == BROADCAST:
            self._broadcasts.append(self._next_id)
        return _MBAP.pack(self._next_id, 0, len(frame) - 2, unit) + frame[1:-2]

    def rtu_answers(self, data: bytes) -> bytes:
        """MBAP answers written by the session, as what goes to the client."""
        if not self._rtu:
            return data
        pending = self._pending
        pending += data
        out: list[bytes] = []
        while len(pending) >= 6:
            size = 6 + int.from_bytes(pending[4:6], "big")
            if len(pending) < size:
                break
            answer = bytes(pending[:size])
            del pending[:size]
            transaction = int.from_bytes(answer[:2], "big")
            if self._broadcasts and transaction in self._broadcasts:
                self._broadcasts.remove(transaction)
                continue  # nobody answers a broadcast on a bus
            out.append(with_crc(answer[6:]))
        return b"".join(out)

    def _bad_input(self, exc: FramingError) -> None:
        peer = self._transport.get_extra_info("peername") if self._transport else None
        logger.warning("RTU client %s sent a bad frame (%s); closing its connection", peer, exc)
        if self._transport is not None:
            self._transport.abort()

    def eof_received(self) -> bool | None:
        if self._rtu:
            try:
                self._framer.feed_eof()
            except FramingError as exc:
                logger.info("RTU client closed inside a frame: %s", exc)
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def _decide(held: bytearray) -> str | None:
    """``rtu``, ``mbap``, or None to wait for more bytes: an RTU request that is whole
    and whose CRC checks is RTU; one that cannot be RTU (an unknown function, a CRC
    that fails), or a whole MBAP request with protocol id 0 and a length that fits, is
    MBAP. A client sends its first request in one piece, so the first bytes decide."""
    try:
        size = request_length(held)
    except DamagedMessage:
        return MBAP
    if size is not None and len(held) >= size:
        return RTU if crc_ok(bytes(held[:size])) else MBAP
    if len(held) >= 7 and held[2:4] == b"\x00\x00":
        length = int.from_bytes(held[4:6], "big")
        if 2 <= length <= 254 and len(held) >= 6 + length:
            return MBAP
    return MBAP if len(held) >= _DECIDE_AFTER else None
