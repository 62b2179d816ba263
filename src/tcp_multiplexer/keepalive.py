"""TCP options for every connection: NODELAY, and keepalive probing of idle peers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Final

KEEPALIVE_PROBES: Final = 3
"""Unanswered keepalive probes before the kernel declares a connection dead."""


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
