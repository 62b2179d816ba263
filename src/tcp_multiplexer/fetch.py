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
from urllib.parse import urlsplit, urlunsplit

DEFAULT_HEALTH_URL: Final = "http://127.0.0.1:9502/healthz"
"""Where `health` asks by default: the port the docs and example use for metrics-listen."""
FETCH_TIMEOUT: Final = 5.0


def page_url(url: str, pages: tuple[str, ...]) -> str:
    """`url` made to name one of `pages` on the listener it names.

    The listener's base address (``http://127.0.0.1:9502/``, ``127.0.0.1:9502``) gets the
    first of `pages` as its path; a URL whose path already ends in one of them is kept.
    The query (``?bridge=inverter``) is kept either way.

    Raises:
        ValueError: a scheme other than http or https.
    """
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"not an http:// URL: {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith(pages):
        path = path + pages[0]
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def _get(url: str) -> tuple[int, bytes, str]:
    """(status, body, content type) of a GET; raises OSError (URLError) when nothing
    answers."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http:// URL: {url!r}")
    try:
        with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as response:  # noqa: S310 - http(s) checked above
            return int(response.status), response.read(), response.headers.get_content_type()
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers.get_content_type()


def health(args: argparse.Namespace) -> int:
    """Exit 0 when /healthz says healthy, 1 otherwise, with one line either way."""
    url: str = args.url
    try:
        url = page_url(url, ("/healthz",))
        status, body, _type = _get(url)
    except (OSError, ValueError) as exc:
        print(f"unhealthy: cannot ask {url}: {getattr(exc, 'reason', exc)}")
        return 1
    try:
        document: dict[str, Any] = json.loads(body)
        bridges: dict[str, dict[str, Any]] = document.get("bridges", {})
    except (ValueError, AttributeError):
        print(f"unhealthy: {url} answered {status} with no health document")
        return 1
    parts = [f"{name} {part.get('state')}" for name, part in bridges.items()]
    verdict = "healthy" if status == 200 else "unhealthy"
    print(f"{verdict}: " + (", ".join(parts) or "no bridges"))
    return 0 if status == 200 else 1


CAPTURE_TYPES: Final = {
    "/capture.pcap": "application/vnd.tcpdump.pcap",
    "/capture": "application/x-ndjson",
}
"""What each capture page answers with: anything else is not a capture."""


def _capture_failed(message: str) -> int:
    print(f"tcp-multiplexer capture: {message}", file=sys.stderr)
    return 1


def capture(args: argparse.Namespace) -> int:
    """Save /capture.pcap (or /capture) to a file; 0, or 1 with one line on stderr."""
    url: str = args.url
    try:
        url = page_url(url, tuple(CAPTURE_TYPES))
        status, body, content_type = _get(url)
    except (OSError, ValueError) as exc:
        return _capture_failed(f"cannot fetch {url}: {getattr(exc, 'reason', exc)}")
    if status != 200:
        said = body[:200].decode(errors="replace").strip()
        return _capture_failed(f"{url} answered {status}: {said}")
    page = "/capture.pcap" if urlsplit(url).path.endswith("/capture.pcap") else "/capture"
    expected = CAPTURE_TYPES[page]
    if content_type != expected:
        return _capture_failed(f"{url} answered {content_type}, not a capture ({expected})")
    try:
        with open(args.output, "wb") as out:
            out.write(body)
    except OSError as exc:
        return _capture_failed(f"cannot write {args.output}: {exc.strerror or exc}")
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
        help="the listener's address (http://127.0.0.1:9502) or its /healthz URL "
        f"(default: {DEFAULT_HEALTH_URL})",
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
        help="the listener's address (http://127.0.0.1:9502), /capture.pcap or /capture; "
        "?bridge=NAME keeps one bridge",
    )
    capture_parser.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="where to save it"
    )
    capture_parser.set_defaults(handler=capture)
