"""Modbus RTU: frames on a serial line, or over a TCP socket to an RTU converter.

A frame is the unit id, the PDU and a CRC-16 (polynomial 0xA001 reflected, initial
0xFFFF, low byte first), with no length field: the end of an answer is found from its
function code, and from its byte count where it has one (Modbus over serial line
v1.02, section 2.5.1; Application Protocol v1.1b3 for each function's layout). On a
line, frames are separated by at least 3.5 character times of silence; the connection
keeps that pause (`Target.silence`), the framers here need only the bytes.

`RtuAnswerFramer` is told of each request before it is sent (`expect_response`) and
frames the one answer it waits for: a frame with a bad CRC, or a function code whose
length cannot be known, raises `DamagedMessage` (that request fails with 0x0B; the line
goes on); a well-formed frame from another unit or for another function (a late answer
to an earlier request) is dropped; bytes while nothing is expected are noise and
dropped. It hands back the frame without its CRC: unit id and PDU.

`RtuRequestFramer` cuts requests, for the example device.
"""

from __future__ import annotations

from typing import Final

from tcp_multiplexer.errors import DamagedMessage, IncompleteMessage, MessageTooLarge
from tcp_multiplexer.protocols.spec import ProtocolName

RTU_MAX_FRAME: Final = 256
"""Unit id, 253 bytes of PDU, two of CRC."""
EXCEPTION_FLAG: Final = 0x80
BROADCAST: Final = 0
"""Unit 0: every device on the line acts on it, none answers."""
BROADCAST_TURNAROUND: Final = 0.1
"""Seconds the line stays quiet after a broadcast, for the devices to act on it
(the serial line specification suggests 100 to 200 ms)."""
_NAME: Final = ProtocolName.MODBUS


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _bit in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE: Final = _crc_table()


def crc16(data: bytes | bytearray | memoryview) -> int:
    """The Modbus CRC-16 of `data`."""
    crc = 0xFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def with_crc(body: bytes) -> bytes:
    """`body` (unit id and PDU) with its CRC appended, low byte first."""
    return body + crc16(body).to_bytes(2, "little")


def crc_ok(frame: bytes | bytearray) -> bool:
    """True if the last two bytes of `frame` are the CRC of the rest."""
    return len(frame) >= 4 and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")


# ---------------------------------------------------------------------------- lengths

_FIXED_ANSWERS: Final = {5: 8, 6: 8, 8: 8, 11: 8, 15: 8, 16: 8, 7: 5, 22: 10}
"""Answer frame sizes of the functions whose answers have a fixed layout."""
_COUNTED_ANSWERS: Final = frozenset({1, 2, 3, 4, 12, 17, 20, 21, 23})
"""Functions whose answer carries a byte count in its third byte."""
_FIXED_REQUESTS: Final = {
    **{function: 8 for function in (1, 2, 3, 4, 5, 6, 8)},
    **{function: 4 for function in (7, 11, 12, 17)},
    22: 10,
    24: 6,
}
MEI: Final = 43
READ_DEVICE_ID: Final = 14


def answer_length(frame: bytes | bytearray) -> int | None:
    """The size of the answer frame that starts `frame`, CRC included; None if more
    bytes are needed to tell.

    Raises:
        DamagedMessage: the function code is not one whose answer length is known.
    """
    if len(frame) < 2:
        return None
    function = frame[1]
    if function & EXCEPTION_FLAG:
        return 5
    fixed = _FIXED_ANSWERS.get(function)
    if fixed is not None:
        return fixed
    if function in _COUNTED_ANSWERS:
        return None if len(frame) < 3 else 3 + frame[2] + 2
    if function == 24:  # read FIFO queue: a two-byte byte count
        return None if len(frame) < 4 else 4 + int.from_bytes(frame[2:4], "big") + 2
    if function == MEI:
        return _device_id_length(frame)
    raise DamagedMessage(_NAME, f"answer with function code {function}: its length is unknown")


def _device_id_length(frame: bytes | bytearray) -> int | None:
    """Read Device Identification (43 / 14): objects of (id, length, value)."""
    if len(frame) < 3:
        return None
    if frame[2] != READ_DEVICE_ID:
        raise DamagedMessage(_NAME, f"MEI type {frame[2]} is not supported over RTU")
    if len(frame) < 8:
        return None
    count = frame[7]
    offset = 8
    for _object in range(count):
        if len(frame) < offset + 2:
            return None
        offset += 2 + frame[offset + 1]
    return offset + 2


def request_length(frame: bytes | bytearray) -> int | None:
    """The size of the request frame that starts `frame`, CRC included; None if more
    bytes are needed.

    Raises:
        DamagedMessage: a function code whose request length is not known.
    """
    if len(frame) < 2:
        return None
    function = frame[1]
    fixed = _FIXED_REQUESTS.get(function)
    if fixed is not None:
        return fixed
    if function in (15, 16):
        return None if len(frame) < 7 else 7 + frame[6] + 2
    if function == 23:
        return None if len(frame) < 11 else 11 + frame[10] + 2
    if function in (20, 21):
        return None if len(frame) < 3 else 3 + frame[2] + 2
    if function == MEI:
        return 7
    raise DamagedMessage(_NAME, f"request with function code {function}: its length is unknown")


# ---------------------------------------------------------------------------- framers


class RtuAnswerFramer:
    """Frames the one answer a Modbus RTU line owes (see the module docstring)."""

    __slots__ = ("_buf", "_echo", "_expected", "_local_echo")

    closing_at: Final = -1
    offers_interim_replies: Final = False

    def __init__(self, *, echo: bool = False) -> None:
        self._buf = bytearray()
        self._expected: tuple[int, int] | None = None
        """(unit, function) of the request waiting for its answer."""
        self._local_echo = echo
        """A half-duplex adapter reads back what it sends: each request comes back
        first, and is checked and dropped before its answer is framed."""
        self._echo = b""
        """What of the last request's echo has not come back yet."""

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def expect_response(self, request: bytes) -> None:
        """`request` (an RTU frame) is about to be sent: what came before it is stale."""
        self._buf.clear()
        self._expected = None if request[0] == BROADCAST else (request[0], request[1])
        if self._local_echo:
            self._echo = request

    def feed(self, data: bytes) -> list[bytes]:
        if self._echo:
            data = self._take_echo(data)
        expected = self._expected
        if expected is None:
            return []  # nothing asked: noise, or a late answer
        buf = self._buf
        buf += data
        while True:
            try:
                size = answer_length(buf)
            except DamagedMessage:
                self._reset()
                raise
            if size is not None and size > RTU_MAX_FRAME:
                self._reset()
                raise DamagedMessage(_NAME, f"an answer of {size} bytes, over 256")
            if size is None or len(buf) < size:
                if len(buf) > RTU_MAX_FRAME:  # still unknown (device identification)
                    self._reset()
                    raise DamagedMessage(_NAME, f"no frame in {len(buf)} bytes")
                return []
            frame = bytes(buf[:size])
            if not crc_ok(frame):
                self._reset()
                raise DamagedMessage(_NAME, f"bad CRC in {frame.hex(' ')}")
            del buf[:size]
            if frame[0] == expected[0] and frame[1] & 0x7F == expected[1]:
                self._reset()
                return [frame[:-2]]
            # A whole frame for another request (a late answer): skip it.

    def _take_echo(self, data: bytes) -> bytes:
        """Drop the echo of the request from the front of `data`; the rest is the
        answer's.

        Raises:
            DamagedMessage: the echo differs from the request (a collision on the
                line, or an adapter that does not echo): that request fails.
        """
        echo = self._echo
        size = min(len(echo), len(data))
        if data[:size] != echo[:size]:
            self._echo = b""
            self._reset()
            raise DamagedMessage(
                _NAME, f"the adapter's echo {data[:size].hex(' ')} is not what was sent"
            )
        self._echo = echo[size:]
        return data[size:]

    def _reset(self) -> None:
        self._buf.clear()
        self._expected = None

    def feed_eof(self) -> list[bytes]:
        if self._buf and self._expected is not None:
            size = len(self._buf)
            self._reset()
            raise IncompleteMessage(_NAME, f"stream ended inside an answer ({size} bytes)")
        return []

    def take_interim_reply(self) -> bytes | None:
        return None


class RtuRequestFramer:
    """Cuts a stream of RTU requests (the example device's side), CRC kept.

    A frame with a bad CRC raises `DamagedMessage` and what was held is dropped, as a
    device ignores a damaged frame and waits for the next one; the good frames before
    it in the same feed are returned first, and the damage raised on the next feed.
    """

    __slots__ = ("_buf",)

    closing_at: Final = -1
    offers_interim_replies: Final = False

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        while True:
            # A damaged frame after good ones: the good ones now, the damage on the
            # next feed (the bytes stay held until then).
            try:
                size = request_length(buf)
            except DamagedMessage:
                if frames:
                    return frames
                buf.clear()
                raise
            if size is not None and size > RTU_MAX_FRAME:
                if frames:
                    return frames
                buf.clear()
                raise MessageTooLarge(_NAME, f"RTU request of {size} bytes, over 256")
            if size is None or len(buf) < size:
                return frames
            frame = bytes(buf[:size])
            if not crc_ok(frame):
                if frames:
                    return frames
                buf.clear()
                raise DamagedMessage(_NAME, f"bad CRC in {frame.hex(' ')}")
            del buf[:size]
            frames.append(frame)

    def feed_eof(self) -> list[bytes]:
        if self._buf:
            size = len(self._buf)
            self._buf.clear()
            raise IncompleteMessage(_NAME, f"stream ended inside a request ({size} bytes)")
        return []

    def take_interim_reply(self) -> bytes | None:
        return None

    def expect_response(self, request: bytes) -> None:
        """Nothing to remember."""


# ---------------------------------------------------------------------------- ADUs


def rtu_from_adu(adu: bytes, unit: int | None = None) -> bytes:
    """A Modbus/TCP ADU as an RTU frame (MBAP header off, CRC on); `unit` replaces
    the unit id if given."""
    body = adu[6:] if unit is None else bytes((unit,)) + adu[7:]
    return with_crc(body)


def adu_from_rtu(request: bytes, frame: bytes) -> bytes:
    """The Modbus/TCP answer to `request` (an ADU) from an RTU answer `frame` (unit id
    and PDU, CRC off): the request's transaction, protocol and unit id."""
    return request[:4] + len(frame).to_bytes(2, "big") + request[6:7] + frame[1:]
