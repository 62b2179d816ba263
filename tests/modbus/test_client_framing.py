"""RTU-over-TCP clients without sockets: a memory transport, a recording session."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from hypothesis import given
from hypothesis import strategies as st

from tcp_multiplexer.protocols.modbus.client_framing import RtuClientProtocol, _decide
from tcp_multiplexer.protocols.modbus.rtu import with_crc
from tests.modbus.adu import read_request, registers_answer


class Session(asyncio.Protocol):
    """Records what reaches the session, and keeps the transport it was given."""

    def __init__(self) -> None:
        self.received = b""
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


class Wire(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.aborted = False

    def write(self, data: Any) -> None:
        self.written += bytes(data)

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5) if name == "peername" else default


def connected(mode: str) -> tuple[RtuClientProtocol, Session, Wire]:
    session = Session()
    adapter = RtuClientProtocol(session, mode)
    wire = Wire()
    adapter.connection_made(wire)
    return adapter, session, wire


def rtu_read(unit: int, address: int, count: int) -> bytes:
    return with_crc(bytes([unit, 3]) + address.to_bytes(2, "big") + count.to_bytes(2, "big"))


FRAMES = st.lists(
    st.tuples(st.integers(1, 247), st.integers(0, 0xFFFF), st.integers(1, 125)),
    min_size=1,
    max_size=6,
)


@given(frames=FRAMES, cuts=st.lists(st.integers(1, 40), max_size=20))
def test_any_split_of_rtu_requests_gives_the_same_mbap_requests(
    frames: list[tuple[int, int, int]], cuts: list[int]
) -> None:
    stream = b"".join(rtu_read(*frame) for frame in frames)
    adapter, session, _wire = connected("rtu")
    at = 0
    for cut in cuts:
        adapter.data_received(stream[at : at + cut])
        at += cut
    adapter.data_received(stream[at:])
    expected = b"".join(
        read_request(index + 1, unit, address, count)
        for index, (unit, address, count) in enumerate(frames)
    )
    assert session.received == expected


def test_answers_go_back_as_rtu_frames_and_a_broadcasts_answer_is_dropped() -> None:
    adapter, session, wire = connected("rtu")
    adapter.data_received(rtu_read(1, 0, 2) + rtu_read(0, 0, 1) + rtu_read(2, 0, 1))
    assert session.transport is not None
    # The session answers all three, in order, in one write (as it batches).
    session.transport.write(
        registers_answer(1, 1, [7, 8]) + registers_answer(2, 0, [9]) + registers_answer(3, 2, [5])
    )
    assert wire.written == with_crc(bytes([1, 3, 4, 0, 7, 0, 8])) + with_crc(bytes([2, 3, 2, 0, 5]))


def test_a_bad_crc_closes_that_client_only() -> None:
    adapter, session, wire = connected("rtu")
    frame = bytearray(rtu_read(1, 0, 1))
    frame[-1] ^= 0xFF
    adapter.data_received(bytes(frame))
    assert wire.aborted
    assert session.received == b""


def test_auto_tells_rtu_from_mbap_by_the_first_request() -> None:
    assert _decide(bytearray(rtu_read(1, 0, 10))) == "rtu"
    assert _decide(bytearray(read_request(1, 1, 0, 10))) == "mbap"
    assert _decide(bytearray(read_request(1, 1, 0, 10)[:5])) is None
    assert _decide(bytearray(b"\x01\x03\x00")) is None
    assert _decide(bytearray(b"garbage!garbage!")) == "mbap"  # the session refuses it
    adapter, session, wire = connected("auto")
    request = read_request(9, 1, 0, 4)
    adapter.data_received(request)
    assert session.received == request, "MBAP passes through untouched"
    assert session.transport is not None
    session.transport.write(registers_answer(9, 1, [1, 2, 3, 4]))
    assert wire.written == registers_answer(9, 1, [1, 2, 3, 4])
    assert adapter.framing == "mbap"
