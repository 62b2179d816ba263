"""What each Modbus function code reads and writes: the one place that knows which
requests are reads, which are writes, and what range a write touches.

Pure functions of a client-form request ADU (MBAP header included); nothing here keeps
state. The gateway policy, the write rules and the register image all ask here.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from tcp_multiplexer.protocols.modbus.mbap import MBAP_HEADER_SIZE, FunctionCode

# Plain ints, not FunctionCode members: a set lookup then compares ints with ints.
READ_FUNCTIONS: Final = frozenset(
    int(code)
    for code in (
        FunctionCode.READ_COILS,
        FunctionCode.READ_DISCRETE_INPUTS,
        FunctionCode.READ_HOLDING_REGISTERS,
        FunctionCode.READ_INPUT_REGISTERS,
    )
)
WRITE_FUNCTIONS: Final = frozenset(
    int(code)
    for code in (
        FunctionCode.WRITE_SINGLE_COIL,
        FunctionCode.WRITE_SINGLE_REGISTER,
        FunctionCode.WRITE_MULTIPLE_COILS,
        FunctionCode.WRITE_MULTIPLE_REGISTERS,
        FunctionCode.MASK_WRITE_REGISTER,
        FunctionCode.READ_WRITE_MULTIPLE_REGISTERS,
    )
)
COIL_READS: Final = frozenset({FunctionCode.READ_COILS})
REGISTER_READS: Final = frozenset({FunctionCode.READ_HOLDING_REGISTERS})
READ_REQUEST_SIZE: Final = MBAP_HEADER_SIZE + 5
"""A read request ADU: header, function, address (2), quantity (2)."""
_TWO_WORDS: Final = struct.Struct(">HH")


class ReadKey(NamedTuple):
    """What identifies a read: unit, function code, first address, quantity."""

    unit: int
    function: int
    address: int
    quantity: int


def read_key(request: bytes) -> ReadKey | None:
    """The key of a well-formed read request (function 1-4), else None."""
    if len(request) != READ_REQUEST_SIZE or request[7] not in READ_FUNCTIONS:
        return None
    address, count = _TWO_WORDS.unpack_from(request, 8)
    return ReadKey(request[6], request[7], address, count)


def written_range(request: bytes) -> tuple[frozenset[int], int, int] | None:
    """(reads affected, first address, count) for a write request, else None."""
    if len(request) < MBAP_HEADER_SIZE + 5:
        return None
    function = request[7]
    address, quantity = _TWO_WORDS.unpack_from(request, 8)
    if function == FunctionCode.WRITE_SINGLE_COIL:
        return COIL_READS, address, 1
    if function == FunctionCode.WRITE_MULTIPLE_COILS:
        return COIL_READS, address, quantity
    if function in (FunctionCode.WRITE_SINGLE_REGISTER, FunctionCode.MASK_WRITE_REGISTER):
        return REGISTER_READS, address, 1
    if function == FunctionCode.WRITE_MULTIPLE_REGISTERS:
        return REGISTER_READS, address, quantity
    if (
        function == FunctionCode.READ_WRITE_MULTIPLE_REGISTERS
        and len(request) >= MBAP_HEADER_SIZE + 9
    ):
        write_address, write_quantity = _TWO_WORDS.unpack_from(request, 12)
        return REGISTER_READS, write_address, write_quantity
    return None
