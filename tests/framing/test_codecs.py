"""PassThroughCodec (echo, ISO-8583, MPU), and the protocol registry and specs."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tcp_multiplexer.core.interfaces import Correlation, FailureReason
from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.protocols import echo, iso8583, mpu
from tcp_multiplexer.protocols.modbus.options import ModbusOptions
from tcp_multiplexer.protocols.passthrough import PassThroughCodec
from tcp_multiplexer.protocols.registry import SPECS, get_spec, protocol_names
from tcp_multiplexer.protocols.spec import ProtocolName
from tests.framing.builders import iso, line, mbap, ok, post
from tests.framing.builders import mpu as mpu_message

SYMMETRIC = [
    pytest.param(echo.codec, ProtocolName.ECHO, line(b"ping"), id="echo"),
    pytest.param(iso8583.codec, ProtocolName.ISO8583, iso(b"\x08\x00ping"), id="iso8583"),
    pytest.param(mpu.codec, ProtocolName.MPU, mpu_message(b"ping"), id="mpu"),
]


@pytest.mark.parametrize(("make", "name", "message"), SYMMETRIC)
def test_symmetric_codec_frames_both_directions_alike(
    make: Callable[[], PassThroughCodec], name: ProtocolName, message: bytes
) -> None:
    codec = make()
    assert codec.name is name
    assert codec.correlation is Correlation.FIFO
    assert codec.request_framer().feed(message + message) == [message, message]
    responses = codec.response_framer()
    responses.expect_response(message)
    assert responses.feed(message) == [message]


@pytest.mark.parametrize(("make", "name", "message"), SYMMETRIC)
@pytest.mark.parametrize("reason", list(FailureReason))
def test_symmetric_codec_closes_the_client_on_failure(
    make: Callable[[], PassThroughCodec], name: ProtocolName, message: bytes, reason: FailureReason
) -> None:
    assert make().gateway_answer(message, reason) is None


@pytest.mark.parametrize(("make", "name", "message"), SYMMETRIC)
def test_symmetric_codec_keeps_connections_and_replies(
    make: Callable[[], PassThroughCodec], name: ProtocolName, message: bytes
) -> None:
    codec = make()
    requests = codec.request_framer()
    assert requests.feed(message) == [message]
    assert requests.closing_at == -1
    assert codec.transparent
    assert codec.encode(message, 7) == message
    assert codec.decode(message, message + b"reply") == message + b"reply"


@pytest.mark.parametrize(("make", "name", "message"), SYMMETRIC)
def test_symmetric_codec_has_no_request_ids(
    make: Callable[[], PassThroughCodec], name: ProtocolName, message: bytes
) -> None:
    codec = make()
    assert codec.id_space == 0
    with pytest.raises(NotImplementedError, match=f"{name} answers are matched in order"):
        codec.answer_id(message)


@pytest.mark.parametrize(
    ("name", "request_", "reply"),
    [
        pytest.param(ProtocolName.ECHO, line(b"ping"), line(b"pong"), id="echo"),
        pytest.param(ProtocolName.ISO8583, iso(b"\x08\x00ping"), iso(b"\x08\x10pong"), id="iso"),
        pytest.param(ProtocolName.MPU, mpu_message(b"ping"), mpu_message(b"pong"), id="mpu"),
        pytest.param(
            ProtocolName.MODBUS,
            mbap(1, 1, b"\x03\x00\x00\x00\x01"),
            mbap(1, 1, b"\x03\x02\x00\x07"),
            id="modbus",
        ),
        pytest.param(ProtocolName.HTTP, post(b"ping"), ok(b"pong"), id="http"),
    ],
)
def test_framers_offer_no_interim_reply_for_ordinary_messages(
    name: ProtocolName, request_: bytes, reply: bytes
) -> None:
    spec = get_spec(name)
    options = spec.default_options()
    responses = spec.target_codec(options, spec.new_events()).response_framer()
    responses.expect_response(request_)
    for framer, message in (
        (spec.client_codec(options).request_framer(), request_),
        (responses, reply),
    ):
        assert framer.take_interim_reply() is None
        assert framer.feed(message[:-1]) == []
        assert framer.take_interim_reply() is None
        assert framer.feed(message[-1:]) == [message]
        assert framer.take_interim_reply() is None


def test_protocol_names_are_sorted_and_complete() -> None:
    assert protocol_names() == ["echo", "http", "iso8583", "modbus", "mpu"]


@pytest.mark.parametrize("name", list(ProtocolName))
def test_every_protocol_has_a_spec_with_codecs_and_a_responder(name: ProtocolName) -> None:
    spec = get_spec(name)
    assert spec.name is name
    options = spec.default_options()
    assert spec.client_codec(options).name is name
    assert spec.responder().name == name
    assert all(count == 0 for count in spec.new_events().values()), "events start at zero"
    assert set(spec.new_events()) == set(spec.events)


def test_names_are_read_in_any_case() -> None:
    assert get_spec(" HTTP ") is SPECS["http"]


@pytest.mark.parametrize(
    ("options", "correlation"),
    [
        pytest.param(ModbusOptions(), Correlation.BY_ID, id="default: transaction ids"),
        pytest.param(ModbusOptions(lenient_ids=True), Correlation.FIFO, id="lenient ids: in order"),
    ],
)
def test_the_modbus_target_codec_follows_its_options(
    options: ModbusOptions, correlation: Correlation
) -> None:
    spec = get_spec(ProtocolName.MODBUS)
    assert spec.target_codec(options, spec.new_events()).correlation is correlation


def test_an_unknown_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown protocol 'gopher'"):
        get_spec("gopher")
