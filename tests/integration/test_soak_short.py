"""The soak run (bench/soak.py) for SOAK_SECONDS (default 60): every target fault at a
low rate, hostile clients, well-behaved clients checking every answer, memory and file
descriptors sampled. It must end with nothing wrong or lost and nothing grown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

SOAK_SECONDS: Final = float(os.environ.get("SOAK_SECONDS", "60"))
SOAK_SCRIPT: Final = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
MARGIN: Final = 60.0
"""Start-up, warm-up overlap and shutdown on top of the soak's own duration."""


@pytest.mark.timeout(SOAK_SECONDS + MARGIN)
def test_soak_run_finds_nothing_wrong_lost_or_grown() -> None:
    completed = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, str(SOAK_SCRIPT), "--duration", f"{SOAK_SECONDS:g}"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SOAK_SECONDS + MARGIN - 5,
        check=False,
    )
    print(completed.stdout)  # the figures, shown by pytest -rP or on failure
    assert completed.returncode == 0, f"{completed.stdout}\n{completed.stderr[-4000:]}"
    assert "verdict           ok" in completed.stdout
