"""Modbus/TCP request and answer builders for the gateway tests (no hand-typed bytes)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from typing import Final

from tcp_multiplexer.protocols.modbus.device import pack_bits
from tcp_multiplexer.protocols.modbus.mbap import MBAP_HEADER_SIZE, build_adu
from tests.helpers import open_client

READ_COILS: Final = 1
READ_DISCRETE_INPUTS: Final = 2
READ_HOLDING: Final = 3
READ_INPUT: Final = 4
WRITE_COIL: Final = 5
WRITE_REGISTER: Final = 6
WRITE_COILS: Final = 15
WRITE_REGISTERS: Final = 16
MASK_WRITE: Final = 22
READ_WRITE: Final = 23
COIL_ON: Final = 0xFF00


def read_request(
    tid: int, unit: int, address: int, count: int, function: int = READ_HOLDING
) -> bytes:
    return build_adu(tid, unit, struct.pack(">BHH", function, address, count))


def write_coil(tid: int, unit: int, address: int, on: bool = True) -> bytes:
    return build_adu(tid, unit, struct.pack(">BHH", WRITE_COIL, address, COIL_ON if on else 0))


def write_register(tid: int, unit: int, address: int, value: int) -> bytes:
    return build_adu(tid, unit, struct.pack(">BHH", WRITE_REGISTER, address, value))


def write_coils(tid: int, unit: int, address: int, bits: Sequence[bool]) -> bytes:
    packed = pack_bits(bits)
    return build_adu(
        tid, unit, struct.pack(">BHHB", WRITE_COILS, address, len(bits), len(packed)) + packed
    )


def write_registers(tid: int, unit: int, address: int, values: Sequence[int]) -> bytes:
    data = struct.pack(f">{len(values)}H", *values)
    return build_adu(
        tid, unit, struct.pack(">BHHB", WRITE_REGISTERS, address, len(values), len(data)) + data
    )


def mask_write(tid: int, unit: int, address: int, and_mask: int, or_mask: int) -> bytes:
    return build_adu(tid, unit, struct.pack(">BHHH", MASK_WRITE, address, and_mask, or_mask))


def read_write(
    tid: int, unit: int, read_address: int, read_count: int, address: int, values: Sequence[int]
) -> bytes:
    data = struct.pack(f">{len(values)}H", *values)
    header = struct.pack(
        ">BHHHHB", READ_WRITE, read_address, read_count, address, len(values), len(data)
    )
    return build_adu(tid, unit, header + data)


def registers_answer(
    tid: int, unit: int, values: Sequence[int], function: int = READ_HOLDING
) -> bytes:
    """The exact answer a correct device sends to a register read."""
    return build_adu(
        tid, unit, struct.pack(f">BB{len(values)}H", function, 2 * len(values), *values)
    )


def exception_answer(tid: int, unit: int, function: int, code: int) -> bytes:
    return build_adu(tid, unit, bytes((function | 0x80, code)))


def registers_of(answer: bytes) -> list[int]:
    """The register values in a register-read answer."""
    byte_count = answer[MBAP_HEADER_SIZE + 1]
    data = answer[MBAP_HEADER_SIZE + 2 : MBAP_HEADER_SIZE + 2 + byte_count]
    return [value for (value,) in struct.iter_unpack(">H", data)]


async def read_adu(reader: asyncio.StreamReader) -> bytes:
    """One whole ADU from a stream."""
    header = await reader.readexactly(MBAP_HEADER_SIZE)
    (length,) = struct.unpack_from(">H", header, 4)
    return header + await reader.readexactly(length - 1)


async def exchange(port: int, requests: list[bytes]) -> list[bytes]:
    """Send each request on one client connection to `port` and read its answer."""
    async with open_client(port) as (reader, writer):
        answers = []
        for request in requests:
            writer.write(request)
            answers.append(await read_adu(reader))
        return answers
