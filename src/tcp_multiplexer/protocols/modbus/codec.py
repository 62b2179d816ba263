"""The Modbus codecs: what clients send, and what the device is sent (Modbus/TCP or RTU).

Clients: MBAP framing, and exception answers from the gateway itself (0x0A target
unreachable, 0x06 no free connection in time, 0x0B sent but not answered), with the
client's own transaction and unit id.

Target: each request leaves with a transaction id the multiplexer owns (one id space
of 65536 per connection), and the answer gets the client's id and unit back, so a
late, doubled or stray answer can never reach the wrong client. With `lenient_ids`,
for gateways that do not echo ids faithfully, answers are matched in order instead.
A unit map rewrites the unit id for the device. RTU targets get frames with a CRC and
no MBAP header, one request at a time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Final

from tcp_multiplexer.core.interfaces import Correlation, FailureReason
from tcp_multiplexer.protocols.modbus import routes
from tcp_multiplexer.protocols.modbus.mbap import (
    EXCEPTION_FLAG,
    ExceptionCode,
    MbapFramer,
    exception_response,
)
from tcp_multiplexer.protocols.modbus.options import ModbusOptions
from tcp_multiplexer.protocols.modbus.rtu import (
    BROADCAST,
    BROADCAST_TURNAROUND,
    RtuAnswerFramer,
    adu_from_rtu,
    rtu_from_adu,
)
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.target import Target, TargetPlan

TRANSACTION_IDS: Final = 0x10000
"""Modbus transaction ids are 16 bits."""

GATEWAY_EXCEPTION: Final = {
    FailureReason.UNAVAILABLE: ExceptionCode.GATEWAY_PATH_UNAVAILABLE,
    FailureReason.BUSY: ExceptionCode.SERVER_DEVICE_BUSY,
    FailureReason.TIMEOUT: ExceptionCode.GATEWAY_TARGET_FAILED,
    FailureReason.BROKEN: ExceptionCode.GATEWAY_TARGET_FAILED,
}


class ModbusClientCodec:
    """Modbus/TCP as clients speak it."""

    __slots__ = ()

    gateway_answers_close: Final = False

    @property
    def name(self) -> str:
        return ProtocolName.MODBUS

    def request_framer(self) -> MbapFramer:
        return MbapFramer()

    def gateway_answer(self, request: bytes, reason: FailureReason) -> bytes:
        """Exception 0x0A (unreachable), 0x06 (busy) or 0x0B (no answer) to `request`."""
        return exception_response(request, GATEWAY_EXCEPTION[reason])


class ModbusTargetCodec:
    """Modbus/TCP to the device: the multiplexer's transaction ids on the wire.

    Counts the device's exception answers (`device_exceptions`) as it decodes them.
    """

    __slots__ = ("_events", "correlation")

    id_space: Final = TRANSACTION_IDS
    transparent: Final = False
    framing_needs_requests: Final = False

    def __init__(self, *, lenient_ids: bool = False, events: Counter[str] | None = None) -> None:
        self.correlation = Correlation.FIFO if lenient_ids else Correlation.BY_ID
        self._events: Counter[str] = Counter() if events is None else events

    def response_framer(self) -> MbapFramer:
        return MbapFramer()

    def encode(self, request: bytes, wire_id: int) -> bytes:
        """`request` with the multiplexer's transaction id."""
        return wire_id.to_bytes(2, "big") + request[2:]

    def decode(self, request: bytes, answer: bytes) -> bytes:
        """`answer` with the client's transaction id (and unit id) put back."""
        if answer[7] & EXCEPTION_FLAG:
            self._events["device_exceptions"] += 1
        if answer[6] == request[6]:
            # The device kept the unit id (the usual case): one slice fewer to join.
            return request[:2] + answer[2:]
        return request[:2] + answer[2:6] + request[6:7] + answer[7:]

    def answer_id(self, answer: bytes) -> int:
        return (answer[0] << 8) | answer[1]


class LenientModbusTargetCodec(ModbusTargetCodec):
    """For gateways that do not echo transaction ids: answers matched in order, and
    requests sent with the client's own id."""

    __slots__ = ()

    def encode(self, request: bytes, wire_id: int) -> bytes:
        return request


def _unit_table(unit_map: Mapping[int, int]) -> bytes:
    """Every unit id, mapped: index by the client's unit, read the device's."""
    return bytes(unit_map.get(unit, unit) for unit in range(256))


class RemappedModbusTargetCodec(ModbusTargetCodec):
    """Modbus/TCP with the unit id rewritten for the device (`--unit-map`); `decode`
    puts the client's back."""

    __slots__ = ("_units",)

    def __init__(self, unit_map: Mapping[int, int], *, events: Counter[str] | None = None):
        super().__init__(events=events)
        self._units = _unit_table(unit_map)

    def encode(self, request: bytes, wire_id: int) -> bytes:
        unit = request[6]
        return (
            wire_id.to_bytes(2, "big") + request[2:6] + self._units[unit : unit + 1] + request[7:]
        )


class RemappedLenientModbusTargetCodec(LenientModbusTargetCodec):
    __slots__ = ("_units",)

    def __init__(self, unit_map: Mapping[int, int], *, events: Counter[str] | None = None):
        super().__init__(lenient_ids=True, events=events)
        self._units = _unit_table(unit_map)

    def encode(self, request: bytes, wire_id: int) -> bytes:
        unit = request[6]
        return request[:6] + self._units[unit : unit + 1] + request[7:]


class RtuTargetCodec:
    """Modbus RTU to the device (a serial line, or an RTU-over-TCP converter).

    Out: the MBAP header off, the (mapped) unit id and the PDU, the CRC on. Back: the
    answer's unit id and PDU under the client's MBAP header. One request at a time
    (`Correlation.SOLE`); a broadcast (unit 0) gets no answer and the line rests for
    the turnaround delay.
    """

    __slots__ = ("_echo", "_events", "_units")

    correlation: Final = Correlation.SOLE
    id_space: Final = 0
    transparent: Final = False
    framing_needs_requests: Final = True
    """The framer must know which unit and function the answer is for."""
    turnaround: Final = BROADCAST_TURNAROUND

    def __init__(
        self, unit_map: Mapping[int, int], events: Counter[str], *, echo: bool = False
    ) -> None:
        self._units = _unit_table(unit_map)
        self._events = events
        self._echo = echo

    def response_framer(self) -> RtuAnswerFramer:
        return RtuAnswerFramer(echo=self._echo)

    def encode(self, request: bytes, wire_id: int) -> bytes:
        return rtu_from_adu(request, self._units[request[6]])

    def decode(self, request: bytes, answer: bytes) -> bytes:
        if answer[1] & EXCEPTION_FLAG:
            self._events["device_exceptions"] += 1
        return adu_from_rtu(request, answer)

    def answer_id(self, answer: bytes) -> int:
        raise NotImplementedError("RTU answers are matched one at a time, not by id")

    def answer_expected(self, wire: bytes) -> bool:
        return wire[0] != BROADCAST


def client_codec(options: ModbusOptions) -> ModbusClientCodec:
    return ModbusClientCodec()


def target_codec(options: ModbusOptions, events: Counter[str]) -> ModbusTargetCodec:
    if options.lenient_ids:
        return LenientModbusTargetCodec(lenient_ids=True, events=events)
    return ModbusTargetCodec(events=events)


def target_codec_for(
    options: ModbusOptions, events: Counter[str], plan: TargetPlan
) -> ModbusTargetCodec | RtuTargetCodec:
    """The codec for one target of a bridge: RTU or Modbus/TCP, with its unit map."""
    if plan.target.framing == "rtu":
        return RtuTargetCodec(plan.key_map, events, echo=plan.target.local_echo)
    if not plan.key_map:
        return target_codec(options, events)
    if options.lenient_ids:
        return RemappedLenientModbusTargetCodec(plan.key_map, events=events)
    return RemappedModbusTargetCodec(plan.key_map, events=events)


def route_key(request: bytes) -> int:
    """What a Modbus request is routed by: its unit id."""
    return request[6]


def plan_targets(options: ModbusOptions, default: Target | None) -> list[TargetPlan]:
    """The targets of a Modbus bridge: its own, and its routes'."""
    return routes.plan_targets(default, options.routes, options.unit_map)
