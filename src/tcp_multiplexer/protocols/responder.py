"""What every example target supplies to the shared server: a framer and an answer.

A responder is the protocol half of a target and never touches a socket: the server
frames requests with `request_framer()`, asks `answer()` for each one when it is due,
and applies faults to the bytes it gets back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tcp_multiplexer.core.interfaces import Framer
from tcp_multiplexer.errors import FramingError


@dataclass(frozen=True, slots=True)
class Answer:
    """The bytes answering one request, and whether the connection ends after them."""

    data: bytes
    close: bool = False
    """True when the protocol ends the connection after this answer (HTTP ``Connection: close``)."""


class Responder(Protocol):
    """The protocol logic of one example target."""

    @property
    def name(self) -> str: ...

    def request_framer(self) -> Framer:
        """A new framer for one connection's request stream."""
        ...

    def answer(self, request: bytes) -> Answer:
        """The answer to one framed request (may change the target's state, e.g. Modbus writes)."""
        ...

    def reject(self, error: FramingError) -> bytes:
        """Bytes to send before closing a connection whose stream cannot be framed (may be b"")."""
        ...

    def with_wrong_id(self, answer: bytes) -> bytes:
        """`answer` carrying an id that does not match its request (Modbus only).

        Raises:
            NotImplementedError: the protocol has no request ids.
        """
        ...
