"""Background polls: parsing, merging into reads, and the poller on a virtual clock
(behind client requests, never twice at once, paused while the target is down, split
on 0x02, slowed on refusals)."""

from __future__ import annotations

import pytest

from tcp_multiplexer.core.dispatch import Dispatcher
from tcp_multiplexer.core.interfaces import PoolEvents, Priority, Request
from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.observability.metrics import TargetMetrics
from tcp_multiplexer.protocols.modbus import SPEC as MODBUS
from tcp_multiplexer.protocols.modbus.codec import ModbusClientCodec
from tcp_multiplexer.protocols.modbus.gateway import ModbusGatewayPolicy
from tcp_multiplexer.protocols.modbus.mbap import exception_response
from tcp_multiplexer.protocols.modbus.options import ModbusOptions, path_options
from tcp_multiplexer.protocols.modbus.points import points_value
from tcp_multiplexer.protocols.modbus.polling import Polling
from tcp_multiplexer.protocols.modbus.polls import Poll, PollRead, parse_poll, plan_reads
from tcp_multiplexer.testing import VirtualClock
from tests.core.fakes import LOG, FakeOwner, FakePool
from tests.modbus.adu import read_request, registers_answer

TIMEOUT = 5.0


def poll(text: str) -> Poll:
    return parse_poll(text)


# ---------------------------------------------------------------------------- parsing


def test_a_poll_reads_from_text_and_from_a_table_alike() -> None:
    text = parse_poll("1:holding:40000:50:5s")
    table = parse_poll(
        {"unit": 1, "table": "holding", "address": 40000, "count": 50, "every": "5s"}
    )
    assert (text.unit, text.function, text.address, text.count, text.every) == (
        1,
        3,
        40000,
        50,
        5.0,
    )
    assert table == Poll(1, "holding", 40000, 50, 5.0, "1:holding:40000:50:5s")


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("1:holding:40000:50", "UNIT:TABLE:ADDRESS:COUNT:EVERY"),
        ("1:registers:0:5:1s", "table 'registers'"),
        ("300:holding:0:5:1s", "unit 300"),
        ("1:holding:65530:10:1s", "past address 65535"),
        ("1:holding:0:0:1s", "at least 1"),
        ("1:holding:0:5:soon", "invalid duration"),
        ({"unit": 1, "table": "holding", "address": 0, "count": 5}, "every is missing"),
        ({"unit": 1, "table": "holding", "address": 0, "count": 5, "every": 1, "x": 1}, "'x'"),
    ],
)
def test_a_bad_poll_is_named_in_its_error(value: object, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_poll(value)


def test_polls_need_the_image_and_an_interval_shorter_than_its_ttl() -> None:
    with pytest.raises(ConfigError, match="needs --cache-ttl"):
        ModbusOptions(poll=(poll("1:holding:0:10:1s"),))
    with pytest.raises(ConfigError, match=r"1:holding:0:10:2s: every 2s is not shorter"):
        ModbusOptions(cache_ttl=2.0, poll=(poll("1:holding:0:10:2s"),))
    ModbusOptions(cache_ttl=2.0, poll=(poll("1:holding:0:10:1s"),))


# ---------------------------------------------------------------------------- merging


def test_neighbouring_ranges_are_merged_at_the_shortest_interval() -> None:
    reads = plan_reads(
        [poll("1:holding:0:10:5s"), poll("1:holding:15:10:1s"), poll("1:holding:100:4:2s")],
        8,
        125,
    )
    assert [(read.address, read.count, read.every, read.merged) for read in reads] == [
        (0, 25, 1.0, True),
        (100, 4, 2.0, False),
    ]


def test_tables_and_units_are_never_merged() -> None:
    reads = plan_reads(
        [poll("1:holding:0:10:1s"), poll("1:input:0:10:1s"), poll("2:holding:0:10:1s")], 8, 125
    )
    assert len(reads) == 3


def test_a_merged_read_stays_within_the_read_limit() -> None:
    reads = plan_reads([poll("1:holding:0:100:1s"), poll("1:holding:100:50:1s")], 8, 125)
    assert [(read.address, read.count) for read in reads] == [(0, 100), (100, 50)]
    reads = plan_reads([poll("1:holding:0:60:1s"), poll("1:holding:62:40:1s")], 8, 64)
    assert [(read.address, read.count) for read in reads] == [(0, 60), (62, 40)]


def test_a_long_range_is_read_in_reads_of_the_limit_and_coils_take_sixteen_times_more() -> None:
    reads = plan_reads([poll("1:holding:0:300:1s")], 0, 125)
    assert [(read.address, read.count) for read in reads] == [(0, 125), (125, 125), (250, 50)]
    reads = plan_reads([poll("1:coils:0:2500:1s")], 0, 125)
    assert [(read.address, read.count) for read in reads] == [(0, 2000), (2000, 500)]


def test_identical_ranges_are_read_once_at_the_faster_pace() -> None:
    reads = plan_reads([poll("1:holding:0:10:5s"), poll("1:holding:0:10:1s")], 8, 125)
    assert reads == [PollRead(1, 3, 0, 10, 1.0)]


def test_ranges_farther_apart_than_the_gap_stay_apart() -> None:
    reads = plan_reads([poll("1:holding:0:10:1s"), poll("1:holding:19:1:1s")], 8, 125)
    assert len(reads) == 2
    reads = plan_reads([poll("1:holding:0:10:1s"), poll("1:holding:18:1:1s")], 8, 125)
    assert len(reads) == 1


# ---------------------------------------------------------------------------- the poller


class PollPool(FakePool):
    """The fake pool, with what the poller asks: connections up, closing."""

    def __init__(self, events: PoolEvents) -> None:
        super().__init__(events)
        self.connections = 1
        self.closing = False


class PollRig:
    """A dispatcher, its Modbus policy and a poller over a fake pool, on a virtual clock."""

    def __init__(self, *polls: str, ttl: float = 10.0, options: ModbusOptions | None = None):
        self.clock = VirtualClock()
        self.events = MODBUS.new_events()
        self.metrics = TargetMetrics(self.events)
        self.options = options or ModbusOptions(
            cache_ttl=ttl, poll=tuple(poll(text) for text in polls)
        )
        self.policy = ModbusGatewayPolicy(
            self.options, self.events, self.clock, LOG, timeout=TIMEOUT
        )
        pools: list[PollPool] = []

        def make_pool(sink: PoolEvents) -> PollPool:
            pools.append(PollPool(sink))
            return pools[-1]

        self.dispatcher = Dispatcher(
            ModbusClientCodec(),
            self.metrics,
            make_pool,
            clock=self.clock,
            log=LOG,
            timeout=TIMEOUT,
            queue_size=32,
            policy=self.policy,
        )
        (self.pool,) = pools
        self.polling = Polling(
            self.options,
            self.policy,
            self.dispatcher,
            self.pool,
            clock=self.clock,
            log=LOG,
            events=self.events,
        )

    @property
    def sent(self) -> list[Request]:
        return self.pool.connection.sent

    def in_flight(self) -> Request | None:
        connection = self.pool.connection
        return None if connection.free else connection.sent[-1]

    def answer(self, answer: bytes | None = None) -> Request:
        """The device answers what is in flight: its registers are their addresses."""
        request = self.sent[-1]
        assert not self.pool.connection.free
        request.deadline = self.clock.time() + TIMEOUT  # as the connection sets it
        if answer is None:
            address = int.from_bytes(request.payload[8:10], "big")
            count = int.from_bytes(request.payload[10:12], "big")
            answer = registers_answer(0, request.payload[6], range(address, address + count))
        answer = request.payload[:2] + answer[2:]
        self.pool.connection.free = True
        self.dispatcher.finish(request, answer, self.clock.time(), False)
        self.dispatcher.connection_available(self.pool.connection, self.clock.time())
        return request


async def test_polls_read_their_ranges_at_once_and_then_every_interval() -> None:
    rig = PollRig("1:holding:0:10:1s", "1:holding:12:4:1s")
    rig.polling.start()
    rig.clock.advance(0)
    assert len(rig.sent) == 1
    assert rig.sent[0].priority == Priority.BACKGROUND
    assert rig.sent[0].payload[6:] == read_request(0, 1, 0, 16)[6:], "merged: 0-15"
    rig.answer()
    assert rig.events["poll_reads"] == rig.events["merged_reads"] == 1
    client = FakeOwner("client")
    request = Request(client, read_request(9, 1, 12, 2), rig.clock.time())
    rig.dispatcher.submit(request)
    assert client.answers[0].answer == registers_answer(9, 1, [12, 13]), "from the image"
    rig.clock.advance(1.0)
    assert len(rig.sent) == 2
    rig.answer()
    rig.clock.advance(1.0)
    assert len(rig.sent) == 3


async def test_a_poll_waits_behind_client_requests() -> None:
    rig = PollRig("1:holding:0:10:1s")
    reader = FakeOwner("reader")
    rig.dispatcher.submit(Request(reader, read_request(1, 1, 500, 1), rig.clock.time()))
    rig.polling.start()
    rig.clock.advance(0)
    later = FakeOwner("later")
    rig.dispatcher.submit(Request(later, read_request(2, 1, 600, 1), rig.clock.time()))
    assert rig.dispatcher.waiting == 2
    rig.answer()
    assert rig.sent[-1].owner is later, "the client that came after the poll goes first"
    rig.answer()
    assert rig.sent[-1].owner is rig.polling


async def test_a_poll_due_while_its_read_still_waits_is_late_not_queued_twice() -> None:
    rig = PollRig("1:holding:0:10:1s")
    blocker = FakeOwner("blocker")
    rig.dispatcher.submit(Request(blocker, read_request(1, 1, 500, 1), rig.clock.time()))
    rig.polling.start()
    rig.clock.advance(0)
    rig.clock.advance(1.0)
    rig.clock.advance(1.0)
    assert rig.events["poll_reads"] == 1
    assert rig.events["late_polls"] == 2
    assert rig.dispatcher.waiting == 1


async def test_polls_pause_while_no_connection_is_up_and_never_ask_for_one() -> None:
    rig = PollRig("1:holding:0:10:1s")
    rig.pool.connections = 0
    rig.polling.start()
    for _ in range(5):
        rig.clock.advance(1.0)
    assert rig.events["poll_reads"] == 0
    assert rig.pool.demands == 0
    assert not rig.sent
    rig.pool.connections = 1
    rig.clock.advance(1.0)
    assert rig.events["poll_reads"] == 1


async def test_a_merged_read_refused_with_0x02_is_read_in_its_ranges_from_then_on() -> None:
    rig = PollRig("1:holding:0:10:1s", "1:holding:12:4:1s")
    rig.polling.start()
    rig.clock.advance(0)
    merged = rig.sent[-1]
    rig.answer(exception_response(merged.payload, 0x02))
    assert rig.events["refused_ranges"] == 1
    rig.clock.advance(0)
    rig.answer()
    rig.clock.advance(0)
    rig.answer()
    asked = [(request.payload[8:10], request.payload[10:12]) for request in rig.sent[1:]]
    assert asked == [(b"\x00\x00", b"\x00\x0a"), (b"\x00\x0c", b"\x00\x04")]
    assert [read.merged for read in rig.polling.reads] == [False, False]


async def test_a_single_range_the_device_refuses_is_read_at_a_tenth_of_its_pace() -> None:
    rig = PollRig("1:holding:0:10:1s")
    rig.polling.start()
    rig.clock.advance(0)
    rig.answer(exception_response(rig.sent[-1].payload, 0x02))
    for _ in range(9):
        rig.clock.advance(1.0)
    assert len(rig.sent) == 1
    rig.clock.advance(1.0)
    assert len(rig.sent) == 2
    rig.answer()
    rig.clock.advance(1.0)
    assert len(rig.sent) == 3, "answered again: back to its pace"


async def test_stop_ends_polling() -> None:
    rig = PollRig("1:holding:0:10:1s")
    rig.polling.start()
    rig.clock.advance(0)
    rig.answer()
    rig.polling.stop()
    rig.clock.advance(5.0)
    assert len(rig.sent) == 1


async def test_the_rows_say_each_reads_interval_oldest_value_and_last_error() -> None:
    rig = PollRig("1:holding:0:10:1s")
    rig.polling.start()
    rig.clock.advance(0)
    (row,) = rig.polling.rows(rig.clock.time())
    assert row["oldest_age"] is None
    assert row["waiting"]
    rig.answer()
    rig.clock.advance(0.5)
    (row,) = rig.polling.rows(rig.clock.time())
    assert (row["address"], row["count"], row["every"], row["last_error"]) == (0, 10, 1.0, None)
    assert row["oldest_age"] == pytest.approx(0.5)
    assert rig.polling.gauges(rig.clock.time()) == {"image_values": 10.0}


async def test_points_are_fresh_then_stale_while_held_then_unknown() -> None:
    points = points_value(
        [
            {"name": "power", "address": 0, "type": "i16", "scale": "power_sf", "every": "1s"},
            {"name": "power_sf", "address": 1, "type": "i16", "every": "1s"},
        ]
    )
    options = ModbusOptions(cache_ttl=2.0, serve_stale=10.0, point=points)
    rig = PollRig(options=path_options(options, None, {}))  # the points' polls with them
    rig.polling.start()
    rig.clock.advance(0)
    assert rig.polling.readings(rig.clock.time())["power"].quality == "unknown", "not read yet"
    rig.answer(registers_answer(0, 1, [1234, 0xFFFE]))  # 1234 x 10^-2
    reading = rig.polling.readings(rig.clock.time())["power"]
    assert (reading.value, reading.quality, reading.age) == (12.34, "fresh", 0.0)
    rig.polling.stop()
    rig.clock.advance(2.0)
    assert rig.polling.readings(rig.clock.time())["power"].quality == "stale"
    rig.clock.advance(8.0)
    gone = rig.polling.readings(rig.clock.time())["power"]
    assert (gone.value, gone.quality, gone.age) == (None, "unknown", None)
