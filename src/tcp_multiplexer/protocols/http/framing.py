"""HTTP/1.1 messages, framed by the body rules of RFC 9112 section 6.3.

Wire layout of one message (RFC 9112 section 2.1)::

    +------------------------------------------+
    | start line CRLF                          |  request: method SP target SP HTTP/1.x
    |                                          |  response: HTTP/1.x SP status [SP reason]
    | *( field-name ":" OWS value OWS CRLF )   |  header block: at most HTTP_MAX_HEADER_SIZE,
    | CRLF                                     |  start line and blank line included
    +------------------------------------------+
    | body, framed by the first rule that applies:
    |   response to HEAD, 1xx, 204, 304 -> none
    |   Transfer-Encoding: chunked      -> chunks up to the last (size 0) one, then trailers:
    |       *( hex-size [;ext] CRLF  size bytes of data  CRLF )
    |       0 [;ext] CRLF  *( trailer field CRLF )  CRLF
    |   Content-Length: n               -> exactly n bytes
    |   otherwise, request              -> none
    |   otherwise, response             -> every byte until the target closes (close-delimited)
    +------------------------------------------+

The target connection is shared between clients, so any framing the target might read
differently from us would let one client smuggle a request into another's exchange
(RFC 9112 section 11.2). Everything ambiguous is therefore rejected rather than guessed:
Content-Length with Transfer-Encoding, any transfer coding but a lone ``chunked``,
differing Content-Length values, obsolete line folding, whitespace before a colon, bare
CR or NUL, malformed chunk lines. Upgrade, CONNECT and 101 responses would turn the
connection into a tunnel, which a request/response multiplexer cannot share, so they are
rejected too.

Interim (1xx) responses come before the final response to the same request (RFC 9110
section 15.2). The core matches one response message to each request, so the response
framer hands back every interim response joined to the final one that follows, as one
message::

    [ 1xx header block ]*  final header block  [ body ]

Lines in the header block and in the trailer section may end in a bare LF, as RFC 9112
section 2.2 allows and h11, nginx and Node accept; chunk-size lines and the CRLF after
chunk data must be exact CRLF (as in h11). Messages are handed back byte for byte.

A client that sends ``Expect: 100-continue`` waits for ``100 Continue`` before sending
its body (RFC 9110 section 10.1.1), but the multiplexer forwards only complete requests:
the request framer offers that interim reply through `take_interim_reply`.

Which message ends the connection (RFC 9112 section 9.3: ``Connection: close``,
HTTP/1.0 without ``keep-alive``, a close-delimited response) is read from the header
block the framer parses anyway, and told by `closing_at`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable
from typing import Final

from tcp_multiplexer.errors import FramingError, MalformedMessage, MessageTooLarge
from tcp_multiplexer.protocols.framing import MessageBuffer
from tcp_multiplexer.protocols.spec import ProtocolName

HTTP_MAX_HEADER_SIZE: Final = 16 * 1024
"""Longest header block, start line and blank line included (h11's default too).

The same bound applies to each chunk-size line and to the trailer section. In a response,
interim (1xx) header blocks count towards it together with the final one: the framer holds
them until the final response is complete, and a bound on each block alone would let a
target send 1xx responses without end. Real interim responses are a few dozen bytes
(``100 Continue``) or a few ``Link`` fields (``103 Early Hints``).
"""
HTTP_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
"""The interim reply to a request that expects ``100-continue`` (see `take_interim_reply`)."""
HTTP_MAX_BODY_SIZE: Final = 16 * 1024 * 1024
"""Default longest body as it is on the wire (chunk framing and trailers included).

Whole messages are held in memory until complete, so this bounds memory per connection.
"""

_PROTOCOL: Final = ProtocolName.HTTP

# Framer states: where in a message the next byte belongs.
_HEAD: Final = 0
"""Looking for the blank line that ends the header block."""
_FIXED: Final = 1
"""Content-Length body: the message ends at a known offset."""
_CHUNK_LINE: Final = 2
"""Looking for the LF that ends a chunk-size line."""
_CHUNK_DATA: Final = 3
"""Waiting for chunk data and its CRLF."""
_TRAILER: Final = 4
"""After the last chunk: looking for the blank line that ends the trailer section."""
_CLOSE: Final = 5
"""Close-delimited response body: everything up to EOF."""

# Body framing decided by a header block, besides _FIXED and _CHUNK_LINE (chunked).
_NO_BODY: Final = 6
_UNDELIMITED: Final = 7
"""Neither Content-Length nor Transfer-Encoding."""
_INTERIM: Final = 8
"""An interim (1xx) response: no body, and the final response is still to come."""

_MAX_LENGTH_DIGITS: Final = 19
"""Content-Length digits accepted: 19 reach 2**63 - 1, the largest size most targets can
hold; longer values are an overflow attempt, and `int()` refuses strings over 4300 digits.
"""
_MAX_CHUNK_SIZE_DIGITS: Final = 16
"""Hex digits in a chunk size: 16 reach 2**64 - 1; more is padding or an overflow attempt."""

_DIGITS: Final = frozenset(b"0123456789")
_HEX_DIGITS: Final = frozenset(b"0123456789abcdefABCDEF")
_TCHARS: Final = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
"""RFC 9110 section 5.6.2 token characters (deleted with `bytes.translate` to validate)."""
_VCHARS: Final = bytes(range(0x21, 0x7F))
"""Visible ASCII: what a request-target may contain (RFC 3986 characters are a subset)."""
_OWS: Final = b" \t"
_SP: Final = 0x20

_FRAMING_FIELDS: Final = frozenset(
    (b"content-length", b"transfer-encoding", b"upgrade", b"connection", b"expect")
)
"""The only fields whose values the framers and the codec read (lower-case)."""

# The usual header block (CRLF line ends, at most one Content-Length, no other framing
# field) is validated and read by one regex match instead of line by line. Anything
# else takes the line-by-line path, which says what is wrong with a block it rejects.
# Each regex accepts a subset of what that path accepts and reads the same framing.
_TOKEN_RE: Final = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_CONTENT_LENGTH_RE: Final = rb"(?:(?i:content-length):[ \t]*([0-9]{1,19})[ \t]*\r\n"


_KEEP_ALIVE_LINE_RE: Final = rb"((?i:connection):[ \t]*(?i:keep-alive)[ \t]*\r\n)"
"""A Connection field saying only keep-alive (a group: set if the block has one)."""


def _plain_fields_re(skipped: bytes) -> bytes:
    """Field lines, the blank line included, with at most one Content-Length, no field
    named in `skipped` (names separated by "|") and no Connection field but keep-alive.

    Groups: keep-alive before Content-Length, Content-Length, keep-alive after it.
    """
    other = rb"(?!(?i:" + skipped + rb"|connection):)" + _TOKEN_RE + rb":[^\0\r\n]*\r\n"
    line = rb"(?:" + other + rb"|" + _KEEP_ALIVE_LINE_RE + rb")"
    return line + rb"*" + _CONTENT_LENGTH_RE + line + rb"*)?\r\n"


_PLAIN_REQUEST_HEAD: Final = re.compile(
    rb"(?!CONNECT )"
    + _TOKEN_RE
    + rb" [\x21-\x7e]+ HTTP/1\.([0-9])\r\n"
    + _plain_fields_re(b"content-length|transfer-encoding|upgrade|expect")
)
"""A request header block, not CONNECT. Groups: minor version, keep-alive, Content-Length
(None without one), keep-alive."""
_PLAIN_RESPONSE_HEAD: Final = re.compile(
    rb"HTTP/1\.([0-9]) ([1-5][0-9]{2})(?: [^\0\r\n]*)?\r\n"
    + _plain_fields_re(b"content-length|transfer-encoding")
)
"""A response header block. Groups: minor version, status, keep-alive, Content-Length
(None without one), keep-alive."""


class _HttpFramer(ABC):
    """The incremental parser shared by request and response framers.

    State between calls is kept as offsets relative to the start of the message being
    read, which is always at the front of the buffer: `_scan` (where the next delimiter
    search resumes), `_head_start` (start of the header block being read: past the
    interim responses already read, which belong to the same message), `_body_start`
    and `_target` (end of the Content-Length body, start of the current chunk-size line
    or trailer section, or end of the chunk data).
    """

    __slots__ = (
        "_body_start",
        "_buffer",
        "_closing",
        "_head_start",
        "_max_body",
        "_max_header",
        "_scan",
        "_state",
        "_target",
        "closing_at",
    )

    def __init__(self, *, max_body_size: int, max_header_size: int) -> None:
        if max_body_size < 0:
            raise ValueError("max_body_size must not be negative")
        if max_header_size < 1:
            raise ValueError("max_header_size must be positive")
        self._buffer = MessageBuffer()
        self._max_body = max_body_size
        self._max_header = max_header_size
        self._state = _HEAD
        self._scan = 0
        self._head_start = 0
        self._body_start = 0
        self._target = 0
        self._closing = False
        """The message being read ends the connection (its final header block says so)."""
        self.closing_at = -1
        """Index, in what the last feed() or feed_eof() returned, of the first message
        that ends the connection; -1 if none does."""

    @property
    def buffered(self) -> int:
        return len(self._buffer.buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add `data`; return every message now complete, in order ([] = need more).

        Raises:
            MessageTooLarge: a header block (a response's interim and final header
                blocks together), chunk-size line or trailer section is longer than the
                header limit, or a body longer than the body limit (as soon as
                Content-Length or a chunk size shows it).
            MalformedMessage: the bytes are not HTTP/1.1, or could be framed differently
                by another parser (see the module docstring).
        """
        buffer = self._buffer
        buffer.check()
        self.closing_at = -1
        buf = buffer.buf
        try:
            if buf:
                buf += data
                messages, consumed = self._frame(buf)
                if consumed:
                    del buf[:consumed]
            else:
                # Fast path: parse `data` in place, so a message that arrives in one
                # read is handed back without being copied; keep only the remainder.
                messages, consumed = self._frame(data)
                if consumed < len(data):
                    buf += memoryview(data)[consumed:]
        except FramingError as error:
            raise buffer.poison(error) from None
        return messages

    def feed_eof(self) -> list[bytes]:
        """The peer closed: return a close-delimited response, if one is being read.

        Raises:
            IncompleteMessage: part of any other message is buffered.
        """
        buffer = self._buffer
        buffer.check()
        self.closing_at = -1
        if self._state == _CLOSE:
            message = bytes(buffer.buf)
            buffer.buf.clear()
            self._state = _HEAD
            self._scan = self._head_start = 0
            self.closing_at = 0
            return [message]
        return buffer.eof_without_message(_PROTOCOL)

    _plain_head: re.Pattern[bytes]
    """The usual header block, which needs no line-by-line reading."""

    @abstractmethod
    def _parse_head(self, plain: re.Match[bytes] | None, block: bytes) -> tuple[int, int, bool]:
        """The body framing and Content-Length of a header block, and whether its
        message ends the connection: `plain` if it matched `_plain_head`, else `block`,
        which is validated line by line."""

    def _frame(self, source: bytes | bytearray) -> tuple[list[bytes], int]:
        """Cut every complete message from the front of `source`.

        Returns the messages and how many bytes of `source` they take; the state for the
        partial message after them is saved relative to that point.
        """
        messages: list[bytes] = []
        size = len(source)
        start = 0
        state = self._state
        scan = self._scan
        head_start = self._head_start
        body_start = self._body_start
        target = self._target
        max_header = self._max_header
        max_body = self._max_body
        closing = self._closing
        while True:
            if state == _HEAD:
                if head_start == size:
                    break
                # One attempt per header block, when its first bytes come in: the usual
                # block arrives whole. Later attempts would rescan what trickles in.
                plain = self._plain_head.match(source, head_start) if scan == head_start else None
                if plain is not None:
                    # The match ends at the first blank line, where the search would.
                    end = plain.end()
                    block = b""
                else:
                    end = _blank_line_end(source, scan)
                    # Measured from the message start, so interim header blocks count too.
                    if end < 0:
                        if size - start > max_header:
                            raise _too_large(
                                _head_kind(start, head_start), size - start, max_header
                            )
                        # The blank line may begin in the last two bytes ("\n\r" + "\n").
                        scan = max(head_start, size - 2)
                        break
                    block = bytes(source[head_start:end])
                if end - start > max_header:
                    raise _too_large(_head_kind(start, head_start), end - start, max_header)
                framing, length, closing = self._parse_head(plain, block)
                body_start = end
                if framing == _INTERIM:
                    head_start = scan = end
                elif framing == _NO_BODY:
                    messages.append(bytes(source[start:end]))
                    if closing:
                        self._closed_by(messages)
                    start = head_start = scan = end
                elif framing == _FIXED:
                    if length > max_body:
                        raise _too_large("Content-Length body", length, max_body)
                    state = _FIXED
                    target = end + length
                elif framing == _CHUNK_LINE:
                    state = _CHUNK_LINE
                    target = scan = end
                else:
                    state = _CLOSE
            elif state == _FIXED:
                if size < target:
                    break
                messages.append(bytes(source[start:target]))
                if closing:
                    self._closed_by(messages)
                start = head_start = scan = target
                state = _HEAD
            elif state == _CHUNK_LINE:
                newline = source.find(b"\n", scan)
                if newline < 0:
                    if size - target > max_header:
                        raise _too_large("chunk-size line", size - target, max_header)
                    if size - body_start > max_body:
                        raise _too_large("chunked body", size - body_start, max_body)
                    scan = size
                    break
                if newline - target > max_header:
                    raise _too_large("chunk-size line", newline - target, max_header)
                chunk_size = _chunk_size(source[target:newline])
                if chunk_size:
                    target = newline + 1 + chunk_size
                    if target + 2 - body_start > max_body:
                        raise _too_large("chunked body", target + 2 - body_start, max_body)
                    state = _CHUNK_DATA
                else:
                    # The trailer section may be empty: its blank line then directly
                    # follows this line's LF, so the search starts at that LF.
                    state = _TRAILER
                    target = newline + 1
                    scan = newline
            elif state == _CHUNK_DATA:
                if size < target + 2:
                    break
                if source[target : target + 2] != b"\r\n":
                    raise MalformedMessage(_PROTOCOL, "chunk data is not followed by CRLF")
                target = scan = target + 2
                state = _CHUNK_LINE
            elif state == _TRAILER:
                end = _blank_line_end(source, scan)
                if end < 0:
                    if size - target > max_header:
                        raise _too_large("trailer section", size - target, max_header)
                    if size - body_start > max_body:
                        raise _too_large("chunked body", size - body_start, max_body)
                    scan = max(scan, size - 2)
                    break
                if end - target > max_header:
                    raise _too_large("trailer section", end - target, max_header)
                if end - body_start > max_body:
                    raise _too_large("chunked body", end - body_start, max_body)
                _framing_fields(_head_lines(bytes(source[target:end])))
                messages.append(bytes(source[start:end]))
                if closing:
                    self._closed_by(messages)
                start = head_start = scan = end
                state = _HEAD
            else:  # _CLOSE: nothing ends the body but EOF
                if size - body_start > max_body:
                    raise _too_large("close-delimited body", size - body_start, max_body)
                break
        self._state = state
        self._scan = scan - start
        self._head_start = head_start - start
        self._body_start = body_start - start
        self._target = target - start
        self._closing = closing
        return messages, start

    def _closed_by(self, messages: list[bytes]) -> None:
        """The last of `messages` ends the connection."""
        if self.closing_at < 0:
            self.closing_at = len(messages) - 1


class HttpRequestFramer(_HttpFramer):
    """Cuts a client's stream into HTTP/1.1 requests (pipelining allowed).

    A request without Content-Length or Transfer-Encoding has no body. Upgrade and
    CONNECT are rejected: a shared target connection cannot become a tunnel.
    Limits: `max_header_size` per header block, chunk-size line and trailer section;
    `max_body_size` per body as it is on the wire.
    """

    __slots__ = ("_continue_due",)

    offers_interim_replies: Final = True
    """``100 Continue``, for a request that expects it."""

    def feed(self, data: bytes) -> list[bytes]:
        """As `_HttpFramer.feed`; `data` that is exactly one usual request is handed back
        as it is, without the incremental parser (the usual case: one read, one request).
        """
        if not self._buffer.buf and not self._scan and self._buffer.error is None:
            plain = self._plain_head.match(data)
            if plain is not None:
                length = plain[3]
                head_end = plain.end()
                if length is None:
                    whole = head_end == len(data)
                else:
                    whole = (
                        head_end + int(length) == len(data)
                        and len(data) - head_end <= self._max_body
                    )
                if whole and head_end <= self._max_header:
                    self._continue_due = False
                    # HTTP/1.0 ends the connection unless a Connection field says keep-alive.
                    closes = plain[1] == b"0" and plain[2] is None and plain[4] is None
                    self.closing_at = 0 if closes else -1
                    return [data]
        return _HttpFramer.feed(self, data)

    def __init__(
        self,
        *,
        max_body_size: int = HTTP_MAX_BODY_SIZE,
        max_header_size: int = HTTP_MAX_HEADER_SIZE,
    ) -> None:
        super().__init__(max_body_size=max_body_size, max_header_size=max_header_size)
        self._continue_due = False
        """The last header block read expects 100-continue, and its reply is not taken."""

    def take_interim_reply(self) -> bytes | None:
        """`HTTP_CONTINUE` once for a request still being read that expects it, else None.

        A request expects it when it is HTTP/1.1 (or a later 1.x), has a body (Content-
        Length or chunked) and an ``Expect`` field listing ``100-continue`` in any case;
        HTTP/1.0 expectations are ignored (RFC 9110 section 10.1.1). The reply is offered
        only while that request's body is incomplete: a request that arrived whole needs
        none, and neither does a poisoned framer's peer, which is about to be closed.

        The reply belongs to the request still being read, after every request already
        handed back, so it must reach the client after their responses (the client would
        otherwise take it as an interim response to an earlier request). The target may
        send its own ``100 Continue`` as well; clients accept any number of 1xx responses
        before the final one (RFC 9110 section 15.2).
        """
        if not self._continue_due or self._state == _HEAD or self._buffer.poisoned:
            return None
        self._continue_due = False
        return HTTP_CONTINUE

    _plain_head = _PLAIN_REQUEST_HEAD

    def _parse_head(self, plain: re.Match[bytes] | None, block: bytes) -> tuple[int, int, bool]:
        if plain is not None:
            self._continue_due = False
            # HTTP/1.0 ends the connection unless a Connection field says keep-alive.
            closes = plain[1] == b"0" and plain[2] is None and plain[4] is None
            if plain[3] is None:
                return _NO_BODY, 0, closes
            return _FIXED, int(plain[3]), closes
        lines = _head_lines(block)
        method = _request_method(lines[0])
        if method == b"CONNECT":
            raise MalformedMessage(_PROTOCOL, "CONNECT is not supported")
        fields = _framing_fields(lines[1:])
        if b"upgrade" in fields:
            raise MalformedMessage(_PROTOCOL, "Upgrade is not supported")
        framing, length = _body_framing(fields)
        # The request line ends in the version, 8 bytes (checked by _request_method).
        closes = _ends_connection(lines[0][-8:], fields)
        if framing == _UNDELIMITED:
            self._continue_due = False
            return _NO_BODY, 0, closes
        # A Content-Length of 0 completes the request at once, so the reply is never due.
        self._continue_due = (
            b"expect" in fields
            and not lines[0].endswith(b" HTTP/1.0")
            and b"100-continue" in _tokens(fields[b"expect"])
        )
        return framing, length, closes


class HttpResponseFramer(_HttpFramer):
    """Cuts a target's stream into HTTP/1.1 responses, given the requests sent.

    Call `expect_response(request)` before each request is sent: the framer keeps the
    requests' methods in order, because a response to HEAD has no body whatever its
    headers say. Interim (1xx) responses are not messages of their own: each message
    handed back is the interim responses to one request, byte for byte, followed by its
    final response. A final response with neither Content-Length nor chunked coding is
    close-delimited: `feed_eof()` returns it (with any interim responses before it).

    Raises `MalformedMessage` for a response when no request is outstanding (checked once
    its header block is in) and for 101 Switching Protocols (Upgrade is not supported).
    """

    __slots__ = ("_head_requests",)

    offers_interim_replies: Final = False

    def feed(self, data: bytes) -> list[bytes]:
        """As `_HttpFramer.feed`; `data` that is exactly one usual final response to the
        oldest request is handed back as it is, without the incremental parser."""
        heads = self._head_requests
        if heads and not self._buffer.buf and not self._scan and self._buffer.error is None:
            plain = self._plain_head.match(data)
            if plain is not None and plain[2][0] != 0x31:  # not an interim (1xx) response
                head_end = plain.end()
                status = plain[2]
                if heads[0] or status == b"204" or status == b"304":
                    whole = head_end == len(data)
                else:
                    length = plain[4]
                    whole = (
                        length is not None
                        and head_end + int(length) == len(data)
                        and len(data) - head_end <= self._max_body
                    )
                if whole and head_end <= self._max_header:
                    heads.popleft()
                    # HTTP/1.0 ends the connection unless a Connection field says keep-alive.
                    closes = plain[1] == b"0" and plain[3] is None and plain[5] is None
                    self.closing_at = 0 if closes else -1
                    return [data]
        return _HttpFramer.feed(self, data)

    def __init__(
        self,
        *,
        max_body_size: int = HTTP_MAX_BODY_SIZE,
        max_header_size: int = HTTP_MAX_HEADER_SIZE,
    ) -> None:
        super().__init__(max_body_size=max_body_size, max_header_size=max_header_size)
        self._head_requests: deque[bool] = deque()
        """One entry per request awaiting its final response: True for HEAD."""

    def expect_response(self, request: bytes) -> None:
        """Note that `request` (a complete request message) is about to be sent."""
        self._head_requests.append(request.startswith(b"HEAD "))

    def take_interim_reply(self) -> bytes | None:
        """None: the multiplexer never answers a target."""
        return None

    _plain_head = _PLAIN_RESPONSE_HEAD

    def _parse_head(self, plain: re.Match[bytes] | None, block: bytes) -> tuple[int, int, bool]:
        if not self._head_requests:
            raise MalformedMessage(_PROTOCOL, "response without an outstanding request")
        if plain is not None:
            status = int(plain[2])
            framing, length = (_UNDELIMITED, 0) if plain[4] is None else (_FIXED, int(plain[4]))
            # HTTP/1.0 ends the connection unless a Connection field says keep-alive.
            closes = plain[1] == b"0" and plain[3] is None and plain[5] is None
        else:
            lines = _head_lines(block)
            status = _status_code(lines[0])
            # Framing fields are validated even where they are ignored: a target that
            # sends a malformed one is not one whose framing can be trusted.
            fields = _framing_fields(lines[1:])
            framing, length = _body_framing(fields)
            closes = _ends_connection(lines[0][:8], fields)
        if status < 200:
            if status == 101:
                raise MalformedMessage(_PROTOCOL, "101 Switching Protocols: Upgrade not supported")
            # Only the final response's Connection field counts (as in h11).
            return _INTERIM, 0, False
        if self._head_requests.popleft() or status == 204 or status == 304:
            return _NO_BODY, 0, closes
        if framing == _UNDELIMITED:
            return _CLOSE, 0, True
        return framing, length, closes


def _head_kind(start: int, head_start: int) -> str:
    """What the header limit is bounding, for the error message."""
    return "header block" if head_start == start else "header block, 1xx responses included,"


def _blank_line_end(source: bytes | bytearray, start: int) -> int:
    """Offset just past the first blank line (LF, optional CR, LF) at or after `start`.

    Returns -1 if there is none yet.
    """
    crlf = source.find(b"\n\r\n", start)
    if crlf < 0:
        bare = source.find(b"\n\n", start)
        return bare + 2 if bare >= 0 else -1
    # A bare "\n\n" before the first "\n\r\n" ends the block earlier (it cannot start at
    # `crlf` itself, so the search stops there).
    bare = source.find(b"\n\n", start, crlf + 1)
    return bare + 2 if bare >= 0 else crlf + 3


def _head_lines(block: bytes) -> list[bytes]:
    """The lines of a header block or trailer section, without line ends or blank line.

    Raises:
        MalformedMessage: a bare CR or a NUL (RFC 9110 section 5.5: dangerous to forward).
    """
    if b"\0" in block or block.count(b"\r") != block.count(b"\r\n"):
        raise MalformedMessage(_PROTOCOL, "bare CR or NUL in a header block")
    lines = block.replace(b"\r\n", b"\n").split(b"\n")
    del lines[-2:]  # the blank line, and the empty string after its LF
    return lines


def _request_method(line: bytes) -> bytes:
    """The method of a valid request line (method SP request-target SP HTTP-version)."""
    parts = line.split(b" ")
    if (
        len(parts) != 3
        or not parts[0]
        or parts[0].translate(None, _TCHARS)
        or not parts[1]
        or parts[1].translate(None, _VCHARS)
        or not _is_version(parts[2])
    ):
        raise MalformedMessage(_PROTOCOL, f"bad request line {line[:80]!r}")
    return parts[0]


_STATUS_CLASSES: Final = frozenset(b"12345")


def _status_code(line: bytes) -> int:
    """The status of a valid status line (HTTP-version SP 3DIGIT [SP reason]); the
    code is 100 to 599 (RFC 9110 section 15: its first digit is its class, 1 to 5)."""
    if (
        len(line) < 12
        or not _is_version(line[:8])
        or line[8] != _SP
        or not _DIGITS.issuperset(line[9:12])
        or line[9] not in _STATUS_CLASSES
        or (len(line) > 12 and line[12] != _SP)
    ):
        raise MalformedMessage(_PROTOCOL, f"bad status line {line[:80]!r}")
    return int(line[9:12])


def _is_version(version: bytes) -> bool:
    """HTTP/1.x: later minor versions are read as 1.1 (RFC 9110 section 2.5)."""
    return len(version) == 8 and version.startswith(b"HTTP/1.") and version[7] in _DIGITS


def _framing_fields(lines: Iterable[bytes]) -> dict[bytes, list[bytes]]:
    """Validate field lines; return the values of `_FRAMING_FIELDS` by lower-case name.

    Raises:
        MalformedMessage: obsolete line folding, a line without a colon, whitespace
            before the colon, or a name that is not a token.
    """
    fields: dict[bytes, list[bytes]] = {}
    for line in lines:
        colon = line.find(b":")
        name = line[:colon]
        if colon < 1 or name.translate(None, _TCHARS):
            raise MalformedMessage(_PROTOCOL, _field_line_error(line))
        lowered = name.lower()
        if lowered in _FRAMING_FIELDS:
            fields.setdefault(lowered, []).append(line[colon + 1 :].strip(_OWS))
    return fields


def _field_line_error(line: bytes) -> str:
    if line[:1] in (b" ", b"\t"):
        problem = "obsolete line folding"
    elif b":" not in line:
        problem = "field line without a colon"
    elif line.split(b":", 1)[0][-1:] in (b" ", b"\t"):
        problem = "whitespace before the colon"
    else:
        problem = "invalid field name"
    return f"{problem}: {line[:80]!r}"


def _body_framing(fields: dict[bytes, list[bytes]]) -> tuple[int, int]:
    """(_CHUNK_LINE, 0), (_FIXED, length) or (_UNDELIMITED, 0): RFC 9112 section 6.3.

    Raises:
        MalformedMessage: Content-Length with Transfer-Encoding, a coding other than a
            lone ``chunked``, or a Content-Length that is not one repeated number.
    """
    codings = fields.get(b"transfer-encoding")
    lengths = fields.get(b"content-length")
    if codings is not None:
        if lengths is not None:
            raise MalformedMessage(_PROTOCOL, "Content-Length with Transfer-Encoding")
        if len(codings) != 1 or codings[0].lower() != b"chunked":
            raise MalformedMessage(
                _PROTOCOL, f"unsupported Transfer-Encoding {b', '.join(codings)[:80]!r}"
            )
        return _CHUNK_LINE, 0
    if lengths is not None:
        return _FIXED, _content_length(lengths)
    return _UNDELIMITED, 0


def _content_length(values: list[bytes]) -> int:
    # Identical repeats, in several fields or a comma list, are allowed (RFC 9110 section
    # 8.6); they are compared as written, so "5" and "05" differ, as in h11.
    distinct = {item.strip(_OWS) for value in values for item in value.split(b",")}
    if len(distinct) != 1:
        raise MalformedMessage(_PROTOCOL, f"differing Content-Length values {sorted(distinct)!r}")
    (digits,) = distinct
    if not digits or not _DIGITS.issuperset(digits):
        raise MalformedMessage(_PROTOCOL, f"Content-Length {digits[:80]!r} is not digits")
    if len(digits) > _MAX_LENGTH_DIGITS:
        raise MalformedMessage(_PROTOCOL, f"Content-Length of {len(digits)} digits")
    return int(digits)


def _chunk_size(line: bytes | bytearray) -> int:
    """The size announced by a chunk-size line (LF excluded): hex [BWS ; extensions] CR.

    Extensions are not interpreted (they travel unchanged).
    """
    if not line or line.find(b"\r") != len(line) - 1 or b"\0" in line:
        raise MalformedMessage(_PROTOCOL, f"chunk-size line {bytes(line[:80])!r} not ended by CRLF")
    digits = line[:-1].partition(b";")[0].rstrip(_OWS)
    if not digits or len(digits) > _MAX_CHUNK_SIZE_DIGITS or not _HEX_DIGITS.issuperset(digits):
        raise MalformedMessage(_PROTOCOL, f"bad chunk size in {bytes(line[:80])!r}")
    return int(digits, 16)


def _too_large(what: str, size: int, limit: int) -> MessageTooLarge:
    return MessageTooLarge(_PROTOCOL, f"{what} of {size}+ bytes exceeds the limit of {limit}")


def _tokens(values: Iterable[bytes]) -> set[bytes]:
    """The lower-case items of comma-separated field values (Connection, Expect)."""
    return {token.strip(_OWS).lower() for value in values for token in value.split(b",")}


def _ends_connection(version: bytes, fields: dict[bytes, list[bytes]]) -> bool:
    """RFC 9112 section 9.3: `Connection: close`, or HTTP/1.0 without keep-alive."""
    tokens = _tokens(fields.get(b"connection", ()))
    if b"close" in tokens:
        return True
    return version == b"HTTP/1.0" and b"keep-alive" not in tokens
