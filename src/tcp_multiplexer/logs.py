"""Logging: levels alerting can trust, plain or JSON lines, a logger per bridge.

Levels:
- WARNING and above: only what needs a person (a target that cannot be reached, a
  client sending garbage, timeouts, a failed reload).
- NOTICE (between INFO and WARNING, shown by default): the daemon's life: listening,
  a target coming back, reloads, stopping.
- INFO (-v): each client and target connection, the periodic metrics line.
- DEBUG (-d): every message in hex.

`--log-format json` writes one JSON object a line for log shippers: time, level, logger,
bridge, message, and the event's fields where a line has them (client, target, reason).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any, Final

HEX_DUMP_LIMIT: Final = 128
"""Bytes of a message shown in a debug hex dump; the rest is summarised by its length."""
NOTICE: Final = 25
"""Shown by default, but not a problem: listening, a target back, reloads, stopping."""
logging.addLevelName(NOTICE, "NOTICE")

LOG_LEVELS: Final = {
    "warning": logging.WARNING,
    "notice": NOTICE,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}
LOG_FORMATS: Final = ("plain", "json")
EVENT_FIELDS: Final = ("client", "target", "reason")
"""Fields a log call may give in `extra`, copied into JSON lines."""
PLAIN_FORMAT: Final = "%(asctime)s %(levelname)s %(message)s"


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
    plain text starts with ``[NAME]`` when the process runs from a config file."""

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

    def notice(self, msg: str, *args: object, **kwargs: Any) -> None:
        self.log(NOTICE, msg, *args, **kwargs)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, bridge, message, event fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "time": _iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "bridge": getattr(record, "bridge", None),
            "message": record.getMessage(),
        }
        for field in EVENT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                data[field] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def _iso_time(created: float) -> str:
    """UTC, to the millisecond: 2026-12-01T19:06:57.944Z."""
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def setup_logging(level: str, log_format: str = "plain") -> None:
    """Log to stderr at `level` (warning, notice, info, debug), plain or JSON lines.

    Called again (a reload), it replaces the handler and level.
    """
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    logging.basicConfig(level=LOG_LEVELS[level], handlers=[handler], force=True)
