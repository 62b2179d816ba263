"""Real peers for integration tests: a pymodbus device, http.server, ISO-8583 and MPU targets.

Every peer listens on 127.0.0.1 port 0, counts what it sees (connections, requests) so
tests can assert on the target side too, and is a context manager that stops it and
closes every connection it accepted, also when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Final

import iso8583
import iso8583.specs
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from tests.helpers import LOOPBACK

# ---------------------------------------------------------------------------- Modbus

MODBUS_REGISTERS: Final = 400
"""Holding and input registers 0..399 exist; reading past them is a device exception."""
MODBUS_COILS: Final = 160
"""Coils 0..159 exist."""


def holding_value(address: int) -> int:
    """The initial value of holding register `address` (distinct for every address)."""
    return (1000 + 7 * address) & 0xFFFF


def input_value(address: int) -> int:
    """The value of input register `address` (distinct from every holding value)."""
    return (30000 + 13 * address) & 0xFFFF


def coil_value(address: int) -> bool:
    """The initial value of coil `address`."""
    return address % 3 == 0


def _device() -> SimDevice:
    """A device answering every unit id (id 0) with the values above.

    Non-shared blocks: coils are addressed bit by bit, registers word by word, each from 0.
    """
    coils = [coil_value(address) for address in range(MODBUS_COILS)]
    return SimDevice(
        0,
        simdata=(
            [SimData(0, values=coils, datatype=DataType.BITS)],
            [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
            [
                SimData(
                    0,
                    values=[holding_value(a) for a in range(MODBUS_REGISTERS)],
                    datatype=DataType.REGISTERS,
                )
            ],
            [
                SimData(
                    0,
                    values=[input_value(a) for a in range(MODBUS_REGISTERS)],
                    datatype=DataType.REGISTERS,
                )
            ],
        ),
    )


def listening_port(server: ModbusTcpServer) -> int:
    """The loopback port a started pymodbus TCP server listens on."""
    listener = server.transport
    assert isinstance(listener, asyncio.Server)
    port: int = listener.sockets[0].getsockname()[1]
    return port


class _OneConnectionHandler(ServerRequestHandler):
    """A pymodbus connection handler that refuses to be the second open connection."""

    def __init__(self, owner: OneConnectionModbusServer) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            owner, owner.trace_packet, owner.trace_pdu, owner.trace_connect
        )
        self._owner = owner
        self._admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        owner = self._owner
        if owner.open_connections:
            # Like an inverter that takes one client: accept, then close at once.
            owner.rejected += 1
            self.transport = transport
            self.close()
            return
        self._admitted = True
        owner.open_connections += 1
        owner.accepted += 1
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._admitted:
            self._admitted = False
            self._owner.open_connections -= 1
        super().connection_lost(exc)

    async def handle_request(self) -> None:
        if self.last_pdu:
            self._owner.requests += 1
        await super().handle_request()  # type: ignore[no-untyped-call]


class OneConnectionModbusServer(ModbusTcpServer):
    """pymodbus's TCP server, limited to ONE open connection like many real devices.

    A second connection while one is open is accepted and closed at once. Counts
    connections accepted and rejected and the requests handled.
    """

    def __init__(self) -> None:
        super().__init__(_device(), address=(LOOPBACK, 0))
        self.accepted = 0
        self.rejected = 0
        self.requests = 0
        self.open_connections = 0

    def callback_new_connection(self) -> _OneConnectionHandler:
        return _OneConnectionHandler(self)

    @property
    def port(self) -> int:
        return listening_port(self)


@contextlib.asynccontextmanager
async def pymodbus_client(
    port: int, answer_timeout: float = 5.0
) -> AsyncIterator[AsyncModbusTcpClient]:
    """A connected pymodbus TCP client (no retries, no reconnects), closed on exit."""
    client = AsyncModbusTcpClient(
        LOOPBACK, port=port, timeout=answer_timeout, retries=0, reconnect_delay=0
    )
    try:
        assert await client.connect(), f"pymodbus could not connect to port {port}"
        yield client
    finally:
        client.close()


@contextlib.asynccontextmanager
async def modbus_device() -> AsyncIterator[OneConnectionModbusServer]:
    """A running one-connection pymodbus device; shut down on exit."""
    server = OneConnectionModbusServer()
    await server.serve_forever(background=True)
    try:
        yield server
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]


# ---------------------------------------------------------------------------- plain TCP


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nobody else gets it), not listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        yield port
    finally:
        sock.close()


class StreamTarget:
    """An asyncio TCP target: `serve` runs once per connection; connections are counted.

    Subclasses implement `serve`; `messages` counts what they answered.
    """

    def __init__(self) -> None:
        self.connections = 0
        self.messages = 0
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self.serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the multiplexer closed or reset the connection
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[StreamTarget]:
        """Listen on loopback port 0 until exit; then close every connection."""
        server = await asyncio.start_server(self._connected, LOOPBACK, 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            for writer in list(self._writers):
                writer.close()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await server.wait_closed()


class SilentTarget(StreamTarget):
    """Accepts connections and reads requests, but never answers."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            self.messages += 1


# ---------------------------------------------------------------------------- ISO-8583 / MPU

ISO_SPEC: Final = iso8583.specs.default_ascii


def iso_frame(body: bytes) -> bytes:
    """`body` with its 2-byte big-endian length prefix."""
    return len(body).to_bytes(2, "big") + body


def iso_request(stan: str, terminal: str = "TERM0001") -> bytes:
    """A framed 0200 financial request carrying `stan` in field 11, encoded by pyiso8583."""
    document = {
        "t": "0200",
        "3": "000000",
        "4": "000000001500",
        "11": stan,
        "41": terminal,
    }
    encoded, _fields = iso8583.encode(document, ISO_SPEC)
    return iso_frame(bytes(encoded))


def iso_decode(framed: bytes) -> dict[str, Any]:
    """Decode a framed message with pyiso8583, checking its length prefix."""
    assert int.from_bytes(framed[:2], "big") == len(framed) - 2, framed
    document, _fields = iso8583.decode(framed[2:], ISO_SPEC)
    result: dict[str, Any] = document
    return result


class Iso8583Target(StreamTarget):
    """Decodes each 0200 with pyiso8583 and answers 0210, field 39 "00", echoing 11 and 41."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                prefix = await reader.readexactly(2)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    raise
                return  # clean EOF between messages
            body = await reader.readexactly(int.from_bytes(prefix, "big"))
            request, _fields = iso8583.decode(body, ISO_SPEC)
            assert request["t"] == "0200", request
            answer = {"t": "0210", "11": request["11"], "39": "00", "41": request["41"]}
            encoded, _fields = iso8583.encode(answer, ISO_SPEC)
            self.messages += 1
            writer.write(iso_frame(bytes(encoded)))
            await writer.drain()


def mpu_frame(body: bytes) -> bytes:
    """`body` with its 4-ASCII-digit length prefix."""
    return b"%04d" % len(body) + body


MPU_REPLY_PREFIX: Final = b"ack:"


def mpu_reply(body: bytes) -> bytes:
    """What `MpuEchoTarget` answers to an MPU message with `body`."""
    return mpu_frame(MPU_REPLY_PREFIX + body)


class MpuEchoTarget(StreamTarget):
    """Reads 4-digit length-prefixed messages and echoes each body back after ``ack:``."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                prefix = await reader.readexactly(4)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    raise
                return
            body = await reader.readexactly(int(prefix.decode("ascii")))
            self.messages += 1
            writer.write(mpu_reply(body))
            await writer.drain()


# ---------------------------------------------------------------------------- HTTP


def http_body(method: str, path: str, payload: bytes = b"") -> bytes:
    """The body `PeerHTTPServer` answers with (for HEAD: what GET's body would be)."""
    shown = "GET" if method == "HEAD" else method
    return f"{shown} {path}".encode() + (b" " + payload if payload else b"") + b"\n"


class _PeerHandler(BaseHTTPRequestHandler):
    """GET/HEAD/POST answered with `http_body`; HTTP/1.1 uses Content-Length, 1.0 closes."""

    server: PeerHTTPServer
    timeout = 10  # a stuck connection cannot hold a handler thread forever
    disable_nagle_algorithm = True
    """http.server writes the head and the body separately; with Nagle the body would
    wait for the delayed ACK of the head (40 ms a response on Linux)."""

    def setup(self) -> None:
        super().setup()
        self.server.count_connection()

    def do_GET(self) -> None:
        self._answer("GET", b"")

    def do_HEAD(self) -> None:
        self._answer("HEAD", b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self._answer("POST", self.rfile.read(length))

    def _answer(self, method: str, payload: bytes) -> None:
        self.server.count_request(method, self.path)
        body = http_body(method, self.path, payload)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        if self.protocol_version == "HTTP/1.1":
            self.send_header("Content-Length", str(len(body)))
        # HTTP/1.0: no Content-Length, the body ends when the server closes.
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Http10Handler(_PeerHandler):
    protocol_version = "HTTP/1.0"


class _Http11Handler(_PeerHandler):
    protocol_version = "HTTP/1.1"


class PeerHTTPServer(ThreadingHTTPServer):
    """`http.server` in threads, counting connections, requests and handler errors."""

    daemon_threads = False  # server_close() joins every handler thread
    block_on_close = True
    handlers: ClassVar[dict[str, type[_PeerHandler]]] = {
        "HTTP/1.0": _Http10Handler,
        "HTTP/1.1": _Http11Handler,
    }

    def __init__(self, version: str) -> None:
        super().__init__((LOOPBACK, 0), self.handlers[version])
        self._lock = threading.Lock()
        self.connections = 0
        self.requests: list[tuple[str, str]] = []
        self.errors: list[str] = []

    @property
    def port(self) -> int:
        return self.server_address[1]

    def count_connection(self) -> None:
        with self._lock:
            self.connections += 1

    def count_request(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def handle_error(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self.errors.append(repr(client_address))


@contextlib.contextmanager
def http_server(version: str) -> Iterator[PeerHTTPServer]:
    """A `PeerHTTPServer` speaking `version` in a background thread; stopped on exit."""
    server = PeerHTTPServer(version)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"http-{version}"
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
