"""Keepalive on every socket: a half-open client or target connection is found.

Checked with `ss`, as an operator would: the multiplexer's sockets carry a keepalive
timer set from --health-check-interval.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess

import pytest

from tcp_multiplexer.targets.server import TargetConfig, TargetServer
from tests.helpers import (
    mux_config,
    open_client,
    running_multiplexer,
    wait_for_target_connection,
)
from tests.integration.core_support import echo

SS = shutil.which("ss")


def keepalive_timers(local_port: int | None = None, remote_port: int | None = None) -> list[str]:
    """The `timer:(keepalive,...)` fields of established sockets with these ports."""
    assert SS is not None
    filters = []
    if local_port is not None:
        filters.append(f"sport = :{local_port}")
    if remote_port is not None:
        filters.append(f"dport = :{remote_port}")
    output = subprocess.run(  # noqa: S603 - a fixed system tool
        [SS, "-tnoH", "state", "established", " and ".join(filters)],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    return re.findall(r"timer:\(keepalive,[^)]*\)", output)


@pytest.mark.skipif(SS is None, reason="needs the ss tool (iproute2)")
async def test_client_and_target_sockets_are_probed_with_keepalive() -> None:
    async with (
        asyncio.timeout(10),
        TargetServer(TargetConfig()) as target,
        running_multiplexer(mux_config(target.port, health_check_interval=7.0)) as mux,
        open_client(mux.port) as client,
    ):
        await wait_for_target_connection(mux)
        assert await echo(client, b"alive\n") == b"alive\n"
        # The multiplexer's end of the client connection listens on mux.port.
        client_side = keepalive_timers(local_port=mux.port)
        target_side = keepalive_timers(remote_port=target.port)
        assert len(client_side) == 1, client_side
        assert len(target_side) == 1, target_side
        # The first probe is due within the idle time (7 s), not the kernel's 2 hours.
        for timer in client_side + target_side:
            match = re.search(r"keepalive,(?:(\d+)min)?(\d+(?:\.\d+)?)(ms|sec)", timer)
            assert match is not None, timer
            minutes = int(match.group(1) or 0)
            seconds = float(match.group(2)) / (1000 if match.group(3) == "ms" else 1)
            assert minutes * 60 + seconds <= 7.0, timer
