"""The Modbus gateway end to end: ids, pipelining, coalescing, cache, device protection.

The device is `TargetServer` with a simulated Modbus device (one connection, optional
delay and faults), wrapped so the test sees every request as it arrives; the clients
are pymodbus clients, or raw sockets where the exact bytes matter. Register values are
checked against `holding_register_value`, or the device's memory after a write.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, cast

import pytest
from pymodbus.client import AsyncModbusTcpClient

from tcp_multiplexer.config.model import AppConfig
from tcp_multiplexer.core.interfaces import Framer
from tcp_multiplexer.errors import FramingError
from tcp_multiplexer.protocols.modbus.device import ModbusDevice, holding_register_value
from tcp_multiplexer.protocols.modbus.mbap import (
    MbapFramer,
    build_adu,
    exception_response,
    transaction_id,
    with_transaction_id,
)
from tcp_multiplexer.protocols.modbus.options import ModbusOptions
from tcp_multiplexer.protocols.responder import Answer
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets.faults import Fault, FaultPlan
from tcp_multiplexer.targets.server import TargetConfig, TargetServer, TargetStats
from tests.helpers import LOOPBACK, eventually, mux_config, open_client, running_multiplexer
from tests.modbus.adu import (
    READ_HOLDING,
    WRITE_COIL,
    WRITE_COILS,
    WRITE_REGISTER,
    WRITE_REGISTERS,
    exception_answer,
    mask_write,
    read_adu,
    read_request,
    read_write,
    registers_answer,
    registers_of,
    write_coil,
    write_register,
    write_registers,
)
from tests.peers import pymodbus_client

TEST_TIMEOUT: Final = 10.0
"""Bound of every test body; pytest-timeout is the outer guard."""
SHORT_TIMEOUT: Final = 0.4
"""--timeout for tests where a request is meant to go unanswered."""
ILLEGAL_FUNCTION: Final = 0x01
ILLEGAL_DATA_ADDRESS: Final = 0x02
ILLEGAL_DATA_VALUE: Final = 0x03
GATEWAY_TARGET_FAILED: Final = 0x0B


def expected_registers(unit: int, address: int, count: int) -> list[int]:
    """What the simulated device holds before any write."""
    return [holding_register_value(unit, address + offset) for offset in range(count)]


# ------------------------------------------------------------------ the device, observed


class _ArrivalFramer(MbapFramer):
    """The device's request framer, noting each request the moment it is framed."""

    __slots__ = ("_arrived",)

    def __init__(self, arrived: Callable[[bytes], None]) -> None:
        super().__init__()
        self._arrived = arrived

    def feed(self, data: bytes) -> list[bytes]:
        messages = super().feed(data)
        for message in messages:
            self._arrived(message)
        return messages


@dataclass(frozen=True, slots=True)
class Arrival:
    at: float
    """Event-loop time the request was framed at the device."""
    request: bytes


class ObservedDevice:
    """A `ModbusDevice` (a Responder) that records every request's arrival.

    `answer_id` rewrites the transaction id of every answer, for gateways that do not
    echo ids faithfully.
    """

    def __init__(self, answer_id: Callable[[int], int] | None = None) -> None:
        self.memory = ModbusDevice()
        self.arrivals: list[Arrival] = []
        self._answer_id = answer_id

    @property
    def name(self) -> ProtocolName:
        return ProtocolName.MODBUS

    @property
    def ids_seen(self) -> list[int]:
        return [transaction_id(arrival.request) for arrival in self.arrivals]

    def request_framer(self) -> Framer:
        return _ArrivalFramer(self._arrived)

    def _arrived(self, request: bytes) -> None:
        self.arrivals.append(Arrival(asyncio.get_running_loop().time(), request))

    def answer(self, request: bytes) -> Answer:
        answer = self.memory.answer(request)
        if self._answer_id is None:
            return answer
        data = answer.data
        return Answer(with_transaction_id(data, self._answer_id(transaction_id(data))))

    def reject(self, error: FramingError) -> bytes:
        return self.memory.reject(error)

    def with_wrong_id(self, answer: bytes) -> bytes:
        return self.memory.with_wrong_id(answer)


@contextlib.asynccontextmanager
async def modbus_device(
    *, answer_id: Callable[[int], int] | None = None, **overrides: Any
) -> AsyncIterator[tuple[TargetServer, ObservedDevice]]:
    """A one-connection simulated device on a free loopback port, and its observer."""
    observed = ObservedDevice(answer_id)
    config = replace(
        TargetConfig(protocol=ProtocolName.MODBUS, host=LOOPBACK, max_connections=1), **overrides
    )
    async with TargetServer(config, observed) as target:
        yield target, observed


def gateway_config(target: TargetServer, **overrides: Any) -> AppConfig:
    return mux_config(target.port, protocol=ProtocolName.MODBUS, **overrides)


@contextlib.asynccontextmanager
async def pymodbus_clients(port: int, count: int) -> AsyncIterator[list[AsyncModbusTcpClient]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(pymodbus_client(port)) for _ in range(count)]


async def read_holding(
    client: AsyncModbusTcpClient, address: int, count: int, unit: int = 1
) -> list[int]:
    """Registers read through pymodbus (which checks transaction and unit id itself)."""
    response = await client.read_holding_registers(address, count=count, device_id=unit)
    assert not response.isError(), f"read {address}+{count} of unit {unit}: {response}"
    return list(response.registers)


async def ask(port: int, request: bytes) -> bytes:
    """Send one raw request on a new connection and return the raw answer."""
    async with open_client(port) as (reader, writer):
        writer.write(request)
        return await read_adu(reader)


def seed_for(fault: Fault, hits: Sequence[bool]) -> int:
    """A fault-plan seed whose first draws hit `fault` exactly where `hits` says.

    The target draws once per request in arrival order, so a test that sends its
    requests one after another knows which ones the fault hits.
    """
    for seed in range(100_000):
        plan = FaultPlan(((fault, 0.5),), seed)
        if all((plan.choose() is fault) == hit for hit in hits):
            return seed
    raise AssertionError(f"no seed gives the pattern {hits}")


def faults_on(fault: Fault, hits: Sequence[bool]) -> dict[str, Any]:
    """TargetConfig overrides: `fault` hits the first requests exactly where `hits` says."""
    return {"faults": ((fault, 0.5),), "seed": seed_for(fault, hits)}


# ------------------------------------------------------------------ 1. transaction ids


async def test_the_device_sees_the_multiplexers_ids_and_each_client_gets_its_own_back() -> None:
    clients = [(0xABCD, 7), (0x1234, 9), (0xFFFF, 1), (0x8000, 255)]
    async with asyncio.timeout(TEST_TIMEOUT), modbus_device(delay=0.02) as (target, device):
        async with running_multiplexer(gateway_config(target, max_inflight=4)) as mux:
            answers = await asyncio.gather(
                *(
                    ask(mux.port, read_request(tid, unit, 10 * index, 3))
                    for index, (tid, unit) in enumerate(clients)
                )
            )
        for index, ((tid, unit), answer) in enumerate(zip(clients, answers, strict=True)):
            assert answer == registers_answer(tid, unit, expected_registers(unit, 10 * index, 3))
        seen = device.ids_seen
        assert len(seen) == len(clients)
        assert len(set(seen)) == len(seen), "every request in flight has its own id"
        assert not set(seen) & {tid for tid, _unit in clients}, "the clients' ids never reach it"


async def test_many_pymodbus_clients_with_the_same_ids_each_get_their_own_answer() -> None:
    """Every pymodbus client numbers its requests 1, 2, 3...: the same ids at once."""
    async with asyncio.timeout(TEST_TIMEOUT), modbus_device(delay=0.005) as (target, device):
        config = gateway_config(target, max_inflight=4)
        async with running_multiplexer(config) as mux, pymodbus_clients(mux.port, 12) as clients:
            for round_number in range(3):
                results = await asyncio.gather(
                    *(
                        read_holding(client, 100 * index + round_number, 5, unit=index + 1)
                        for index, client in enumerate(clients)
                    )
                )
                for index, values in enumerate(results):
                    assert values == expected_registers(index + 1, 100 * index + round_number, 5)
        assert target.stats.accepted == 1
        assert target.stats.requests == 36
        ids = device.ids_seen
        assert len(set(ids)) == len(ids), "no id is used twice by the multiplexer"


async def test_an_answer_with_a_wrong_id_is_dropped_and_only_its_request_times_out() -> None:
    overrides = faults_on(Fault.WRONG_ID, [True, False, False, False, False])
    async with asyncio.timeout(TEST_TIMEOUT), modbus_device(**overrides) as (target, _device):
        config = gateway_config(target, max_inflight=4, timeout=SHORT_TIMEOUT)
        async with running_multiplexer(config) as mux, open_client(mux.port) as (reader, writer):
            unlucky = read_request(0x0101, 3, 500, 2)
            writer.write(unlucky)
            await target.wait_for(lambda stats: stats.faults[Fault.WRONG_ID] == 1)
            # Others keep being served while the unlucky request waits for its answer.
            for index in range(3):
                answer = await ask(mux.port, read_request(0x0200 + index, 1, index, 4))
                assert answer == registers_answer(
                    0x0200 + index, 1, expected_registers(1, index, 4)
                )
            assert mux.metrics.events["ids_dropped"] == 1
            started = asyncio.get_running_loop().time()
            assert await read_adu(reader) == exception_response(unlucky, GATEWAY_TARGET_FAILED)
            assert asyncio.get_running_loop().time() - started < SHORT_TIMEOUT + 0.2
            # The same client, the same connection to the device: fine again.
            writer.write(read_request(0x0102, 3, 500, 2))
            assert await read_adu(reader) == registers_answer(
                0x0102, 3, expected_registers(3, 500, 2)
            )
        assert (target.stats.accepted, target.stats.rejected) == (1, 0)
        assert mux.metrics.failures == {"timeout": 1}


async def test_answers_sent_twice_are_dropped_once_each_and_the_connection_stays() -> None:
    faults = ((Fault.ANSWER_TWICE, 1.0),)
    async with asyncio.timeout(TEST_TIMEOUT), modbus_device(faults=faults) as (target, _device):
        config = gateway_config(target, max_inflight=4)
        async with running_multiplexer(config) as mux, pymodbus_clients(mux.port, 6) as clients:
            for round_number in range(3):
                results = await asyncio.gather(
                    *(
                        read_holding(client, 20 * index + round_number, 3)
                        for index, client in enumerate(clients)
                    )
                )
                for index, values in enumerate(results):
                    assert values == expected_registers(1, 20 * index + round_number, 3)
            await eventually(lambda: mux.metrics.events["ids_dropped"] == 18, message="18 drops")
            assert target.stats.faults[Fault.ANSWER_TWICE] == 18
        assert target.stats.accepted == 1
        assert not mux.metrics.failures


@pytest.mark.parametrize(
    "lenient", [pytest.param(False, id="strict"), pytest.param(True, id="lenient")]
)
async def test_lenient_ids_match_a_gateway_that_does_not_echo_ids_in_order(lenient: bool) -> None:
    """The device answers every request with transaction id 0."""
    clients = [(0x0A0A, 1), (0x0B0B, 2), (0x0C0C, 3)]
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        modbus_device(answer_id=lambda _tid: 0, delay=0.01) as (target, _device),
    ):
        config = gateway_config(
            target,
            max_inflight=2,
            timeout=SHORT_TIMEOUT,
            modbus=ModbusOptions(lenient_ids=lenient),
        )
        async with running_multiplexer(config) as mux:
            answers = await asyncio.gather(
                *(ask(mux.port, read_request(tid, unit, 40 + unit, 2)) for tid, unit in clients)
            )
        for (tid, unit), answer in zip(clients, answers, strict=True):
            request = read_request(tid, unit, 40 + unit, 2)
            if lenient:
                assert answer == registers_answer(tid, unit, expected_registers(unit, 40 + unit, 2))
            else:
                assert answer == exception_response(request, GATEWAY_TARGET_FAILED)
        assert mux.metrics.events["ids_dropped"] == (0 if lenient else 3)


async def test_lenient_ids_reconnect_after_a_timeout_and_serve_on() -> None:
    overrides = faults_on(Fault.NO_ANSWER, [True, False, False, False])
    async with asyncio.timeout(TEST_TIMEOUT), modbus_device(**overrides) as (target, _device):
        config = gateway_config(
            target, timeout=SHORT_TIMEOUT, modbus=ModbusOptions(lenient_ids=True)
        )
        async with running_multiplexer(config) as mux, open_client(mux.port) as (reader, writer):
            lost = read_request(0x0777, 1, 0, 1)
            writer.write(lost)
            assert await read_adu(reader) == exception_response(lost, GATEWAY_TARGET_FAILED)
            await target.wait_for(lambda stats: stats.accepted == 2)
            for tid in (0x0778, 0x0779):
                writer.write(read_request(tid, 1, tid, 2))
                assert await read_adu(reader) == registers_answer(
                    tid, 1, expected_registers(1, tid, 2)
                )
        assert target.stats.accepted == 2


# ------------------------------------------------------------------ 2. max inflight


@pytest.mark.parametrize("max_inflight", [1, 4])
async def test_max_inflight_requests_are_outstanding_on_the_one_connection(
    max_inflight: int,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT), modbus_device(delay=0.03) as (target, _device):
        config = gateway_config(target, max_inflight=max_inflight)
        async with running_multiplexer(config) as mux:
            answers = await asyncio.gather(
                *(ask(mux.port, read_request(index, 1, 10 * index, 2)) for index in range(16))
            )
        for index, answer in enumerate(answers):
            assert answer == registers_answer(index, 1, expected_registers(1, 10 * index, 2))
        assert target.stats.max_pipelined == max_inflight
        assert (target.stats.accepted, target.stats.requests) == (1, 16)


class _ReverseConnection(asyncio.Protocol):
    def __init__(self, device: ReverseOrderDevice) -> None:
        self._device = device
        self._framer = MbapFramer()
        self._pending: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._device.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._device.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        device = self._device
        requests = self._framer.feed(data)
        self._pending.extend(requests)
        device.requests += len(requests)
        device.max_outstanding = max(device.max_outstanding, len(self._pending))
        if len(self._pending) >= device.batch:
            self._flush()
        elif self._pending and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(device.flush_after, self._flush)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending[::-1], []
        if len(batch) > 1:
            self._device.reversed_batches += 1
        if self._transport is not None and batch:
            self._transport.write(b"".join(self._device.memory.answer(r).data for r in batch))

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class ReverseOrderDevice:
    """A Modbus device that pipelines: it collects `batch` requests (or waits
    `flush_after`) and answers them newest first, all in one segment."""

    def __init__(self, batch: int, flush_after: float = 0.1) -> None:
        self.batch = batch
        self.flush_after = flush_after
        self.memory = ModbusDevice()
        self.connections: set[_ReverseConnection] = set()
        self.requests = 0
        self.max_outstanding = 0
        self.reversed_batches = 0
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def __aenter__(self) -> ReverseOrderDevice:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ReverseConnection(self), LOOPBACK, 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for connection in list(self.connections):
            connection.abort()
        await self._server.wait_closed()


async def test_answers_are_accepted_in_any_order() -> None:
    async with asyncio.timeout(TEST_TIMEOUT), ReverseOrderDevice(batch=4) as device:
        config = mux_config(device.port, protocol=ProtocolName.MODBUS, max_inflight=4)
        async with running_multiplexer(config) as mux, pymodbus_clients(mux.port, 16) as clients:
            results = await asyncio.gather(
                *(
                    read_holding(client, 7 * index, 3, unit=index)
                    for index, client in enumerate(clients)
                )
            )
        for index, values in enumerate(results):
            assert values == expected_registers(index, 7 * index, 3)
        assert device.requests == 16
        assert device.max_outstanding == 4
        assert device.reversed_batches >= 3, "most answers really came back out of order"
        assert "ids_dropped" not in mux.metrics.events


# ------------------------------------------------------------------ 3. coalescing


async def test_identical_reads_while_one_is_in_flight_share_it() -> None:
    tids = [0x1000 + index for index in range(10)]
    async with asyncio.timeout(TEST_TIMEOUT), modbus_device(delay=0.1) as (target, device):
        async with running_multiplexer(gateway_config(target)) as mux:
            first = asyncio.create_task(ask(mux.port, read_request(tids[0], 1, 30000, 40)))
            await target.wait_for(lambda stats: stats.requests == 1)
            others = [ask(mux.port, read_request(tid, 1, 30000, 40)) for tid in tids[1:]]
            answers = await asyncio.gather(first, *others)
        for tid, answer in zip(tids, answers, strict=True):
            assert answer == registers_answer(tid, 1, expected_registers(1, 30000, 40))
        assert target.stats.requests == 1
        assert mux.metrics.events["coalesced"] == 9
        assert len(device.arrivals) == 1


@pytest.mark.parametrize("coalesce", [pytest.param(True, id="on"), pytest.param(False, id="off")])
async def test_coalescing_cuts_device_requests_and_every_client_gets_the_right_values(
    coalesce: bool,
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT), modbus_device(delay=0.1) as (target, _device):
        config = gateway_config(target, modbus=ModbusOptions(coalesce=coalesce))
        async with running_multiplexer(config) as mux, pymodbus_clients(mux.port, 10) as clients:
            results = await asyncio.gather(*(read_holding(client, 30000, 40) for client in clients))
        assert results == [expected_registers(1, 30000, 40)] * 10
        coalesced = mux.metrics.events["coalesced"]
        assert coalesced + target.stats.requests == 10
        if coalesce:
            assert target.stats.requests < 10
        else:
            assert target.stats.requests == 10
            assert coalesced == 0


async def test_reads_that_differ_in_unit_function_address_or_count_are_not_coalesced() -> None:
    requests = [
        read_request(1, 1, 100, 10),
        read_request(2, 2, 100, 10),
        read_request(3, 1, 100, 10, function=4),
        read_request(4, 1, 101, 10),
        read_request(5, 1, 100, 11),
    ]
    async with asyncio.timeout(TEST_TIMEOUT), modbus_device(delay=0.05) as (target, _device):
        async with running_multiplexer(gateway_config(target)) as mux:
            answers = await asyncio.gather(*(ask(mux.port, request) for request in requests))
        assert [transaction_id(answer) for answer in answers] == [1, 2, 3, 4, 5]
        assert registers_of(answers[1]) == expected_registers(2, 100, 10)
        assert target.stats.requests == 5
        assert "coalesced" not in mux.metrics.events


async def test_writes_are_never_coalesced() -> None:
    async with asyncio.timeout(TEST_TIMEOUT), modbus_device(delay=0.05) as (target, _device):
        async with running_multiplexer(gateway_config(target)) as mux:
            writes = [write_register(0x500 + index, 1, 42, 0x0042) for index in range(5)]
            answers = await asyncio.gather(*(ask(mux.port, write) for write in writes))
        assert answers == writes, "a write single register answer echoes the request"
        assert target.stats.requests == 5
        assert "coalesced" not in mux.metrics.events


async def test_followers_get_their_answer_when_the_first_asker_leaves() -> None:
    """The leader's client disconnects while its read waits in the queue, then in flight."""
    async with asyncio.timeout(TEST_TIMEOUT), modbus_device(delay=0.15) as (target, _device):
        async with running_multiplexer(gateway_config(target)) as mux:
            busy = asyncio.create_task(ask(mux.port, read_request(9, 1, 0, 1)))
            await target.wait_for(lambda stats: stats.requests == 1)
            async with open_client(mux.port) as (_reader, writer):
                writer.write(read_request(0x0100, 1, 200, 5))
                await eventually(lambda: mux.metrics.requests == 2, message="the leader queued")
                followers = [
                    asyncio.create_task(ask(mux.port, read_request(tid, 1, 200, 5)))
                    for tid in (0x0101, 0x0102)
                ]
                await eventually(lambda: mux.metrics.events["coalesced"] == 2, message="followers")
            answers = await asyncio.gather(*followers)
            await busy
        for tid, answer in zip((0x0101, 0x0102), answers, strict=True):
            assert answer == registers_answer(tid, 1, expected_registers(1, 200, 5))
        assert target.stats.requests == 2


async def test_a_read_pipelined_after_a_write_sees_that_write() -> None:
    """A client sends a write and a read of the same registers in one segment, while
    another client's identical read is already at the device. The read was sent after
    the write, so it must not ride on the read that started before the write."""
    async with asyncio.timeout(TEST_TIMEOUT), modbus_device(delay=0.1) as (target, device):
        async with running_multiplexer(gateway_config(target)) as mux:
            earlier = asyncio.create_task(ask(mux.port, read_request(0x01, 1, 100, 10)))
            await target.wait_for(lambda stats: stats.requests == 1)
            write = write_register(0x02, 1, 105, 0xBEEF)
            async with open_client(mux.port) as (reader, writer):
                writer.write(write + read_request(0x03, 1, 100, 10))
                assert await read_adu(reader) == write, "the write succeeded"
                values = registers_of(await read_adu(reader))
            assert registers_of(await earlier) == expected_registers(1, 100, 10)
        assert device.memory.holding_register(1, 105) == 0xBEEF
        assert values[5] == 0xBEEF, (
            f"the client read {values[5]:#06x} after its own write of 0xbeef was acknowledged"
        )


# ------------------------------------------------------------------ 4. cache


async def test_reads_within_the_ttl_are_served_without_the_device() -> None:
    async with asyncio.timeout(TEST_TIMEOUT), modbus_device() as (target, _device):
        config = gateway_config(target, modbus=ModbusOptions(cache_ttl=30.0))
        async with running_multiplexer(config) as mux, pymodbus_clients(mux.port, 3) as clients:
            for _round in range(4):
                for client in clients:
                    assert await read_holding(client, 1000, 20) == expected_registers(1, 1000, 20)
            tid = 0x7E57
            assert await ask(mux.port, read_request(tid, 1, 1000, 20)) == registers_answer(
                tid, 1, expected_registers(1, 1000, 20)
            )
        assert target.stats.requests == 1
        assert (mux.metrics.events["image_misses"], mux.metrics.events["image_answers"]) == (1, 12)


async def test_the_cache_never_serves_an_answer_past_its_ttl() -> None:
    """A client polls every 20 ms for 0.7 s with a 0.2 s TTL: time passing is the point.

    An answer enters the cache before the client that fetched it receives it, so a
    read sent TTL or more after that fetch was received must reach the device.
    """
    ttl = 0.2
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(TEST_TIMEOUT), modbus_device() as (target, _device):
        config = gateway_config(target, modbus=ModbusOptions(cache_ttl=ttl))
        async with running_multiplexer(config) as mux, open_client(mux.port) as (reader, writer):
            fetched_at: float | None = None
            served_from_cache = 0
            end = loop.time() + 0.7
            tid = 0
            while loop.time() < end:
                tid += 1
                before = target.stats.requests
                sent_at = loop.time()
                writer.write(read_request(tid, 1, 50, 10))
                answer = await read_adu(reader)
                received_at = loop.time()
                assert answer == registers_answer(tid, 1, expected_registers(1, 50, 10))
                if target.stats.requests == before:
                    served_from_cache += 1
                    assert fetched_at is not None
                    assert sent_at < fetched_at + ttl, (
                        f"served {sent_at - fetched_at:.3f}s after the fetch (TTL {ttl}s)"
                    )
                else:
                    fetched_at = received_at
                await asyncio.sleep(0.02)
        assert served_from_cache >= tid // 2, "the cache was used at all"
        assert 3 <= target.stats.requests <= 6, "about one fetch per TTL"


@pytest.mark.parametrize(
    ("write", "invalidates"),
    [
        pytest.param(write_register(0x99, 1, 105, 0xBEEF), True, id="fc6-inside"),
        pytest.param(write_registers(0x99, 1, 98, [0xBEEF, 0xCAFE, 0xF00D]), True, id="fc16-start"),
        pytest.param(write_registers(0x99, 1, 109, [0xBEEF, 0xCAFE]), True, id="fc16-end"),
        pytest.param(read_write(0x99, 1, 0, 1, 100, [0xBEEF]), True, id="fc23-first"),
        pytest.param(write_register(0x99, 2, 105, 0xBEEF), False, id="other-unit"),
        pytest.param(write_register(0x99, 1, 110, 0xBEEF), False, id="just-after"),
        pytest.param(write_registers(0x99, 1, 90, [1] * 10), False, id="just-before"),
        pytest.param(write_coil(0x99, 1, 105), False, id="coil"),
    ],
)
async def test_a_write_drops_overlapping_cached_reads_and_the_next_read_sees_it(
    write: bytes, invalidates: bool
) -> None:
    """The cached read is holding registers 100..109 of unit 1."""
    read = read_request(0x10, 1, 100, 10)
    async with asyncio.timeout(TEST_TIMEOUT), modbus_device() as (target, device):
        config = gateway_config(target, modbus=ModbusOptions(cache_ttl=30.0))
        async with running_multiplexer(config) as mux:
            assert registers_of(await ask(mux.port, read)) == expected_registers(1, 100, 10)
            assert registers_of(await ask(mux.port, read)) == expected_registers(1, 100, 10)
            assert target.stats.requests == 1
            answer = await ask(mux.port, write)
            assert not answer[7] & 0x80, f"the device refused the write: {answer.hex()}"
            assert target.stats.requests == 2
            values = registers_of(await ask(mux.port, read))
        now_held = [device.memory.holding_register(1, address) for address in range(100, 110)]
        assert values == now_held, "the client sees what the device holds now"
        assert (now_held != expected_registers(1, 100, 10)) is invalidates
        assert target.stats.requests == (3 if invalidates else 2)


async def test_a_write_whose_answer_is_lost_does_not_leave_the_old_value_cached() -> None:
    """The device applies the write but its answer never comes (the client gets 0x0B).

    A read that was at the device before the write is answered after the write was
    submitted; serving that answer for the TTL hides the write the device did apply.
    """
    overrides = faults_on(Fault.NO_ANSWER, [False, True, False, False])
    read = read_request(0x01, 1, 100, 10)
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        modbus_device(delay=0.1, **overrides) as (
            target,
            device,
        ),
    ):
        config = gateway_config(target, timeout=SHORT_TIMEOUT, modbus=ModbusOptions(cache_ttl=30.0))
        async with running_multiplexer(config) as mux:
            earlier = asyncio.create_task(ask(mux.port, read))
            await target.wait_for(lambda stats: stats.requests == 1)
            write = write_register(0x02, 1, 105, 0xBEEF)
            assert await ask(mux.port, write) == exception_response(write, GATEWAY_TARGET_FAILED)
            assert registers_of(await earlier) == expected_registers(1, 100, 10)
            assert target.stats.faults[Fault.NO_ANSWER] == 1
            values = registers_of(await ask(mux.port, read_request(0x03, 1, 100, 10)))
        held = [device.memory.holding_register(1, address) for address in range(100, 110)]
        assert held[5] == 0xBEEF, "the device applied the write"
        assert values == held, (
            f"served {values[5]:#06x} from the cache while the device holds {held[5]:#06x}"
        )


async def test_device_exception_answers_are_not_cached() -> None:
    request = read_request(0x31, 1, 65535, 2)
    async with asyncio.timeout(TEST_TIMEOUT), modbus_device() as (target, _device):
        config = gateway_config(target, modbus=ModbusOptions(cache_ttl=30.0))
        async with running_multiplexer(config) as mux:
            for _ in range(3):
                answer = await ask(mux.port, request)
                assert answer == exception_answer(0x31, 1, READ_HOLDING, ILLEGAL_DATA_ADDRESS)
        assert target.stats.requests == 3
        assert "image_answers" not in mux.metrics.events
        assert mux.metrics.events["device_exceptions"] == 3


# ------------------------------------------------------------------ 5. read only


async def test_read_only_refuses_writes_without_the_device_and_reads_still_work() -> None:
    async with asyncio.timeout(TEST_TIMEOUT), modbus_device() as (target, device):
        config = gateway_config(target, modbus=ModbusOptions(read_only="deny"))
        async with running_multiplexer(config) as mux, pymodbus_client(mux.port) as client:
            refused = [
                (WRITE_COIL, await client.write_coil(3, False)),
                (WRITE_REGISTER, await client.write_register(5, 0xBEEF)),
                (WRITE_COILS, await client.write_coils(3, [False, True, False])),
                (WRITE_REGISTERS, await client.write_registers(5, [0xBEEF, 0xCAFE])),
            ]
            for function, response in refused:
                assert response.isError(), f"fc {function} was not refused"
                assert response.exception_code == ILLEGAL_FUNCTION
            for raw in (mask_write(0x61, 4, 5, 0, 0xFFFF), read_write(0x62, 4, 0, 1, 5, [1])):
                assert await ask(mux.port, raw) == exception_response(raw, ILLEGAL_FUNCTION)
            assert target.stats.requests == 0, "the device never saw a write"
            assert await read_holding(client, 0, 10) == expected_registers(1, 0, 10)
        assert target.stats.requests == 1
        assert device.memory.coil(1, 3) is True
        assert device.memory.holding_register(1, 5) == holding_register_value(1, 5)
        assert mux.metrics.events["writes_refused"] == 6


# ------------------------------------------------------------------ 6. request gap


async def test_request_gap_keeps_requests_apart_at_the_device() -> None:
    gap = 0.05
    async with asyncio.timeout(TEST_TIMEOUT), modbus_device() as (target, device):
        config = gateway_config(target, request_gap=gap, max_inflight=4)
        async with running_multiplexer(config) as mux, pymodbus_clients(mux.port, 4) as clients:
            for round_number in range(3):
                results = await asyncio.gather(
                    *(
                        read_holding(client, 10 * index + round_number, 2)
                        for index, client in enumerate(clients)
                    )
                )
                for index, values in enumerate(results):
                    assert values == expected_registers(1, 10 * index + round_number, 2)
        times = [arrival.at for arrival in device.arrivals]
        assert len(times) == 12
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert min(gaps) >= gap - 0.005, f"gaps at the device: {[round(g, 3) for g in gaps]}"


# ------------------------------------------------------------------ 7. idle close, device drops


async def test_max_idle_closes_the_connection_and_the_next_request_reopens_it() -> None:
    async with asyncio.timeout(TEST_TIMEOUT), modbus_device() as (target, _device):
        config = gateway_config(target, max_idle=0.2)
        async with running_multiplexer(config) as mux, pymodbus_client(mux.port) as client:
            assert await read_holding(client, 0, 4) == expected_registers(1, 0, 4)
            await target.wait_for(lambda stats: stats.open_connections == 0, timeout=2.0)
            assert target.stats.accepted == 1
            assert await read_holding(client, 4, 4) == expected_registers(1, 4, 4)
            assert target.stats.accepted == 2
            await target.wait_for(lambda stats: stats.open_connections == 0, timeout=2.0)
        assert not mux.metrics.failures


async def test_max_idle_counts_from_the_last_answer_even_after_a_slow_one() -> None:
    """The device takes longer to answer than --max-idle; --timeout is much longer."""
    max_idle = 0.2
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(TEST_TIMEOUT), modbus_device(delay=0.3) as (target, _device):
        config = gateway_config(target, max_idle=max_idle, timeout=2.0)
        async with running_multiplexer(config) as mux, pymodbus_client(mux.port) as client:
            assert await read_holding(client, 0, 4) == expected_registers(1, 0, 4)
            answered_at = loop.time()
            await target.wait_for(lambda stats: stats.open_connections == 0, timeout=5.0)
            idle_for = loop.time() - answered_at
        assert idle_for < max_idle + 0.3, f"closed after {idle_for:.2f}s idle, not ~{max_idle}s"


def closed_after(count: int) -> Callable[[TargetStats], bool]:
    return lambda stats: stats.closed_after == count


async def test_a_device_that_drops_every_connection_is_reconnected_and_clients_keep_going() -> None:
    """Like SolarEdge, which silently drops a connection after a fixed time."""
    async with asyncio.timeout(TEST_TIMEOUT), modbus_device(close_after=0.2) as (target, _device):
        config = gateway_config(target)
        async with running_multiplexer(config) as mux, pymodbus_clients(mux.port, 3) as clients:
            for dropped in range(1, 4):
                results = await asyncio.gather(
                    *(read_holding(client, index, 3) for index, client in enumerate(clients))
                )
                assert results == [expected_registers(1, index, 3) for index in range(3)]
                await target.wait_for(closed_after(dropped))
            results = await asyncio.gather(*(read_holding(client, 77, 1) for client in clients))
            assert results == [expected_registers(1, 77, 1)] * 3
        assert target.stats.accepted == 4
        assert target.stats.rejected == 0
        assert mux.metrics.reconnects >= 3
        assert not mux.metrics.failures


# ------------------------------------------------------------------ 8. client validation


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(
            struct.pack(">HHHB", 1, 1, 6, 1) + read_request(1, 1, 0, 1)[7:], id="protocol-id-1"
        ),
        pytest.param(struct.pack(">HHHB", 1, 0, 1, 1), id="length-1"),
        pytest.param(struct.pack(">HHHB", 1, 0, 0, 1), id="length-0"),
        pytest.param(struct.pack(">HHHB", 1, 0, 255, 1) + bytes(254), id="length-255"),
    ],
)
async def test_a_client_that_breaks_the_mbap_rules_is_disconnected_alone(bad: bytes) -> None:
    async with asyncio.timeout(TEST_TIMEOUT), modbus_device() as (target, _device):
        async with (
            running_multiplexer(gateway_config(target)) as mux,
            pymodbus_client(mux.port) as good,
        ):
            assert await read_holding(good, 0, 2) == expected_registers(1, 0, 2)
            async with open_client(mux.port) as (reader, writer):
                writer.write(bad)
                try:
                    rest = await reader.read()
                except ConnectionResetError:
                    rest = b""
                assert rest == b"", "no answer to a malformed request, just a closed connection"
            assert await read_holding(good, 2, 2) == expected_registers(1, 2, 2)
            assert await ask(mux.port, read_request(5, 1, 4, 2)) == registers_answer(
                5, 1, expected_registers(1, 4, 2)
            )
        assert target.stats.requests == 3
        assert target.stats.accepted == 1


# ------------------------------------------------------------------ 9. device exceptions


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        pytest.param(read_request(0x4242, 17, 65535, 2), ILLEGAL_DATA_ADDRESS, id="address"),
        pytest.param(read_request(0x4243, 17, 0, 0), ILLEGAL_DATA_VALUE, id="quantity"),
        pytest.param(build_adu(0x4244, 17, b"\x41\x00\x01"), ILLEGAL_FUNCTION, id="function"),
    ],
)
async def test_device_exception_answers_reach_the_client_unchanged(
    request_bytes: bytes, code: int
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT), modbus_device() as (target, device):
        async with running_multiplexer(gateway_config(target)) as mux:
            answer = await ask(mux.port, request_bytes)
        assert answer == exception_response(request_bytes, code)
        assert transaction_id(device.arrivals[0].request) != transaction_id(request_bytes)
        assert mux.metrics.events["device_exceptions"] == 1
        assert not mux.metrics.failures, "an exception is an answer, not a failure"


# ------------------------------------------------------------------ 10. counters


async def test_the_metrics_line_names_every_gateway_event(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tcp_multiplexer.bridge")
    faults = ((Fault.ANSWER_TWICE, 1.0),)
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        modbus_device(delay=0.1, faults=faults) as (target, _device),
    ):
        config = gateway_config(
            target,
            metrics_interval=0.05,
            modbus=ModbusOptions(cache_ttl=30.0, read_only="deny"),
        )
        async with running_multiplexer(config) as mux:
            first = asyncio.create_task(ask(mux.port, read_request(1, 1, 0, 8)))
            await target.wait_for(lambda stats: stats.requests == 1)
            same = await asyncio.gather(*(ask(mux.port, read_request(t, 1, 0, 8)) for t in (2, 3)))
            assert registers_of(await first) == expected_registers(1, 0, 8)
            assert [registers_of(answer) for answer in same] == [expected_registers(1, 0, 8)] * 2
            assert registers_of(
                await ask(mux.port, read_request(4, 1, 0, 8))
            ) == expected_registers(1, 0, 8)
            refused = write_register(5, 1, 0, 1)
            assert await ask(mux.port, refused) == exception_response(refused, ILLEGAL_FUNCTION)
            expected = {
                "coalesced": 2,
                "image_misses": 3,
                "image_answers": 1,
                "writes_refused": 1,
                "ids_dropped": 1,
            }

            def logged() -> bool:
                for record in caplog.records:
                    message = record.getMessage()
                    if message.startswith("[test] metrics:") and all(
                        f"{key}={value}" in message for key, value in expected.items()
                    ):
                        return True
                return False

            await eventually(logged, within=3.0, message=f"a metrics line with {expected}")
        assert target.stats.requests == 1


# ------------------------------------------------------------------ load reduction, summed up


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(ModbusOptions(coalesce=False), id="plain"),
        pytest.param(ModbusOptions(), id="coalesce"),
        pytest.param(ModbusOptions(cache_ttl=30.0), id="coalesce+cache"),
    ],
)
async def test_coalescing_and_the_cache_reduce_device_load_with_correct_values(
    options: ModbusOptions,
) -> None:
    """8 pollers read the same 20 registers 5 times, and one writes between rounds."""
    clients_count, rounds = 8, 5
    async with asyncio.timeout(TEST_TIMEOUT), modbus_device(delay=0.02) as (target, device):
        config = gateway_config(target, modbus=options)
        async with (
            running_multiplexer(config) as mux,
            pymodbus_clients(mux.port, clients_count + 1) as clients,
        ):
            *pollers, writer = clients
            for round_number in range(rounds):
                written = await writer.write_register(300 + round_number, 1000 + round_number)
                assert not written.isError()
                results = await asyncio.gather(
                    *(read_holding(client, 300, 20) for client in pollers)
                )
                held = [device.memory.holding_register(1, address) for address in range(300, 320)]
                assert held[round_number] == 1000 + round_number
                assert results == [held] * clients_count
            reads = clients_count * rounds
            events = mux.metrics.events
            device_reads = target.stats.requests - rounds
            served_locally = events["coalesced"] + events["image_answers"]
        assert device_reads + served_locally == reads
        if not options.coalesce:
            assert device_reads == reads
        elif options.cache_ttl == 0:
            assert device_reads < reads
        else:
            assert device_reads <= rounds, "at most one read per round: after each write"
