"""SymmetricCodec (echo, ISO-8583, MPU) and the protocol registry."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tcp_multiplexer.framing import (
    CodecOptions,
    Correlation,
    FailureReason,
    ProtocolName,
    make_codec,
    protocol_names,
)
from tcp_multiplexer.framing.codecs import SymmetricCodec, echo_codec, iso8583_codec, mpu_codec
from tests.framing.builders import iso, line, mbap, mpu, ok, post

SYMMETRIC = [
    pytest.param(echo_codec, ProtocolName.ECHO, line(b"ping"), id="echo"),
    pytest.param(iso8583_codec, ProtocolName.ISO8583, iso(b"\x08\x00ping"), id="iso8583"),
    pytest.param(mpu_codec, ProtocolName.MPU, mpu(b"ping"), id="mpu"),
]


@pytest.mark.parametrize(("make", "name", "message"), SYMMETRIC)
def test_symmetric_codec_frames_both_directions_alike(
    make: Callable[[], SymmetricCodec], name: ProtocolName, message: bytes
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
    make: Callable[[], SymmetricCodec], name: ProtocolName, message: bytes, reason: FailureReason
) -> None:
    assert make().error_reply(message, reason) is None


@pytest.mark.parametrize(("make", "name", "message"), SYMMETRIC)
def test_symmetric_codec_keeps_connections_and_replies(
    make: Callable[[], SymmetricCodec], name: ProtocolName, message: bytes
) -> None:
    codec = make()
    assert not codec.request_ends_connection(message)
    assert not codec.reply_ends_connection(message)
    assert codec.restore_reply(message, message + b"reply") == message + b"reply"


@pytest.mark.parametrize(("make", "name", "message"), SYMMETRIC)
def test_symmetric_codec_has_no_request_ids(
    make: Callable[[], SymmetricCodec], name: ProtocolName, message: bytes
) -> None:
    codec = make()
    with pytest.raises(NotImplementedError, match=f"{name} has no request ids"):
        codec.request_id(message)
    with pytest.raises(NotImplementedError, match="no request ids"):
        codec.with_request_id(message, 1)


@pytest.mark.parametrize(
    ("name", "request_", "reply"),
    [
        pytest.param(ProtocolName.ECHO, line(b"ping"), line(b"pong"), id="echo"),
        pytest.param(ProtocolName.ISO8583, iso(b"\x08\x00ping"), iso(b"\x08\x10pong"), id="iso"),
        pytest.param(ProtocolName.MPU, mpu(b"ping"), mpu(b"pong"), id="mpu"),
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
    codec = make_codec(name)
    responses = codec.response_framer()
    responses.expect_response(request_)
    for framer, message in ((codec.request_framer(), request_), (responses, reply)):
        assert framer.take_interim_reply() is None
        assert framer.feed(message[:-1]) == []
        assert framer.take_interim_reply() is None
        assert framer.feed(message[-1:]) == [message]
        assert framer.take_interim_reply() is None


def test_protocol_names_are_sorted_and_complete() -> None:
    assert protocol_names() == ["echo", "http", "iso8583", "modbus", "mpu"]


@pytest.mark.parametrize("name", list(ProtocolName))
def test_make_codec_knows_every_protocol(name: ProtocolName) -> None:
    assert make_codec(name).name is name


@pytest.mark.parametrize(
    ("options", "correlation"),
    [
        pytest.param(None, Correlation.TRANSACTION_ID, id="default: transaction ids"),
        pytest.param(CodecOptions(lenient_ids=True), Correlation.FIFO, id="lenient ids: in order"),
    ],
)
def test_make_codec_passes_modbus_options(
    options: CodecOptions | None, correlation: Correlation
) -> None:
    assert make_codec(ProtocolName.MODBUS, options).correlation is correlation


def test_make_codec_rejects_an_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown protocol 'gopher'"):
        make_codec("gopher")  # type: ignore[arg-type]
