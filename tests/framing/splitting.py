"""Feeding helpers shared by the framer tests: every way to cut a byte stream.

A framer must return the same messages however the transport slices the stream, so each
case is checked fed whole, byte by byte, cut in two at every offset, and followed by
another message in the same stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import pairwise

import pytest

from tcp_multiplexer.core.interfaces import Framer
from tcp_multiplexer.errors import FramingError

MakeFramer = Callable[[], Framer]

EXHAUSTIVE_SPLIT_SIZE = 1024
"""Up to this size a stream is cut at every offset; longer ones at about 300 offsets
(each end densely), which keeps a 64 KiB case from costing 64 Ki full feeds."""


def cut_points(size: int) -> list[int]:
    """The offsets where a stream of `size` bytes is cut in two."""
    if size <= EXHAUSTIVE_SPLIT_SIZE:
        return list(range(1, size))
    edges = {*range(1, 65), *range(size - 64, size)}
    return sorted(edges.union(range(65, size - 64, max(1, size // 200))))


def cuttings(wire: bytes) -> Iterator[tuple[str, list[bytes]]]:
    """(description, chunks): `wire` whole, byte by byte, and in two at each cut point."""
    yield "whole", [wire]
    yield "byte by byte", [wire[index : index + 1] for index in range(len(wire))]
    for cut in cut_points(len(wire)):
        yield f"cut at {cut}", [wire[:cut], wire[cut:]]


def feed_chunks(framer: Framer, chunks: Iterable[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Feed every chunk, then EOF; return (messages from feed, messages from feed_eof)."""
    fed: list[bytes] = []
    for chunk in chunks:
        fed += framer.feed(chunk)
    return fed, framer.feed_eof()


def feed_pieces(framer: Framer, wire: bytes, cuts: Iterable[int]) -> list[bytes]:
    """Feed `wire` cut at the (sorted, distinct) offsets `cuts`; return the messages."""
    bounds = [0, *sorted(set(cuts)), len(wire)]
    messages: list[bytes] = []
    for start, end in pairwise(bounds):
        messages += framer.feed(wire[start:end])
    return messages


def assert_frames(
    make_framer: MakeFramer,
    messages: Sequence[bytes],
    *,
    then: bytes | None = None,
    at_eof: bytes | None = None,
) -> None:
    """`messages`, concatenated, come back unchanged however the stream is cut.

    `at_eof` is a close-delimited last message, which only `feed_eof()` returns; `then`
    is another message fed right after (not with `at_eof`, which ends the stream).
    """
    assert then is None or at_eof is None, "nothing follows a close-delimited message"
    wire = b"".join(messages) + (at_eof or b"")
    at_end = [] if at_eof is None else [at_eof]
    streams = [(wire, list(messages))]
    if then is not None:
        streams.append((wire + then, [*messages, then]))
    for stream, expected in streams:
        for how, chunks in cuttings(stream):
            framer = make_framer()
            fed, ended = feed_chunks(framer, chunks)
            assert (fed, ended) == (expected, at_end), how
            assert all(type(message) is bytes for message in fed + ended), how
            assert framer.buffered == 0, how


def assert_rejected(
    make_framer: MakeFramer, wire: bytes, error: type[FramingError], match: str
) -> None:
    """`wire` raises `error` at its last byte (not earlier), and the framer stays poisoned.

    Checked fed whole and byte by byte; later `feed` and `feed_eof` calls raise again.
    """
    framer = make_framer()
    with pytest.raises(error, match=match):
        framer.feed(wire)
    assert_poisoned(framer, error, match)
    framer = make_framer()
    for index in range(len(wire) - 1):
        framer.feed(wire[index : index + 1])
    with pytest.raises(error, match=match):
        framer.feed(wire[-1:])
    assert_poisoned(framer, error, match)


def assert_poisoned(framer: Framer, error: type[FramingError], match: str) -> None:
    """Every later call raises the same error again."""
    with pytest.raises(error, match=match):
        framer.feed(b"")
    with pytest.raises(error, match=match):
        framer.feed_eof()
