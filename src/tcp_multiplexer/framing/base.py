"""Framer and Codec interfaces shared by every protocol.

A framer is sans-IO: it is fed bytes and hands back complete messages, as the exact
bytes received. It never touches a socket or an event loop. Three outcomes only:
a list of messages, an empty list ("need more"), or a `FramingError`. After an error
the framer is poisoned and raises again on every later call; the caller closes the
connection it was reading.

A codec bundles a protocol's two framers with the knowledge the core needs but must
not hard-code: how requests and responses are correlated, what to answer when the
target cannot, and which messages end a connection.
"""

from __future__ import annotations

from collections.abc import Hashable
from enum import Enum, StrEnum
from typing import Protocol

from tcp_multiplexer.errors import FramingError, IncompleteMessage


class ProtocolName(StrEnum):
    """Application protocols the multiplexer can carry (`tcp-multiplexer list`)."""

    ECHO = "echo"
    HTTP = "http"
    ISO8583 = "iso8583"
    MODBUS = "modbus"
    MPU = "mpu"


class Correlation(Enum):
    """How responses are matched to the requests outstanding on a target connection."""

    FIFO = "fifo"
    """Responses come back in request order (pipelining allowed)."""
    TRANSACTION_ID = "transaction-id"
    """Each request carries an id the target echoes (Modbus MBAP transaction id)."""


class FailureReason(StrEnum):
    """Why the multiplexer answers a request itself instead of the target."""

    UNAVAILABLE = "target unreachable"
    """No target connection could be established (Modbus 0x0A, HTTP 502)."""
    BUSY = "no free target connection in time"
    """The request waited longer than the timeout and was never sent (Modbus 0x06, HTTP 503)."""
    TIMEOUT = "target did not answer in time"
    """The request was sent but not answered in time (Modbus 0x0B, HTTP 504)."""
    BROKEN = "target connection failed before answering"
    """The request was sent, then the connection closed or sent garbage (Modbus 0x0B, HTTP 502)."""


class Framer(Protocol):
    """Cuts one direction of a byte stream into messages."""

    def feed(self, data: bytes) -> list[bytes]:
        """Add `data`; return every message now complete, in order ([] = need more).

        Raises:
            FramingError: the stream is malformed or a message exceeds the limit.
        """
        ...

    def feed_eof(self) -> list[bytes]:
        """The peer closed its side: return a close-delimited final message, if any.

        Raises:
            IncompleteMessage: part of a message is still buffered.
        """
        ...

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet form a complete message."""
        ...

    def take_interim_reply(self) -> bytes | None:
        """Bytes the multiplexer should send to this peer now, before any complete message.

        HTTP's ``100 Continue``: a client that sent ``Expect: 100-continue`` waits for it
        before sending the body, and the multiplexer forwards only complete requests, so
        it must answer that itself. None for every other protocol and state. Each reply is
        handed out once; call after `feed`.
        """
        ...


class ResponseFramer(Framer, Protocol):
    """A framer for target responses, told about each request before it is sent."""

    def expect_response(self, request: bytes) -> None:
        """Note that `request` is about to be sent (HTTP needs the method for HEAD)."""
        ...


class Codec(Protocol):
    """Everything the core needs to know about one application protocol."""

    @property
    def name(self) -> ProtocolName: ...

    @property
    def correlation(self) -> Correlation: ...

    def request_framer(self) -> Framer:
        """A new framer for one client's request stream."""
        ...

    def response_framer(self) -> ResponseFramer:
        """A new framer for one target connection's response stream."""
        ...

    def error_reply(self, request: bytes, reason: FailureReason) -> bytes | None:
        """The gateway's own answer to `request`, or None to close the client instead."""
        ...

    def request_ends_connection(self, request: bytes) -> bool:
        """True if the target will close its connection after answering `request`.

        Nothing more is sent on that connection once such a request is on it.
        """
        ...

    def reply_ends_connection(self, reply: bytes) -> bool:
        """True if the connection ends after `reply` (HTTP `Connection: close`, close-
        delimited body). The target connection is then retired, and the client's
        connection is closed once the reply has been written to it.
        """
        ...

    def request_id(self, request: bytes) -> int:
        """The correlation id carried by a message (TRANSACTION_ID codecs only)."""
        ...

    def with_request_id(self, message: bytes, request_id: int) -> bytes:
        """`message` with its correlation id replaced (TRANSACTION_ID codecs only)."""
        ...

    def restore_reply(self, request: bytes, reply: bytes) -> bytes:
        """The target's `reply` made the client's own answer to `request`.

        Identity for most protocols; Modbus puts back the client's transaction id.
        """
        ...


class GatewayPolicy(Protocol):
    """Optional protocol-specific handling before and after a request is sent.

    The core calls it without knowing the protocol: it may answer locally (refused
    writes, cached reads), name a key under which identical requests share one
    target round trip, and learn from every answer (cache fill and invalidation).
    """

    def local_reply(self, request: bytes) -> bytes | None:
        """An answer that needs no target round trip, or None."""
        ...

    def coalesce_key(self, request: bytes) -> Hashable | None:
        """Requests with the same key may share one target answer; None = never."""
        ...

    def observe(self, request: bytes, reply: bytes, key: Hashable | None) -> None:
        """Learn from a target reply (with the ids it had on the wire); `key` is what
        coalesce_key() said when the request was submitted."""
        ...

    def observe_gateway_reply(self, request: bytes, reply: bytes | None) -> None:
        """The multiplexer answered `request` itself (`reply`; None = client closed)
        because the target could not: the request may or may not have reached it.
        """
        ...


class MessageBuffer:
    """A growable byte buffer with a poison flag, shared by the framers.

    Messages are cut from the front with `del buf[:n]`, which CPython does in O(n)
    of the remaining bytes only when needed and O(1) amortised otherwise.
    """

    __slots__ = ("_error", "buf")

    def __init__(self) -> None:
        self.buf = bytearray()
        self._error: FramingError | None = None

    def check(self) -> None:
        """Raise the earlier error again if this framer is poisoned."""
        if self._error is not None:
            raise self._error

    @property
    def poisoned(self) -> bool:
        """True once an error has been raised."""
        return self._error is not None

    def poison(self, error: FramingError) -> FramingError:
        """Remember `error` so later calls raise it too; return it for `raise`."""
        self._error = error
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
