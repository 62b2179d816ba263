"""Codecs for the protocols that need nothing but framing: echo, ISO-8583 and MPU.

Requests and responses are framed alike and answered in order; the multiplexer has no
answer of its own for them, so a client whose request fails has its connection closed.
"""

from __future__ import annotations

from collections.abc import Callable

from tcp_multiplexer.framing.base import (
    Correlation,
    FailureReason,
    Framer,
    ProtocolName,
    ResponseFramer,
)
from tcp_multiplexer.framing.length_prefix import iso8583_framer, mpu_framer
from tcp_multiplexer.framing.line import LineFramer


class SymmetricCodec:
    """A FIFO codec whose requests and responses share one framing."""

    __slots__ = ("_make_framer", "_name")

    def __init__(self, name: ProtocolName, make_framer: Callable[[], ResponseFramer]) -> None:
        self._name = name
        self._make_framer = make_framer

    @property
    def name(self) -> ProtocolName:
        return self._name

    @property
    def correlation(self) -> Correlation:
        return Correlation.FIFO

    def request_framer(self) -> Framer:
        return self._make_framer()

    def response_framer(self) -> ResponseFramer:
        return self._make_framer()

    def error_reply(self, request: bytes, reason: FailureReason) -> bytes | None:
        """None: these protocols have no gateway answer, so the client is closed."""
        return None

    def request_ends_connection(self, request: bytes) -> bool:
        return False

    def reply_ends_connection(self, reply: bytes) -> bool:
        return False

    def request_id(self, request: bytes) -> int:
        raise NotImplementedError(f"{self._name} has no request ids")

    def with_request_id(self, message: bytes, request_id: int) -> bytes:
        raise NotImplementedError(f"{self._name} has no request ids")

    def restore_reply(self, request: bytes, reply: bytes) -> bytes:
        return reply


def echo_codec() -> SymmetricCodec:
    return SymmetricCodec(ProtocolName.ECHO, LineFramer)


def iso8583_codec() -> SymmetricCodec:
    return SymmetricCodec(ProtocolName.ISO8583, iso8583_framer)


def mpu_codec() -> SymmetricCodec:
    return SymmetricCodec(ProtocolName.MPU, mpu_framer)
