"""Modbus/TCP application data units (MBAP header + PDU).

Wire layout (Modbus Messaging on TCP/IP Implementation Guide v1.0b, section 3.1.3)::

    0        2        4        6      7                      7 + length - 1
    +--------+--------+--------+------+-----------------------+
    | trans. | proto. | length | unit | PDU: function + data  |
    | id     | id = 0 | (BE)   | id   |                       |
    +--------+--------+--------+------+-----------------------+
    |<------------- MBAP header, 7 bytes ------------>|

`length` counts the unit id and the PDU. A PDU is at most 253 bytes (Modbus
Application Protocol v1.1b3, section 4.1), so 2 <= length <= 254 and an ADU is at most
260 bytes. Protocol id must be 0; anything else is not Modbus and is rejected.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Final

from tcp_multiplexer.errors import MalformedMessage, MessageTooLarge
from tcp_multiplexer.protocols.framing import MessageBuffer
from tcp_multiplexer.protocols.spec import ProtocolName

MBAP_HEADER_SIZE: Final = 7
MBAP_MIN_LENGTH: Final = 2
"""Unit id plus at least a function code."""
MBAP_MAX_LENGTH: Final = 254
"""Unit id plus the largest PDU (253 bytes)."""
MODBUS_MAX_MESSAGE_SIZE: Final = MBAP_HEADER_SIZE - 1 + MBAP_MAX_LENGTH
"""260 bytes: the largest ADU."""

EXCEPTION_FLAG: Final = 0x80
"""Set in the function code of an exception response."""

_HEADER: Final = struct.Struct(">HHH")
_READ: Final = struct.Struct(">BHH")


class FunctionCode(IntEnum):
    """Public function codes (Application Protocol v1.1b3, section 5.1) this project uses."""

    READ_COILS = 1
    READ_DISCRETE_INPUTS = 2
    READ_HOLDING_REGISTERS = 3
    READ_INPUT_REGISTERS = 4
    WRITE_SINGLE_COIL = 5
    WRITE_SINGLE_REGISTER = 6
    WRITE_MULTIPLE_COILS = 15
    WRITE_MULTIPLE_REGISTERS = 16
    MASK_WRITE_REGISTER = 22
    READ_WRITE_MULTIPLE_REGISTERS = 23


class ExceptionCode:
    """Modbus exception codes the gateway sends (Application Protocol v1.1b3, section 7)."""

    ILLEGAL_FUNCTION: Final = 0x01
    ILLEGAL_DATA_ADDRESS: Final = 0x02
    ILLEGAL_DATA_VALUE: Final = 0x03
    SERVER_DEVICE_FAILURE: Final = 0x04
    SERVER_DEVICE_BUSY: Final = 0x06
    GATEWAY_PATH_UNAVAILABLE: Final = 0x0A
    GATEWAY_TARGET_FAILED: Final = 0x0B


EXCEPTION_NAMES: Final = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "server device failure",
    0x06: "server device busy",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target failed to respond",
}
NOT_ANSWERED: Final = frozenset(
    {
        ExceptionCode.GATEWAY_PATH_UNAVAILABLE,
        ExceptionCode.GATEWAY_TARGET_FAILED,
        ExceptionCode.SERVER_DEVICE_BUSY,
    }
)
"""Exceptions that say a request did not get through, not what the device holds (the
bridge's own reads: polls, SunSpec scans)."""


class MbapFramer:
    """Cuts a Modbus/TCP stream into ADUs, validating every MBAP header.

    Raises `MalformedMessage` for a protocol id other than 0 or a length outside
    2..254 (checked as soon as the 7 header bytes are in).
    """

    __slots__ = ("_buffer",)

    closing_at: Final = -1
    """No message ends the connection."""
    offers_interim_replies: Final = False

    def __init__(self) -> None:
        self._buffer = MessageBuffer()

    @property
    def buffered(self) -> int:
        return len(self._buffer.buf)

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        if buffer.error is not None:
            raise buffer.error
        buf = buffer.buf
        # Fast path: nothing held and `data` is exactly one valid ADU (the usual case).
        if not buf and len(data) >= MBAP_HEADER_SIZE:
            _tid, protocol_id, length = _HEADER.unpack_from(data)
            if (
                protocol_id == 0
                and MBAP_MIN_LENGTH <= length <= MBAP_MAX_LENGTH
                and len(data) == MBAP_HEADER_SIZE - 1 + length
            ):
                return [bytes(data)]
        buf += data
        messages: list[bytes] = []
        start = 0
        available = len(buf)
        while available - start >= MBAP_HEADER_SIZE:
            _tid, protocol_id, length = _HEADER.unpack_from(buf, start)
            if protocol_id != 0:
                raise buffer.poison(
                    MalformedMessage(ProtocolName.MODBUS, f"protocol id {protocol_id}, expected 0")
                )
            if length > MBAP_MAX_LENGTH:
                raise buffer.poison(
                    MessageTooLarge(
                        ProtocolName.MODBUS, f"MBAP length {length} exceeds {MBAP_MAX_LENGTH}"
                    )
                )
            if length < MBAP_MIN_LENGTH:
                raise buffer.poison(
                    MalformedMessage(
                        ProtocolName.MODBUS, f"MBAP length {length} is below {MBAP_MIN_LENGTH}"
                    )
                )
            size = MBAP_HEADER_SIZE - 1 + length
            if available - start < size:
                break
            messages.append(bytes(buf[start : start + size]))
            start += size
        if start:
            del buf[:start]
        return messages

    def feed_eof(self) -> list[bytes]:
        return self._buffer.eof_without_message(ProtocolName.MODBUS)

    def take_interim_reply(self) -> bytes | None:
        """None: Modbus has no interim replies."""
        return None

    def expect_response(self, request: bytes) -> None:
        """Responses are ADUs too; nothing to remember."""


def build_adu(transaction_id: int, unit_id: int, pdu: bytes) -> bytes:
    """An ADU with protocol id 0 and the length computed from `pdu`."""
    return _HEADER.pack(transaction_id, 0, len(pdu) + 1) + bytes((unit_id,)) + pdu


def read_request(
    transaction_id: int,
    unit_id: int,
    address: int,
    count: int,
    function: int = FunctionCode.READ_HOLDING_REGISTERS,
) -> bytes:
    """A read request ADU (function codes 1-4): first address and quantity."""
    return build_adu(transaction_id, unit_id, _READ.pack(function, address, count))


def transaction_id(adu: bytes) -> int:
    """The MBAP transaction id of a framed ADU."""
    return (adu[0] << 8) | adu[1]


def with_transaction_id(adu: bytes, new_id: int) -> bytes:
    """`adu` with its transaction id replaced by `new_id` (0..65535)."""
    return new_id.to_bytes(2, "big") + adu[2:]


def unit_id(adu: bytes) -> int:
    """The unit identifier of a framed ADU."""
    return adu[6]


def function_code(adu: bytes) -> int:
    """The function code of a framed ADU (its first PDU byte)."""
    return adu[7]


def exception_response(request: bytes, code: int) -> bytes:
    """An exception ADU answering `request`: its own transaction and unit id, fc | 0x80."""
    return build_adu(
        transaction_id(request),
        unit_id(request),
        bytes(((function_code(request) | EXCEPTION_FLAG) & 0xFF, code)),
    )
