"""Per-request fault injection for the example targets, reproducible from a seed.

Each request draws one number from a seeded generator; the configured faults split
[0, 1) into consecutive slices of their fractions, so at most one fault hits a request
and the fractions must add up to 1 or less. The draws happen in the order requests
arrive at the target (across all its connections), so the same seed and the same
request count give the same fault counts, and `FaultPlan` replays them in a test.

Faults act on the answer: the request itself is processed (a Modbus write is applied)
and only what goes back on the wire is lost, doubled or damaged. That is the hard case
for a proxy: it cannot know whether a request took effect.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from enum import StrEnum
from typing import Final

from tcp_multiplexer.errors import ConfigError


class Fault(StrEnum):
    """What can go wrong with one answer (the `--fault` names)."""

    NO_ANSWER = "no-answer"
    ANSWER_TWICE = "answer-twice"
    WRONG_ID = "wrong-id"
    HALF_ANSWER_CLOSE = "half-answer-close"
    GARBAGE = "garbage"
    RESET = "reset"
    LATE = "late"


FAULT_HELP: Final[dict[Fault, str]] = {
    Fault.NO_ANSWER: "never answer the request (later requests are still answered)",
    Fault.ANSWER_TWICE: "send the answer two times",
    Fault.WRONG_ID: "answer with another transaction id (modbus only: the other protocols"
    " match answers by order, so they have no id to get wrong)",
    Fault.HALF_ANSWER_CLOSE: "send the first half of the answer, then close (FIN)",
    Fault.GARBAGE: "send as many random bytes as the answer has, instead of it",
    Fault.RESET: "send the first half of the answer, then reset the connection (RST)",
    Fault.LATE: "answer after an extra --late-delay (later answers wait behind it)",
}
"""One line per fault, for --help."""

ID_FAULTS: Final = frozenset({Fault.WRONG_ID})
"""Faults that only make sense for protocols with request ids (Modbus)."""


def parse_fault(text: str) -> tuple[Fault, float]:
    """``NAME[:FRACTION]``: a fault and the share of requests it hits (default 1 = all).

    FRACTION is a number in (0, 1] or a percentage such as ``10%``.

    Raises:
        ConfigError: an unknown name or a fraction outside (0, 1].
    """
    name, colon, fraction_text = text.strip().partition(":")
    try:
        fault = Fault(name)
    except ValueError:
        choices = ", ".join(item.value for item in Fault)
        raise ConfigError(f"unknown fault {name!r}: choose from {choices}") from None
    if not colon:
        return fault, 1.0
    try:
        if fraction_text.endswith("%"):
            fraction = float(fraction_text[:-1]) / 100
        else:
            fraction = float(fraction_text)
    except ValueError:
        raise ConfigError(f"invalid fraction {fraction_text!r} in --fault {text!r}") from None
    if not 0 < fraction <= 1:
        raise ConfigError(f"fault fraction in {text!r} must be in (0, 1] (or 0%..100%)")
    return fault, fraction


def check_faults(faults: Sequence[tuple[Fault, float]]) -> None:
    """Validate a fault list as `FaultPlan` needs it.

    Raises:
        ConfigError: a fault is named twice, a fraction is outside (0, 1], or the
            fractions add up to more than 1.
    """
    seen: set[Fault] = set()
    for fault, fraction in faults:
        if fault in seen:
            raise ConfigError(f"fault {fault} is given more than once")
        seen.add(fault)
        if not 0 < fraction <= 1:
            raise ConfigError(f"fault {fault}: fraction {fraction} is outside (0, 1]")
    # A little slack so that three faults of 1/3 each are accepted.
    if sum(fraction for _fault, fraction in faults) > 1 + 1e-9:
        raise ConfigError("fault fractions add up to more than 1 (at most one fault per request)")


class FaultPlan:
    """Picks the fault, if any, for each request in turn (see the module docstring)."""

    __slots__ = ("_bounds", "_draws", "_garbage")

    def __init__(self, faults: Sequence[tuple[Fault, float]], seed: int) -> None:
        check_faults(faults)
        bounds: list[tuple[float, Fault]] = []
        upper = 0.0
        for fault, fraction in faults:
            upper += fraction
            bounds.append((upper, fault))
        self._bounds = tuple(bounds)
        # Not for security: a test peer that must repeat itself exactly for one seed.
        self._draws = random.Random(seed)  # noqa: S311
        # A separate stream, so that garbage sizes do not shift the fault draws.
        self._garbage = random.Random(f"garbage-{seed}")  # noqa: S311

    def choose(self) -> Fault | None:
        """The fault for the next request, or None for a correct answer."""
        if not self._bounds:
            return None
        draw = self._draws.random()
        for upper, fault in self._bounds:
            if draw < upper:
                return fault
        return None

    def garbage(self, size: int) -> bytes:
        """`size` random bytes (reproducible from the seed)."""
        return self._garbage.randbytes(size)
