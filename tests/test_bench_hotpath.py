"""bench/hotpath.py still drives the real request path: a short run of every protocol.

The harness checks itself that the target got every request; this keeps it from rotting
when the classes it wires together change.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

HOTPATH: Final = Path(__file__).resolve().parents[1] / "bench" / "hotpath.py"


@pytest.mark.timeout(60)
def test_the_hot_path_harness_runs_every_protocol_with_one_and_many_clients() -> None:
    completed = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, str(HOTPATH), "-n", "2000", "--clients", "1,16"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=55,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    rows = [line.split("|")[1:4] for line in completed.stdout.splitlines()[2:]]
    assert [(name.strip(), clients.strip()) for name, clients, _ in rows] == [
        (protocol, clients)
        for protocol in ("echo", "modbus", "http", "modbus-image")
        for clients in ("1", "16")
    ]
    assert all(float(micros) > 0 for _, _, micros in rows)
