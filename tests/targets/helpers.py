"""Shared helpers for the example-target tests: connections and message readers."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from typing import Final

from tcp_multiplexer.framing.modbus import build_adu

HOST: Final = "127.0.0.1"
TEST_TIMEOUT: Final = 5.0
"""Bound of every test body (asyncio.timeout); pytest-timeout is the outer guard."""


@contextlib.asynccontextmanager
async def connect(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A stream connection to the target, closed (and its close awaited) on exit."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_adu(reader: asyncio.StreamReader) -> bytes:
    """One Modbus/TCP ADU."""
    header = await reader.readexactly(7)
    (length,) = struct.unpack_from(">H", header, 4)
    return header + await reader.readexactly(length - 1)


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
