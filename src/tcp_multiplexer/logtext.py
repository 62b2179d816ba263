"""Small formatters for log lines: peers and hex dumps."""

from __future__ import annotations

from typing import Final

HEX_DUMP_LIMIT: Final = 128
"""Bytes of a message shown in a debug hex dump; the rest is summarised by its length."""


def hex_dump(message: bytes) -> str:
    """`message` as hex for the debug log, truncated after HEX_DUMP_LIMIT bytes."""
    if len(message) <= HEX_DUMP_LIMIT:
        return message.hex(" ")
    return f"{message[:HEX_DUMP_LIMIT].hex(' ')} ... ({len(message)} bytes)"


def format_peer(address: object) -> str:
    """A socket address from `get_extra_info` as HOST:PORT ([HOST]:PORT for IPv6)."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)
