"""What `tcp-multiplexer version` says: the version (from one place, the package's
`__version__`), and the commit when run from a git checkout."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tcp_multiplexer import __version__

CHECKOUT = Path(__file__).resolve().parents[2]
"""Where a source checkout's root is, if this runs from one (src/tcp_multiplexer/...)."""


def commit() -> str | None:
    """The checkout's commit (short), or None: an installed wheel has no checkout."""
    git = shutil.which("git")
    if git is None or not (CHECKOUT / ".git").exists():
        return None
    try:
        done = subprocess.run(  # noqa: S603 - git, asked about our own checkout
            [git, "-C", str(CHECKOUT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = done.stdout.strip()
    return text if done.returncode == 0 and text else None


def version_text() -> str:
    """``tcp-multiplexer 0.2.0``, with ``(commit abc1234)`` from a checkout."""
    found = commit()
    return f"tcp-multiplexer {__version__}" + (f" (commit {found})" if found else "")
