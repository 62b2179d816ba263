"""The observability listener: /metrics, /healthz, /readyz, /api/status, /api/values,
the status page, /capture and /capture.pcap, on an address of its own (never a bridge's
port).

A small HTTP/1.1 server on the event loop: each connection gets one answer and is
closed. Requests are framed by the multiplexer's own HTTP framer, so a bad one is
refused the same way: 400 for what is not HTTP, 431 for a header block over 8 KiB, 413
for a body, 405 for a method other than GET and HEAD, 404 for an unknown path. A
connection that sends nothing for IDLE_TIMEOUT is closed. Nothing here runs on the
bridges' request path: every answer is built from their counters when asked.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final, Protocol, cast
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from tcp_multiplexer.errors import FramingError, MessageTooLarge
from tcp_multiplexer.observability.capture import CaptureRing, Transaction, json_lines, pcap
from tcp_multiplexer.observability.collector import AppView, BridgeCollector
from tcp_multiplexer.observability.status import History, health, status_document
from tcp_multiplexer.observability.values import values_answer
from tcp_multiplexer.options import Address
from tcp_multiplexer.protocols.http.framing import HttpRequestFramer
from tcp_multiplexer.transports.tcp import open_listener, socket_name

logger = logging.getLogger("tcp_multiplexer.observability")

MAX_HEADER: Final = 8 * 1024
"""Longest request head the listener reads; longer is answered 431."""
IDLE_TIMEOUT: Final = 10.0
"""A connection without a complete request this long is closed."""
STATIC: Final = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/status.js": ("status.js", "text/javascript; charset=utf-8"),
    "/status.css": ("status.css", "text/css; charset=utf-8"),
}
"""The status page: files shipped inside the package, nothing from elsewhere."""
REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class ObservedApp(AppView, Protocol):
    """What the listener reads of the process, besides what the collector reads."""

    @property
    def history(self) -> History: ...

    @property
    def ready(self) -> bool: ...

    @property
    def uptime(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


def _json(status: int, document: Any) -> Answer:
    return Answer(status, (json.dumps(document, indent=1) + "\n").encode())


def _text(status: int, text: str) -> Answer:
    return Answer(status, (text + "\n").encode(), "text/plain; charset=utf-8")


def _static(name: str) -> bytes:
    return (resources.files("tcp_multiplexer.observability") / "static" / name).read_bytes()


class Routes:
    """What each path answers."""

    def __init__(self, app: ObservedApp) -> None:
        self._app = app
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(BridgeCollector(app))

    def answer(self, method: bytes, target: bytes) -> Answer:
        if method not in (b"GET", b"HEAD"):
            return Answer(405, b"only GET and HEAD\n", "text/plain", (("Allow", "GET, HEAD"),))
        url = urlsplit(target.decode("latin-1"))
        path = url.path
        query = parse_qs(url.query)
        app = self._app
        if path in STATIC:
            name, content_type = STATIC[path]
            return Answer(200, _static(name), content_type)
        if path == "/metrics":
            return Answer(200, generate_latest(self._registry), CONTENT_TYPE_LATEST)
        if path == "/healthz":
            healthy, body = health(app.bridges, app.now())
            return _json(200 if healthy else 503, body)
        if path == "/readyz":
            return _json(200 if app.ready else 503, {"ready": app.ready})
        if path == "/api/status":
            document = status_document(
                app.bridges, app.history, now=app.now(), uptime=app.uptime, ready=app.ready
            )
            return _json(200, document)
        if path == "/api/values" or path.startswith("/api/values/"):
            status, document = values_answer(app.bridges, path, app.now())
            return _json(status, document)
        if path in ("/capture", "/capture.pcap"):
            return self._capture(path, query.get("bridge", []))
        return _text(
            404, f"no such page: {path} (try /, /metrics, /healthz, /api/status, /api/values)"
        )

    def _capture(self, path: str, names: list[str]) -> Answer:
        bridges = self._app.bridges
        if not any(bridge.capture is not None for bridge in bridges.values()):
            return _text(404, "the capture is off: start the server with --capture N")
        unknown = [name for name in names if name not in bridges]
        if unknown:
            return _text(
                404,
                f"no bridge named {', '.join(map(repr, unknown))}; the bridges are "
                + ", ".join(map(repr, bridges)),
            )
        rings: list[CaptureRing] = [
            bridge.capture
            for name, bridge in bridges.items()
            if bridge.capture is not None and (not names or name in names)
        ]
        transactions: list[Transaction] = sorted(
            (transaction for ring in rings for transaction in ring), key=lambda item: item.time
        )
        if path == "/capture":
            return Answer(200, json_lines(transactions).encode(), "application/x-ndjson")
        return Answer(
            200,
            pcap(transactions),
            "application/vnd.tcpdump.pcap",
            (("Content-Disposition", 'attachment; filename="capture.pcap"'),),
        )


def _head(answer: Answer, *, with_body: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {answer.status} {REASONS.get(answer.status, '')}",
        f"Content-Type: {answer.content_type}",
        f"Content-Length: {len(answer.body)}",
        "Cache-Control: no-store",
        "Connection: close",
        # The page runs only its own script and talks only to this listener.
        "Content-Security-Policy: default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        "X-Content-Type-Options: nosniff",
        "Referrer-Policy: no-referrer",
        *(f"{name}: {value}" for name, value in answer.headers),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + answer.body if with_body else head


class _Exchange(asyncio.Protocol):
    """One connection to the listener: one request, one answer, closed."""

    def __init__(self, routes: Routes) -> None:
        self._routes = routes
        self._framer = HttpRequestFramer(max_header_size=MAX_HEADER, max_body_size=0)
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self._idle)

    def _idle(self) -> None:
        if self._transport is not None and not self._done:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        try:
            messages = self._framer.feed(data)
        except MessageTooLarge as exc:
            status = 413 if "body" in exc.reason else 431
            self._send(_text(status, exc.reason), with_body=True)
            return
        except FramingError as exc:
            self._send(_text(400, exc.reason), with_body=True)
            return
        if not messages:
            return
        request = messages[0]
        method, _, rest = request.partition(b" ")
        target = rest.split(b" ", 1)[0]
        try:
            answer = self._routes.answer(method, target)
        except Exception:  # a bug must not take the listener down: log it, answer 500
            logger.exception("the observability listener failed on %r", request[:200])
            answer = _text(500, "internal error (logged)")
        self._send(answer, with_body=method != b"HEAD")

    def _send(self, answer: Answer, *, with_body: bool) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.write(_head(answer, with_body=with_body))
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


class ObservabilityListener:
    """The listener (see the module docstring); `start()` opens it, `close()` closes it."""

    def __init__(self, app: ObservedApp, address: Address) -> None:
        self.address = address
        self.routes = Routes(app)
        """What each path answers (benchmarks call it without a socket)."""
        self._server: asyncio.Server | None = None

    @property
    def sockets(self) -> list[str]:
        if self._server is None:
            return []
        return [socket_name(sock) for sock in self._server.sockets]

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the observability listener is not open")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        """Open the listener.

        Raises:
            OSError: the address cannot be listened on.
        """
        factory: Callable[[], asyncio.Protocol] = lambda: _Exchange(self.routes)  # noqa: E731
        self._server = await open_listener(factory, self.address)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
