"""The front page and the guides as a new user reads them: every link leads somewhere,
samples show what the program says, the TLS commands make certificates a local try
accepts, and the try config starts as shipped."""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Final

import pytest

from tcp_multiplexer import __version__
from tests.helpers import LOOPBACK, cli_process, run_cli
from tests.integration.core_support import read_answer, read_request

ROOT: Final = Path(__file__).resolve().parent.parent
PAGES: Final = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK: Final = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings."""
    found = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
            found.add(slug)
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    for target in LINK.findall(page.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target} does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page.name}: no heading for #{anchor}"


def test_the_status_sample_shows_the_real_version() -> None:
    text = (ROOT / "docs" / "monitoring.md").read_text()
    (shown,) = re.findall(r'"version": "([^"]+)"', text)
    assert shown == __version__


def shell_block_after(page: Path, marker: str) -> list[str]:
    """The commands of the first ```sh block after `marker`, continuation lines joined."""
    text = page.read_text()
    block = text[text.index(marker) :].split("```sh\n", 1)[1].split("```", 1)[0]
    return block.replace("\\\n", " ").splitlines()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_the_readme_tls_commands_make_a_ca_and_certificates_a_local_try_accepts(
    tmp_path: Path,
) -> None:
    """The README's own openssl lines, run as written; then the multiplexer they start
    (mutual TLS on loopback) serves a client holding the client certificate."""
    commands = shell_block_after(ROOT / "README.md", "CA of your own")
    made = [line for line in commands if line.startswith(("openssl", "printf"))]
    assert made[0].startswith("openssl req -x509"), "the CA comes first"
    for command in made:
        subprocess.run(command, shell=True, cwd=tmp_path, check=True, capture_output=True)  # noqa: S602 - the README's own lines
    (server_line,) = [line for line in commands if line.startswith("tcp-multiplexer server")]
    argv = server_line.split()[1:]
    assert argv[argv.index("-t") + 1].startswith(f"{LOOPBACK}:")
    assert argv[argv.index("-l") + 1].startswith(f"{LOOPBACK}:")
    with cli_process(["example-server", "modbus", "-l", f"{LOOPBACK}:0"]) as device:
        port = int(device.wait_for_line(r"listening on \S+:(\d+)").group(1))
        # Free ports instead of the README's fixed ones; the rest as written.
        argv[argv.index("-t") + 1] = f"{LOOPBACK}:{port}"
        argv[argv.index("-l") + 1] = f"{LOOPBACK}:0"
        argv = [str(tmp_path / arg) if arg.endswith((".crt", ".key")) else arg for arg in argv]
        with cli_process(argv) as mux:
            mux_port = int(mux.wait_for_line(r"listening on \S+:(\d+)").group(1))
            context = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
            context.load_cert_chain(str(tmp_path / "evcc.crt"), str(tmp_path / "evcc.key"))
            with (
                socket.create_connection((LOOPBACK, mux_port), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname=LOOPBACK) as tls,
            ):
                tls.sendall(read_request(1, 1, 4))
                assert tls.recv(100) == read_answer(1, 1, 4)


def test_the_try_config_starts_as_shipped() -> None:
    """packaging/try.toml with the example device its header starts: a read through it,
    and the health command its header gives."""
    header = (ROOT / "packaging" / "try.toml").read_text().splitlines()
    device_line = next(line for line in header if "example-server" in line)
    device_argv = device_line.lstrip("# ").rstrip(" &").split()[1:]
    with (
        cli_process(device_argv) as device,
        cli_process(["server", "--config", str(ROOT / "packaging" / "try.toml")]) as mux,
    ):
        device.wait_for_line(r"listening on")
        mux.wait_for_line(r"listening on 127\.0\.0\.1:15020")
        with socket.create_connection((LOOPBACK, 15020), timeout=5) as client:
            client.sendall(read_request(7, 1, 3))
            assert client.recv(100) == read_answer(7, 1, 3)
        health = run_cli("health", "http://127.0.0.1:19502/")
        assert health.stdout.startswith("healthy: inverter"), health.stdout
