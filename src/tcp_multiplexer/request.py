"""One client request on its way through the multiplexer."""

from __future__ import annotations

from collections.abc import Hashable
from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tcp_multiplexer.session import ClientSession


class RequestState(IntEnum):
    """Where a request is: each moves forward only."""

    NEW = 0
    WAITING = 1
    """Queued for a free target connection."""
    SENT = 2
    """Written to a target connection, answer outstanding."""
    FOLLOWING = 3
    """Coalesced: rides on an identical request that is waiting or sent."""
    DONE = 4


class Request:
    """A framed client request and, once known, the bytes that answer it.

    `reply` is meaningful once `state` is DONE, unless `close_client` is set: the
    protocol has no gateway answer and the client must be closed instead.
    """

    __slots__ = (
        "close_client",
        "coalesce_key",
        "deadline",
        "ends_connection",
        "followers",
        "payload",
        "reply",
        "session",
        "state",
        "submitted_at",
        "wire_id",
    )

    def __init__(self, session: ClientSession, payload: bytes, now: float) -> None:
        self.session = session
        self.payload = payload
        self.submitted_at = now
        self.deadline = 0.0
        self.state = RequestState.NEW
        self.reply = b""
        self.close_client = False
        self.ends_connection = False
        """The reply ends the client's connection (HTTP `Connection: close`)."""
        self.coalesce_key: Hashable | None = None
        self.followers: list[Request] | None = None
        self.wire_id = 0

    @property
    def abandoned(self) -> bool:
        """True if nobody is waiting for this request's answer any more."""
        return self.session.closed and not self.followers
