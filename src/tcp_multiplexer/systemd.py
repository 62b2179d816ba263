"""systemd's notify protocol (sd_notify(3)), with no library: one datagram per message.

Under `Type=notify` systemd passes `NOTIFY_SOCKET` (a path, or an abstract socket name
starting with ``@``) and, with `WatchdogSec=`, `WATCHDOG_USEC` (and `WATCHDOG_PID`). The
daemon sends, as newline-separated ``KEY=value`` lines:

- ``READY=1`` once every listener is open;
- ``RELOADING=1`` and ``MONOTONIC_USEC=...`` when a reload begins, ``READY=1`` when done;
- ``STOPPING=1`` when it stops;
- ``STATUS=...``, a line `systemctl status` shows;
- ``WATCHDOG=1`` every half watchdog interval while the event loop runs.

Without `NOTIFY_SOCKET` every call does nothing. A message that cannot be sent is
dropped: systemd going away must not stop the daemon.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Mapping
from typing import Final

WATCHDOG_SHARE: Final = 0.5
"""Pings come at this share of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises."""


class SystemdNotifier:
    """Sends notify messages to the socket systemd named (or nowhere)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address
        self._socket: socket.socket | None = None
        self.watchdog_interval = 0.0
        """Seconds between WATCHDOG=1 pings; 0 = no watchdog asked for (or not for us)."""
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 * WATCHDOG_SHARE
        self._status = ""

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, *lines: str) -> None:
        """Send `lines` as one datagram (nothing without NOTIFY_SOCKET)."""
        if not self._address:
            return
        with contextlib.suppress(OSError):
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.sendto("\n".join(lines).encode(), self._address)

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *self._status_lines(status))

    def reloading(self) -> None:
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def status(self, text: str) -> None:
        """Send ``STATUS=text`` if it changed since the last one."""
        lines = self._status_lines(text)
        if lines:
            self.notify(*lines)

    def _status_lines(self, text: str) -> list[str]:
        if not text or text == self._status:
            return []
        self._status = text
        return [f"STATUS={text}"]

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
