"""`tcp-multiplexer health [URL]` and `tcp-multiplexer capture URL -o FILE`: small clients
of the observability listener, standard library only (a Docker HEALTHCHECK, a user
sending a maintainer a capture)."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any, Final

DEFAULT_HEALTH_URL: Final = "http://127.0.0.1:9502/healthz"
"""Where `health` asks by default: the port the docs and example use for metrics-listen."""
FETCH_TIMEOUT: Final = 5.0


def _get(url: str) -> tuple[int, bytes]:
    """(status, body) of a GET; raises OSError (URLError) when nothing answers."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http:// URL: {url!r}")
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as response:  # noqa: S310 - http(s) checked above
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def health(args: argparse.Namespace) -> int:
    """Exit 0 when /healthz says healthy, 1 otherwise, with one line either way."""
    try:
        status, body = _get(args.url)
    except (OSError, ValueError) as exc:
        print(f"unhealthy: cannot ask {args.url}: {getattr(exc, 'reason', exc)}")
        return 1
    try:
        document: dict[str, Any] = json.loads(body)
        bridges: dict[str, dict[str, Any]] = document.get("bridges", {})
    except (ValueError, AttributeError):
        print(f"unhealthy: {args.url} answered {status} with no health document")
        return 1
    parts = [f"{name} {part.get('state')}" for name, part in bridges.items()]
    verdict = "healthy" if status == 200 else "unhealthy"
    print(f"{verdict}: " + (", ".join(parts) or "no bridges"))
    return 0 if status == 200 else 1


def capture(args: argparse.Namespace) -> int:
    """Save /capture.pcap (or /capture) to a file; 0, or 1 with one line."""
    url: str = args.url
    if not url.rstrip("/").endswith(("/capture", "/capture.pcap")):
        url = url.rstrip("/") + "/capture.pcap"
    try:
        status, body = _get(url)
    except (OSError, ValueError) as exc:
        print(
            f"tcp-multiplexer capture: cannot fetch {url}: {getattr(exc, 'reason', exc)}",
            file=sys.stderr,
        )
        return 1
    if status != 200:
        said = body[:200].decode(errors="replace").strip()
        print(f"tcp-multiplexer capture: {url} answered {status}: {said}", file=sys.stderr)
        return 1
    with open(args.output, "wb") as out:
        out.write(body)
    print(f"saved {len(body)} bytes from {url} to {args.output}")
    return 0


def add_parsers(commands: argparse._SubParsersAction[Any]) -> None:
    health_parser = commands.add_parser(
        "health",
        help="ask a running multiplexer's /healthz; exit 0 if healthy, 1 if not",
        description="Ask the observability listener (--metrics-listen) whether every "
        "bridge's target is reachable. One line on stdout; exit status 0 when healthy, 1 "
        "when not or when nothing answers. For a Docker HEALTHCHECK or a monitoring probe.",
    )
    health_parser.add_argument(
        "url",
        nargs="?",
        default=DEFAULT_HEALTH_URL,
        metavar="URL",
        help=f"the /healthz URL (default: {DEFAULT_HEALTH_URL})",
    )
    health_parser.set_defaults(handler=health)
    capture_parser = commands.add_parser(
        "capture",
        help="save a running multiplexer's capture of recent traffic (pcap for Wireshark)",
        description="Fetch the last transactions each bridge kept (--capture N) as a pcap "
        "file that Wireshark opens and decodes as Modbus/TCP, HTTP or TCP; or as JSON lines "
        "when the URL ends in /capture.",
    )
    capture_parser.add_argument(
        "url",
        metavar="URL",
        help="the listener's address (http://127.0.0.1:9502), /capture.pcap or /capture",
    )
    capture_parser.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="where to save it"
    )
    capture_parser.set_defaults(handler=capture)
