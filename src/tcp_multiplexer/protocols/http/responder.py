"""The HTTP/1.1 target: a keep-alive server that answers every request with 200.

Request layout (RFC 9112 sections 2-7)::

    METHOD SP request-target SP HTTP/1.x CRLF
    *( field-name ":" OWS field-value OWS CRLF )
    CRLF
    [ body: Content-Length bytes, or chunked ]

The answer body is ``METHOD TARGET\\n`` followed by the request body (de-chunked),
so a test sees which request each answer belongs to. HEAD gets the same headers and
no body. ``Connection: close`` (or HTTP/1.0 without ``keep-alive``) closes the
connection after the answer. A request the parser rejects (CL with TE, a TE other
than ``chunked``, conflicting lengths, a malformed head) gets 400, an oversized one
413, both with ``Connection: close``.

Requests are framed by the multiplexer's own `HttpRequestFramer`; `parse_request` only
reads a framed request's parts to build the answer. It is a demo and test peer, not
the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from tcp_multiplexer.core.interfaces import Framer
from tcp_multiplexer.errors import FramingError, MalformedMessage, MessageTooLarge
from tcp_multiplexer.protocols.http.framing import HttpRequestFramer
from tcp_multiplexer.protocols.responder import Answer
from tcp_multiplexer.protocols.spec import ProtocolName

HTTP_MAX_HEAD_SIZE: Final = 16 * 1024
"""Request line plus header fields; what common servers allow (nginx and h11 use 8-16 KiB)."""
HTTP_MAX_BODY_SIZE: Final = 1024 * 1024
"""A request body the example target accepts; answers echo it, so keep it small."""

_CRLF: Final = b"\r\n"
_HEAD_END: Final = b"\r\n\r\n"
_VERSIONS: Final = frozenset({"HTTP/1.0", "HTTP/1.1"})
_TOKEN_CHARS: Final = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One parsed request."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    """Field names lower-cased, values stripped, in order."""
    body: bytes
    """The body, de-chunked."""
    size: int
    """Bytes the request occupies on the wire."""

    def header_values(self, name: str) -> list[str]:
        """Every value of field `name` (lower case)."""
        return [value for field, value in self.headers if field == name]

    @property
    def keep_alive(self) -> bool:
        """False if the client asked to close after this request (RFC 9112 section 9.3)."""
        tokens = {
            token.strip().lower()
            for value in self.header_values("connection")
            for token in value.split(",")
        }
        if "close" in tokens:
            return False
        return self.version == "HTTP/1.1" or "keep-alive" in tokens


def _malformed(reason: str) -> MalformedMessage:
    return MalformedMessage(ProtocolName.HTTP, reason)


def _too_large(reason: str) -> MessageTooLarge:
    return MessageTooLarge(ProtocolName.HTTP, reason)


def _is_token(text: str) -> bool:
    return bool(text) and _TOKEN_CHARS.issuperset(text)


def _parse_head(head: str) -> tuple[str, str, str, tuple[tuple[str, str], ...]]:
    request_line, *field_lines = head.split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not _is_token(parts[0]) or not parts[1] or parts[2] not in _VERSIONS:
        raise _malformed(f"bad request line {request_line[:80]!r}")
    headers: list[tuple[str, str]] = []
    for line in field_lines:
        name, colon, value = line.partition(":")
        if not colon or not _is_token(name):
            raise _malformed(f"bad header line {line[:80]!r}")
        headers.append((name.lower(), value.strip(" \t")))
    return parts[0], parts[1], parts[2], tuple(headers)


def _content_length(values: list[str]) -> int:
    lengths = {item.strip() for value in values for item in value.split(",")}
    if len(lengths) != 1:
        raise _malformed(f"conflicting Content-Length {values!r}")
    (text,) = lengths
    if not text.isdigit() or not text.isascii():
        raise _malformed(f"bad Content-Length {text!r}")
    length = int(text)
    if length > HTTP_MAX_BODY_SIZE:
        raise _too_large(f"body of {length} bytes exceeds {HTTP_MAX_BODY_SIZE}")
    return length


def _chunked_body(buf: bytes | bytearray, start: int) -> tuple[int, bytes] | None:
    """(end, body) of a chunked body starting at `start`; None if incomplete."""
    position = start
    body = bytearray()
    while True:
        line_end = buf.find(_CRLF, position)
        if line_end < 0:
            if len(buf) - position > HTTP_MAX_HEAD_SIZE:
                raise _too_large("chunk size line too long")
            return None
        size_text = bytes(buf[position:line_end]).split(b";", 1)[0].strip().decode("latin-1")
        if not size_text or not _HEX_DIGITS.issuperset(size_text):
            raise _malformed(f"bad chunk size {size_text[:20]!r}")
        size = int(size_text, 16)
        position = line_end + 2
        if size == 0:
            break
        if len(body) + size > HTTP_MAX_BODY_SIZE:
            raise _too_large(f"chunked body exceeds {HTTP_MAX_BODY_SIZE} bytes")
        if len(buf) < position + size + 2:
            return None
        if buf[position + size : position + size + 2] != _CRLF:
            raise _malformed("chunk data not followed by CRLF")
        body += buf[position : position + size]
        position += size + 2
    # Trailer fields, then an empty line.
    while True:
        line_end = buf.find(_CRLF, position)
        if line_end < 0:
            if len(buf) - position > HTTP_MAX_HEAD_SIZE:
                raise _too_large("trailer section too long")
            return None
        empty = line_end == position
        position = line_end + 2
        if empty:
            return position, bytes(body)


def parse_request(buf: bytes | bytearray, head_end: int | None = None) -> HttpRequest | None:
    """The request at the start of `buf`, or None if it is not complete yet.

    `head_end` is the index of the blank line's CRLF CRLF if the caller already
    found it.

    Raises:
        MalformedMessage: the request is not valid HTTP/1.x or its length is ambiguous.
        MessageTooLarge: the head exceeds `HTTP_MAX_HEAD_SIZE` or the body `HTTP_MAX_BODY_SIZE`.
    """
    if head_end is None:
        head_end = buf.find(_HEAD_END)
    if head_end < 0:
        if len(buf) > HTTP_MAX_HEAD_SIZE:
            raise _too_large(f"request head exceeds {HTTP_MAX_HEAD_SIZE} bytes")
        return None
    if head_end > HTTP_MAX_HEAD_SIZE:
        raise _too_large(f"request head exceeds {HTTP_MAX_HEAD_SIZE} bytes")
    method, target, version, headers = _parse_head(bytes(buf[:head_end]).decode("latin-1"))
    body_start = head_end + len(_HEAD_END)
    encodings = [value for name, value in headers if name == "transfer-encoding"]
    lengths = [value for name, value in headers if name == "content-length"]
    if encodings:
        if lengths:
            raise _malformed("both Transfer-Encoding and Content-Length")
        if len(encodings) != 1 or encodings[0].lower() != "chunked":
            raise _malformed(f"unsupported Transfer-Encoding {encodings!r}")
        chunked = _chunked_body(buf, body_start)
        if chunked is None:
            return None
        end, body = chunked
    else:
        length = _content_length(lengths) if lengths else 0
        end = body_start + length
        if len(buf) < end:
            return None
        body = bytes(buf[body_start:end])
    return HttpRequest(method, target, version, headers, body, end)


def _status(code: int, reason: str) -> bytes:
    return f"HTTP/1.1 {code} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode(
        "ascii"
    )


class HttpResponder:
    """Answers every HTTP request with 200 (see the module docstring)."""

    __slots__ = ()

    @property
    def name(self) -> str:
        return ProtocolName.HTTP

    def request_framer(self) -> Framer:
        """The multiplexer's own request framer: the target frames as strictly as it."""
        return HttpRequestFramer(max_body_size=HTTP_MAX_BODY_SIZE)

    def answer(self, request: bytes) -> Answer:
        parsed = parse_request(request)
        if parsed is None:
            raise ValueError("answer() needs one complete framed request")
        body = f"{parsed.method} {parsed.target}\n".encode("latin-1") + parsed.body
        close = not parsed.keep_alive
        head = [
            "HTTP/1.1 200 OK",
            "Content-Type: text/plain; charset=utf-8",
            f"Content-Length: {len(body)}",
        ]
        if close:
            head.append("Connection: close")
        elif parsed.version == "HTTP/1.0":
            head.append("Connection: keep-alive")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("ascii")
        if parsed.method != "HEAD":
            data += body
        return Answer(data, close)

    def reject(self, error: FramingError) -> bytes:
        """413 for an oversized request, 400 for any other framing error."""
        if isinstance(error, MessageTooLarge):
            return _status(413, "Content Too Large")
        return _status(400, "Bad Request")

    def with_wrong_id(self, answer: bytes) -> bytes:
        raise NotImplementedError("http answers are matched in order, not by id")
