"""The Modbus/TCP target: a small simulated device with predictable registers.

Every unit id is answered, each with its own memory. Values before any write come
from the pure functions below, so tests can compute what a read must return:

    ============================  ===========================================
    table                         value at `address` of `unit`
    ============================  ===========================================
    coils (fc 1, 5, 15)           ``address % 3 == 0``
    discrete inputs (fc 2)        ``address % 3 == 0``
    holding registers (3, 6, 16)  ``(address * 7 + unit) & 0xFFFF``
    input registers (fc 4)        ``(address * 11 + unit) & 0xFFFF``
    ============================  ===========================================

Function codes 1-6, 15, 16 and 23 (read/write multiple registers, write first) follow
the Modbus Application Protocol v1.1b3, section 6. Writes change the coils and holding
registers in memory and are shared by every connection, like a real device's.
Exceptions (section 7): 0x01 unknown function; 0x03 quantity out of range, a byte
count that does not match, a malformed PDU or a coil value other than 0xFF00/0x0000;
0x02 a range that runs past address 65535. Answers keep the request's transaction
and unit id.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Final

from tcp_multiplexer.core.interfaces import Framer
from tcp_multiplexer.errors import FramingError
from tcp_multiplexer.protocols.modbus.mbap import (
    MBAP_HEADER_SIZE,
    ExceptionCode,
    FunctionCode,
    MbapFramer,
    build_adu,
    exception_response,
    transaction_id,
    unit_id,
    with_transaction_id,
)
from tcp_multiplexer.protocols.responder import Answer
from tcp_multiplexer.protocols.spec import ProtocolName

ILLEGAL_FUNCTION: Final = ExceptionCode.ILLEGAL_FUNCTION
ILLEGAL_DATA_ADDRESS: Final = ExceptionCode.ILLEGAL_DATA_ADDRESS
ILLEGAL_DATA_VALUE: Final = 0x03

ADDRESS_SPACE: Final = 0x10000
"""Addresses are 16 bits; a range may end at 65535 but not beyond."""
MAX_READ_BITS: Final = 2000
"""0x07D0, fc 1 and 2: the largest bit count that fits a 253-byte PDU (with margin)."""
MAX_READ_REGISTERS: Final = 125
"""0x007D, fc 3, 4 and the read part of 23: 250 data bytes in a 253-byte PDU."""
MAX_WRITE_BITS: Final = 1968
"""0x07B0, fc 15: 246 data bytes after the 7-byte request header."""
MAX_WRITE_REGISTERS: Final = 123
"""0x007B, fc 16: 246 data bytes after the 6-byte request header."""
MAX_READ_WRITE_REGISTERS: Final = 121
"""0x0079, the write part of fc 23: 242 data bytes after its 10-byte request header."""
COIL_ON: Final = 0xFF00
COIL_OFF: Final = 0x0000
WRONG_ID_OFFSET: Final = 0x8000
"""Added to the transaction id by the wrong-id fault: half the id space away, so the
answer matches no request in flight unless 32768 are outstanding."""

_ADDRESS_COUNT: Final = struct.Struct(">HH")
_ADDRESS_COUNT_BYTES: Final = struct.Struct(">HHB")
_READ_WRITE: Final = struct.Struct(">HHHHB")


def coil_value(unit: int, address: int) -> bool:
    """A coil's value before any write."""
    return address % 3 == 0


def discrete_input_value(unit: int, address: int) -> bool:
    """A discrete input's value (read-only)."""
    return address % 3 == 0


def holding_register_value(unit: int, address: int) -> int:
    """A holding register's value before any write."""
    return (address * 7 + unit) & 0xFFFF


def input_register_value(unit: int, address: int) -> int:
    """An input register's value (read-only)."""
    return (address * 11 + unit) & 0xFFFF


def pack_bits(bits: Sequence[bool]) -> bytes:
    """Bits packed as Modbus sends them: first bit in the lowest bit of the first byte."""
    packed = bytearray((len(bits) + 7) // 8)
    for index, bit in enumerate(bits):
        if bit:
            packed[index >> 3] |= 1 << (index & 7)
    return bytes(packed)


def unpack_bits(data: bytes, count: int) -> list[bool]:
    """The first `count` bits of `data`, in Modbus order (inverse of `pack_bits`)."""
    return [bool(data[index >> 3] & (1 << (index & 7))) for index in range(count)]


class _ModbusException(Exception):
    """A request the device answers with an exception response."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _check_range(address: int, count: int, limit: int) -> None:
    # Quantity is checked before the address range, as in the spec's state diagrams.
    if not 1 <= count <= limit:
        raise _ModbusException(ILLEGAL_DATA_VALUE)
    if address + count > ADDRESS_SPACE:
        raise _ModbusException(ILLEGAL_DATA_ADDRESS)


class ModbusDevice:
    """A simulated Modbus/TCP device answering every unit id (see the module docstring)."""

    __slots__ = ("_coils", "_handlers", "_holding")

    def __init__(self) -> None:
        # Only written values are stored; everything else comes from the pure functions.
        self._coils: dict[tuple[int, int], bool] = {}
        self._holding: dict[tuple[int, int], int] = {}
        self._handlers: dict[int, Callable[[int, bytes], bytes]] = {
            FunctionCode.READ_COILS: lambda unit, pdu: self._read_bits(unit, pdu, self.coil),
            FunctionCode.READ_DISCRETE_INPUTS: lambda unit, pdu: self._read_bits(
                unit, pdu, discrete_input_value
            ),
            FunctionCode.READ_HOLDING_REGISTERS: lambda unit, pdu: self._read_registers(
                unit, pdu, self.holding_register
            ),
            FunctionCode.READ_INPUT_REGISTERS: lambda unit, pdu: self._read_registers(
                unit, pdu, input_register_value
            ),
            FunctionCode.WRITE_SINGLE_COIL: self._write_coil,
            FunctionCode.WRITE_SINGLE_REGISTER: self._write_register,
            FunctionCode.WRITE_MULTIPLE_COILS: self._write_coils,
            FunctionCode.WRITE_MULTIPLE_REGISTERS: self._write_registers,
            FunctionCode.READ_WRITE_MULTIPLE_REGISTERS: self._read_write_registers,
        }

    @property
    def name(self) -> str:
        return ProtocolName.MODBUS

    def request_framer(self) -> Framer:
        return MbapFramer()

    def coil(self, unit: int, address: int) -> bool:
        """The current value of a coil."""
        return self._coils.get((unit, address), coil_value(unit, address))

    def holding_register(self, unit: int, address: int) -> int:
        """The current value of a holding register."""
        return self._holding.get((unit, address), holding_register_value(unit, address))

    def answer(self, request: bytes) -> Answer:
        """The response ADU to one framed request ADU (normal or exception)."""
        unit = unit_id(request)
        pdu = request[MBAP_HEADER_SIZE:]
        try:
            reply = self._execute(unit, pdu)
        except _ModbusException as exc:
            return Answer(exception_response(request, exc.code))
        return Answer(build_adu(transaction_id(request), unit, reply))

    def reject(self, error: FramingError) -> bytes:
        """Nothing: a bad MBAP header means the stream is lost, so the connection closes."""
        return b""

    def with_wrong_id(self, answer: bytes) -> bytes:
        return with_transaction_id(answer, (transaction_id(answer) + WRONG_ID_OFFSET) & 0xFFFF)

    def _execute(self, unit: int, pdu: bytes) -> bytes:
        handler = self._handlers.get(pdu[0])
        if handler is None:
            raise _ModbusException(ILLEGAL_FUNCTION)
        return handler(unit, pdu)

    @staticmethod
    def _address_count(pdu: bytes) -> tuple[int, int]:
        if len(pdu) != 1 + _ADDRESS_COUNT.size:
            raise _ModbusException(ILLEGAL_DATA_VALUE)
        address, count = _ADDRESS_COUNT.unpack_from(pdu, 1)
        return address, count

    def _read_bits(self, unit: int, pdu: bytes, value: Callable[[int, int], bool]) -> bytes:
        address, count = self._address_count(pdu)
        _check_range(address, count, MAX_READ_BITS)
        packed = pack_bits([value(unit, item) for item in range(address, address + count)])
        return pdu[:1] + bytes((len(packed),)) + packed

    def _read_registers(self, unit: int, pdu: bytes, value: Callable[[int, int], int]) -> bytes:
        address, count = self._address_count(pdu)
        _check_range(address, count, MAX_READ_REGISTERS)
        return pdu[:1] + self._register_bytes(unit, address, count, value)

    @staticmethod
    def _register_bytes(
        unit: int, address: int, count: int, value: Callable[[int, int], int]
    ) -> bytes:
        values = [value(unit, item) for item in range(address, address + count)]
        return bytes((2 * count,)) + struct.pack(f">{count}H", *values)

    def _write_coil(self, unit: int, pdu: bytes) -> bytes:
        address, state = self._address_count(pdu)
        if state not in (COIL_ON, COIL_OFF):
            raise _ModbusException(ILLEGAL_DATA_VALUE)
        self._coils[unit, address] = state == COIL_ON
        return pdu

    def _write_register(self, unit: int, pdu: bytes) -> bytes:
        address, value = self._address_count(pdu)
        self._holding[unit, address] = value
        return pdu

    @staticmethod
    def _multiple_write(
        pdu: bytes, limit: int, byte_count_of: Callable[[int], int]
    ) -> tuple[int, int, bytes]:
        header_size = 1 + _ADDRESS_COUNT_BYTES.size
        if len(pdu) < header_size:
            raise _ModbusException(ILLEGAL_DATA_VALUE)
        address, count, byte_count = _ADDRESS_COUNT_BYTES.unpack_from(pdu, 1)
        data = pdu[header_size:]
        if not 1 <= count <= limit or byte_count != byte_count_of(count) or len(data) != byte_count:
            raise _ModbusException(ILLEGAL_DATA_VALUE)
        _check_range(address, count, limit)
        return address, count, data

    def _write_coils(self, unit: int, pdu: bytes) -> bytes:
        address, count, data = self._multiple_write(
            pdu, MAX_WRITE_BITS, lambda count: (count + 7) // 8
        )
        for offset, bit in enumerate(unpack_bits(data, count)):
            self._coils[unit, address + offset] = bit
        return pdu[:5]

    def _write_registers(self, unit: int, pdu: bytes) -> bytes:
        address, _count, data = self._multiple_write(
            pdu, MAX_WRITE_REGISTERS, lambda count: 2 * count
        )
        self._store_registers(unit, address, data)
        return pdu[:5]

    def _store_registers(self, unit: int, address: int, data: bytes) -> None:
        for offset, (value,) in enumerate(struct.iter_unpack(">H", data)):
            self._holding[unit, address + offset] = value

    def _read_write_registers(self, unit: int, pdu: bytes) -> bytes:
        header_size = 1 + _READ_WRITE.size
        if len(pdu) < header_size:
            raise _ModbusException(ILLEGAL_DATA_VALUE)
        read_address, read_count, write_address, write_count, byte_count = _READ_WRITE.unpack_from(
            pdu, 1
        )
        data = pdu[header_size:]
        if (
            not 1 <= read_count <= MAX_READ_REGISTERS
            or not 1 <= write_count <= MAX_READ_WRITE_REGISTERS
            or byte_count != 2 * write_count
            or len(data) != byte_count
        ):
            raise _ModbusException(ILLEGAL_DATA_VALUE)
        _check_range(read_address, read_count, MAX_READ_REGISTERS)
        _check_range(write_address, write_count, MAX_READ_WRITE_REGISTERS)
        # The spec performs the write before the read.
        self._store_registers(unit, write_address, data)
        return pdu[:1] + self._register_bytes(unit, read_address, read_count, self.holding_register)
