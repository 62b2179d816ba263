"""Logging helpers: a logger that names its bridge, hex dumps and peer addresses."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any, Final

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


class BridgeLog(logging.LoggerAdapter[logging.Logger]):
    """A logger whose records carry their bridge's name (the `bridge` field), and whose
    plain text starts with ``[NAME]`` when the process runs several bridges."""

    def __init__(self, logger: logging.Logger, bridge: str, *, prefix: bool) -> None:
        super().__init__(logger, {"bridge": bridge})
        self.bridge = bridge
        self._prefix = f"[{bridge}] " if prefix else ""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = kwargs.get("extra")
        kwargs["extra"] = (
            {"bridge": self.bridge} if extra is None else {"bridge": self.bridge, **extra}
        )
        return (self._prefix + msg if self._prefix else msg), kwargs
