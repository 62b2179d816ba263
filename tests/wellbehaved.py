"""A set of well-behaved clients to run beside a fault or a hostile client.

Each client has its own connection and asks one request at a time, each different
and unmistakably its own, and checks every answer byte for byte:

- modbus: client ``i`` reads holding registers of unit ``i + 1`` (its own unit id)
  at addresses ``100 * i + n % 32``, ``1 + n % 5`` of them, with transaction id
  ``(0x1000 * i + n) & 0xFFFF``; the device's values (`holding_register_value`)
  depend on unit and address, so an answer meant for another client or for another
  request of the same client cannot pass as correct;
- echo: client ``i`` sends ``wb<i> <n> <random hex>\\n`` and expects that line back.

Every request ends in exactly one outcome, counted in the phase that was current
when it was sent (`WellBehavedSet.phase`):

- correct: exactly the answer the target gives to this request;
- gateway: the multiplexer's own Modbus exception answer to this request (this
  client's transaction and unit id, function 0x83), counted by exception code;
- wrong: anything else (someone else's answer, a stale one, damaged bytes);
- lost: no answer within `answer_within` seconds;
- closed: the multiplexer closed the connection (a Modbus client never should be;
  an echo client is only closed when its request failed).

A client stops at its first lost answer or closed connection (its stream can no
longer be trusted); `WellBehavedSet.check` then fails with the details.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import struct
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Protocol, Self

from tcp_multiplexer.protocols.modbus.mbap import (
    EXCEPTION_FLAG,
    FunctionCode,
    build_adu,
    read_request,
)
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets import holding_register_value
from tests.helpers import LOOPBACK, eventually

FIRST_PHASE: Final = "start"
DEFAULT_CLIENTS: Final = 5


# ---------------------------------------------------------------------------- requests


class Exchange(Protocol):
    """What one protocol's well-behaved client sends, expects and reads."""

    def request(self, seq: int) -> tuple[bytes, bytes]:
        """Request number `seq` and the exact correct answer to it."""
        ...

    def gateway_code(self, request: bytes, reply: bytes) -> int | None:
        """The exception code if `reply` is the gateway's own answer to `request`."""
        ...

    async def read_reply(self, reader: asyncio.StreamReader) -> bytes:
        """One whole answer (raises IncompleteReadError if the connection ends)."""
        ...


class ModbusExchange:
    """Holding-register reads of this client's own unit, addresses and ids."""

    def __init__(self, index: int) -> None:
        self.unit = index + 1
        self.base = 100 * index
        self.tid_base = 0x1000 * index

    def request(self, seq: int) -> tuple[bytes, bytes]:
        tid = (self.tid_base + seq) & 0xFFFF
        address = self.base + seq % 32
        count = 1 + seq % 5
        request = read_request(tid, self.unit, address, count)
        values = [holding_register_value(self.unit, address + k) for k in range(count)]
        answer = build_adu(
            tid,
            self.unit,
            struct.pack(f">BB{count}H", FunctionCode.READ_HOLDING_REGISTERS, 2 * count, *values),
        )
        return request, answer

    def gateway_code(self, request: bytes, reply: bytes) -> int | None:
        if len(reply) != 9:
            return None
        tid = int.from_bytes(request[:2], "big")
        code = reply[8]
        own = build_adu(
            tid, self.unit, bytes((FunctionCode.READ_HOLDING_REGISTERS | EXCEPTION_FLAG, code))
        )
        return code if reply == own else None

    async def read_reply(self, reader: asyncio.StreamReader) -> bytes:
        header = await reader.readexactly(7)
        (length,) = struct.unpack_from(">H", header, 4)
        return header + await reader.readexactly(max(length - 1, 0))


class EchoExchange:
    """Unique lines; echo has no gateway answer (a failed request closes the client)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self._random = random.Random(index)

    def request(self, seq: int) -> tuple[bytes, bytes]:
        padding = self._random.randbytes(4 + seq % 40).hex()
        line = f"wb{self.index} {seq} {padding}\n".encode()
        return line, line

    def gateway_code(self, request: bytes, reply: bytes) -> int | None:
        return None

    async def read_reply(self, reader: asyncio.StreamReader) -> bytes:
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise asyncio.IncompleteReadError(line, None)
        return line


def make_exchange(protocol: ProtocolName, index: int) -> Exchange:
    match protocol:
        case ProtocolName.MODBUS:
            return ModbusExchange(index)
        case ProtocolName.ECHO:
            return EchoExchange(index)
        case _:
            raise ValueError(f"no well-behaved client for {protocol}")


# ---------------------------------------------------------------------------- outcomes


@dataclass
class Tally:
    """Outcomes of the requests of one client (or of several, added up) in one phase."""

    sent: int = 0
    correct: int = 0
    gateway: Counter[int] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)

    def __iadd__(self, other: Tally) -> Self:
        self.sent += other.sent
        self.correct += other.correct
        self.gateway.update(other.gateway)
        self.wrong += other.wrong
        self.lost += other.lost
        self.closed += other.closed
        return self

    @property
    def answered(self) -> int:
        return self.correct + self.gateway.total()

    def summary(self) -> str:
        codes = ", ".join(f"0x{code:02X}: {count}" for code, count in sorted(self.gateway.items()))
        return (
            f"sent {self.sent}, correct {self.correct}, gateway {{{codes}}}, "
            f"wrong {len(self.wrong)}, lost {len(self.lost)}, closed {len(self.closed)}"
        )


@dataclass
class _Client:
    name: str
    exchange: Exchange
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    tallies: dict[str, Tally] = field(default_factory=dict)
    seq: int = 0
    stopped: bool = False

    def tally(self, phase: str) -> Tally:
        return self.tallies.setdefault(phase, Tally())


class WellBehavedSet:
    """`clients` connections to `port`, each asking in a loop until `stop()`.

    Use as ``async with WellBehavedSet(port, ProtocolName.MODBUS, answer_within=2) as wb:``;
    leaving the block stops the clients (each finishes the request it is waiting for)
    and closes them.
    """

    def __init__(
        self,
        port: int,
        protocol: ProtocolName,
        *,
        answer_within: float,
        clients: int = DEFAULT_CLIENTS,
        interval: float = 0.005,
    ) -> None:
        self.port = port
        self.protocol = protocol
        self.answer_within = answer_within
        """Longer than this without an answer: the request counts as lost."""
        self.interval = interval
        """Pause between an answer and a client's next request (a poller's pace)."""
        self._count = clients
        self._clients: list[_Client] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._phase = FIRST_PHASE
        self._phases = [FIRST_PHASE]
        self._stopping = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        try:
            for index in range(self._count):
                reader, writer = await asyncio.open_connection(LOOPBACK, self.port)
                client = _Client(f"wb{index}", make_exchange(self.protocol, index), reader, writer)
                self._clients.append(client)
        except BaseException:
            await self._close_all()
            raise
        self._tasks = [
            asyncio.create_task(self._run(client), name=client.name) for client in self._clients
        ]

    async def stop(self) -> None:
        """Let each client finish its current request, then close every connection.

        Calling it again does nothing.
        """
        if self._stopping:
            return
        self._stopping = True
        try:
            if self._tasks:
                await asyncio.gather(*self._tasks)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._close_all()

    async def _close_all(self) -> None:
        for client in self._clients:
            client.writer.close()
        for client in self._clients:
            with contextlib.suppress(ConnectionError):
                await client.writer.wait_closed()

    def phase(self, name: str) -> None:
        """Count the requests sent from now on under `name`."""
        if name in self._phases:
            raise ValueError(f"phase {name!r} was used already")
        self._phases.append(name)
        self._phase = name

    async def enter_phase(self, name: str, *, within: float) -> None:
        """Start phase `name` and wait until every client has sent a request in it, so
        that every request of the earlier phases has its outcome."""
        self.phase(name)
        await self.wait_each(
            lambda tally: tally.sent >= 1, within=within, message=f"a request in phase {name}"
        )

    @property
    def clients(self) -> int:
        return self._count

    def tally(self, phase: str | None = None) -> Tally:
        """All clients' outcomes in `phase` (default: every phase)."""
        total = Tally()
        for tally in self.per_client(phase).values():
            total += tally
        return total

    def per_client(self, phase: str | None = None) -> dict[str, Tally]:
        """Each client's outcomes in `phase` (default: every phase), by client name."""
        result: dict[str, Tally] = {}
        for client in self._clients:
            total = Tally()
            for name, tally in client.tallies.items():
                if phase is None or name == phase:
                    total += tally
            result[client.name] = total
        return result

    async def wait_each(
        self,
        predicate: Callable[[Tally], bool],
        *,
        within: float,
        message: str,
        phase: str | None = None,
    ) -> None:
        """Wait until `predicate` holds for every client's tally in `phase` (default: current).

        Fails at once if a client stopped (lost answer, closed connection).
        """
        name = self._phase if phase is None else phase

        def ready() -> bool:
            for client in self._clients:
                if client.stopped:
                    raise AssertionError(
                        f"{client.name} stopped while waiting for {message}:\n{self.report()}"
                    )
            return all(predicate(client.tally(name)) for client in self._clients)

        try:
            await eventually(ready, within=within, message=message)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.report()}") from None

    async def wait_correct(self, each: int, *, within: float, phase: str | None = None) -> None:
        """Wait until every client has `each` correct answers in `phase` (default: current)."""
        await self.wait_each(
            lambda tally: tally.correct >= each,
            within=within,
            message=f"{each} correct answers per client",
            phase=phase,
        )

    def report(self) -> str:
        lines = []
        for name in self._phases:
            lines.append(f"phase {name}: {self.tally(name).summary()}")
            for client_name, tally in self.per_client(name).items():
                lines.append(f"  {client_name}: {tally.summary()}")
        details = self.tally()
        for label, items in (("wrong", details.wrong), ("lost", details.lost)):
            lines += [f"{label}: {item}" for item in items[:10]]
        lines += [f"closed: {item}" for item in details.closed]
        return "\n".join(lines)

    def check(
        self,
        phase: str | None = None,
        *,
        allowed: Collection[int] = (),
        min_correct_each: int = 1,
    ) -> Tally:
        """Assert the rules for `phase` (default: every phase); return its tally.

        Never wrong, never lost, never closed; gateway answers only with codes in
        `allowed`; every client got at least `min_correct_each` correct answers.
        """
        tally = self.tally(phase)
        where = f"phase {phase}" if phase else "all phases"
        assert not tally.wrong, f"wrong answers in {where}:\n{self.report()}"
        assert not tally.lost, f"lost answers in {where}:\n{self.report()}"
        assert not tally.closed, f"connections closed in {where}:\n{self.report()}"
        unexpected = set(tally.gateway) - set(allowed)
        assert not unexpected, (
            f"gateway answers {sorted(unexpected)} not allowed in {where} "
            f"(allowed: {sorted(allowed)}):\n{self.report()}"
        )
        for name, client_tally in self.per_client(phase).items():
            assert client_tally.correct >= min_correct_each, (
                f"{name} got {client_tally.correct} correct answers in {where}, "
                f"wanted {min_correct_each}:\n{self.report()}"
            )
        assert tally.sent == tally.answered, f"unaccounted requests in {where}:\n{self.report()}"
        return tally

    async def _run(self, client: _Client) -> None:
        exchange = client.exchange
        try:
            while not self._stopping:
                tally = client.tally(self._phase)
                seq = client.seq
                request, expected = exchange.request(seq)
                client.seq += 1
                client.writer.write(request)
                tally.sent += 1
                what = f"{client.name} request #{seq} {request.hex(' ')}"
                try:
                    async with asyncio.timeout(self.answer_within):
                        reply = await exchange.read_reply(client.reader)
                except TimeoutError:
                    tally.lost.append(f"{what}: no answer within {self.answer_within}s")
                    return
                except (asyncio.IncompleteReadError, ConnectionError) as exc:
                    tally.closed.append(f"{what}: connection closed ({exc!r})")
                    return
                if reply == expected:
                    tally.correct += 1
                else:
                    code = exchange.gateway_code(request, reply)
                    if code is not None:
                        tally.gateway[code] += 1
                    else:
                        tally.wrong.append(
                            f"{what}: expected {expected.hex(' ')}, got {reply.hex(' ')}"
                        )
                if self.interval:
                    await asyncio.sleep(self.interval)
        finally:
            client.stopped = True


# ---------------------------------------------------------------------------- resources


@dataclass(frozen=True, slots=True)
class Resources:
    """A process's open file descriptors and resident memory (kB)."""

    fds: int
    rss_kb: int
    peak_rss_kb: int


def process_resources(pid: int) -> Resources:
    """Read /proc/PID: the number of open fds, VmRSS and VmHWM (peak RSS)."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            name, _colon, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])
    return Resources(fds, fields["VmRSS"], fields["VmHWM"])
