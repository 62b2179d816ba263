"""Builders for test messages of every protocol, so no test hand-types a wire format."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from tcp_multiplexer.protocols.modbus.mbap import MBAP_HEADER_SIZE


def line(text: bytes) -> bytes:
    """An echo message: `text` and its newline."""
    return text + b"\n"


def iso(body: bytes, *, length: int | None = None) -> bytes:
    """An ISO-8583 message: 2-byte big-endian length (default: of `body`), then `body`."""
    return (len(body) if length is None else length).to_bytes(2, "big") + body


def mpu(body: bytes, *, prefix: bytes | None = None) -> bytes:
    """An MPU message: 4 ASCII digits of length (or a raw `prefix`), then `body`."""
    return (b"%04d" % len(body) if prefix is None else prefix) + body


def mbap(tid: int, unit: int, pdu: bytes, *, protocol: int = 0, length: int | None = None) -> bytes:
    """A Modbus/TCP ADU; `protocol` and `length` override the MBAP fields for bad cases."""
    size = len(pdu) + 1 if length is None else length
    return struct.pack(">HHHB", tid, protocol, size, unit) + pdu


def mbap_header(tid: int, *, protocol: int = 0, length: int) -> bytes:
    """The 7-byte MBAP header alone (unit id 1): enough to validate, or reject, an ADU."""
    return mbap(tid, 1, b"", protocol=protocol, length=length)[:MBAP_HEADER_SIZE]


CRLF = b"\r\n"


def http_head(start_line: bytes, fields: Sequence[bytes] = (), *, eol: bytes = CRLF) -> bytes:
    """A header block: start line, field lines as given, blank line, all ended by `eol`."""
    return b"".join(item + eol for item in (start_line, *fields, b""))


def http_request(
    method: bytes = b"GET",
    target: bytes = b"/",
    fields: Sequence[bytes] = (b"Host: example.test",),
    body: bytes = b"",
    *,
    version: bytes = b"HTTP/1.1",
    eol: bytes = CRLF,
) -> bytes:
    """A request: `body` is appended as is (its framing fields are the caller's)."""
    return http_head(b" ".join((method, target, version)), fields, eol=eol) + body


def http_response(
    status: int = 200,
    fields: Sequence[bytes] = (),
    body: bytes = b"",
    *,
    reason: bytes = b"OK",
    version: bytes = b"HTTP/1.1",
    eol: bytes = CRLF,
) -> bytes:
    """A response: `body` is appended as is (its framing fields are the caller's)."""
    return http_head(b"%s %d %s" % (version, status, reason), fields, eol=eol) + body


def content_length(body: bytes) -> bytes:
    """The Content-Length field line for `body`."""
    return b"Content-Length: %d" % len(body)


def post(body: bytes, target: bytes = b"/submit") -> bytes:
    """A POST request carrying `body` with a Content-Length."""
    return http_request(b"POST", target, (b"Host: example.test", content_length(body)), body)


def ok(body: bytes) -> bytes:
    """A 200 response carrying `body` with a Content-Length."""
    return http_response(200, (content_length(body),), body)


CHUNKED = b"Transfer-Encoding: chunked"


def chunk(data: bytes, extension: bytes = b"") -> bytes:
    """One chunk: hex size, `extension` (e.g. b";name=value"), CRLF, data, CRLF."""
    return b"%x%s\r\n%s\r\n" % (len(data), extension, data)


def last_chunk(trailers: Sequence[bytes] = (), extension: bytes = b"") -> bytes:
    """The zero-size chunk, then the trailer section (field lines and blank line)."""
    return b"0" + extension + CRLF + b"".join(field + CRLF for field in trailers) + CRLF


def chunked(*chunks: bytes, trailers: Sequence[bytes] = ()) -> bytes:
    """A chunked body: each non-empty item as one chunk, then the last chunk."""
    return b"".join(chunk(data) for data in chunks) + last_chunk(trailers)
