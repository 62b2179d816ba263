"""Newline-delimited messages (the `echo` protocol).

Wire layout::

    +----------------------------+----+
    | any bytes except 0x0A      | \\n |
    +----------------------------+----+

A message is everything up to and including the first ``\\n``. The limit counts the
newline. Searches resume where the previous one stopped, so a peer trickling bytes
costs O(n) in total, not O(n^2).
"""

from __future__ import annotations

from typing import Final

from tcp_multiplexer.errors import MessageTooLarge
from tcp_multiplexer.protocols.framing import MessageBuffer
from tcp_multiplexer.protocols.spec import ProtocolName

LINE_MAX_MESSAGE_SIZE: Final = 64 * 1024
"""Default longest line, newline included: generous for text protocols, bounded per client."""


class LineFramer:
    """Cuts a byte stream at each ``\\n``.

    Raises `MessageTooLarge` as soon as more than `max_message_size` bytes are held
    without a newline.
    """

    __slots__ = ("_buffer", "_max", "_scanned")

    closing_at: Final = -1
    """No message ends the connection."""
    offers_interim_replies: Final = False

    def __init__(self, max_message_size: int = LINE_MAX_MESSAGE_SIZE) -> None:
        if max_message_size < 1:
            raise ValueError("max_message_size must be positive")
        self._buffer = MessageBuffer()
        self._max = max_message_size
        self._scanned = 0

    @property
    def buffered(self) -> int:
        return len(self._buffer.buf)

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        if buffer.error is not None:
            raise buffer.error
        buf = buffer.buf
        # Fast path: nothing held and `data` is exactly one line (the usual request). An
        # empty `data` must not take it: find() gives -1 == len - 1, a phantom empty line.
        if not buf and data and data.find(b"\n") == len(data) - 1 and len(data) <= self._max:
            return [bytes(data)]
        buf += data
        messages: list[bytes] = []
        start = 0
        search_from = self._scanned
        while True:
            end = buf.find(b"\n", search_from)
            if end < 0:
                break
            if end + 1 - start > self._max:
                raise buffer.poison(self._too_large(end + 1 - start))
            messages.append(bytes(buf[start : end + 1]))
            start = end + 1
            search_from = start
        if start:
            del buf[:start]
        self._scanned = len(buf)
        if len(buf) > self._max:
            raise buffer.poison(self._too_large(len(buf)))
        return messages

    def feed_eof(self) -> list[bytes]:
        return self._buffer.eof_without_message(ProtocolName.ECHO)

    def take_interim_reply(self) -> bytes | None:
        """None: lines have no interim replies."""
        return None

    def expect_response(self, request: bytes) -> None:
        """Responses are lines too; nothing to remember."""

    def _too_large(self, size: int) -> MessageTooLarge:
        return MessageTooLarge(
            ProtocolName.ECHO, f"line of {size}+ bytes exceeds the limit of {self._max}"
        )
