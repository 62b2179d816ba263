"""A target connection of `Correlation.SOLE` (a Modbus RTU line, one master) alone.

One request at a time; a timeout or a damaged answer fails only its request and the
line serves the next at once; a broadcast is done, unanswered, after the turnaround; a
late answer is dropped without closing the line. A memory transport stands in for
the line and the virtual clock moves only when told.
"""

from __future__ import annotations

from collections import Counter

from tcp_multiplexer.core.interfaces import FailureReason
from tcp_multiplexer.protocols.modbus.codec import RtuTargetCodec
from tcp_multiplexer.protocols.modbus.rtu import BROADCAST_TURNAROUND, rtu_from_adu, with_crc
from tests.core.fakes import UpstreamRig
from tests.modbus.adu import read_request, registers_answer, write_register

TIMEOUT = 1.0


class Line(UpstreamRig):
    def __init__(
        self,
        *,
        max_inflight: int = 4,
        unit_map: dict[int, int] | None = None,
        timeout: float = TIMEOUT,
    ) -> None:
        super().__init__(
            RtuTargetCodec(unit_map or {}, Counter()),
            name="serial:///dev/ttyUSB0",
            timeout=timeout,
            max_inflight=max_inflight,
        )


def rtu_registers(unit: int, values: list[int]) -> bytes:
    data = b"".join(value.to_bytes(2, "big") for value in values)
    return with_crc(bytes([unit, 3, len(data)]) + data)


async def test_the_request_goes_as_rtu_and_the_answer_returns_under_the_clients_header() -> None:
    line = Line()
    request = line.send(read_request(0x1234, 5, 100, 2))
    assert line.transport.take() == rtu_from_adu(read_request(0x1234, 5, 100, 2), 5)
    line.connection.data_received(rtu_registers(5, [7, 8]))
    assert line.sink.finished == [(request, registers_answer(0x1234, 5, [7, 8]), False)]


async def test_one_request_at_a_time_whatever_max_inflight_says() -> None:
    line = Line(max_inflight=8)
    line.send(read_request(1, 1, 0, 1))
    assert not line.connection.can_send, "a serial line has one master and one question"
    line.connection.data_received(rtu_registers(1, [1]))
    assert line.connection.can_send


async def test_a_timeout_fails_that_request_only_and_the_next_goes_at_once() -> None:
    line = Line()
    silent = line.send(read_request(1, 9, 0, 1))
    line.clock.advance(TIMEOUT + 0.001)
    assert line.sink.failed == [(silent, FailureReason.TIMEOUT)]
    assert line.is_open(), "the line stays open"
    assert line.connection.can_send, "the bus serves the next request at once"
    assert line.sink.available == 1
    answered = line.send(read_request(2, 1, 0, 1))
    line.connection.data_received(rtu_registers(1, [42]))
    assert line.sink.finished == [(answered, registers_answer(2, 1, [42]), False)]


async def test_timeouts_in_a_row_never_close_the_line() -> None:
    line = Line()
    for tid in range(5):
        line.send(read_request(tid, 9, 0, 1))
        line.clock.advance(TIMEOUT + 0.001)
    assert len(line.sink.failed) == 5
    assert line.is_open()


async def test_a_damaged_answer_fails_its_request_and_is_never_retried() -> None:
    line = Line()
    request = line.send(read_request(3, 1, 0, 1))
    damaged = bytearray(rtu_registers(1, [99]))
    damaged[-1] ^= 0xFF
    line.connection.data_received(bytes(damaged))
    assert line.sink.failed == [(request, FailureReason.BROKEN)]
    assert line.metrics.damaged_answers == 1
    assert line.transport.take() == rtu_from_adu(request.payload, 1), "sent once, not again"
    assert line.is_open()
    assert line.connection.can_send
    line.clock.advance(TIMEOUT * 3)
    assert len(line.sink.failed) == 1, "its timer is gone with it"


async def test_a_broadcast_gets_no_answer_and_the_line_rests_for_the_turnaround() -> None:
    line = Line()
    broadcast = line.send(write_register(4, 0, 10, 1))
    assert not line.connection.can_send
    line.clock.advance(BROADCAST_TURNAROUND - 0.001)
    assert not line.sink.finished
    line.clock.advance(0.002)
    assert line.sink.finished == [(broadcast, b"", False)], "done, with nothing to send back"
    assert line.connection.can_send
    line.clock.advance(TIMEOUT * 2)
    assert not line.sink.failed, "no timeout follows"


async def test_a_late_answer_with_nothing_outstanding_is_dropped_and_the_line_stays() -> None:
    line = Line()
    line.send(read_request(5, 1, 0, 1))
    line.clock.advance(TIMEOUT + 0.001)
    line.connection.data_received(rtu_registers(1, [1]))
    assert line.metrics.unexpected_answers == 1
    assert not line.sink.finished
    assert line.is_open()


async def test_the_unit_map_rewrites_the_unit_both_ways() -> None:
    line = Line(unit_map={1: 3})
    request = line.send(read_request(6, 1, 0, 1))
    assert line.transport.take()[0] == 3, "the device's unit on the line"
    line.connection.data_received(rtu_registers(3, [5]))
    assert line.sink.finished == [(request, registers_answer(6, 1, [5]), False)]


async def test_a_broadcast_that_times_out_first_leaves_the_next_request_alone() -> None:
    """A timeout shorter than the turnaround: the turnaround's end must not finish the
    request sent after the broadcast."""
    line = Line(timeout=BROADCAST_TURNAROUND / 2)
    line.send(write_register(4, 0, 10, 1))
    line.clock.advance(BROADCAST_TURNAROUND / 2 + 0.001)
    assert line.connection.can_send
    read = line.send(read_request(5, 1, 0, 1))
    line.clock.advance(BROADCAST_TURNAROUND / 2)
    assert all(finished is not read for finished, _answer, _ends in line.sink.finished)
    line.connection.data_received(rtu_registers(1, [3]))
    assert line.sink.finished[-1] == (read, registers_answer(5, 1, [3]), False)
