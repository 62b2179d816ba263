"""The Modbus/TCP codecs: what clients send, and what the device is sent.

Clients: MBAP framing, and exception answers from the gateway itself (0x0A target
unreachable, 0x06 no free connection in time, 0x0B sent but not answered), with the
client's own transaction and unit id.

Target: each request leaves with a transaction id the multiplexer owns (one id space
of 65536 per connection), and the answer gets the client's id and unit back, so a
late, doubled or stray answer can never reach the wrong client. With `lenient_ids`,
for gateways that do not echo ids faithfully, answers are matched in order instead.
"""

from __future__ import annotations

from collections import Counter
from typing import Final

from tcp_multiplexer.core.interfaces import Correlation, FailureReason
from tcp_multiplexer.protocols.modbus.mbap import (
    EXCEPTION_FLAG,
    ExceptionCode,
    MbapFramer,
    exception_response,
)
from tcp_multiplexer.protocols.modbus.options import ModbusOptions
from tcp_multiplexer.protocols.spec import ProtocolName

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


def client_codec(options: ModbusOptions) -> ModbusClientCodec:
    return ModbusClientCodec()


def target_codec(options: ModbusOptions, events: Counter[str]) -> ModbusTargetCodec:
    if options.lenient_ids:
        return LenientModbusTargetCodec(lenient_ids=True, events=events)
    return ModbusTargetCodec(events=events)
