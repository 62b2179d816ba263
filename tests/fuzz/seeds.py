"""The inputs a fuzz run starts from: a few valid streams of each target's protocol,
and a few broken ones, so the fuzzer begins past the first header.

`python bench/fuzz.py seed` writes them into tests/fuzz/corpus/NAME/ (the corpus then
grows with what the runs find).
"""

from __future__ import annotations

from typing import Final

from tcp_multiplexer.protocols.modbus.rtu import rtu_from_adu, with_crc
from tests.framing.builders import (
    chunked,
    http_request,
    http_response,
    iso,
    line,
    mbap,
    mpu,
    ok,
    post,
)
from tests.modbus.adu import read_request, registers_answer, write_register, write_registers

NO_CUTS: Final = b"\x00"
"""The steering byte of a framer input that feeds it whole (no cuts)."""
THREE_CUTS: Final = b"\x03\x05\x09\x11"


def _framer(*streams: bytes) -> list[bytes]:
    return [steer + stream for stream in streams for steer in (NO_CUTS, THREE_CUTS)]


def _gateway() -> list[bytes]:
    read = read_request(0x0001, 1, 100, 2)
    answer = registers_answer(0x0001, 1, [7, 8])
    write = write_register(0x0102, 1, 150, 5)
    write_far = write_registers(0x0203, 1, 300, [1, 2])
    return [
        read + answer + read + answer,
        write + answer + read + answer + write_far,
        read + read + b"\xe0\x00" + read[2:] + read,
    ]


def _rtu() -> dict[str, list[bytes]]:
    read = read_request(1, 1, 0, 2)
    answer = with_crc(registers_answer(0, 1, [7, 8])[6:])
    exception = with_crc(b"\x01\x83\x02")
    foreign = with_crc(registers_answer(0, 2, [1])[6:])
    write = rtu_from_adu(write_registers(2, 1, 9, [1, 2, 3]))
    return {
        "rtu-answers": [
            b"\x01\x03" + steer + stream
            for stream in (answer, foreign + answer, b"\x00\xff" + answer, exception)
            for steer in (NO_CUTS, THREE_CUTS)
        ],
        "rtu-requests": _framer(rtu_from_adu(read) + write, write[:-1] + b"\x00"),
        "rtu-codec": [b"\x01" + read + answer, b"\x05" + read + exception, b"\x00" + read],
        "rtu-clients": _framer(
            rtu_from_adu(read) + write + rtu_from_adu(read, 0), write[:-1] + b"\x00", read
        ),
    }


SEEDS: Final[dict[str, list[bytes]]] = {
    "echo": _framer(line(b"hello") + line(b"") + line(b"x" * 70), b"no newline"),
    "echo-default": _framer(line(b"hello") + line(b"world")),
    "iso8583": _framer(iso(b"0200" + b"\x00" * 20) + iso(b""), iso(b"x", length=300)),
    "mpu": _framer(mpu(b"abc") + mpu(b""), mpu(b"x", prefix=b"00x1")),
    "modbus-framer": _framer(
        read_request(1, 1, 0, 2) + registers_answer(2, 1, [1]),
        mbap(1, 1, b"", length=1),
        mbap(1, 1, b"\x03", protocol=1),
    ),
    "http-requests": _framer(
        http_request(b"GET") + post(b"abc"),
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"ab", b"c"),
        b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
        b"GET / HTTP/1.0\r\n\r\n",
    ),
    "http-responses": [
        b"\x02" + steer + stream
        for stream in (
            ok(b"ok") + http_response(204) + ok(b"x"),
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"abc"),
            b"HTTP/1.0 200 OK\r\n\r\nuntil the end",
        )
        for steer in (NO_CUTS, THREE_CUTS)
    ],
    "modbus-codecs": [
        read_request(1, 1, 0, 2) + registers_answer(0x8001, 1, [1]),
        write_register(7, 3, 9, 1) + mbap(0x10, 4, b"\x86\x02"),
    ],
    "http-codec": [http_request(b"GET"), http_request(b"HEAD"), post(b"a")],
    "modbus-gateway": _gateway(),
    **_rtu(),
}
