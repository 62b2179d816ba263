"""http: HTTP/1.1 messages, framed by RFC 9112's body rules."""

from __future__ import annotations

from tcp_multiplexer.protocols.http.codec import codec
from tcp_multiplexer.protocols.http.responder import HttpResponder
from tcp_multiplexer.protocols.spec import ProtocolName, ProtocolSpec

SPEC = ProtocolSpec(
    name=ProtocolName.HTTP,
    summary="one HTTP/1.1 message (Content-Length, chunked, close-delimited answers)",
    client_codec=codec,
    target_codec=codec,
    responder=HttpResponder,
)
