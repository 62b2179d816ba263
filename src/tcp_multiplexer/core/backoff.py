"""Reconnect backoff policy: exponential, capped, jittered. Pure: no I/O, no clock."""

from __future__ import annotations

import random
from typing import Final

MAX_RECONNECT_BACKOFF: Final = 30.0
"""Cap of the exponential reconnect backoff (DESIGN: capped at 30 s)."""


class Backoff:
    """Delays before successive reconnect attempts.

    The n-th consecutive failure waits a random time in [base/2, base] with
    base = min(cap, initial * 2**n): exponential growth, a hard cap, and jitter so
    that several multiplexers restarted together do not hammer a device in step.
    The lower half is cut off so a retry is never immediate.
    """

    __slots__ = ("_attempts", "_cap", "_initial", "_random")

    def __init__(self, initial: float, cap: float, rng: random.Random | None = None) -> None:
        if initial < 0 or cap < 0:
            raise ValueError("backoff delays must not be negative")
        self._initial = initial
        self._cap = cap
        self._attempts = 0
        self._random = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    @property
    def attempts(self) -> int:
        """Consecutive failures since the last reset."""
        return self._attempts

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        exponent = min(self._attempts, 32)  # 2**32 * any sane initial is far past the cap
        base = min(self._cap, self._initial * (2**exponent))
        self._attempts += 1
        return self._random.uniform(base / 2, base)

    def reset(self) -> None:
        """Start over from the initial delay (after a healthy connection)."""
        self._attempts = 0
