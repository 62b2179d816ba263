"""The ISO-8583 target: answers a request MTI with the matching response MTI.

Messages carry a 2-byte big-endian length prefix (excluding itself). When the body
starts with a 4-digit ASCII MTI, the answer is the same message with the MTI's third
digit (the message function) raised by one, so ``0200`` (financial request) is
answered by ``0210`` (financial response), and ``0800`` by ``0810``. A ``9`` wraps
to ``0``. Any other body (binary or BCD MTIs) is echoed unchanged.
"""

from __future__ import annotations

from typing import Final

from tcp_multiplexer.core.interfaces import Framer
from tcp_multiplexer.errors import FramingError
from tcp_multiplexer.protocols.length_prefix import ISO8583_PREFIX_SIZE, iso8583_framer
from tcp_multiplexer.protocols.responder import Answer
from tcp_multiplexer.protocols.spec import ProtocolName

MTI_SIZE: Final = 4
_FUNCTION_DIGIT: Final = ISO8583_PREFIX_SIZE + 2
"""Offset of the MTI's third digit (message function) in a framed message."""
_ASCII_DIGITS: Final = frozenset(b"0123456789")


def response_message(request: bytes) -> bytes:
    """The answer to a framed ISO-8583 `request` (prefix included): MTI function + 1, or itself."""
    mti = request[ISO8583_PREFIX_SIZE : ISO8583_PREFIX_SIZE + MTI_SIZE]
    if len(mti) < MTI_SIZE or not _ASCII_DIGITS.issuperset(mti):
        return request
    digit = request[_FUNCTION_DIGIT] - ord("0")
    answered = ord("0") + (digit + 1) % 10
    return request[:_FUNCTION_DIGIT] + bytes((answered,)) + request[_FUNCTION_DIGIT + 1 :]


class Iso8583Responder:
    """Answers each ISO-8583 message with its response MTI (see the module docstring)."""

    __slots__ = ()

    @property
    def name(self) -> str:
        return ProtocolName.ISO8583

    def request_framer(self) -> Framer:
        return iso8583_framer()

    def answer(self, request: bytes) -> Answer:
        return Answer(response_message(request))

    def reject(self, error: FramingError) -> bytes:
        """Nothing: the 2-byte prefix cannot be wrong, only a partial message at EOF."""
        return b""

    def with_wrong_id(self, answer: bytes) -> bytes:
        raise NotImplementedError("iso8583 answers are matched in order, not by id")
