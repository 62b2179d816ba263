"""A capture of each bridge's recent transactions: what a user sends a maintainer.

With `--capture N`, every bridge keeps its last N transactions in a ring: when, which
client, the request and the answer as the client saw them, how long it took, and the
outcome (the target's answer, a local answer, a gateway answer and why, or dropped
because the client left). `/capture` serves them as JSON lines, `/capture.pcap` as a
pcap file Wireshark opens: each transaction as a TCP exchange between the real client
address and the real target address (with a handshake per client connection), so
Wireshark decodes it as Modbus/TCP, HTTP or plain TCP by the target's port.

Recording costs an append of a small record per answer; nothing is encoded until the
capture is asked for.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from tcp_multiplexer.core.interfaces import Request
from tcp_multiplexer.logs import format_peer

PCAP_MAGIC: Final = 0xA1B2C3D4
LINKTYPE_ETHERNET: Final = 1
SNAPLEN: Final = 65535
_MAC_CLIENT: Final = bytes.fromhex("020000000001")
_MAC_TARGET: Final = bytes.fromhex("020000000002")
"""Locally administered MAC addresses: the capture is rebuilt, not sniffed."""
_SYN: Final = 0x02
_ACK: Final = 0x10
_PSH_ACK: Final = 0x18
_SYN_ACK: Final = 0x12

Endpoint = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Transaction:
    """One request and what answered it."""

    time: float
    """Unix time the answer was given."""
    bridge: str
    client: Endpoint | None
    target: Endpoint | None
    request: bytes
    answer: bytes | None
    """None when the client got no answer (closed, or it had left)."""
    latency: float
    outcome: str
    """``answer``, ``local``, ``gateway: <reason>``, ``closed: <reason>`` or ``dropped``."""

    def as_json(self) -> str:
        return json.dumps(
            {
                "time": self.time,
                "bridge": self.bridge,
                "client": format_peer(self.client) if self.client else None,
                "target": format_peer(self.target) if self.target else None,
                "request": self.request.hex(),
                "answer": None if self.answer is None else self.answer.hex(),
                "latency_ms": round(self.latency * 1e3, 3),
                "outcome": self.outcome,
            }
        )


def _endpoint(address: object) -> Endpoint | None:
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None


class CaptureRing:
    """A bridge's last `size` transactions (see the module docstring).

    Recording keeps a tuple of what is at hand (the request, the answer, the outcome,
    the loop time); the `Transaction`, its addresses and its wall-clock time are made
    only when the capture is read, so the request path pays one append.
    """

    def __init__(self, bridge: str, size: int, loop_time: Callable[[], float]) -> None:
        self.bridge = bridge
        self.size = size
        self._loop_time = loop_time
        self._ring: deque[tuple[Request, bytes | None, str, float, Endpoint | None]] = deque(
            maxlen=size
        )
        self.recorded = 0
        """Transactions recorded so far (the ring keeps the last `size`)."""

    def recorder(
        self, target: Endpoint | None
    ) -> Callable[[Request, bytes | None, str, float], None]:
        """The recorder of one target's dispatcher (`target`: its address, None for a
        serial line, which a pcap cannot show)."""
        ring = self._ring

        def record(request: Request, answer: bytes | None, outcome: str, now: float) -> None:
            """Note how `request` was answered, at loop time `now`."""
            self.recorded += 1
            ring.append((request, answer, outcome, now, target))

        return record

    def __iter__(self) -> Iterator[Transaction]:
        # Loop time to Unix time, as of now: the two clocks drift apart by far less
        # than a transaction's latency over a ring's life.
        wall = time.time() - self._loop_time()
        return iter(
            [
                Transaction(
                    time=now + wall,
                    bridge=self.bridge,
                    client=_endpoint(getattr(request.owner, "peer", None)),
                    target=target,
                    request=request.payload,
                    answer=answer,
                    latency=max(0.0, now - request.submitted_at),
                    outcome=outcome,
                )
                for request, answer, outcome, now, target in list(self._ring)
            ]
        )

    def __len__(self) -> int:
        return len(self._ring)


def json_lines(transactions: Iterable[Transaction]) -> str:
    return "".join(transaction.as_json() + "\n" for transaction in transactions)


# ---------------------------------------------------------------------------- pcap


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _packet(
    source: Endpoint, destination: Endpoint, seq: int, ack: int, flags: int, payload: bytes
) -> bytes:
    """An Ethernet frame carrying one TCP segment, checksums and all."""
    src_ip = ipaddress.ip_address(source[0])
    dst_ip = ipaddress.ip_address(destination[0])
    tcp = bytearray(
        struct.pack(
            "!HHIIBBHHH",
            source[1],
            destination[1],
            seq & 0xFFFFFFFF,
            ack & 0xFFFFFFFF if flags & _ACK else 0,
            5 << 4,
            flags,
            65535,
            0,
            0,
        )
        + payload
    )
    if src_ip.version == 4:
        pseudo = (
            src_ip.packed + dst_ip.packed + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
        )
        struct.pack_into("!H", tcp, 16, _checksum(pseudo + bytes(tcp)))
        header = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(tcp),
            0,
            0x4000,
            64,
            socket.IPPROTO_TCP,
            0,
            src_ip.packed,
            dst_ip.packed,
        )
        header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
        ethertype = 0x0800
    else:
        pseudo = src_ip.packed + dst_ip.packed + struct.pack("!IxxxB", len(tcp), socket.IPPROTO_TCP)
        struct.pack_into("!H", tcp, 16, _checksum(pseudo + bytes(tcp)))
        header = struct.pack(
            "!IHBB16s16s", 6 << 28, len(tcp), socket.IPPROTO_TCP, 64, src_ip.packed, dst_ip.packed
        )
        ethertype = 0x86DD
    source_mac, destination_mac = (
        (_MAC_CLIENT, _MAC_TARGET) if source < destination else (_MAC_TARGET, _MAC_CLIENT)
    )
    return destination_mac + source_mac + struct.pack("!H", ethertype) + header + bytes(tcp)


def _record(when: float, frame: bytes) -> bytes:
    seconds = int(when)
    micros = int((when - seconds) * 1e6)
    return struct.pack("<IIII", seconds, micros, len(frame), len(frame)) + frame


def _same_family(one: Endpoint, other: Endpoint) -> bool:
    return ipaddress.ip_address(one[0]).version == ipaddress.ip_address(other[0]).version


def pcap(transactions: Iterable[Transaction]) -> bytes:
    """The transactions as a pcap file: per client connection a TCP stream to the
    target (handshake first), each transaction its request and its answer."""
    out = bytearray(struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET))
    streams: dict[tuple[Endpoint, Endpoint], list[int]] = {}
    for transaction in transactions:
        client, target = transaction.client, transaction.target
        if client is None or target is None:
            continue
        try:
            if not _same_family(client, target):
                continue
        except ValueError:  # not an IP address (a unix socket, a name)
            continue
        asked = transaction.time - transaction.latency
        sequence = streams.get((client, target))
        if sequence is None:
            sequence = streams[(client, target)] = [1000, 5000]
            out += _record(asked, _packet(client, target, 999, 0, _SYN, b""))
            out += _record(asked, _packet(target, client, 4999, 1000, _SYN_ACK, b""))
            out += _record(asked, _packet(client, target, 1000, 5000, _ACK, b""))
        client_seq, target_seq = sequence
        out += _record(
            asked, _packet(client, target, client_seq, target_seq, _PSH_ACK, transaction.request)
        )
        client_seq += len(transaction.request)
        if transaction.answer:
            out += _record(
                transaction.time,
                _packet(target, client, target_seq, client_seq, _PSH_ACK, transaction.answer),
            )
            target_seq += len(transaction.answer)
        sequence[:] = [client_seq, target_seq]
    return bytes(out)
