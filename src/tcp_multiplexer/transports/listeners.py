"""A bridge's listening sockets: one per listen address, each making the connections it
accepts through a factory that is told the address.

`change()` moves the set to other addresses as a reload asks: addresses kept keep their
socket (and every connection made through it), new ones open, those gone close. It
either succeeds whole or changes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from tcp_multiplexer.options import Address, listen_clash
from tcp_multiplexer.transports.tcp import open_listener, socket_name

SessionFactory = Callable[[Address], asyncio.Protocol]
"""Makes the protocol of one accepted connection, told the address it came in on."""


class Listening(Protocol):
    """What is listened with: a listening socket (asyncio.Server), or a serial line."""

    @property
    def sockets(self) -> Sequence[Any]: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


LineOpener = Callable[[Address], Awaitable[Listening]]
"""Opens a serial listener's line (the `serial` framing)."""


async def released() -> None:
    """Return once listening sockets just closed are released (both loops close one at
    once; uvloop finishes it a round later)."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


class ListenerSet:
    """The listening sockets of one bridge, by address (see the module docstring)."""

    def __init__(self, factory: SessionFactory, line_opener: LineOpener | None = None) -> None:
        self._factory = factory
        self._line_opener = line_opener
        self._servers: dict[Address, Listening] = {}

    async def _open(self, address: Address) -> Listening:
        if address.framing == "serial":
            if self._line_opener is None:
                raise OSError(f"{address}: this protocol listens on no serial line")
            return await self._line_opener(address)
        return await open_listener(lambda: self._factory(address), address)

    @property
    def servers(self) -> list[Listening]:
        return list(self._servers.values())

    @property
    def sockets(self) -> list[str]:
        """Every address listened on, as HOST:PORT (a serial line as its URL)."""
        names: list[str] = []
        for server in self._servers.values():
            names.extend(socket_name(sock) for sock in server.sockets)
            if not server.sockets:
                names.append(str(server))
        return names

    @property
    def port(self) -> int | None:
        """The port of the first listener (useful with port 0); None if none is open."""
        for server in self._servers.values():
            if server.sockets:
                port: int = server.sockets[0].getsockname()[1]
                return port
        return None

    async def open(self, addresses: Sequence[Address]) -> None:
        """Listen on every address.

        Raises:
            OSError: an address cannot be listened on; nothing is left open.
        """
        opened: dict[Address, Listening] = {}
        try:
            for address in addresses:
                opened[address] = await self._open(address)
        except OSError:
            for server in opened.values():
                server.close()
            raise
        self._servers = opened

    async def change(self, addresses: Sequence[Address]) -> list[Address]:
        """Listen on `addresses` instead: keep the sockets of addresses in both, open the
        new, close those gone; returns the addresses gone (their connections stay: the
        caller closes them). An address that clashes with one going away (``5020`` to
        ``127.0.0.1:5020``) opens once that one is closed.

        Raises:
            OSError: a new address cannot be listened on; nothing changed.
        """
        current = self._servers
        gone = [address for address in current if address not in addresses]
        added = [address for address in addresses if address not in current]
        late = [address for address in added if any(listen_clash(address, g) for g in gone)]
        opened: dict[Address, Listening] = {}
        closed_early: list[Address] = []
        try:
            for address in added:
                if address not in late:
                    opened[address] = await self._open(address)
            if late:
                closed_early = [g for g in gone if any(listen_clash(g, a) for a in late)]
                for address in closed_early:
                    current[address].close()
                await released()
                for address in late:
                    opened[address] = await self._open(address)
        except OSError:
            for server in opened.values():
                server.close()
            if closed_early:
                await released()
            for address in closed_early:
                # The old socket's address was free a moment ago: take it back (or go
                # on without it, if something else took it meanwhile).
                try:
                    current[address] = await self._open(address)
                except OSError:
                    del current[address]
            raise
        for address in gone:
            if address not in closed_early:
                current[address].close()
        self._servers = {
            address: opened[address] if address in opened else current[address]
            for address in addresses
        }
        return gone

    def close(self) -> None:
        """Stop accepting; connections made stay."""
        for server in self._servers.values():
            server.close()

    async def reopen(self) -> None:
        """Listen again on every address after `close()`.

        Raises:
            OSError: an address cannot be listened on any more.
        """
        await self.open(list(self._servers))
