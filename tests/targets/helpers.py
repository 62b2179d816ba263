"""Shared helpers for the example-target tests: message readers and request builders."""

from __future__ import annotations

import asyncio
import struct
from typing import Final

from tcp_multiplexer.protocols.modbus.mbap import build_adu

HOST: Final = "127.0.0.1"
TEST_TIMEOUT: Final = 5.0
"""Bound of every test body (asyncio.timeout); pytest-timeout is the outer guard."""


async def read_http_response(reader: asyncio.StreamReader, *, head: bool = False) -> bytes:
    """One HTTP response with a Content-Length body (no body if `head`)."""
    header = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in header.split(b"\r\n"):
        name, _colon, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    if head:
        return header
    return header + await reader.readexactly(length)


async def read_to_end(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """Everything until the peer closes: (bytes, True if it ended with a reset)."""
    received = bytearray()
    while True:
        try:
            chunk = await reader.read(4096)
        except ConnectionResetError:
            return bytes(received), True
        if not chunk:
            return bytes(received), False
        received += chunk


def read_registers_request(transaction: int, unit: int, address: int, count: int) -> bytes:
    """A function 3 request ADU."""
    return build_adu(transaction, unit, struct.pack(">BHH", 3, address, count))
