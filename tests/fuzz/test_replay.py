"""Replays the saved fuzz corpus (tests/fuzz/corpus/NAME) through each target, without
atheris: every input a fuzz run kept, and every crash fixed since, stays passing."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pytest

from tcp_multiplexer.protocols.echo.framing import LineFramer
from tests.fuzz.seeds import SEEDS
from tests.fuzz.targets import TARGETS, check_framer

CORPUS: Final = Path(__file__).resolve().parent / "corpus"


def test_every_target_has_seeds_and_a_corpus() -> None:
    assert set(SEEDS) == set(TARGETS)
    for name in TARGETS:
        assert (CORPUS / name).is_dir(), f"no corpus for {name}: python bench/fuzz.py seed"


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_the_saved_corpus_replays_clean(name: str) -> None:
    target = TARGETS[name]
    inputs = sorted((CORPUS / name).iterdir())
    assert inputs, f"the corpus of {name} is empty"
    for path in inputs:
        try:
            target(path.read_bytes())
        except Exception as exc:
            raise AssertionError(
                f"{path.name}: {exc!r} (python bench/fuzz.py replay {path} --target {name})"
            ) from exc


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_the_seeds_pass(name: str) -> None:
    for data in SEEDS[name]:
        TARGETS[name](data)


class _DropsFirstByte(LineFramer):
    """A broken framer: the first message loses its first byte when fed whole."""

    def feed(self, data: bytes) -> list[bytes]:
        messages = super().feed(data)
        if len(data) > 4 and messages:
            messages[0] = messages[0][1:]
        return messages


class _RaisesValueError(LineFramer):
    def feed(self, data: bytes) -> list[bytes]:
        if b"!" in data:
            raise ValueError("not a framing error")
        return super().feed(data)


def test_the_framer_check_catches_a_framer_that_breaks_the_invariant() -> None:
    with pytest.raises(AssertionError, match="not the stream's own bytes"):
        check_framer(_DropsFirstByte, 64, b"\x00hello\nworld\n")
    with pytest.raises(ValueError, match="not a framing error"):
        check_framer(_RaisesValueError, 64, b"\x00hi!\n")
    check_framer(LineFramer, 64, b"\x00hello\nworld\n")
