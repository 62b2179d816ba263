"""The pure pieces of the Modbus gateway: read keys, written ranges, and the policy."""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter
from typing import Final

import pytest

from tcp_multiplexer.core.interfaces import Request
from tcp_multiplexer.protocols.modbus import SPEC
from tcp_multiplexer.protocols.modbus.access import client_filter
from tcp_multiplexer.protocols.modbus.codec import ModbusTargetCodec
from tcp_multiplexer.protocols.modbus.functions import ReadKey, read_key, written_range
from tcp_multiplexer.protocols.modbus.gateway import ModbusGatewayPolicy
from tcp_multiplexer.protocols.modbus.mbap import build_adu, exception_response
from tcp_multiplexer.protocols.modbus.options import ModbusOptions
from tcp_multiplexer.protocols.spec import ClientIdentity
from tests.modbus.adu import (
    MASK_WRITE,
    READ_COILS,
    READ_DISCRETE_INPUTS,
    READ_HOLDING,
    READ_INPUT,
    READ_WRITE,
    WRITE_COIL,
    WRITE_COILS,
    WRITE_REGISTER,
    WRITE_REGISTERS,
    exception_answer,
    mask_write,
    read_request,
    read_write,
    registers_answer,
    write_coil,
    write_coils,
    write_register,
    write_registers,
)

COILS = frozenset({READ_COILS})
HOLDING = frozenset({READ_HOLDING})
WRITES = (WRITE_COIL, WRITE_REGISTER, WRITE_COILS, WRITE_REGISTERS, MASK_WRITE, READ_WRITE)


def write_of(function: int, tid: int = 1, unit: int = 1, address: int = 10) -> bytes:
    """A well-formed write request of `function` at `address`."""
    match function:
        case 5:
            return write_coil(tid, unit, address)
        case 6:
            return write_register(tid, unit, address, 0x1234)
        case 15:
            return write_coils(tid, unit, address, [True, False, True])
        case 16:
            return write_registers(tid, unit, address, [1, 2, 3, 4])
        case 22:
            return mask_write(tid, unit, address, 0x00F0, 0x0001)
        case 23:
            return read_write(tid, unit, 500, 2, address, [7, 8])
    raise AssertionError(f"no write builder for function {function}")


# ------------------------------------------------------------------ read_key


@pytest.mark.parametrize(
    "function",
    [
        pytest.param(READ_COILS, id="fc1"),
        pytest.param(READ_DISCRETE_INPUTS, id="fc2"),
        pytest.param(READ_HOLDING, id="fc3"),
        pytest.param(READ_INPUT, id="fc4"),
    ],
)
def test_a_read_is_keyed_by_unit_function_address_and_count(function: int) -> None:
    request = read_request(0xBEEF, 7, 40000, 12, function)
    assert read_key(request) == ReadKey(7, function, 40000, 12)
    assert read_key(read_request(1, 7, 40000, 12, function)) == read_key(request), (
        "the transaction id is not part of the key"
    )


@pytest.mark.parametrize(
    "request_bytes",
    [pytest.param(write_of(function), id=f"fc{function}") for function in WRITES]
    + [
        pytest.param(build_adu(1, 1, bytes((READ_HOLDING, 0, 1, 0))), id="read-too-short"),
        pytest.param(build_adu(1, 1, bytes((READ_HOLDING, 0, 1, 0, 2, 0))), id="read-too-long"),
        pytest.param(build_adu(1, 1, bytes((0x2B, 0x0E, 1, 0))), id="device-identification"),
    ],
)
def test_only_well_formed_reads_have_a_key(request_bytes: bytes) -> None:
    assert read_key(request_bytes) is None


# ------------------------------------------------------------------ written_range


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        pytest.param(write_coil(1, 1, 42), (COILS, 42, 1), id="fc5"),
        pytest.param(write_register(1, 1, 42, 9), (HOLDING, 42, 1), id="fc6"),
        pytest.param(write_coils(1, 1, 42, [True] * 11), (COILS, 42, 11), id="fc15"),
        pytest.param(write_registers(1, 1, 42, [1, 2, 3]), (HOLDING, 42, 3), id="fc16"),
        pytest.param(mask_write(1, 1, 42, 0xFF00, 0x0012), (HOLDING, 42, 1), id="fc22"),
        pytest.param(read_write(1, 1, 7, 5, 42, [1, 2]), (HOLDING, 42, 2), id="fc23-write-part"),
    ],
)
def test_written_range_names_the_table_and_registers_a_write_changes(
    request_bytes: bytes, expected: tuple[frozenset[int], int, int]
) -> None:
    assert written_range(request_bytes) == expected


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(read_request(1, 1, 42, 2), id="read"),
        pytest.param(build_adu(1, 1, bytes((WRITE_REGISTER, 0, 1))), id="truncated-write"),
        pytest.param(build_adu(1, 1, bytes((READ_WRITE, 0, 1, 0, 1))), id="truncated-fc23"),
    ],
)
def test_written_range_is_none_for_anything_else(request_bytes: bytes) -> None:
    assert written_range(request_bytes) is None


# ------------------------------------------------------------------ the policy
# The policy reads the event loop's clock, so these tests run inside a loop.


class NoClient:
    """The owner of the requests here: nobody to answer."""

    closed = False

    def request_done(self, request: Request) -> None: ...

    def pause_for_queue(self) -> None: ...

    def resume_for_queue(self) -> None: ...


OWNER: Final = NoClient()


class Gateway:
    """The policy driven as a session and the dispatcher drive it: the client's write
    filter first (read-only, write rules), then the policy; the target codec decodes the
    device's answers first, as a target connection does."""

    def __init__(self, options: ModbusOptions) -> None:
        self._events = SPEC.new_events()
        self._loop = asyncio.get_running_loop()
        self.policy = ModbusGatewayPolicy(options, self._events, self._loop)
        self._codec = ModbusTargetCodec(events=self._events)
        self._filter = client_filter(
            options.write_rules,
            options.read_only,
            ClientIdentity(ipaddress.ip_address("127.0.0.1")),
            self._events,
        )

    @property
    def events(self) -> Counter[str]:
        """The events that happened (every declared one starts at zero)."""
        return Counter({key: value for key, value in self._events.items() if value})

    def admit(self, payload: bytes) -> tuple[bytes | None, Request]:
        request = Request(OWNER, payload, 0.0)
        if self._filter is not None:
            refused = self._filter.refusal(payload)
            if refused is not None:
                return refused, request
        return self.policy.admit(request), request

    def local_reply(self, payload: bytes) -> bytes | None:
        return self.admit(payload)[0]

    def coalesce_key(self, payload: bytes) -> object:
        return self.admit(payload)[1].coalesce_key

    def answer(self, request: Request, reply: bytes) -> None:
        """The device answered `request` with `reply` (under any transaction id)."""
        answer = self._codec.decode(request.payload, reply)
        if not request.deadline:
            request.deadline = self._loop.time()  # sent now (the policy's timeout is 0)
        if request.observed:
            self.policy.observe(request, answer)

    def read_and_answer(self, payload: bytes, reply: bytes) -> None:
        """`payload` was admitted (not answered locally), sent, and answered."""
        local, request = self.admit(payload)
        assert local is None
        self.answer(request, reply)


def policy(options: ModbusOptions | None = None) -> tuple[Gateway, Gateway]:
    gateway = Gateway(options or ModbusOptions())
    return gateway, gateway


@pytest.mark.parametrize("function", [pytest.param(f, id=f"fc{f}") for f in WRITES])
async def test_read_only_refuses_every_write_with_illegal_function(function: int) -> None:
    gateway, metrics = policy(ModbusOptions(read_only="deny"))
    request = write_of(function, tid=0x4321, unit=9)
    assert gateway.local_reply(request) == exception_response(request, 0x01)
    local, admitted = gateway.admit(request)
    assert local == exception_answer(0x4321, 9, function, 0x01)
    assert admitted.coalesce_key is None
    assert metrics.events["writes_refused"] == 2
    assert metrics.events["exceptions_sent_0x01"] == 2


async def test_read_only_lets_reads_through() -> None:
    gateway, metrics = policy(ModbusOptions(read_only="deny"))
    assert gateway.local_reply(read_request(1, 1, 0, 10)) is None
    assert "writes_refused" not in metrics.events


@pytest.mark.parametrize("function", [pytest.param(f, id=f"fc{f}") for f in WRITES])
async def test_without_read_only_writes_go_to_the_device_and_are_never_coalesced(
    function: int,
) -> None:
    gateway, metrics = policy()
    request = write_of(function)
    local, admitted = gateway.admit(request)
    assert local is None
    assert admitted.coalesce_key is None
    assert admitted.observed, "its answer bumps the unit's write generation"
    assert not metrics.events


async def test_identical_reads_share_a_coalesce_key_whatever_their_ids() -> None:
    gateway, _metrics = policy()
    first = gateway.coalesce_key(read_request(1, 1, 100, 10))
    assert first is not None
    assert gateway.coalesce_key(read_request(999, 1, 100, 10)) == first
    assert gateway.coalesce_key(read_request(1, 2, 100, 10)) != first
    assert gateway.coalesce_key(read_request(1, 1, 100, 10, READ_INPUT)) != first


async def test_without_a_cache_reads_are_never_answered_locally() -> None:
    gateway, metrics = policy()
    request = read_request(1, 1, 0, 3)
    gateway.read_and_answer(request, registers_answer(1, 1, [1, 2, 3]))
    assert gateway.local_reply(request) is None
    assert "image_answers" not in metrics.events
    assert "image_misses" not in metrics.events


async def test_a_cached_answer_carries_the_new_clients_ids() -> None:
    gateway, metrics = policy(ModbusOptions(cache_ttl=60.0))
    # The device answered under the multiplexer's own id (0x0101).
    gateway.read_and_answer(read_request(1, 1, 0, 3), registers_answer(0x0101, 1, [10, 20, 30]))
    assert gateway.local_reply(read_request(0xABCD, 1, 0, 3)) == registers_answer(
        0xABCD, 1, [10, 20, 30]
    )
    assert (metrics.events["image_misses"], metrics.events["image_answers"]) == (1, 1)


async def test_device_exceptions_are_counted_and_never_cached() -> None:
    gateway, metrics = policy(ModbusOptions(cache_ttl=60.0))
    request = read_request(1, 1, 65535, 2)
    gateway.read_and_answer(request, exception_answer(1, 1, READ_HOLDING, 0x02))
    assert gateway.local_reply(request) is None
    assert metrics.events["device_exceptions"] == 1
    # Missed when the read was admitted, and again now: nothing was cached.
    assert metrics.events["image_misses"] == 2


@pytest.mark.parametrize("moment", ["sent", "answered"])
@pytest.mark.parametrize(
    ("write", "dropped"),
    [
        pytest.param(write_register(1, 1, 5, 0), True, id="fc6-inside"),
        pytest.param(write_registers(1, 1, 8, [0, 0, 0]), True, id="fc16-overlapping-end"),
        pytest.param(mask_write(1, 1, 0, 0, 0), True, id="fc22-first"),
        pytest.param(read_write(1, 1, 500, 1, 9, [0]), True, id="fc23-last"),
        pytest.param(write_register(1, 1, 10, 0), False, id="fc6-just-after"),
        pytest.param(write_register(1, 2, 5, 0), False, id="fc6-other-unit"),
        pytest.param(write_coil(1, 1, 5), False, id="fc5-coils-are-another-table"),
    ],
)
async def test_a_write_drops_the_cached_reads_it_overlaps(
    moment: str, write: bytes, dropped: bool
) -> None:
    """The cached read is registers 0..9 of unit 1."""
    gateway, metrics = policy(ModbusOptions(cache_ttl=60.0))
    read = read_request(1, 1, 0, 10)
    gateway.read_and_answer(read, registers_answer(1, 1, list(range(10))))
    if moment == "sent":
        assert gateway.local_reply(write) is None
    else:
        # The write was admitted before the read was cached; its answer comes now.
        # (fc 5, 6 echo the request; the policy only needs the function code.)
        request = Request(OWNER, write, 0.0)
        request.observed = True
        gateway.answer(request, write)
    assert (gateway.local_reply(read) is None) is dropped
    assert metrics.events["image_answers"] == int(not dropped)


async def test_a_coil_write_drops_cached_coil_reads() -> None:
    gateway, _metrics = policy(ModbusOptions(cache_ttl=60.0))
    read = read_request(1, 1, 0, 16, READ_COILS)
    gateway.read_and_answer(read, build_adu(1, 1, bytes((READ_COILS, 2, 0xFF, 0xFF))))
    assert gateway.local_reply(read) is not None
    assert gateway.local_reply(write_coils(1, 1, 15, [False, False])) is None
    assert gateway.local_reply(read) is None


async def test_a_read_admitted_before_a_write_is_held_without_what_it_wrote() -> None:
    """The write may have changed what the read's answer shows of the register it
    wrote, and nothing else."""
    gateway, metrics = policy(ModbusOptions(cache_ttl=60.0))
    local, read = gateway.admit(read_request(1, 1, 0, 10))
    assert local is None
    write = gateway.admit(write_register(2, 1, 5, 9))[1]
    gateway.answer(read, registers_answer(1, 1, list(range(10))))
    gateway.answer(write, write_register(2, 1, 5, 9))
    assert gateway.local_reply(read_request(3, 1, 0, 10)) is None, "register 5 was written"
    assert gateway.local_reply(read_request(3, 1, 5, 1)) is None
    assert metrics.events["image_answers"] == 0
    assert gateway.local_reply(read_request(4, 1, 0, 5)) == registers_answer(4, 1, [0, 1, 2, 3, 4])
    assert gateway.local_reply(read_request(5, 1, 6, 4)) == registers_answer(5, 1, [6, 7, 8, 9])
    assert metrics.events["image_answers"] == 2


async def test_a_read_sent_before_a_write_to_another_register_is_held_whole() -> None:
    gateway, _metrics = policy(ModbusOptions(cache_ttl=60.0))
    local, read = gateway.admit(read_request(1, 1, 0, 10))
    assert local is None
    assert gateway.local_reply(write_register(2, 1, 50, 9)) is None
    gateway.answer(read, registers_answer(1, 1, list(range(10))))
    assert gateway.local_reply(read_request(3, 1, 0, 10)) == registers_answer(3, 1, list(range(10)))
