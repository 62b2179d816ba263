"""Busy-polling for a short window after I/O, only where it pays for itself.

When requests and answers follow each other within microseconds (a busy multiplexer),
the next event usually comes before the loop would even be asleep: sleeping in epoll
between them costs a scheduler wakeup, which on virtual machines and power-saving CPUs
takes longer than the work itself. So the loop keeps polling without blocking until
`window` after the last event, as Go's scheduler spins before parking a thread.

Where traffic is sparse (pollers asking every 100 ms, a device answering in 20 ms)
polling cannot help and only burns CPU, which matters on a Raspberry Pi. Two rules keep
it away from there:

- Only an event that comes less than `window` after the one before it starts polling:
  a lone request, or a device's answer 20 ms after the request, starts none.
- A poll that ends without any event having come in a later loop round than the one
  that started it saved nothing (a burst of requests read in one round does not need
  it): polling then stays off for a while, twice as long after each such poll, up to
  MAX_QUIET; a poll that catches an event starts over from `window`.

Under load every poll catches events and polling runs as it always did; at a home
setup's load a wasted poll at most once a second is what is left. `--busy-poll` sets
the window (0 turns polling off).
"""

from __future__ import annotations

from typing import Final

from tcp_multiplexer.core.interfaces import Clock

MAX_QUIET: Final = 1.0
"""Longest pause in polling after polls that saved nothing."""


class Poller:
    """Keeps the event loop polling after `touch()` calls while that pays (see above).

    A poll runs one `_spin` per loop round and counts them, so a touch knows whether it
    came in a later round than the one that started the poll. (Not by the clock: uvloop's
    has millisecond steps, and a whole poll may pass within one.)
    """

    __slots__ = (
        "_active",
        "_caught",
        "_clock",
        "_last",
        "_quiet",
        "_quiet_until",
        "_round",
        "_started",
        "_until",
        "_window",
    )

    def __init__(self, clock: Clock, window: float) -> None:
        self._clock = clock
        self._window = window
        self._until = 0.0
        self._last = float("-inf")
        self._active = False
        self._caught = False
        """An event came in a later loop round than the one that started this poll."""
        self._round = 0
        """Loop rounds polled so far (one `_spin` each)."""
        self._started = 0
        """The round the current poll started in."""
        self._quiet = window
        """How long polling stays off after the next poll that saves nothing."""
        self._quiet_until = float("-inf")

    @property
    def window(self) -> float:
        return self._window

    @window.setter
    def window(self, seconds: float) -> None:
        """A new window (a reload); a poll under way ends at its old end."""
        self._window = seconds
        self._quiet = seconds

    @property
    def polling(self) -> bool:
        """True while the loop is being kept polling."""
        return self._active

    def touch(self, now: float) -> None:
        """Note I/O activity at loop time `now`."""
        last = self._last
        self._last = now
        if self._active:
            if self._round != self._started:
                self._caught = True
            self._until = now + self._window
        elif now - last < self._window and now >= self._quiet_until:
            self._active = True
            self._caught = False
            self._started = self._round
            self._until = now + self._window
            self._clock.call_soon(self._spin)

    def _spin(self) -> None:
        self._round += 1
        now = self._clock.time()
        if now < self._until:
            self._clock.call_soon(self._spin)
            return
        self._active = False
        if self._caught:
            self._quiet = self._window
        else:
            self._quiet_until = now + self._quiet
            self._quiet = min(MAX_QUIET, self._quiet * 2)
