"""One target connection alone: ids on the wire, answer timeouts, retiring, the gap.

A memory transport stands in for the socket; a fake sink records what the connection
reports; the virtual clock moves only when told.
"""

from __future__ import annotations

from tcp_multiplexer.core.interfaces import FailureReason, TargetCodec
from tcp_multiplexer.protocols.echo import codec as echo_codec
from tcp_multiplexer.protocols.modbus.codec import ModbusTargetCodec
from tests.core.fakes import UpstreamRig
from tests.modbus.adu import read_request, registers_answer

TIMEOUT = 2.0


class Rig(UpstreamRig):
    def __init__(
        self,
        codec: TargetCodec,
        *,
        max_inflight: int = 1,
        gap: float = 0.0,
        recycle_after: int = 3,
        max_age: float = 0.0,
    ) -> None:
        super().__init__(
            codec,
            timeout=TIMEOUT,
            max_inflight=max_inflight,
            gap=gap,
            recycle_after=recycle_after,
            max_age=max_age,
        )


async def test_requests_carry_the_connections_ids_and_answers_the_clients() -> None:
    rig = Rig(ModbusTargetCodec(), max_inflight=4)
    first = rig.send(read_request(0xAAAA, 1, 0, 1))
    second = rig.send(read_request(0xAAAA, 1, 5, 1))
    wires = rig.transport.take()
    assert (wires[:2], wires[12:14]) == (b"\x00\x01", b"\x00\x02"), "its own ids, in turn"
    # Answers in the other order: matched by id.
    rig.connection.data_received(registers_answer(2, 1, [55]) + registers_answer(1, 1, [11]))
    finished = {request.payload: answer for request, answer, _ends in rig.sink.finished}
    assert finished[second.payload] == registers_answer(0xAAAA, 1, [55])
    assert finished[first.payload] == registers_answer(0xAAAA, 1, [11])


async def test_an_unanswered_request_times_out_and_its_late_answer_is_dropped() -> None:
    rig = Rig(ModbusTargetCodec())
    request = rig.send(read_request(7, 1, 0, 1))
    rig.clock.advance(TIMEOUT + 0.001)
    assert rig.sink.failed == [(request, FailureReason.TIMEOUT)]
    assert not rig.transport.closed, "an id connection stays after one silent timeout"
    rig.connection.data_received(registers_answer(request.wire_id, 1, [1]))
    assert rig.metrics.ids_dropped == 1
    assert not rig.sink.finished, "the late answer reaches nobody"


async def test_three_timeouts_in_a_row_retire_an_id_connection() -> None:
    rig = Rig(ModbusTargetCodec())
    for tid in (1, 2):
        rig.send(read_request(tid, 1, 0, 1))
        rig.clock.advance(TIMEOUT + 0.001)
    assert rig.is_open(), "two timeouts in a row: still up"
    rig.send(read_request(3, 1, 0, 1))
    rig.clock.advance(TIMEOUT + 0.001)
    assert rig.transport.aborted
    assert [reason for _request, reason in rig.sink.failed] == [FailureReason.TIMEOUT] * 3


async def test_an_answer_between_timeouts_starts_the_count_again() -> None:
    rig = Rig(ModbusTargetCodec(), recycle_after=2)
    rig.send(read_request(1, 1, 0, 1))
    rig.clock.advance(TIMEOUT + 0.001)
    answered = rig.send(read_request(2, 1, 0, 1))
    rig.connection.data_received(registers_answer(answered.wire_id, 1, [5]))
    rig.send(read_request(3, 1, 0, 1))
    rig.clock.advance(TIMEOUT + 0.001)
    assert rig.is_open(), "one timeout since the answer"
    # Late answers to timed-out requests do not count as answers.
    late = rig.sink.failed[-1][0]
    rig.connection.data_received(registers_answer(late.wire_id, 1, [6]))
    rig.send(read_request(4, 1, 0, 1))
    rig.clock.advance(TIMEOUT + 0.001)
    assert rig.transport.aborted


async def test_recycling_can_be_turned_off() -> None:
    rig = Rig(ModbusTargetCodec(), recycle_after=0)
    for tid in range(6):
        rig.send(read_request(tid, 1, 0, 1))
        rig.clock.advance(TIMEOUT + 0.001)
    assert rig.is_open()


async def test_an_old_connection_is_closed_once_its_request_is_answered() -> None:
    rig = Rig(ModbusTargetCodec(), max_age=60.0)
    rig.clock.advance(59.5)
    assert rig.is_open()
    busy = rig.send(read_request(1, 1, 0, 1))
    rig.clock.advance(1.0)  # old now, but a request is on it (answer due within 2 s)
    assert rig.is_open()
    assert not rig.connection.can_send, "it takes no more requests"
    rig.connection.data_received(registers_answer(busy.wire_id, 1, [7]))
    assert rig.sink.finished[0][0] is busy, "the request on it is answered"
    assert rig.transport.closed
    assert rig.connection.closed_as_expected, "the pool opens a new one at once"


async def test_an_old_idle_connection_is_closed_at_once() -> None:
    rig = Rig(ModbusTargetCodec(), max_age=60.0)
    rig.clock.advance(60.001)
    assert rig.transport.closed
    assert rig.connection.closed_as_expected


async def test_a_timeout_retires_a_fifo_connection_so_no_late_answer_can_mismatch() -> None:
    rig = Rig(echo_codec())
    request = rig.send(b"slow\n")
    rig.clock.advance(TIMEOUT + 0.001)
    assert rig.sink.failed == [(request, FailureReason.TIMEOUT)]
    assert rig.transport.aborted
    assert not rig.connection.closed_as_expected


async def test_the_request_gap_keeps_the_connection_quiet_after_an_answer() -> None:
    rig = Rig(echo_codec(), gap=0.05)
    assert not rig.connection.can_send, "the gap runs from the connect too"
    rig.clock.advance(0.051)
    assert rig.sink.available == 1
    rig.send(b"one\n")
    rig.connection.data_received(b"one\n")
    assert not rig.connection.can_send
    rig.clock.advance(0.049)
    assert rig.sink.available == 1
    rig.clock.advance(0.002)
    assert rig.sink.available == 2, "offered again once the gap has passed"
    assert rig.connection.can_send


async def test_a_stray_answer_on_a_fifo_connection_retires_it() -> None:
    rig = Rig(echo_codec())
    rig.connection.data_received(b"nobody asked\n")
    assert rig.metrics.unexpected_answers == 1
    assert rig.transport.aborted
