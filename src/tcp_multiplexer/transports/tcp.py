"""TCP on both sides: the target connector, client listeners, and socket options.

Every connection gets TCP_NODELAY (requests and answers are small and latency
matters) and keepalive probing, so half-open peers are found.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl as ssl_module
from collections.abc import Callable
from typing import Final

from tcp_multiplexer.options import Address

KEEPALIVE_PROBES: Final = 3
"""Unanswered keepalive probes before the kernel declares a connection dead."""
LISTEN_BACKLOG: Final = 4096
"""Pending connections the kernel queues (capped by net.core.somaxconn): bursts of
thousands of clients connecting at once must not be refused."""


def configure_keepalive(transport: asyncio.BaseTransport, idle_seconds: float) -> None:
    """NODELAY, and TCP keepalive probes after `idle_seconds` without traffic.

    Keepalive is what finds a half-open connection (a device rebooted, a client's host
    lost power, a cable pulled): without it such a connection looks idle for ever, and
    since quiet clients are never dropped, it would hold its file descriptor for ever.
    EOF and resets are seen at once anyway. Options the platform lacks are skipped.
    """
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if idle_seconds > 0 and hasattr(socket, "TCP_KEEPIDLE"):
            idle = max(1, round(idle_seconds))
            interval = max(1, round(idle_seconds / KEEPALIVE_PROBES))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)


class TcpConnector:
    """Opens TCP connections to one target address."""

    __slots__ = ("_address", "_keepalive", "_name", "_timeout", "ssl")

    def __init__(
        self,
        address: Address,
        *,
        connect_timeout: float,
        keepalive_idle: float,
        ssl: ssl_module.SSLContext | None = None,
        name: str | None = None,
    ) -> None:
        self._address = address
        self._name = name or str(address)
        """How logs and metrics name the target (its URL, rtu+tcp://HOST:PORT)."""
        self._timeout = connect_timeout
        self._keepalive = keepalive_idle
        self.ssl = ssl
        """TLS to the target (replaced on a reload that rereads the certificates)."""

    @property
    def target(self) -> str:
        return self._name

    async def connect(
        self, protocol_factory: Callable[[], asyncio.Protocol]
    ) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
        """A connection within the connect timeout, with keepalive set.

        Raises:
            OSError: refused, unreachable, name not resolved.
            TimeoutError: not open within the connect timeout.
        """
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._timeout):
            transport, protocol = await loop.create_connection(
                protocol_factory,
                self._address.host,
                self._address.port,
                ssl=self.ssl,
                server_hostname=self._address.host if self.ssl is not None else None,
            )
        configure_keepalive(transport, self._keepalive)
        return transport, protocol


async def open_listener(
    protocol_factory: Callable[[], asyncio.Protocol], address: Address
) -> asyncio.Server:
    """Listen on `address` (an empty host: every interface).

    Raises:
        OSError: the address cannot be bound (taken, not local, no permission).
    """
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        protocol_factory,
        address.host or None,
        address.port,
        backlog=LISTEN_BACKLOG,
        reuse_address=True,
    )


def socket_name(sock: socket.socket) -> str:
    """A bound socket's address as HOST:PORT ([HOST]:PORT for IPv6)."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
