"""What each client address of a bridge did: requests, errors, connections, last seen.

Kept only while observability is on (a metrics listener): sessions count into their
address's `ClientStats` as they go (a few attribute increments per request), and the
status page and `--metrics-per-client` read them. At most MAX_CLIENTS addresses are
kept apart; the rest are folded into one entry named OTHER, so a scan from thousands
of addresses cannot grow memory or the metrics without bound.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from tcp_multiplexer.observability.metrics import LatencyHistogram

MAX_CLIENTS: Final = 1000
"""Client addresses kept apart (series per client in /metrics, rows on the status page)."""
OTHER: Final = "other"
"""The one entry for every address past MAX_CLIENTS."""


class ClientStats:
    """One client address's counters (every connection from it together)."""

    __slots__ = ("address", "connections", "errors", "last_seen", "latency", "refused", "requests")

    def __init__(self, address: str, *, timed: bool) -> None:
        self.address = address
        self.connections = 0
        """Connections open now."""
        self.requests = 0
        self.errors = 0
        """Connections closed for sending what cannot be framed."""
        self.refused = 0
        """Requests refused by the write rules (answered, never sent)."""
        self.last_seen = 0.0
        """Loop time of its last request (or connect)."""
        self.latency = LatencyHistogram() if timed else None
        """Submit to answer written, with --metrics-per-client only."""


class ClientDirectory:
    """The `ClientStats` of a bridge's client addresses, bounded (see the module doc)."""

    def __init__(self, *, timed: bool = False, limit: int = MAX_CLIENTS) -> None:
        self._timed = timed
        self._limit = limit
        self._clients: dict[str, ClientStats] = {}

    def stats_for(self, address: str) -> ClientStats:
        """The entry of `address` (made on first sight; OTHER once the table is full)."""
        stats = self._clients.get(address)
        if stats is None:
            if len(self._clients) >= self._limit:
                address = OTHER
                stats = self._clients.get(OTHER)
            if stats is None:
                stats = self._clients[address] = ClientStats(address, timed=self._timed)
        return stats

    def __iter__(self) -> Iterator[ClientStats]:
        return iter(list(self._clients.values()))

    def __len__(self) -> int:
        return len(self._clients)
