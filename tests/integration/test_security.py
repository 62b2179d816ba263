"""Who may connect and who may write: allow lists, max clients, idle clients, write
rules by address and by certificate, TLS and mutual TLS (Modbus/TCP Security) with real
peers (pymodbus over TLS, curl over HTTPS), TLS to the target, half-close under TLS."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import pytest
from pymodbus.client import AsyncModbusTcpClient, AsyncModbusTlsClient

from tcp_multiplexer.app import App
from tcp_multiplexer.options import Address
from tcp_multiplexer.protocols.modbus.access import rules_value
from tcp_multiplexer.protocols.modbus.device import holding_register_value
from tcp_multiplexer.protocols.modbus.options import ModbusOptions
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets.server import TargetConfig, TargetServer
from tests.helpers import (
    LOOPBACK,
    eventually,
    loopback_alias_works,
    mux_config,
    open_client,
    running_app,
)
from tests.integration.core_support import echo, read_answer, read_request
from tests.modbus.adu import read_adu
from tests.tlscerts import CA, Pem, make_ca

TEST_TIMEOUT: Final = 20.0
MODBUS: Final = ProtocolName.MODBUS


def ipv6_loopback_works() -> bool:
    with socket.socket(socket.AF_INET6) as sock:
        try:
            sock.bind(("::1", 0))
        except OSError:
            return False
    return True


needs_aliases = pytest.mark.skipif(
    not loopback_alias_works("127.0.0.2"), reason="127.0.0.2 is not a loopback address here"
)


@contextlib.asynccontextmanager
async def modbus_bridge(
    *, ssl_target: ssl.SSLContext | None = None, **overrides: Any
) -> AsyncIterator[tuple[TargetServer, App]]:
    async with (
        TargetServer(TargetConfig(protocol=MODBUS), ssl_context=ssl_target) as target,
        running_app(mux_config(target.port, protocol=MODBUS, **overrides)) as app,
    ):
        yield target, app


async def closed_at_once(port: int, *, host: str = LOOPBACK, source: str | None = None) -> bool:
    """Connect and send a request: True if the connection is closed unanswered."""
    local = (source, 0) if source else None
    reader, writer = await asyncio.open_connection(host, port, local_addr=local)
    try:
        writer.write(read_request(1, 1, 1))
        try:
            return await reader.read() == b""
        except ConnectionResetError:
            return True
    finally:
        writer.close()


async def served(port: int, *, host: str = LOOPBACK, source: str | None = None) -> bool:
    local = (source, 0) if source else None
    reader, writer = await asyncio.open_connection(host, port, local_addr=local)
    try:
        writer.write(read_request(5, 1, 7))
        return await read_adu(reader) == read_answer(5, 1, 7)
    finally:
        writer.close()


# ---------------------------------------------------------------------------- who connects


@needs_aliases
async def test_the_allow_list_closes_other_addresses_unread_and_counts_them() -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        modbus_bridge(allow=(ipaddress.ip_network("127.0.0.2/32"),)) as (target, app),
    ):
        bridge = app.bridges["test"]
        assert await closed_at_once(bridge.port, source="127.0.0.1")
        assert await closed_at_once(bridge.port, source="127.0.0.3")
        assert await served(bridge.port, source="127.0.0.2")
        assert bridge.clients.refused["not-allowed"] == 2
        assert target.stats.requests == 1, "refused clients' requests were never read"


@pytest.mark.skipif(not ipv6_loopback_works(), reason="no IPv6 loopback here")
async def test_the_allow_list_works_for_ipv6() -> None:
    async with TargetServer(TargetConfig(protocol=MODBUS)) as target:
        for allowed, expect_served in (("::1/128", True), ("fd00::/8", False)):
            config = mux_config(
                target.port,
                protocol=MODBUS,
                listen=(Address("::1", 0),),
                allow=(ipaddress.ip_network(allowed),),
            )
            async with asyncio.timeout(TEST_TIMEOUT), running_app(config) as app:
                port = app.bridges["test"].port
                if expect_served:
                    assert await served(port, host="::1")
                else:
                    assert await closed_at_once(port, host="::1")


async def test_max_clients_refuses_the_one_too_many_and_lets_in_after_one_leaves() -> None:
    async with asyncio.timeout(TEST_TIMEOUT), modbus_bridge(max_clients=2) as (_target, app):
        bridge = app.bridges["test"]
        async with open_client(bridge.port), open_client(bridge.port):
            await eventually(lambda: bridge.metrics.clients == 2, message="two clients")
            assert await closed_at_once(bridge.port)
            assert bridge.clients.refused["max-clients"] == 1
        await eventually(lambda: bridge.metrics.clients == 0, message="both gone")
        assert await served(bridge.port)


async def test_an_idle_timeout_closes_silent_clients_only() -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        modbus_bridge(client_idle_timeout=0.3) as (
            _target,
            app,
        ),
    ):
        bridge = app.bridges["test"]
        async with (
            open_client(bridge.port) as (silent, _writer),
            open_client(bridge.port) as (
                reader,
                writer,
            ),
        ):
            loop = asyncio.get_running_loop()
            started = loop.time()
            closed = asyncio.ensure_future(silent.read())
            tid = 0
            while not closed.done():
                tid += 1
                writer.write(read_request(tid, 1, 3))
                assert await read_adu(reader) == read_answer(tid, 1, 3)
                await asyncio.sleep(0.1)
            assert await closed == b""
            assert loop.time() - started >= 0.3
            writer.write(read_request(99, 1, 3))
            assert await read_adu(reader) == read_answer(99, 1, 3), "the poller stayed"


# ---------------------------------------------------------------------------- who writes

RULES: Final = [
    {"clients": ["127.0.0.2"], "writes": ["unit 1 holding 100-110", "unit 2 fc 6 holding 5"]},
    {"clients": ["127.0.0.3/32"], "access": "read-only"},
    {"roles": ["operator"], "access": "read-write"},
]


@contextlib.asynccontextmanager
async def pymodbus_from(port: int, source: str) -> AsyncIterator[AsyncModbusTcpClient]:
    client = AsyncModbusTcpClient(
        LOOPBACK, port=port, timeout=5, retries=0, source_address=(source, 0)
    )
    try:
        assert await client.connect()
        yield client
    finally:
        client.close()


@needs_aliases
async def test_write_rules_by_address_are_enforced_before_the_device() -> None:
    options = ModbusOptions(write_rules=rules_value(RULES), cache_ttl=30.0)
    async with asyncio.timeout(TEST_TIMEOUT), modbus_bridge(modbus=options) as (target, app):
        bridge = app.bridges["test"]
        port = bridge.port
        async with (
            pymodbus_from(port, "127.0.0.2") as evcc,
            pymodbus_from(port, "127.0.0.3") as assistant,
            pymodbus_from(port, "127.0.0.1") as stranger,
        ):
            # A cached read, to show refused writes drop nothing.
            first = await assistant.read_holding_registers(100, count=5, device_id=1)
            assert first.registers == [holding_register_value(1, a) for a in range(100, 105)]
            device_requests = target.stats.requests
            for client, address, code in (
                (assistant, 100, 0x01),
                (stranger, 100, 0x01),
                (evcc, 200, 0x02),
            ):
                answer = await client.write_register(address, 4242, device_id=1)
                assert answer.isError()
                assert answer.exception_code == code
            answer = await evcc.write_register(5, 1, device_id=2)
            assert not answer.isError(), "fc 6 to unit 2 register 5 is granted"
            answer = await evcc.write_registers(5, [1, 2], device_id=2)
            assert answer.exception_code == 0x01, "fc 16 is not granted on unit 2"
            assert target.stats.requests == device_requests + 1, "refusals never reach it"
            hits = bridge.metrics.events["image_answers"]
            again = await assistant.read_holding_registers(100, count=5, device_id=1)
            assert again.registers == first.registers
            assert bridge.metrics.events["image_answers"] == hits + 1, "the cache entry stayed"
            answer = await evcc.write_register(101, 4242, device_id=1)
            assert not answer.isError()
            assert target.responder.holding_register(1, 101) == 4242  # type: ignore[attr-defined]
            assert target.responder.holding_register(1, 200) == holding_register_value(1, 200)  # type: ignore[attr-defined]
        assert bridge.metrics.events["writes_refused"] == 4
        assert bridge.metrics.events["exceptions_sent_0x02"] == 1


# ---------------------------------------------------------------------------- TLS


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    ca = make_ca(tmp_path, "site")
    other = make_ca(tmp_path, "other")
    return {
        "ca": ca,
        "server": ca.issue("multiplexer", server=True),
        "operator": ca.issue("operator-client", role="operator"),
        "viewer": ca.issue("viewer-client", role="viewer"),
        "expired": ca.issue("old-client", expired=True),
        "stranger": other.issue("stranger-client"),
    }


def tls_options(pki: dict[str, Any], *, mutual: bool = True) -> dict[str, Any]:
    server: Pem = pki["server"]
    ca: CA = pki["ca"]
    return {
        "tls_cert": str(server.cert),
        "tls_key": str(server.key),
        "tls_client_ca": str(ca.pem) if mutual else None,
    }


def client_context(ca: CA, pem: Pem | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.pem))
    if pem is not None:
        context.load_cert_chain(str(pem.cert), str(pem.key))
    return context


@contextlib.asynccontextmanager
async def pymodbus_tls(port: int, context: ssl.SSLContext) -> AsyncIterator[AsyncModbusTlsClient]:
    client = AsyncModbusTlsClient("localhost", port=port, sslctx=context, timeout=5, retries=0)
    try:
        yield client
    finally:
        client.close()


async def test_pymodbus_over_mutual_tls_reads_and_writes(pki: dict[str, Any]) -> None:
    options = ModbusOptions(write_rules=rules_value(RULES))
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        modbus_bridge(modbus=options, **tls_options(pki)) as (
            target,
            app,
        ),
    ):
        port = app.bridges["test"].port
        async with pymodbus_tls(port, client_context(pki["ca"], pki["operator"])) as client:
            assert await client.connect()
            read = await client.read_holding_registers(7, count=2, device_id=3)
            assert read.registers == [holding_register_value(3, 7), holding_register_value(3, 8)]
            written = await client.write_register(7, 99, device_id=3)
            assert not written.isError(), "the operator role may write"
        assert target.responder.holding_register(3, 7) == 99  # type: ignore[attr-defined]
        async with pymodbus_tls(port, client_context(pki["ca"], pki["viewer"])) as client:
            assert await client.connect()
            refused = await client.write_register(8, 99, device_id=3)
            assert refused.exception_code == 0x01, "a viewer matches no writing rule"
            assert not (await client.read_holding_registers(8, count=1, device_id=3)).isError()
        assert target.responder.holding_register(3, 8) == holding_register_value(3, 8)  # type: ignore[attr-defined]


def handshake(port: int, context: ssl.SSLContext) -> str:
    """Connect and exchange one Modbus read; 'served' or why it failed."""
    with socket.create_connection((LOOPBACK, port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(read_request(1, 1, 1))
                data = tls.recv(100)
                return "served" if data == read_answer(1, 1, 1) else f"got {data!r}"
        except (ssl.SSLError, ConnectionError, OSError) as exc:
            return f"refused: {exc}"


@pytest.mark.parametrize(
    ("who", "outcome"),
    [
        pytest.param("operator", "served", id="valid-certificate"),
        pytest.param(None, "refused", id="no-certificate"),
        pytest.param("stranger", "refused", id="another-ca"),
        pytest.param("expired", "refused", id="expired"),
    ],
)
async def test_mutual_tls_lets_in_only_certificates_of_its_ca(
    pki: dict[str, Any], who: str | None, outcome: str
) -> None:
    async with asyncio.timeout(TEST_TIMEOUT), modbus_bridge(**tls_options(pki)) as (_target, app):
        bridge = app.bridges["test"]
        context = client_context(pki["ca"], pki[who] if who else None)
        result = await asyncio.to_thread(handshake, bridge.port, context)
        assert result.startswith(outcome), result
        if outcome == "refused":
            assert bridge.clients.refused["tls"] == 1
        assert (
            await asyncio.to_thread(
                handshake, bridge.port, client_context(pki["ca"], pki["operator"])
            )
            == "served"
        ), "the next client is served"


def half_closing_client(port: int, context: ssl.SSLContext, *, notify: bool) -> bytes:
    """Send two requests over TLS, close the sending side (close_notify, or a FIN
    without it), then read everything that comes back."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with socket.create_connection((LOOPBACK, port), timeout=5) as raw:

        def pump() -> bool:
            data = raw.recv(65536)
            if data:
                incoming.write(data)
            else:
                incoming.write_eof()
            return bool(data)

        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                pump()
        raw.sendall(outgoing.read())
        tls.write(read_request(1, 1, 10) + read_request(2, 1, 20))
        if notify:
            with contextlib.suppress(ssl.SSLWantReadError):
                tls.unwrap()
        raw.sendall(outgoing.read())
        if not notify:
            raw.shutdown(socket.SHUT_WR)
        received = b""
        while True:
            try:
                chunk = tls.read(65536)
                if not chunk:
                    break
                received += chunk
            except ssl.SSLWantReadError:
                if not pump():
                    break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
        return received


@pytest.mark.parametrize("notify", [True, False], ids=["close-notify", "fin"])
async def test_a_tls_client_that_closes_its_side_still_gets_its_answers(
    pki: dict[str, Any], notify: bool
) -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(TargetConfig(protocol=MODBUS, delay=0.05)) as target,
        running_app(
            mux_config(target.port, protocol=MODBUS, **tls_options(pki, mutual=False))
        ) as app,
    ):
        context = client_context(pki["ca"], None)
        received = await asyncio.to_thread(
            half_closing_client, app.bridges["test"].port, context, notify=notify
        )
        assert received == read_answer(1, 1, 10) + read_answer(2, 1, 20)


async def test_tls_to_a_target_that_speaks_tls(pki: dict[str, Any]) -> None:
    server: Pem = pki["server"]
    device_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    device_tls.load_cert_chain(str(server.cert), str(server.key))
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        modbus_bridge(ssl_target=device_tls, target_tls=True, target_ca=str(pki["ca"].pem)) as (
            target,
            app,
        ),
    ):
        async with open_client(app.bridges["test"].port) as (reader, writer):
            writer.write(read_request(4, 2, 30))
            assert await read_adu(reader) == read_answer(4, 2, 30)
        assert target.stats.requests == 1


async def test_curl_over_https_through_an_http_bridge(pki: dict[str, Any]) -> None:
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(TargetConfig(protocol=ProtocolName.HTTP)) as target,
        running_app(
            mux_config(target.port, protocol=ProtocolName.HTTP, **tls_options(pki, mutual=False))
        ) as app,
    ):
        port = app.bridges["test"].port
        result = await asyncio.to_thread(
            subprocess.run,
            [
                "curl",
                "--silent",
                "--show-error",
                "--cacert",
                str(pki["ca"].pem),
                f"https://localhost:{port}/hello",
                f"https://localhost:{port}/again",
            ],
            capture_output=True,
            timeout=10,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"GET /hello\nGET /again\n"
        assert target.stats.requests == 2


async def test_an_echo_bridge_over_tls(pki: dict[str, Any]) -> None:
    """TLS works for every protocol, not only Modbus."""
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        TargetServer(TargetConfig()) as target,
        running_app(mux_config(target.port, **tls_options(pki, mutual=False))) as app,
    ):
        context = client_context(pki["ca"], None)
        reader, writer = await asyncio.open_connection(
            LOOPBACK, app.bridges["test"].port, ssl=context, server_hostname="localhost"
        )
        try:
            assert await echo((reader, writer), b"over tls\n") == b"over tls\n"
        finally:
            writer.close()


async def test_a_reload_rereads_renewed_certificates_and_keeps_them_if_broken(
    pki: dict[str, Any], tmp_path: Path
) -> None:
    site: CA = pki["ca"]
    renewed_ca = make_ca(tmp_path, "renewed")
    renewed = renewed_ca.issue("multiplexer-2", server=True)
    server: Pem = pki["server"]
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        modbus_bridge(**tls_options(pki, mutual=False)) as (_target, app),
    ):
        port = app.bridges["test"].port
        trusts_site = client_context(site, None)
        trusts_renewed = client_context(renewed_ca, None)
        assert await asyncio.to_thread(handshake, port, trusts_site) == "served"
        server.cert.write_bytes(renewed.cert.read_bytes())
        server.key.write_bytes(renewed.key.read_bytes())
        await app.reload(app.config)
        assert await asyncio.to_thread(handshake, port, trusts_renewed) == "served"
        assert (await asyncio.to_thread(handshake, port, trusts_site)).startswith("refused")
        server.cert.write_text("not a certificate\n")
        await app.reload(app.config)
        assert await asyncio.to_thread(handshake, port, trusts_renewed) == "served", (
            "a broken file keeps the certificate in use"
        )


async def test_a_reload_that_turns_tls_on_closes_plain_clients_and_keeps_the_port(
    pki: dict[str, Any],
) -> None:
    """The listener stays (same port); a client that came in without TLS may not stay,
    and the next one must speak TLS."""
    async with asyncio.timeout(TEST_TIMEOUT), modbus_bridge() as (_target, app):
        bridge = app.bridges["test"]
        port = bridge.port
        async with open_client(port) as (reader, writer):
            writer.write(read_request(1, 1, 1))
            assert await read_adu(reader) == read_answer(1, 1, 1)
            config = app.config
            (plain,) = config.bridges
            await app.reload(
                replace(config, bridges=(replace(plain, **tls_options(pki, mutual=False)),))
            )
            assert await reader.read() == b"", "the plain client is closed"
        assert bridge.port == port
        assert app.bridges["test"] is bridge, "changed in place"
        context = client_context(pki["ca"], None)
        assert await asyncio.to_thread(handshake, port, context) == "served"
