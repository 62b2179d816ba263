"""Fuzz targets: one function per framer, codec and gateway policy, taking any bytes.

Each target checks the invariant of its piece and fails with an exception other than
`FramingError` when it does not hold (an AssertionError, or whatever the code under test
raised by mistake):

- framers: the stream fed whole and fed cut at the places the input chooses gives the
  same messages, or raises `FramingError` both ways (and again on the next feed); the
  messages are always the stream's leading bytes, and what is held is what is left,
  within the framer's limit;
- codecs: a framed request and answer go through encode, decode, answer_id and every
  gateway answer, and what comes out frames as exactly one message of the protocol,
  carrying the ids it should;
- the RTU framers: the answer framer, told which unit and function it waits for,
  gives the same outcome whole and cut (at most one frame, or `FramingError`); a frame
  it gives is that unit's and function's, its CRC checked and in the stream; nothing
  held past 256 bytes. The request framer gives the same frames whole and cut, each a
  whole CRC-checked request, up to the first damaged one;
- the RTU target codec: a framed request encodes as one RTU frame to the mapped unit,
  and the device's answer, framed, decodes into one ADU with the client's ids;
- the Modbus gateway policy: a run of framed requests, answers and gateway answers
  through the read cache, coalescing keys and a client's write filter; every local
  answer is a well-formed ADU with the request's transaction id, a cached answer is
  always an earlier answer to the very same read, and a write the filter refuses is an
  exception answer to it;
- an RTU-over-TCP client's bytes, whole or cut anywhere, reach its session as the same
  whole MBAP requests (auto mode: nothing raises).

`bench/fuzz.py` runs them under atheris (coverage-guided); tests/fuzz/test_replay.py
replays the saved corpus under plain pytest. The first bytes of an input steer the
target (where to cut, which requests are HEAD); the rest is the stream.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter
from collections.abc import Callable
from functools import partial
from itertools import pairwise
from typing import Any, Final

from tcp_multiplexer.core.interfaces import FailureReason, Framer, Request, ResponseFramer
from tcp_multiplexer.errors import FramingError
from tcp_multiplexer.protocols.echo.framing import LineFramer
from tcp_multiplexer.protocols.http.codec import HttpCodec
from tcp_multiplexer.protocols.http.framing import (
    HTTP_CONTINUE,
    HttpRequestFramer,
    HttpResponseFramer,
)
from tcp_multiplexer.protocols.length_prefix import iso8583_framer, mpu_framer
from tcp_multiplexer.protocols.modbus.access import client_filter, rules_value
from tcp_multiplexer.protocols.modbus.client_framing import RtuClientProtocol
from tcp_multiplexer.protocols.modbus.codec import (
    LenientModbusTargetCodec,
    ModbusClientCodec,
    ModbusTargetCodec,
    RtuTargetCodec,
)
from tcp_multiplexer.protocols.modbus.device import pack_bits, unpack_bits
from tcp_multiplexer.protocols.modbus.functions import ReadKey, read_key
from tcp_multiplexer.protocols.modbus.gateway import ModbusGatewayPolicy
from tcp_multiplexer.protocols.modbus.image import reply_fits
from tcp_multiplexer.protocols.modbus.mbap import (
    EXCEPTION_FLAG,
    MODBUS_MAX_MESSAGE_SIZE,
    MbapFramer,
)
from tcp_multiplexer.protocols.modbus.options import ModbusOptions
from tcp_multiplexer.protocols.modbus.rtu import (
    RTU_MAX_FRAME,
    RtuAnswerFramer,
    RtuRequestFramer,
    answer_length,
    crc_ok,
    request_length,
    with_crc,
)
from tcp_multiplexer.protocols.spec import ClientIdentity

Target = Callable[[bytes], None]
MAX_CUTS: Final = 8


# ---------------------------------------------------------------------------- framers


def _cuts(data: bytes) -> tuple[list[int], bytes]:
    """(sorted cut offsets, stream): the first byte says how many cuts (0-8), the next
    ones where (as offsets modulo the stream's length)."""
    if not data:
        return [], b""
    count = data[0] % (MAX_CUTS + 1)
    positions, stream = data[1 : 1 + count], data[1 + count :]
    if not stream:
        return [], stream
    return sorted({position % len(stream) for position in positions} - {0}), stream


def _feed(framer: Framer, chunks: list[bytes], limit: int) -> tuple[bytes, bool]:
    """Feed `chunks` then EOF, checking the invariants after each call; (the bytes of
    every message returned, whether a FramingError ended it)."""
    fed = b""
    framed = b""
    try:
        for chunk in chunks:
            framed += b"".join(framer.feed(chunk))
            fed += chunk
            held = framer.buffered
            assert held <= limit, f"{held} bytes held, over the limit of {limit}"
            assert fed.startswith(framed), "a message is not the stream's own bytes"
            assert len(fed) - len(framed) == held, "held bytes are not what is left"
            interim = framer.take_interim_reply()
            assert interim is None or (interim == HTTP_CONTINUE and held), interim
        framed += b"".join(framer.feed_eof())
    except FramingError:
        try:
            framer.feed(b"")
        except FramingError:
            return framed, True
        raise AssertionError("a framer that raised took more input") from None
    assert framed == fed, "EOF without a FramingError but bytes were left unframed"
    return framed, False


def check_framer(make: Callable[[], Framer], limit: int, data: bytes) -> None:
    """The framer invariant (see the module docstring) for one input."""
    cuts, stream = _cuts(data)
    whole, whole_failed = _feed(make(), [stream], limit)
    bounds = [0, *cuts, len(stream)]
    pieces = [stream[start:end] for start, end in pairwise(bounds)]
    cut, cut_failed = _feed(make(), pieces, limit)
    assert whole_failed == cut_failed, f"whole failed: {whole_failed}, cut: {cut_failed}"
    if not whole_failed:
        assert whole == cut, "cutting the stream changed its messages"


def _http_responses(heads: int) -> ResponseFramer:
    """A response framer with eight requests outstanding, HEAD where `heads` has a bit."""
    framer = HttpResponseFramer(max_header_size=256, max_body_size=256)
    for bit in range(8):
        method = b"HEAD" if heads >> bit & 1 else b"GET"
        framer.expect_response(method + b" / HTTP/1.1\r\nHost: x\r\n\r\n")
    return framer


def http_responses(data: bytes) -> None:
    if not data:
        return
    check_framer(partial(_http_responses, data[0]), 512, data[1:])


def _framer_target(make: Callable[[], Framer], limit: int) -> Target:
    return partial(check_framer, make, limit)


# ---------------------------------------------------------------------------- codecs


def _messages(framer: Framer, data: bytes) -> list[bytes]:
    try:
        return framer.feed(data)
    except FramingError:
        return []


def _one_adu(data: bytes) -> bytes:
    """`data` must be exactly one well-formed Modbus/TCP ADU; returns it."""
    framer = MbapFramer()
    messages = framer.feed(data)
    assert messages == [data], f"not one ADU: {data.hex()}"
    return data


def modbus_codecs(data: bytes) -> None:
    """Framed request and answer through both target codecs and the client codec."""
    messages = _messages(MbapFramer(), data)
    if len(messages) < 2:
        return
    request, answer = messages[0], messages[1]
    client = ModbusClientCodec()
    for reason in FailureReason:
        gateway = _one_adu(client.gateway_answer(request, reason))
        assert gateway[:2] == request[:2], "a gateway answer keeps the transaction id"
        assert gateway[6] == request[6], "and the unit id"
        assert gateway[7] == request[7] | EXCEPTION_FLAG
    events: Counter[str] = Counter()
    for codec in (ModbusTargetCodec(events=events), LenientModbusTargetCodec(events=events)):
        wire_id = int.from_bytes(answer[:2], "big")
        sent = _one_adu(codec.encode(request, wire_id))
        assert sent[2:] == request[2:], "only the transaction id changes"
        assert codec.answer_id(answer) == wire_id
        back = _one_adu(codec.decode(request, answer))
        assert back[:2] == request[:2], "the client gets its own transaction id back"
        assert back[6] == request[6], "and its own unit id"
        assert back[7:] == answer[7:], "the PDU is the device's"


def http_codec(data: bytes) -> None:
    """Every gateway answer to a framed request frames as one final response that
    closes the connection, with a body unless the request was HEAD."""
    messages = _messages(HttpRequestFramer(max_header_size=4096, max_body_size=4096), data)
    if not messages:
        return
    codec = HttpCodec()
    for request in messages[:4]:
        for reason in FailureReason:
            answer = codec.gateway_answer(request, reason)
            framer = HttpResponseFramer()
            framer.expect_response(request)
            assert framer.feed(answer) == [answer], answer
            assert framer.closing_at == 0, "a gateway answer ends the connection"
            assert framer.buffered == 0
            assert codec.decode(request, answer) == answer
        assert codec.encode(request, 0) == request


# ---------------------------------------------------------------------------- RTU


def _rtu_answers(expected: bytes, chunks: list[bytes]) -> tuple[list[bytes], bool]:
    """Feed an answer framer waiting for `expected` (unit, function); (frames, failed)."""
    framer = RtuAnswerFramer()
    framer.expect_response(with_crc(expected + b"\x00\x00\x00\x01"))
    frames: list[bytes] = []
    try:
        for chunk in chunks:
            frames += framer.feed(chunk)
            assert framer.buffered <= RTU_MAX_FRAME, f"{framer.buffered} bytes held"
            if frames:
                assert framer.buffered == 0, "nothing is held once the answer came"
        frames += framer.feed_eof()
    except FramingError:
        return frames, True
    return frames, False


def rtu_answers(data: bytes) -> None:
    """The answer framer's invariant (see the module docstring)."""
    if len(data) < 2:
        return
    expected = data[:2]
    cuts, stream = _cuts(data[2:])
    whole = _rtu_answers(expected, [stream])
    bounds = [0, *cuts, len(stream)]
    cut = _rtu_answers(expected, [stream[start:end] for start, end in pairwise(bounds)])
    assert whole == cut, f"whole: {whole}, cut: {cut}"
    frames, _failed = whole
    assert len(frames) <= 1, "one answer per request"
    for frame in frames:
        assert frame[0] == expected[0], "the unit asked"
        assert frame[1] & 0x7F == expected[1], "the function asked (or its exception)"
        framed = with_crc(frame)
        assert crc_ok(framed)
        assert answer_length(framed) == len(framed)
        assert framed in stream, "the device's own bytes"


def _rtu_requests(chunks: list[bytes]) -> tuple[list[bytes], bool]:
    framer = RtuRequestFramer()
    frames: list[bytes] = []
    try:
        for chunk in chunks:
            frames += framer.feed(chunk)
            if framer.buffered > RTU_MAX_FRAME:
                framer.feed(b"")  # only a damaged frame after good ones is held so long
                raise AssertionError(f"{framer.buffered} bytes held")
        frames += framer.feed(b"")
        frames += framer.feed_eof()
    except FramingError:
        return frames, True
    return frames, False


def rtu_requests(data: bytes) -> None:
    """The request framer's invariant (see the module docstring)."""
    cuts, stream = _cuts(data)
    whole = _rtu_requests([stream])
    bounds = [0, *cuts, len(stream)]
    cut = _rtu_requests([stream[start:end] for start, end in pairwise(bounds)])
    assert whole == cut, f"whole: {whole}, cut: {cut}"
    frames, failed = whole
    assert stream.startswith(b"".join(frames)), "the stream's leading bytes"
    for frame in frames:
        assert crc_ok(frame)
        assert request_length(frame) == len(frame)
    if not failed:
        assert b"".join(frames) == stream


def rtu_codec(data: bytes) -> None:
    """A framed request through the RTU codec (unit map steered by the first byte) and
    the rest of the input, framed as its answer, back."""
    if not data:
        return
    messages = _messages(MbapFramer(), data[1:])
    if not messages:
        return
    request = messages[0]
    device_unit = data[0]
    codec = RtuTargetCodec({request[6]: device_unit}, Counter())
    wire = codec.encode(request, 0)
    assert crc_ok(wire), "the CRC is on"
    assert wire[0] == device_unit, "the device's unit"
    assert wire[1:-2] == request[7:], "the PDU as the client sent it"
    framer = RtuAnswerFramer()
    framer.expect_response(wire)
    rest = data[1 + len(request) :]
    try:
        frames = framer.feed(rest)
    except FramingError:
        return
    assert codec.answer_expected(wire) == (device_unit != 0)
    for frame in frames:
        back = _one_adu(codec.decode(request, frame))
        assert back[:2] == request[:2], "the client's transaction id"
        assert back[6] == request[6], "the client's unit id"
        assert back[7:] == frame[1:], "the device's PDU"


# ---------------------------------------------------------------------------- gateway


class _Owner:
    """A request's owner; the policy never calls it."""

    closed = False

    def request_done(self, request: Request) -> None:
        raise AssertionError("the policy does not answer requests itself")


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now


RULES: Final = rules_value(
    [
        {"clients": ["10.0.0.1"], "writes": ["unit 1 holding 100-199", "unit 2 coils 0-7"]},
        {"clients": ["10.0.0.2"], "access": "read-only"},
        {"roles": ["operator"], "access": "read-write"},
    ]
)
CLIENTS: Final = (
    ClientIdentity(ipaddress.ip_address("10.0.0.1"), frozenset(), frozenset()),
    ClientIdentity(ipaddress.ip_address("10.0.0.2"), frozenset(), frozenset()),
    ClientIdentity(ipaddress.ip_address("10.0.0.3"), frozenset(), frozenset({"operator"})),
    ClientIdentity(ipaddress.ip_address("10.0.0.4"), frozenset(), frozenset()),
)


def _cut(read: ReadKey, held: ReadKey, reply: bytes) -> bytes | None:
    """The values `read` asks for as `reply` (the answer to `held`) carries them, None
    if `held` does not cover `read` (written apart from image.py, to check it)."""
    if (read.unit, read.function) != (held.unit, held.function):
        return None
    offset = read.address - held.address
    if offset < 0 or offset + read.quantity > held.quantity:
        return None
    values = reply[9:]
    if read.function in (1, 2):
        bits = unpack_bits(values, held.quantity)[offset : offset + read.quantity]
        return pack_bits(bits)
    return values[2 * offset : 2 * (offset + read.quantity)]


def modbus_gateway(data: bytes) -> None:
    """A run of requests through the write filters, the policy and its cache.

    The input is cut into ADUs; each one's first byte of the transaction id picks what
    happens: which client sent it, whether the device answers (with the next ADU as its
    answer, or an exception), fails, or time passes.
    """
    adus = _messages(MbapFramer(), data)
    events: Counter[str] = Counter()
    clock = _Clock()
    policy = ModbusGatewayPolicy(ModbusOptions(cache_ttl=1.0), events, clock)
    filters = [client_filter(RULES, "", client, events) for client in CLIENTS]
    answered: list[tuple[ReadKey, bytes]] = []
    """Every well-formed answer the device gave to a read (the image may cut from one)."""
    owner = _Owner()
    for index, payload in enumerate(adus):
        steer = payload[0]
        rule_filter = filters[steer % len(filters)]
        if rule_filter is not None:
            refused = rule_filter.refusal(payload)
            if refused is not None:
                _one_adu(refused)
                assert refused[:2] == payload[:2]
                assert refused[6] == payload[6]
                assert refused[7] == payload[7] | EXCEPTION_FLAG
                assert refused[8] in (0x01, 0x02)
                continue
        request = Request(owner, payload, clock.now)
        local = policy.admit(request)
        key = read_key(payload)
        if local is not None:
            _one_adu(local)
            assert local[:2] == payload[:2], "an image answer carries the request's id"
            assert key is not None, "only reads are answered from the image"
            assert local[6:8] == payload[6:8], "its unit and function"
            assert any(_cut(key, held, reply) == local[9:] for held, reply in answered), (
                "cut from one answer the device gave"
            )
            continue
        action = steer >> 4
        if action < 10:
            answer = adus[index + 1] if index + 1 < len(adus) else payload
            answer = payload[:2] + answer[2:6] + payload[6:8] + answer[8:]
            request.deadline = clock.now  # sent now (the policy's timeout is 0)
            if request.observed:
                policy.observe(request, answer)
            if key is not None and reply_fits(key.function, key.quantity, answer):
                answered.append((key, answer))
            shared = policy.share(payload, answer)
            assert shared[:2] == payload[:2]
            assert shared[2:] == answer[2:]
        elif action < 14:
            gateway = ModbusClientCodec().gateway_answer(payload, FailureReason.TIMEOUT)
            policy.observe_gateway_answer(payload, gateway)
        else:
            clock.now += (steer & 0x0F) * 0.25


# ---------------------------------------------------------------------------- registry


class _Recorder(asyncio.Protocol):
    """A session in front of which an RTU client adapter is put: keeps what reaches it."""

    def __init__(self) -> None:
        self.received = b""

    def data_received(self, data: bytes) -> None:
        self.received += data


class _NullTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def write(self, data: Any) -> None:
        """Answers go nowhere."""

    def abort(self) -> None:
        self.aborted = True


def _rtu_client(mode: str, chunks: list[bytes]) -> tuple[bytes, bool]:
    session = _Recorder()
    adapter = RtuClientProtocol(session, mode)
    transport = _NullTransport()
    adapter.connection_made(transport)
    for chunk in chunks:
        if transport.aborted:
            break
        adapter.data_received(chunk)
    return session.received, transport.aborted


def rtu_clients(data: bytes) -> None:
    """An RTU-over-TCP client's bytes, whole or cut anywhere: the same MBAP requests
    reach the session (and the same bad input closes it); each is a whole MBAP request
    of protocol id 0 whose PDU is an RTU frame's. In auto mode nothing raises."""
    cuts, stream = _cuts(data)
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[start:end] for start, end in pairwise(bounds)]
    whole = _rtu_client("rtu", [stream])
    cut = _rtu_client("rtu", chunks)
    assert whole[0] == cut[0] or (whole[1] and cut[1]), f"whole: {whole}, cut: {cut}"
    messages = _messages(MbapFramer(), whole[0])
    assert b"".join(messages) == whole[0], "whole MBAP requests only"
    for message in messages:
        assert message[2:4] == b"\x00\x00"
    _rtu_client("auto", chunks)


TARGETS: Final[dict[str, Target]] = {
    "echo": _framer_target(partial(LineFramer, max_message_size=64), 64),
    "echo-default": _framer_target(LineFramer, 65536),
    "iso8583": _framer_target(partial(iso8583_framer, 128), 128),
    "mpu": _framer_target(partial(mpu_framer, 128), 128),
    "modbus-framer": _framer_target(MbapFramer, MODBUS_MAX_MESSAGE_SIZE),
    "http-requests": _framer_target(
        partial(HttpRequestFramer, max_header_size=256, max_body_size=256), 512
    ),
    "http-responses": http_responses,
    "modbus-codecs": modbus_codecs,
    "http-codec": http_codec,
    "modbus-gateway": modbus_gateway,
    "rtu-answers": rtu_answers,
    "rtu-requests": rtu_requests,
    "rtu-codec": rtu_codec,
    "rtu-clients": rtu_clients,
}
"""Every fuzz target by name (the corpus folder of each is tests/fuzz/corpus/NAME)."""
