"""Support for the core-behaviour integration tests: messages, clients, fault seeds.

Used by test_core_echo, test_target_faults, test_pool, test_clients and test_signals.
Expected Modbus answers are built from the device's documented register values
(`holding_register_value`), never from the multiplexer's own encoders.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Sequence
from typing import Final

from tcp_multiplexer.protocols.modbus.device import holding_register_value
from tcp_multiplexer.targets.faults import Fault, FaultPlan
from tests.framing.builders import mbap
from tests.helpers import LOOPBACK

READ_HOLDING: Final = 0x03
EXCEPTION_FLAG: Final = 0x80
SERVER_DEVICE_BUSY: Final = 0x06
GATEWAY_PATH_UNAVAILABLE: Final = 0x0A
GATEWAY_TARGET_FAILED: Final = 0x0B

_LINGER_RESET: Final = struct.pack("ii", 1, 0)
"""SO_LINGER on with a 0 s timeout: close() sends RST, as a crashed client does."""

Client = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def read_request(tid: int, unit: int, address: int, count: int = 1) -> bytes:
    """A Modbus 'read holding registers' request ADU."""
    return mbap(tid, unit, struct.pack(">BHH", READ_HOLDING, address, count))


def read_answer(tid: int, unit: int, address: int, count: int = 1) -> bytes:
    """The exact ADU the example device answers `read_request(...)` with."""
    values = [holding_register_value(unit, address + offset) for offset in range(count)]
    return mbap(tid, unit, struct.pack(f">BB{count}H", READ_HOLDING, 2 * count, *values))


def exception_answer(tid: int, unit: int, code: int, function: int = READ_HOLDING) -> bytes:
    """A Modbus exception ADU: the request's ids, function | 0x80, `code`."""
    return mbap(tid, unit, bytes((function | EXCEPTION_FLAG, code)))


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the peer sends until it closes (or resets) the connection."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := await reader.read(65536):
            received += chunk
    return received


async def echo(client: Client, payload: bytes) -> bytes:
    """Send one echo line and return the line that comes back."""
    reader, writer = client
    writer.write(payload)
    return await reader.readline()


def reset_connection(writer: asyncio.StreamWriter) -> None:
    """Drop the connection with RST (a client that crashed or was killed)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    writer.transport.abort()


@contextlib.asynccontextmanager
async def open_clients(port: int, count: int) -> AsyncIterator[list[Client]]:
    """`count` client connections, all open before the body runs, all closed on exit."""
    results = await asyncio.gather(
        *(asyncio.open_connection(LOOPBACK, port) for _ in range(count)),
        return_exceptions=True,
    )
    clients = [result for result in results if not isinstance(result, BaseException)]
    try:
        for result in results:
            if isinstance(result, BaseException):
                raise result
        yield clients
    finally:
        for _reader, writer in clients:
            writer.close()
        for _reader, writer in clients:
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def seed_for(faults: Sequence[tuple[Fault, float]], pattern: Sequence[Fault | None]) -> int:
    """The smallest seed whose first fault draws are exactly `pattern` (see FaultPlan)."""
    for seed in range(10_000):
        plan = FaultPlan(faults, seed)
        if all(plan.choose() is expected for expected in pattern):
            return seed
    raise AssertionError(f"no seed below 10000 draws {pattern} from {faults}")


async def yield_to_loop(times: int = 3) -> None:
    """Let the event loop run a few rounds (no timed wait): the multiplexer reads."""
    for _ in range(times):
        await asyncio.sleep(0)
