"""`tcp-multiplexer demo`: the README's first command runs, recovers and checks itself."""

from __future__ import annotations

import asyncio
import io
import re

from tcp_multiplexer.demo import DEMO_DURATION, run_demo


async def test_demo_shares_one_device_connection_and_survives_its_restart() -> None:
    out = io.StringIO()
    async with asyncio.timeout(30):
        # The default demo length: after the restart there is time for the reconnect
        # backoff (the device refused connections for a while) and answers again.
        status = await run_demo(DEMO_DURATION, out)
    text = out.getvalue()
    assert status == 0, text
    assert "the inverter restarts" in text
    assert "the inverter is back" in text
    # At least one connection before the restart and one after, never two at once (a
    # reconnect racing the device's going down may add one more, still one at a time).
    accepted = re.search(r"the device accepted (\d+) connection\(s\), one at a time", text)
    assert accepted is not None, text
    assert int(accepted.group(1)) >= 2
    assert "wrong answers: 0" in text
    for name in ("home-assistant", "evcc", "data-logger", "vendor-app", "meter-reader"):
        match = re.search(rf"{name} +(\d+) correct answers, 0 wrong", text)
        assert match is not None, text
        assert int(match.group(1)) > 0
    assert re.search(r"\((\d+) reads shared by coalescing\)", text)
    # The meter on its serial line is routed by unit id behind the same port, and does
    # not notice the inverter's restart.
    meter = re.search(r"meter-reader +(\d+) correct answers, 0 wrong, 0 exceptions", text)
    assert meter is not None, text
    line = re.search(r"the meter's line carried (\d+) answers", text)
    assert line is not None, text
    assert int(line.group(1)) == int(meter.group(1))
