"""TLS: contexts from certificate files, a server side the multiplexer terminates itself,
and who a client certificate says the client is.

Listening (Modbus/TCP Security does it on port 802): `server_context` loads the
certificate and key, and with a client CA requires client certificates (mutual TLS);
TLS 1.2 at least. `TlsServerProtocol` terminates TLS for one accepted connection over a
pair of memory BIOs and hands the plaintext to the session as if it were TCP. It is
written here rather than asyncio's own TLS transport because that one cannot half-close:
a client that sends its requests and then closes its side (close_notify, or FIN) must
still get its answers, and asyncio closes the connection at once instead.

Connecting (`--target-tls`): `client_context` for devices and gateways that speak
Modbus/TCP Security themselves, with their CA and an optional client certificate.

`peer_identity` reads the names (subject CN, SAN) and the Modbus/TCP Security role (the
extension with OID 1.3.6.1.4.1.50316.802.1, a UTF8String) of a verified client
certificate; the write rules match on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

logger = logging.getLogger("tcp_multiplexer.tls")

HANDSHAKE_TIMEOUT: Final = 10.0
"""A client that has not finished its handshake this long after connecting is closed."""
READ_CHUNK: Final = 65536
ROLE_OID: Final = "1.3.6.1.4.1.50316.802.1"
"""The Modbus/TCP Security role extension (MB-TCP-Security v21, section 5.4)."""


def _oid_der(dotted: str) -> bytes:
    """The DER content bytes of an object identifier."""
    arcs = [int(arc) for arc in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return bytes(out)


ROLE_OID_DER: Final = _oid_der(ROLE_OID)


def server_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """A listening context: `cert` and `key` (PEM), TLS 1.2 or newer; with `client_ca`,
    every client must present a certificate it signed (mutual TLS).

    Raises:
        OSError, ssl.SSLError: a file cannot be read or does not hold what it should.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    return context


def client_context(
    ca: str | None = None, cert: str | None = None, key: str | None = None
) -> ssl.SSLContext:
    """A connecting context: the system's CAs, or `ca`; a client certificate if given.

    Raises:
        OSError, ssl.SSLError: a file cannot be read or does not hold what it should.
    """
    context = ssl.create_default_context(cafile=ca)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


# ---------------------------------------------------------------------------- identity


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """What a verified client certificate says: its names and its Modbus roles."""

    names: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()


def peer_identity(ssl_object: ssl.SSLObject | None) -> PeerIdentity:
    """The identity of `ssl_object`'s verified peer certificate (empty if none)."""
    if ssl_object is None:
        return PeerIdentity()
    names: set[str] = set()
    certificate: Any = ssl_object.getpeercert()
    if certificate:
        for rdn in certificate.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    names.add(str(value))
        for _kind, value in certificate.get("subjectAltName", ()):
            names.add(str(value))
    der = ssl_object.getpeercert(binary_form=True)
    roles = frozenset(certificate_roles(der)) if der else frozenset()
    return PeerIdentity(frozenset(names), roles)


def _tlv(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at `offset`."""
    tag = data[offset]
    length = data[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    end = start + length
    if end > len(data):
        raise ValueError("truncated DER")
    return tag, start, end


def _children(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    offset = start
    while offset < end:
        tag, content, after = _tlv(data, offset)
        yield tag, content, after
        offset = after


def certificate_roles(der: bytes) -> list[str]:
    """The Modbus/TCP Security roles in a DER certificate's extensions (usually one)."""
    roles: list[str] = []
    try:
        _tag, cert_start, cert_end = _tlv(der, 0)
        _tag, tbs_start, tbs_end = next(_children(der, cert_start, cert_end))
        for tag, start, _end in _children(der, tbs_start, tbs_end):
            if tag != 0xA3:  # [3] extensions
                continue
            _seq, ext_start, ext_end = _tlv(der, start)
            for _ext_tag, one_start, one_end in _children(der, ext_start, ext_end):
                parts = list(_children(der, one_start, one_end))
                if not parts or der[parts[0][1] : parts[0][2]] != ROLE_OID_DER:
                    continue
                octets = parts[-1]
                value_tag, value_start, value_end = _tlv(der, octets[1])
                if value_tag == 0x0C:  # UTF8String
                    roles.append(der[value_start:value_end].decode("utf-8", "replace"))
    except (ValueError, IndexError, StopIteration):
        return roles
    return roles


# ---------------------------------------------------------------------------- server side


class _PlainTransport(asyncio.Transport):
    """What the session sees: plaintext in and out over the TLS connection."""

    def __init__(self, tls: TlsServerProtocol) -> None:
        super().__init__()
        self._tls = tls

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._tls.write_plain(bytes(data))

    def is_closing(self) -> bool:
        return self._tls.closing

    def close(self) -> None:
        self._tls.close_plain()

    def abort(self) -> None:
        self._tls.abort()

    def pause_reading(self) -> None:
        self._tls.outer.pause_reading()

    def resume_reading(self) -> None:
        self._tls.outer.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self._tls.ssl_object
        if name == "peercert":
            return self._tls.ssl_object.getpeercert()
        if name == "cipher":
            return self._tls.ssl_object.cipher()
        return self._tls.outer.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return self._tls.outer.get_write_buffer_size()


class TlsServerProtocol(asyncio.Protocol):
    """TLS terminated over memory BIOs for one accepted connection (see the module doc).

    `precheck(peer)` runs before the handshake: False closes the connection unread (an
    address the bridge does not let in). `on_failure(peer, reason)` is told of a failed
    handshake (no certificate, another CA's, an expired one, not TLS at all).
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        inner: asyncio.Protocol,
        *,
        precheck: Callable[[object], bool],
        on_failure: Callable[[object, str], None],
    ) -> None:
        self._context = context
        self._inner = inner
        self._precheck = precheck
        self._on_failure = on_failure
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ssl_object = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._outer: asyncio.Transport | None = None
        self._handshaking = True
        self._timer: asyncio.TimerHandle | None = None
        self._peer: object = None
        self._peer_done = False
        """The peer sent close_notify or FIN: it sends nothing more."""
        self.closing = False
        self._lost = False

    @property
    def outer(self) -> asyncio.Transport:
        if self._outer is None:
            raise RuntimeError("not connected")
        return self._outer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._outer = transport  # type: ignore[assignment]
        self._peer = transport.get_extra_info("peername")
        if not self._precheck(self._peer):
            self.closing = True
            transport.abort()  # type: ignore[attr-defined]
            return
        self._timer = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT, self._too_slow)

    def _too_slow(self) -> None:
        if self._handshaking:
            self._fail(f"no TLS handshake within {HANDSHAKE_TIMEOUT:g}s")

    def _fail(self, reason: str) -> None:
        self._on_failure(self._peer, reason)
        self.abort()

    def data_received(self, data: bytes) -> None:
        if self.closing and self._handshaking:
            return
        self._incoming.write(data)
        if self._handshaking:
            try:
                self.ssl_object.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return
            except (ssl.SSLError, ValueError) as exc:
                self._flush()
                self._fail(getattr(exc, "reason", None) or str(exc))
                return
            self._handshaking = False
            if self._timer is not None:
                self._timer.cancel()
            self._flush()
            self._inner.connection_made(_PlainTransport(self))
        self._read_plain()

    def _read_plain(self) -> None:
        while not self._lost:
            try:
                chunk = self.ssl_object.read(READ_CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._peer_ended()
                break
            except ssl.SSLError as exc:
                logger.info("TLS error from %s: %s; closing", self._peer, exc)
                self.abort()
                return
            if not chunk:
                # close_notify (Python reads it as b""): the client has said all it
                # will; the answers still to come go out before we close.
                self._peer_ended()
                break
            self._inner.data_received(chunk)
        self._flush()

    def _peer_ended(self) -> None:
        if self._peer_done:
            return
        self._peer_done = True
        if not self._handshaking and not self._inner.eof_received():
            self.close_plain()

    def eof_received(self) -> bool:
        """FIN: keep the connection open for the answers still to come."""
        if self._handshaking:
            return False
        self._peer_ended()
        return True

    def write_plain(self, data: bytes) -> None:
        if self.closing or self._lost:
            return
        try:
            self.ssl_object.write(data)
        except ssl.SSLError as exc:
            logger.info("TLS error writing to %s: %s; closing", self._peer, exc)
            self.abort()
            return
        self._flush()

    def _flush(self) -> None:
        pending = self._outgoing.read()
        if pending and self._outer is not None and not self._lost:
            self._outer.write(pending)

    def close_plain(self) -> None:
        """Send close_notify after what was written, then close."""
        if self.closing:
            return
        self.closing = True
        with contextlib.suppress(ssl.SSLError, ssl.SSLWantReadError):
            self.ssl_object.unwrap()
        self._flush()
        if self._outer is not None:
            self._outer.close()

    def abort(self) -> None:
        self.closing = True
        if self._outer is not None:
            self._outer.abort()

    def pause_writing(self) -> None:
        if not self._handshaking:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if not self._handshaking:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._timer is not None:
            self._timer.cancel()
        if not self._handshaking:
            self._inner.connection_lost(exc)
