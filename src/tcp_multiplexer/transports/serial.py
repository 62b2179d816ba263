"""Serial lines: the connector of `serial://` targets (a USB RS-485 adapter).

Through pyserial-asyncio-fast, an optional extra (``pip install
'tcp-multiplexer[serial]'``): an asyncio transport over a pyserial port that writes
eagerly (no writer callback per frame), kept up by the Home Assistant project, and the
same API as pyserial-asyncio. A port that does not exist, or that vanishes (the
adapter unplugged), fails like a target that is down: the pool answers clients at once
and reopens it with backoff. With ``rs485=1`` the kernel switches the transmitter with
RTS (pyserial's RS-485 settings); ``local-echo=1`` is the RTU framer's (rtu.py).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import termios
from collections.abc import Callable
from typing import Any

from tcp_multiplexer.target import Target

SERIAL_MODULE = "serial_asyncio_fast"
logger = logging.getLogger("tcp_multiplexer.bridge")


def serial_available() -> bool:
    """True if serial targets can be opened (the serial extra is installed)."""
    return importlib.util.find_spec(SERIAL_MODULE) is not None


def _rs485(port: Any, line: Target, *, warn: bool) -> bool:
    """Let the kernel switch the transmitter with RTS around each frame (pyserial's
    RS-485 settings, TIOCSRS485); True if it does. A driver without it is logged (if
    `warn`) and the line goes on: most USB RS-485 adapters switch direction by
    themselves."""
    import serial.rs485

    settings = serial.rs485.RS485Settings(
        rts_level_for_tx=line.rts_level_for_tx,
        rts_level_for_rx=not line.rts_level_for_tx,
        delay_before_tx=line.rts_delay_before_tx or None,
        delay_before_rx=line.rts_delay_after_tx or None,
    )
    try:
        port.rs485_mode = settings
    except (OSError, ValueError) as exc:
        if warn:
            logger.warning(
                "%s: the driver does not switch RTS for RS-485 (%s); going on without: "
                "an adapter that switches direction by itself needs no rs485=1",
                line.device,
                exc,
            )
        return False
    return True


class SerialConnector:
    """Opens a target's serial port with its line settings."""

    __slots__ = ("_line", "_rs485_warned", "_timeout")

    def __init__(self, line: Target, *, connect_timeout: float) -> None:
        self._line = line
        self._timeout = connect_timeout
        self._rs485_warned = False
        """A driver without RS-485 support is logged once per connector."""

    @property
    def target(self) -> str:
        return str(self._line)

    async def connect(
        self, protocol_factory: Callable[[], asyncio.Protocol]
    ) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
        """The port, opened and with its input flushed (nothing stale is read).

        Raises:
            OSError: no such port, no permission, the extra is missing
                (serial.SerialException is an OSError).
            TimeoutError: not open within the connect timeout.
        """
        try:
            import serial
            import serial_asyncio_fast
        except ImportError as exc:
            raise OSError(
                f"cannot open {self._line.device}: pip install 'tcp-multiplexer[serial]'"
            ) from exc
        line = self._line
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                transport, protocol = await serial_asyncio_fast.create_serial_connection(
                    loop,
                    protocol_factory,
                    line.device,
                    baudrate=line.baudrate,
                    parity={"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN}.get(
                        line.parity, serial.PARITY_ODD
                    ),
                    stopbits=line.stopbits,
                    bytesize=line.bytesize,
                    # One master on a line: a second opener (another program, or the
                    # bridge a reload replaces, still draining) fails until it is free.
                    exclusive=True,
                )
        except (termios.error, ValueError) as exc:
            # The port exists but refuses these settings (a pseudo-terminal that takes
            # no parity, a speed the adapter lacks): like a target that is down.
            raise OSError(
                f"{line.device} refuses {line.baudrate} baud 8{line.parity}{line.stopbits}: {exc}"
            ) from exc
        port: Any = transport.serial
        if line.rs485 and not _rs485(port, line, warn=not self._rs485_warned):
            self._rs485_warned = True
        port.reset_input_buffer()
        # The transport calls connection_made() with call_soon, after this returns
        # (asyncio's own create_connection waits for it): yield once, so that it has
        # run before the pool lets anything send.
        await asyncio.sleep(0)
        return transport, protocol


class _Watched(asyncio.Protocol):
    """A serial listener's protocol, telling the listener when the port is lost."""

    def __init__(self, inner: asyncio.Protocol, lost: Callable[[], None]) -> None:
        self._inner = inner
        self._lost = lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)
        self._lost()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class SerialListener:
    """A serial port the multiplexer is a slave on: one connection (the line) from
    `start()` to `close()`, its protocol made by `factory`; a port that is lost (the
    adapter unplugged) is opened again every REOPEN_EVERY seconds. Stands where a
    listening socket does (close, wait_closed, sockets)."""

    REOPEN_EVERY = 2.0

    def __init__(self, line: Target, factory: Callable[[], asyncio.Protocol]) -> None:
        self.line = line
        self._factory = factory
        self._connector = SerialConnector(line, connect_timeout=5.0)
        self._transport: asyncio.BaseTransport | None = None
        self._closed = False
        self._reopen: asyncio.Task[None] | None = None
        self.sockets: list[Any] = []
        """None: a serial line has no socket."""

    def __str__(self) -> str:
        return str(self.line)

    async def start(self) -> None:
        """Open the port.

        Raises:
            OSError: it cannot be opened.
        """
        self._transport, _ = await self._connector.connect(
            lambda: _Watched(self._factory(), self._lost)
        )

    def _lost(self) -> None:
        self._transport = None
        if not self._closed and self._reopen is None:
            logger.warning("serial listener %s: the port is gone; reopening it", self.line.device)
            self._reopen = asyncio.get_running_loop().create_task(self._open_again())

    async def _open_again(self) -> None:
        try:
            while not self._closed:
                await asyncio.sleep(self.REOPEN_EVERY)
                try:
                    await self.start()
                except (OSError, TimeoutError):
                    continue
                logger.warning("serial listener %s: open again", self.line.device)
                return
        finally:
            self._reopen = None

    def close(self) -> None:
        self._closed = True
        if self._reopen is not None:
            self._reopen.cancel()
        if self._transport is not None:
            self._transport.close()

    async def wait_closed(self) -> None:
        """Nothing to wait for: the port closes at once."""
