"""The status page in a real browser: headless Chromium renders `/` of a running App.

The App bridges Modbus clients (raw sockets) to the example Modbus target, with the
observability listener on; Chromium runs as a subprocess in a thread, so the target
and the multiplexer keep serving on the event loop while it loads the page. The page
fetches /api/status once on load (then every 2 s of virtual time), and the test reads
the rendered numbers from the `data-field` elements of `--dump-dom`'s output.

With UPDATE_SCREENSHOT=1 the test also saves the screenshot shown in
docs/monitoring.md (docs/status-page.png). The
history sampler takes a point every 5 s; so that the chart has a shape without
waiting minutes, the test asks the App's History for a sample after each round of
traffic (the call the sampler makes), right after one of the sampler's own points so
that none of them lands between the last round and the screenshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Final

import pytest

from tcp_multiplexer import __version__
from tcp_multiplexer.app import App
from tcp_multiplexer.observability.status import HISTORY_STEP
from tcp_multiplexer.observability.values import bridge_readings
from tcp_multiplexer.options import Address
from tcp_multiplexer.protocols.modbus.device import holding_register_value
from tcp_multiplexer.protocols.modbus.mbap import transaction_id
from tcp_multiplexer.protocols.modbus.options import ModbusOptions
from tcp_multiplexer.protocols.modbus.points import points_value
from tcp_multiplexer.protocols.modbus.polls import parse_poll
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets.server import TargetConfig, TargetServer
from tests.helpers import LOOPBACK, eventually, mux_config, open_client, running_app
from tests.modbus.adu import read_adu, read_request, registers_of

CHROMIUM: Final = Path("/usr/bin/chromium")
SCREENSHOT: Final = Path(__file__).resolve().parents[2] / "docs" / "status-page.png"
TEST_TIMEOUT: Final = 90.0
"""Bound of the test body; pytest-timeout is the outer guard."""
BROWSER_TIMEOUT: Final = 30.0
"""Bound of one Chromium run (it is killed, with its helpers, past it)."""
VIRTUAL_TIME_MS: Final = 3000
"""Virtual time Chromium gives the page: the fetch on load, then one more poll."""
DEVICE_DELAY: Final = 0.01
"""Seconds the device takes per request: realistic latencies, and rounds of traffic
that last long enough to be points of their own on the chart."""
PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"
BRIDGE: Final = "test"
VOID: Final = frozenset(
    ("area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source")
)


# ------------------------------------------------------------------ reading the DOM


Key = tuple[str, ...]
"""("id", id), ("field", bridge, field), ("client", bridge, address, field) or
("poll", bridge, range, field)."""


@dataclass
class Page:
    """What the rendered page says."""

    state: str | None
    """The body's data-state: loading, ok or unreachable."""
    ids: dict[str, str]
    """Text of the elements with an id."""
    bridges: dict[str, dict[str, str]]
    """Per bridge, the text of its `data-field` elements."""
    clients: dict[str, dict[str, dict[str, str]]]
    """Per bridge and client address, the text of its `data-client-field` elements."""
    polls: dict[str, dict[str, dict[str, str]]]
    """Per bridge and polled range (``UNIT:TABLE:ADDRESS:COUNT``), the text of its
    `data-poll-field` elements."""
    points: dict[str, dict[str, dict[str, str]]]
    """Per bridge and point name, the text of its `data-point-field` elements."""


class _PageParser(HTMLParser):
    """Collects the text of every element with an id, a data-field or a data-client-field."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.state: str | None = None
        self.bridges: list[str] = []
        self.texts: dict[Key, str] = {}
        self._stack: list[tuple[str, str | None, str | None, str | None, tuple[Key, ...]]] = []
        """Open elements: tag, bridge, client address, polled range, where their text goes."""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in VOID:
            return
        attr = {name: value or "" for name, value in attrs}
        _, bridge, client, poll, keys = (
            self._stack[-1] if self._stack else ("", None, None, None, ())
        )
        if tag == "body":
            self.state = attr.get("data-state")
        if "data-bridge" in attr:
            bridge = attr["data-bridge"]
            assert bridge not in self.bridges, f"bridge {bridge!r} is drawn twice"
            self.bridges.append(bridge)
        client = attr.get("data-client", client)
        poll = attr.get("data-poll", attr.get("data-point", poll))
        new: list[Key] = []
        if "id" in attr:
            new.append(("id", attr["id"]))
        if "data-field" in attr and bridge is not None:
            new.append(("field", bridge, attr["data-field"]))
        if "data-client-field" in attr and bridge is not None and client is not None:
            new.append(("client", bridge, client, attr["data-client-field"]))
        if "data-poll-field" in attr and bridge is not None and poll is not None:
            new.append(("poll", bridge, poll, attr["data-poll-field"]))
        if "data-point-field" in attr and bridge is not None and poll is not None:
            new.append(("point", bridge, poll, attr["data-point-field"]))
        for key in new:
            assert key not in self.texts, f"{key} appears twice: a test could read either"
            self.texts[key] = ""
        self._stack.append((tag, bridge, client, poll, (*keys, *new)))

    def handle_endtag(self, tag: str) -> None:
        while self._stack and self._stack.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        for key in self._stack[-1][4] if self._stack else ():
            self.texts[key] += data


def parse_page(dom: str) -> Page:
    parser = _PageParser()
    parser.feed(dom)
    parser.close()
    page = Page(parser.state, {}, {name: {} for name in parser.bridges}, {}, {}, {})
    for key, text in parser.texts.items():
        if key[0] == "id":
            page.ids[key[1]] = text
        elif key[0] == "field":
            page.bridges[key[1]][key[2]] = text
        elif key[0] == "client":
            page.clients.setdefault(key[1], {}).setdefault(key[2], {})[key[3]] = text
        elif key[0] == "poll":
            page.polls.setdefault(key[1], {}).setdefault(key[2], {})[key[3]] = text
        else:
            page.points.setdefault(key[1], {}).setdefault(key[2], {})[key[3]] = text
    return page


# ------------------------------------------------------------------ the browser


class Chromium:
    """Headless Chromium runs, each with a fresh profile; `kill()` ends any still going."""

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._runs = 0
        self._running: set[subprocess.Popen[str]] = set()
        self._lock = threading.Lock()

    def _run(self, url: str, *options: str) -> str:
        """One run (blocking: call it in a thread); its stdout."""
        with self._lock:
            self._runs += 1
            profile = self._workdir / f"profile-{self._runs}"
        args = [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={VIRTUAL_TIME_MS}",
            *options,
            url,
        ]
        # A session of its own, so its helper processes can be killed with it.
        process = subprocess.Popen(  # noqa: S603 - a fixed binary and our own arguments
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        with self._lock:
            self._running.add(process)
        try:
            stdout, stderr = process.communicate(timeout=BROWSER_TIMEOUT)
        finally:
            self._end(process)
        assert process.returncode == 0, f"chromium {options} exited {process.returncode}:\n{stderr}"
        return stdout

    @staticmethod
    def _kill(process: subprocess.Popen[str]) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # its helpers too, if any are left
        process.kill()

    def _end(self, process: subprocess.Popen[str]) -> None:
        """Kill what is left of a run and reap it (in the run's own thread)."""
        self._kill(process)
        process.communicate()
        with self._lock:
            self._running.discard(process)

    def kill(self) -> None:
        """Kill every run still going (a cancelled test); their threads reap them."""
        with self._lock:
            running = list(self._running)
        for process in running:
            self._kill(process)

    async def page(self, url: str, *options: str) -> Page:
        """The DOM once the page has run, parsed."""
        dom = await asyncio.to_thread(self._run, url, "--dump-dom", *options)
        return parse_page(dom)

    def _screenshot(self, url: str, path: Path, *options: str) -> None:
        self._run(url, f"--screenshot={path}", *options)
        assert path.read_bytes().startswith(PNG_MAGIC), f"{path} is not a PNG"

    async def screenshot(self, url: str, path: Path, *options: str) -> None:
        """A PNG of the page once it has run, saved at `path`."""
        await asyncio.to_thread(self._screenshot, url, path, *options)


@contextlib.contextmanager
def chromium(workdir: Path) -> Iterator[Chromium]:
    browser = Chromium(workdir)
    try:
        yield browser
    finally:
        browser.kill()


# ------------------------------------------------------------------ Modbus clients


class Client:
    """A raw Modbus/TCP client of the bridge, reading its own registers (no coalescing
    with the other clients), checking every answer against the device's memory."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, base: int):
        self._reader = reader
        self._writer = writer
        self._base = base
        self._tid = 0

    async def read(self, requests: int) -> None:
        for _ in range(requests):
            self._tid += 1
            address = self._base + self._tid % 50
            self._writer.write(read_request(self._tid, 1, address, 2))
            await self._writer.drain()
            answer = await read_adu(self._reader)
            assert transaction_id(answer) == self._tid
            assert registers_of(answer) == [
                holding_register_value(1, address),
                holding_register_value(1, address + 1),
            ]


@contextlib.asynccontextmanager
async def modbus_client(port: int, base: int) -> AsyncIterator[Client]:
    async with open_client(port) as (reader, writer):
        yield Client(reader, writer, base)


async def settled(app: App, target: TargetServer, *, clients: int, requests: int) -> None:
    """Wait until the device and the bridge's own metrics have counted it all."""
    await target.wait_for(lambda stats: stats.answers >= requests)
    bridge = app.bridges[BRIDGE]

    def counted() -> bool:
        snapshot = bridge.metrics.snapshot()
        return (snapshot.clients, snapshot.requests, snapshot.answers) == (
            clients,
            requests,
            requests,
        )

    await eventually(counted, message=f"{clients} clients and {requests} answered requests")


def expect(page: Page, *, clients: int, requests: int) -> None:
    assert page.state == "ok", f"the page could not load /api/status: {page}"
    assert page.ids["version"] == f"v{__version__}"
    fields = page.bridges[BRIDGE]
    assert {
        name: fields[name] for name in ("clients_connected", "requests", "answers", "state")
    } == {
        "clients_connected": str(clients),
        "requests": str(requests),
        "answers": str(requests),
        "state": "up",
    }
    assert fields["healthy"] == "healthy"
    (row,) = page.clients[BRIDGE].values()  # every client comes from 127.0.0.1
    assert row["connections"] == str(clients)
    assert row["requests"] == str(requests)


# ------------------------------------------------------------------ the test


@pytest.mark.timeout(TEST_TIMEOUT + 30)
async def test_the_status_page_shows_live_counts_in_a_browser(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    device = TargetConfig(protocol=ProtocolName.MODBUS, delay=DEVICE_DELAY)
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(device) as target:
        config = mux_config(
            target.port, protocol=ProtocolName.MODBUS, metrics_listen=Address(LOOPBACK, 0)
        )
        async with running_app(config) as app, contextlib.AsyncExitStack() as clients:
            browser = clients.enter_context(chromium(tmp_path))
            assert app.observability is not None
            url = f"http://{LOOPBACK}:{app.observability.port}/"
            port = app.bridges[BRIDGE].port
            app.history.sample(app.now())  # where the chart's first window begins

            first = await clients.enter_async_context(modbus_client(port, 0))
            second = await clients.enter_async_context(modbus_client(port, 100))
            await first.read(5)
            await second.read(7)
            await settled(app, target, clients=2, requests=12)
            expect(await browser.page(url), clients=2, requests=12)

            third = await clients.enter_async_context(modbus_client(port, 200))
            await third.read(9)
            await first.read(4)
            await settled(app, target, clients=3, requests=25)
            expect(await browser.page(url), clients=3, requests=25)

            # The sampler takes a point every HISTORY_STEP: wait for its next one, so that
            # none falls between the rounds below and the screenshot (an idle point).
            def points() -> int:
                return len(app.history.points(BRIDGE, app.now()))

            taken = points()
            await eventually(
                lambda: points() > taken, within=HISTORY_STEP + 1, message="a sampler point"
            )
            # Rounds of traffic, some clients at once, a point of the chart after each.
            sent = 25
            for counts in ((3, 0, 2), (4, 4, 0), (2, 3, 4), (5, 0, 0), (3, 3, 3), (2, 4, 1)):
                await asyncio.gather(
                    *(
                        client.read(count)
                        for client, count in zip((first, second, third), counts, strict=True)
                    )
                )
                sent += sum(counts)
                app.history.sample(app.now())
            await settled(app, target, clients=3, requests=sent)

            shot = tmp_path / "status-page.png"
            await browser.screenshot(url, shot, "--window-size=1000,900")
            phone = await browser.page(url, "--window-size=375,800")
            expect(phone, clients=3, requests=sent)
            p99 = phone.bridges[BRIDGE]["latency_p99"]
            idle = "\N{EN DASH}"  # the sampler may have taken an idle point meanwhile
            assert p99 == idle or float(p99) >= DEVICE_DELAY * 1e3, p99
            if os.environ.get("UPDATE_SCREENSHOT"):  # UPDATE_SCREENSHOT=1 pytest -k status_page
                shutil.copyfile(shot, SCREENSHOT)


@pytest.mark.timeout(TEST_TIMEOUT + 30)
async def test_the_status_page_lists_each_polled_range_of_the_register_image(
    tmp_path: Path,
) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    polls = tuple(parse_poll(text) for text in ("1:holding:0:10:200ms", "1:input:100:4:200ms"))
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(TargetConfig(protocol=ProtocolName.MODBUS)) as target,
    ):
        config = mux_config(
            target.port,
            protocol=ProtocolName.MODBUS,
            metrics_listen=Address(LOOPBACK, 0),
            modbus=ModbusOptions(
                cache_ttl=1.0,
                poll=polls,
                point=points_value(
                    [
                        {"name": "power", "address": 20, "scale": 0.1, "every": "200ms"},
                        {
                            "name": "grid_w",
                            "address": 21,
                            "unit-of-measurement": "W",
                            "not-implemented": holding_register_value(1, 21),
                            "every": "200ms",
                        },
                    ]
                ),
            ),
        )
        async with running_app(config) as app, contextlib.AsyncExitStack() as stack:
            browser = stack.enter_context(chromium(tmp_path))
            bridge = app.bridges[BRIDGE]
            await eventually(lambda: bridge.metrics.events["poll_reads"] >= 2, message="polls")
            await eventually(
                lambda: bridge_readings(bridge, app.now())["power"].quality == "fresh",
                message="the point read",
            )
            assert app.observability is not None
            page = await browser.page(f"http://{LOOPBACK}:{app.observability.port}/")
    values = page.points[BRIDGE]
    assert values["power"]["value"] == str(round(holding_register_value(1, 20) * 0.1, 1))
    assert values["power"]["quality"] == "fresh"
    assert values["grid_w"]["value"] == "unknown", "the device says it has no value"
    rows = page.polls[BRIDGE]
    assert sorted(rows) == ["1:holding:0:10", "1:holding:20:2", "1:input:100:4"]
    for row in rows.values():
        assert row["last_error"] == "none"
        assert row["oldest_age"].endswith(" s"), row
        assert float(row["oldest_age"].removesuffix(" s")) < 1.0


# ------------------------------------------------------------------ behind ingress

INGRESS_PREFIX: Final = "/api/hassio_ingress/3vE6yXk2/"
"""What Home Assistant's ingress puts before every path of an add-on's web UI."""


@contextlib.asynccontextmanager
async def prefixing_proxy(upstream_port: int) -> AsyncIterator[int]:
    """An HTTP/1.1 reverse proxy on loopback, as Home Assistant's ingress is: it serves
    the upstream under INGRESS_PREFIX (stripped on the way in) and answers 404 for any
    path outside it, so a page that asks for an absolute path gets nothing."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, path, version = head.split(b"\r\n", 1)[0].decode().split(" ")
            if not path.startswith(INGRESS_PREFIX):
                writer.write(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                return
            inner = "/" + path[len(INGRESS_PREFIX) :]
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, upstream_port)
            rest = head.split(b"\r\n", 1)[1]
            up_writer.write(f"{method} {inner} {version}\r\n".encode() + rest)
            while chunk := await up_reader.read(65536):
                writer.write(chunk)
            up_writer.close()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()

    server = await asyncio.start_server(serve, LOOPBACK, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_the_status_page_works_under_an_ingress_path_prefix(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    device = TargetConfig(protocol=ProtocolName.MODBUS)
    async with asyncio.timeout(TEST_TIMEOUT), TargetServer(device) as target:
        config = mux_config(
            target.port, protocol=ProtocolName.MODBUS, metrics_listen=Address(LOOPBACK, 0)
        )
        async with running_app(config) as app, contextlib.AsyncExitStack() as stack:
            browser = stack.enter_context(chromium(tmp_path))
            assert app.observability is not None
            proxy = await stack.enter_async_context(prefixing_proxy(app.observability.port))
            client = await stack.enter_async_context(modbus_client(app.bridges[BRIDGE].port, 0))
            await client.read(6)
            await settled(app, target, clients=1, requests=6)
            page = await browser.page(f"http://{LOOPBACK}:{proxy}{INGRESS_PREFIX}")
            expect(page, clients=1, requests=6)
