"""Length-prefixed messages: ISO-8583 (binary prefix) and MPU (ASCII digits).

ISO-8583 as carried by most switches, 2-byte big-endian length::

    +--------+--------+--------------------------+
    | len hi | len lo | len bytes of message     |
    +--------+--------+--------------------------+

MPU switch format, 4 ASCII decimal digits::

    +---+---+---+---+--------------------------+
    | d | d | d | d | dddd bytes of message    |
    +---+---+---+---+--------------------------+

In both the length excludes the prefix itself (as in the reference implementation).
The message handed back includes the prefix, byte for byte. MPU digits are strict
ASCII ``0``-``9``: `int()` would also accept spaces, signs and underscores.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from tcp_multiplexer.errors import MalformedMessage, MessageTooLarge
from tcp_multiplexer.protocols.framing import MessageBuffer
from tcp_multiplexer.protocols.spec import ProtocolName

ISO8583_PREFIX_SIZE: Final = 2
ISO8583_MAX_MESSAGE_SIZE: Final = ISO8583_PREFIX_SIZE + 0xFFFF
"""The most a 2-byte length can announce, prefix included."""
MPU_PREFIX_SIZE: Final = 4
MPU_MAX_MESSAGE_SIZE: Final = MPU_PREFIX_SIZE + 9999
"""The most 4 decimal digits can announce, prefix included."""

_ASCII_DIGITS: Final = frozenset(b"0123456789")


def _binary_length(prefix: bytes | bytearray) -> int:
    return int.from_bytes(prefix, "big")


def _ascii_length(prefix: bytes | bytearray) -> int:
    if not _ASCII_DIGITS.issuperset(prefix):
        raise ValueError(bytes(prefix))
    return int(prefix)


class LengthPrefixFramer:
    """Cuts a stream of ``prefix + body`` messages; bodies may arrive in any pieces."""

    __slots__ = ("_buffer", "_decode", "_max", "_prefix_size", "_protocol")

    closing_at: Final = -1
    """No message ends the connection."""
    offers_interim_replies: Final = False

    def __init__(
        self,
        protocol: ProtocolName,
        prefix_size: int,
        decode: Callable[[bytes | bytearray], int],
        max_message_size: int,
    ) -> None:
        self._buffer = MessageBuffer()
        self._protocol = protocol
        self._prefix_size = prefix_size
        self._decode = decode
        self._max = max_message_size

    @property
    def buffered(self) -> int:
        return len(self._buffer.buf)

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        if buffer.error is not None:
            raise buffer.error
        buf = buffer.buf
        buf += data
        messages: list[bytes] = []
        start = 0
        prefix_size = self._prefix_size
        available = len(buf)
        while available - start >= prefix_size:
            prefix = buf[start : start + prefix_size]
            try:
                size = prefix_size + self._decode(prefix)
            except ValueError:
                raise buffer.poison(
                    MalformedMessage(
                        self._protocol, f"length prefix {bytes(prefix)!r} is not digits"
                    )
                ) from None
            if size > self._max:
                raise buffer.poison(
                    MessageTooLarge(
                        self._protocol, f"message of {size} bytes exceeds the limit of {self._max}"
                    )
                )
            if available - start < size:
                break
            messages.append(bytes(buf[start : start + size]))
            start += size
        if start:
            del buf[:start]
        return messages

    def feed_eof(self) -> list[bytes]:
        return self._buffer.eof_without_message(self._protocol)

    def take_interim_reply(self) -> bytes | None:
        """None: length-prefixed protocols have no interim replies."""
        return None

    def expect_response(self, request: bytes) -> None:
        """Responses are framed like requests; nothing to remember."""


def iso8583_framer(max_message_size: int = ISO8583_MAX_MESSAGE_SIZE) -> LengthPrefixFramer:
    """A framer for 2-byte big-endian length-prefixed ISO-8583 messages."""
    return LengthPrefixFramer(
        ProtocolName.ISO8583,
        ISO8583_PREFIX_SIZE,
        _binary_length,
        min(max_message_size, ISO8583_MAX_MESSAGE_SIZE),
    )


def mpu_framer(max_message_size: int = MPU_MAX_MESSAGE_SIZE) -> LengthPrefixFramer:
    """A framer for MPU messages: 4 ASCII decimal digits of length, then the body."""
    return LengthPrefixFramer(
        ProtocolName.MPU,
        MPU_PREFIX_SIZE,
        _ascii_length,
        min(max_message_size, MPU_MAX_MESSAGE_SIZE),
    )
