"""What every framer shares: the message buffer with its poison flag.

A framer is sans-IO: it is fed bytes and hands back complete messages, as the exact
bytes received. It never touches a socket or an event loop. Three outcomes only:
a list of messages, an empty list ("need more"), or a `FramingError`. After an error
the framer is poisoned and raises again on every later call; the caller closes the
connection it was reading. The interface itself (`Framer`, `ResponseFramer`) is in
core.interfaces, where the sessions and target connections that feed framers find it.
"""

from __future__ import annotations

from tcp_multiplexer.errors import FramingError, IncompleteMessage


class MessageBuffer:
    """A growable byte buffer with a poison flag, shared by the framers.

    Messages are cut from the front with `del buf[:n]`, which CPython does in O(n)
    of the remaining bytes only when needed and O(1) amortised otherwise.
    """

    __slots__ = ("buf", "error")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.error: FramingError | None = None
        """The error the framer raised, if it did: it raises it again on every call.
        Framers test it inline (``if buffer.error is not None``) on their fast path."""

    def check(self) -> None:
        """Raise the earlier error again if this framer is poisoned."""
        if self.error is not None:
            raise self.error

    @property
    def poisoned(self) -> bool:
        """True once an error has been raised."""
        return self.error is not None

    def poison(self, error: FramingError) -> FramingError:
        """Remember `error` so later calls raise it too; return it for `raise`."""
        self.error = error
        return error

    def eof_without_message(self, protocol: str) -> list[bytes]:
        """EOF handling for framers without close-delimited messages."""
        self.check()
        if self.buf:
            raise self.poison(
                IncompleteMessage(
                    protocol, f"stream ended inside a message ({len(self.buf)} bytes)"
                )
            )
        return []
