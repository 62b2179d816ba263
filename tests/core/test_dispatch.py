"""The dispatcher alone: fairness, the queue bound and timeout, coalescing, answers.

No socket, no event loop timers: fake owners and a fake pool, and a virtual clock that
moves only when a test says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tcp_multiplexer.core.dispatch import Dispatcher
from tcp_multiplexer.core.interfaces import (
    FailureReason,
    PoolEvents,
    Priority,
    Request,
    RequestState,
)
from tcp_multiplexer.observability.metrics import TargetMetrics
from tcp_multiplexer.protocols.echo import codec as echo_codec
from tcp_multiplexer.protocols.modbus import SPEC as MODBUS
from tcp_multiplexer.protocols.modbus.codec import ModbusClientCodec
from tcp_multiplexer.protocols.modbus.gateway import ModbusGatewayPolicy
from tcp_multiplexer.protocols.modbus.options import ModbusOptions
from tcp_multiplexer.testing import VirtualClock
from tests.core.fakes import LOG, FakeOwner, FakePool
from tests.modbus.adu import read_request, registers_answer, write_register

TIMEOUT = 5.0


class Rig:
    """A dispatcher over a fake pool, on a virtual clock."""

    def __init__(self, *, queue_size: int = 32, modbus: ModbusOptions | None = None) -> None:
        self.clock = VirtualClock()
        events = MODBUS.new_events()
        self.metrics = TargetMetrics(events)
        self.pools: list[FakePool] = []

        def make_pool(sink: PoolEvents) -> FakePool:
            pool = FakePool(sink)
            self.pools.append(pool)
            return pool

        if modbus is None:
            codec = echo_codec()
            policy = None
        else:
            codec = ModbusClientCodec()
            policy = ModbusGatewayPolicy(modbus, events, self.clock)
        self.dispatcher = Dispatcher(
            codec,
            self.metrics,
            make_pool,
            clock=self.clock,
            log=LOG,
            timeout=TIMEOUT,
            queue_size=queue_size,
            policy=policy,
        )
        (self.pool,) = self.pools

    def submit(self, owner: FakeOwner, payload: bytes) -> Request:
        request = Request(owner, payload, self.clock.time())
        self.dispatcher.submit(request)
        return request

    def answer_sent(self, answer: bytes | None = None) -> Request:
        """The target answers the request in flight (with its payload, or `answer`)."""
        request = self.pool.connection.sent[-1]
        self.pool.free()
        self.dispatcher.finish(
            request, request.payload if answer is None else answer, self.clock.time(), False
        )
        return request


def lines(owner: str, count: int) -> Iterator[bytes]:
    return (b"%s %d\n" % (owner.encode(), index) for index in range(count))


async def test_waiting_requests_are_served_round_robin_between_clients() -> None:
    rig = Rig()
    busy, greedy, polite, late = (FakeOwner(name) for name in ("busy", "greedy", "p", "l"))
    rig.submit(busy, b"first\n")
    for payload in lines("greedy", 3):
        rig.submit(greedy, payload)
    rig.submit(polite, b"p 0\n")
    rig.submit(late, b"l 0\n")
    assert rig.dispatcher.waiting == 5
    for _ in range(6):
        rig.answer_sent()
    sent = [request.payload for request in rig.pool.connection.sent]
    assert sent == [b"first\n", b"greedy 0\n", b"p 0\n", b"l 0\n", b"greedy 1\n", b"greedy 2\n"]
    assert [request.payload for request in greedy.answers] == list(lines("greedy", 3))
    assert rig.dispatcher.unanswered == 0


async def test_a_request_that_waits_too_long_gets_the_busy_answer_and_is_never_sent() -> None:
    rig = Rig(modbus=ModbusOptions(coalesce=False))
    first, second = FakeOwner("first"), FakeOwner("second")
    rig.submit(first, read_request(1, 1, 0, 1))
    waiting = rig.submit(second, read_request(0x0707, 1, 10, 1))
    rig.clock.advance(TIMEOUT - 0.001)
    assert not second.answers
    rig.clock.advance(0.002)
    (answered,) = second.answers
    assert answered is waiting
    assert answered.answer == bytes.fromhex("0707 0000 0003 01 83 06"), "0x06: busy"
    assert rig.metrics.gateway["busy"] == 1
    rig.answer_sent(registers_answer(1, 1, [7]))
    assert len(rig.pool.connection.sent) == 1, "the expired request was never sent"


async def test_identical_reads_share_one_round_trip_and_each_gets_its_own_id() -> None:
    rig = Rig(modbus=ModbusOptions())
    owners = [FakeOwner(f"c{index}") for index in range(3)]
    for tid, owner in enumerate(owners, start=0x10):
        rig.submit(owner, read_request(tid, 1, 100, 2))
    assert len(rig.pool.connection.sent) == 1
    assert rig.metrics.coalesced == 2
    rig.answer_sent(registers_answer(0x10, 1, [5, 6]))
    for tid, owner in enumerate(owners, start=0x10):
        (request,) = owner.answers
        assert request.answer == registers_answer(tid, 1, [5, 6])
    assert rig.metrics.answers == 3


async def test_a_full_queue_pauses_a_client_that_adds_a_second_request_until_room_frees() -> None:
    rig = Rig(queue_size=2)
    rig.submit(FakeOwner("busy"), b"first\n")
    pipeliner, other = FakeOwner("pipeliner"), FakeOwner("other")
    rig.submit(other, b"other\n")
    rig.submit(pipeliner, b"one\n")
    assert not pipeliner.paused, "each client may always queue one"
    rig.submit(pipeliner, b"two\n")
    assert pipeliner.paused
    assert not other.paused
    rig.answer_sent()
    assert pipeliner.paused, "two still wait: the queue is still full"
    rig.answer_sent()
    assert not pipeliner.paused, "resumed once the queue has room"
    assert pipeliner.pauses == 1


async def test_requests_of_a_client_that_left_are_dropped_unsent() -> None:
    rig = Rig()
    rig.submit(FakeOwner("busy"), b"first\n")
    leaver = FakeOwner("leaver")
    rig.submit(leaver, b"a\n")
    rig.submit(leaver, b"b\n")
    leaver.closed = True
    rig.dispatcher.owner_closed(leaver)
    assert rig.dispatcher.waiting == 0
    rig.answer_sent()
    assert len(rig.pool.connection.sent) == 1
    assert rig.dispatcher.unanswered == 0


async def test_an_unreachable_target_answers_at_once() -> None:
    rig = Rig(modbus=ModbusOptions())
    rig.pool.connection.free = False
    rig.pool.unreachable = True
    owner = FakeOwner("owner")
    rig.submit(owner, read_request(3, 1, 0, 1))
    (request,) = owner.answers
    assert request.answer == bytes.fromhex("0003 0000 0003 01 83 0a")
    assert request.state == RequestState.DONE


@pytest.mark.parametrize("reason", list(FailureReason))
async def test_a_failure_answers_followers_too(reason: FailureReason) -> None:
    rig = Rig(modbus=ModbusOptions())
    owners = [FakeOwner(f"c{index}") for index in range(2)]
    for tid, owner in enumerate(owners, start=1):
        rig.submit(owner, read_request(tid, 1, 0, 1))
    leader = rig.pool.connection.sent[0]
    rig.dispatcher.fail(leader, reason)
    assert [len(owner.answers) for owner in owners] == [1, 1]
    assert rig.metrics.gateway[reason.name.lower()] == 2


async def test_wait_drained_returns_once_every_request_is_answered() -> None:
    rig = Rig()
    rig.submit(FakeOwner("a"), b"a\n")
    drained = asyncio.ensure_future(rig.dispatcher.wait_drained())
    await asyncio.sleep(0)
    assert not drained.done()
    rig.answer_sent()
    await asyncio.wait_for(drained, 1.0)


async def test_the_latency_histogram_keeps_the_slowest_answer() -> None:
    """So that no quantile printed from it reads above what any answer took."""
    rig = Rig()
    owner = FakeOwner("a")
    rig.submit(owner, b"one\n")
    rig.clock.advance(0.02)
    rig.answer_sent()
    rig.submit(owner, b"two\n")
    rig.clock.advance(3.0004)
    rig.answer_sent()
    latency = rig.metrics.latency
    assert latency.maximum == pytest.approx(3.0004)
    assert latency.quantile(0.99) <= latency.maximum


async def test_a_switch_over_moves_waiting_requests_with_their_deadlines() -> None:
    """A reload that switches targets: the old dispatcher gives up what waits (never
    sent), in its fair order, and keeps answering what it sent; the new one sends what
    it adopts when it can, and answers 0x06 at each request's original deadline."""
    old = Rig(modbus=ModbusOptions(coalesce=False))
    new = Rig(modbus=ModbusOptions(coalesce=False))
    new.clock = old.clock
    new.dispatcher = Dispatcher(
        ModbusClientCodec(),
        new.metrics,
        lambda sink: new.pool,
        clock=old.clock,
        log=LOG,
        timeout=TIMEOUT,
        queue_size=32,
    )
    new.pool.events = new.dispatcher
    new.pool.connection.free = False  # its connection opens later
    one, two = FakeOwner("one"), FakeOwner("two")
    in_flight = old.submit(one, read_request(1, 1, 0, 1))
    old.submit(one, read_request(2, 1, 1, 1))
    old.submit(one, read_request(3, 1, 2, 1))
    old.clock.advance(1.0)
    old.submit(two, read_request(4, 1, 3, 1))
    taken = old.dispatcher.take_waiting()
    assert [request.payload[:2] for request in taken] == [b"\x00\x02", b"\x00\x04", b"\x00\x03"]
    assert old.dispatcher.waiting == 0
    assert old.dispatcher.unanswered == 1, "the one in flight stays"
    for request in taken:
        new.dispatcher.adopt(request)
    assert new.dispatcher.unanswered == 3
    assert new.metrics.requests == 0, "adopted, not counted again"
    old.answer_sent(registers_answer(1, 1, [7]))
    assert one.answers == [in_flight]
    assert old.dispatcher.unanswered == 0
    new.pool.free()  # the new connection is up: it takes the oldest turn
    assert [request.payload[:2] for request in new.pool.connection.sent] == [b"\x00\x02"]
    old.clock.advance(TIMEOUT - 1.0 + 0.001)  # past the deadline of one's requests
    assert [request.answer[7:9] for request in one.answers[1:]] == [b"\x83\x06"]
    assert not two.answers, "its deadline is a second later"
    old.clock.advance(1.0)
    (late,) = two.answers
    assert late.answer[7:9] == b"\x83\x06"


async def test_a_reload_gives_a_kept_dispatcher_its_new_queue_bound_and_policy() -> None:
    rig = Rig(queue_size=1, modbus=ModbusOptions(coalesce=False))
    busy, pipeliner = FakeOwner("busy"), FakeOwner("pipeliner")
    rig.submit(busy, read_request(1, 1, 0, 1))
    rig.submit(pipeliner, read_request(2, 1, 0, 1))
    rig.submit(pipeliner, read_request(3, 1, 0, 1))
    assert pipeliner.paused
    policy = ModbusGatewayPolicy(ModbusOptions(coalesce=True), rig.metrics.events, rig.clock)
    rig.dispatcher.configure(queue_size=8, policy=policy)
    assert not pipeliner.paused, "room under the new bound"
    reader = FakeOwner("reader")
    rig.submit(reader, read_request(4, 1, 0, 1))
    rig.submit(FakeOwner("same"), read_request(5, 1, 0, 1))
    assert rig.metrics.coalesced == 1, "the new policy coalesces"


async def test_writes_go_first_then_reads_then_the_bridges_own_requests() -> None:
    """Across clients, when the connection frees: a waiting write, then reads, then a
    background request; each client's own requests keep their order (its write waits
    for its earlier read)."""
    rig = Rig(modbus=ModbusOptions(coalesce=False))
    busy, reader, writer, mixed, poller = (
        FakeOwner(name) for name in ("busy", "reader", "writer", "mixed", "poller")
    )
    rig.submit(busy, read_request(1, 1, 0, 1))  # on the connection
    background = Request(poller, read_request(2, 1, 100, 10), rig.clock.time())
    background.priority = Priority.BACKGROUND
    rig.dispatcher.submit(background)
    rig.submit(reader, read_request(3, 1, 1, 1))
    rig.submit(mixed, read_request(4, 1, 2, 1))
    rig.submit(mixed, write_register(5, 1, 2, 9))
    rig.submit(writer, write_register(6, 1, 3, 9))
    rig.submit(reader, read_request(7, 1, 4, 1))
    for _ in range(7):
        rig.answer_sent(registers_answer(0, 1, [0]))
    order = [int.from_bytes(request.payload[:2], "big") for request in rig.pool.connection.sent]
    assert order == [1, 6, 3, 4, 5, 7, 2]
    assert rig.dispatcher.unanswered == 0


async def test_a_waiting_write_skips_the_queue_but_not_its_own_clients_read() -> None:
    """The head of each client's queue decides: after the read ahead of it is sent,
    the write is that client's head, and goes before every other client's reads."""
    rig = Rig(modbus=ModbusOptions(coalesce=False))
    others = [FakeOwner(f"poller {index}") for index in range(4)]
    owner = FakeOwner("wallbox")
    rig.submit(FakeOwner("busy"), read_request(1, 1, 0, 1))
    rig.submit(owner, read_request(2, 1, 0, 1))
    for index, other in enumerate(others):
        rig.submit(other, read_request(10 + index, 1, 0, 1))
    rig.submit(owner, write_register(3, 1, 5, 1))
    rig.answer_sent(registers_answer(0, 1, [0]))  # frees: the wallbox's read is first
    rig.answer_sent(registers_answer(0, 1, [0]))  # frees: its write, before the pollers
    sent = [int.from_bytes(request.payload[:2], "big") for request in rig.pool.connection.sent]
    assert sent[:3] == [1, 2, 3]
