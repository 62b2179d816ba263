"""Support for the daemon tests: config files, a server run from one, bridge ports.

The server runs as users run it (`python -m tcp_multiplexer server --config FILE`);
targets run in the test's process. Bridges listen on port 0 and the tests read each
bridge's port from its ``[NAME] listening on HOST:PORT`` line.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from tests.helpers import LOOPBACK, CliProcess

WAIT: Final = 10.0
Bridge = Mapping[str, object]


def bridge(name: str, target_port: int, protocol: str = "echo", **options: object) -> Bridge:
    """A [[bridge]] table on a free loopback port, with test-friendly timings."""
    return {
        "name": name,
        "protocol": protocol,
        "listen": f"{LOOPBACK}:0",
        "target": f"{LOOPBACK}:{target_port}",
        "timeout": "5s",
        "reconnect-backoff": "50ms",
        **options,
    }


def toml(bridges: Sequence[Bridge], **tables: Mapping[str, object]) -> str:
    """A config file: global `tables`, then the bridges. JSON strings are TOML strings."""
    lines: list[str] = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    for table in bridges:
        lines.append("[[bridge]]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def write_config(path: Path, bridges: Sequence[Bridge], **tables: Mapping[str, object]) -> None:
    path.write_text(toml(bridges, **tables))


async def line(process: CliProcess, pattern: str, *, after: int = 0) -> re.Match[str]:
    """Wait (in a thread, so targets in this loop keep serving) for a stderr line."""
    return await asyncio.to_thread(process.wait_for_line, pattern, WAIT, after=after)


async def bridge_port(process: CliProcess, name: str, *, after: int = 0) -> int:
    """The port bridge `name` listens on, from its listening line."""
    match = await line(
        process, rf"\[{re.escape(name)}\] listening (?:again )?on [^ ]*:(\d+)", after=after
    )
    return int(match.group(1))


async def bridge_ports(
    process: CliProcess, names: Sequence[str], *, after: int = 0
) -> dict[str, int]:
    return {name: await bridge_port(process, name, after=after) for name in names}


def log_mark(process: CliProcess) -> int:
    """How many stderr lines there are now: wait for later ones with `after=`."""
    return len(process.lines)


async def refused(port: int) -> bool:
    """True if nothing accepts connections on `port` any more."""
    try:
        _reader, writer = await asyncio.open_connection(LOOPBACK, port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False
