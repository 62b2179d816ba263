"""Several targets behind one listener: each request to the dispatcher of its route.

The route key comes from the request (the protocol's `route_key`, 0..255); each key
has a dispatcher, or none. A request whose key has none is answered at once with the
client codec's answer for a target that failed to answer, counted as `unrouted`.
Everything else a session asks of its dispatch (batches, a client that left) goes to
every dispatcher.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from tcp_multiplexer.core.interfaces import (
    ClientCodec,
    Dispatch,
    FailureReason,
    Request,
    RequestOwner,
    RequestState,
)

KEYS = 256
"""Route keys are bytes."""


class Router:
    """A `Dispatch` over the dispatchers of a bridge's targets (see the module doc)."""

    __slots__ = ("_codec", "_dispatchers", "_events", "_key", "_table")

    def __init__(
        self,
        key: Callable[[bytes], int],
        table: Sequence[Dispatch | None],
        codec: ClientCodec,
        events: Counter[str],
    ) -> None:
        if len(table) != KEYS:
            raise ValueError(f"a route table has {KEYS} entries")
        self._key = key
        self._table = list(table)
        self._dispatchers = list(dict.fromkeys(d for d in table if d is not None))
        self._codec = codec
        self._events = events

    def submit(self, request: Request) -> None:
        dispatcher = self._table[self._key(request.payload)]
        if dispatcher is not None:
            dispatcher.submit(request)
            return
        self._unrouted(request)

    def _unrouted(self, request: Request) -> None:
        """Answer a request whose key has no target: as a target that never answered."""
        self._events["unrouted"] += 1
        answer = self._codec.gateway_answer(request.payload, FailureReason.TIMEOUT)
        if answer is None:
            request.close_client = True
            request.state = RequestState.DONE
            request.owner.request_done(request)
            return
        self._dispatchers[0].answer_here(request, answer)

    def adopt(self, request: Request) -> None:
        dispatcher = self._table[self._key(request.payload)]
        if dispatcher is not None:
            dispatcher.adopt(request)
            return
        # Its unit has no route any more (a reload): as for a request that never had one.
        self._unrouted(request)

    def answer_here(self, request: Request, answer: bytes) -> None:
        dispatcher = self._table[self._key(request.payload)] or self._dispatchers[0]
        dispatcher.answer_here(request, answer)

    def begin_batch(self) -> None:
        for dispatcher in self._dispatchers:
            dispatcher.begin_batch()

    def end_batch(self) -> None:
        for dispatcher in self._dispatchers:
            dispatcher.end_batch()

    def owner_closed(self, owner: RequestOwner) -> None:
        for dispatcher in self._dispatchers:
            dispatcher.owner_closed(owner)
