"""The router: each request to the dispatcher of its route key, unrouted ones answered
at once, batches and departures told to every dispatcher."""

from __future__ import annotations

from collections import Counter

import pytest

from tcp_multiplexer.core.interfaces import Dispatch, Request, RequestOwner, RequestState
from tcp_multiplexer.core.router import KEYS, Router
from tcp_multiplexer.protocols.echo import codec as echo_codec
from tcp_multiplexer.protocols.modbus.codec import ModbusClientCodec
from tests.core.fakes import FakeOwner, RecordingDispatch
from tests.modbus.adu import exception_answer, read_request


class CountingDispatch(RecordingDispatch):
    def __init__(self) -> None:
        super().__init__()
        self.batches = 0
        self.ended = 0

    def begin_batch(self) -> None:
        self.batches += 1

    def end_batch(self) -> None:
        self.ended += 1


def unit_of(payload: bytes) -> int:
    return payload[6]


def table(routes: dict[int, Dispatch]) -> list[Dispatch | None]:
    return [routes.get(key) for key in range(KEYS)]


def test_each_request_reaches_the_dispatcher_of_its_unit() -> None:
    inverter, meter = CountingDispatch(), CountingDispatch()
    router = Router(
        unit_of, table({1: inverter, 2: meter, 3: meter}), ModbusClientCodec(), Counter()
    )
    owner = FakeOwner("client")
    for unit in (1, 2, 3, 1):
        router.submit(Request(owner, read_request(unit, unit, 0, 1), 0.0))
    assert [unit_of(r.payload) for r in inverter.submitted] == [1, 1]
    assert [unit_of(r.payload) for r in meter.submitted] == [2, 3]


def test_a_unit_without_a_route_gets_a_timeout_exception_at_once() -> None:
    inverter = CountingDispatch()
    events: Counter[str] = Counter()
    router = Router(unit_of, table({1: inverter}), ModbusClientCodec(), events)
    owner = FakeOwner("client")
    request = Request(owner, read_request(77, 9, 0, 1), 0.0)
    router.submit(request)
    assert not inverter.submitted
    assert request.state is RequestState.DONE
    assert request.answer == exception_answer(77, 9, 0x03, 0x0B)
    assert events["unrouted"] == 1


def test_a_protocol_without_gateway_answers_closes_the_unrouted_client() -> None:
    only = CountingDispatch()
    router = Router(lambda payload: payload[0], table({ord("a"): only}), echo_codec(), Counter())
    request = Request(FakeOwner("client"), b"zzz\n", 0.0)
    router.submit(request)
    assert request.close_client
    assert request.state is RequestState.DONE


def test_batches_and_departures_reach_every_dispatcher_once() -> None:
    first, second = CountingDispatch(), CountingDispatch()
    router = Router(
        unit_of, table({1: first, 2: second, 3: second}), ModbusClientCodec(), Counter()
    )
    owner: RequestOwner = FakeOwner("client")
    router.begin_batch()
    router.end_batch()
    router.owner_closed(owner)
    assert (first.batches, first.ended, second.batches, second.ended) == (1, 1, 1, 1)
    assert first.closed_owners == second.closed_owners == [owner]


def test_a_route_table_has_an_entry_per_key() -> None:
    with pytest.raises(ValueError, match="256"):
        Router(unit_of, [None] * 10, ModbusClientCodec(), Counter())
