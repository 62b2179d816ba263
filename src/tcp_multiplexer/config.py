"""Validated, frozen configuration, and the parsers for durations and addresses.

Defaults live here only. Everything below the command line reads these dataclasses,
never flags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.framing.base import ProtocolName

DEFAULT_PROTOCOL: Final = ProtocolName.ECHO
DEFAULT_TARGET: Final = "127.0.0.1:1234"
DEFAULT_LISTEN: Final = "8000"
DEFAULT_TIMEOUT: Final = 60.0
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
DEFAULT_MAX_CONNECTIONS: Final = 1
DEFAULT_RECONNECT_BACKOFF: Final = 1.0
MAX_RECONNECT_BACKOFF: Final = 30.0
"""Cap of the exponential reconnect backoff (DESIGN: capped at 30 s)."""
DEFAULT_HEALTH_CHECK_INTERVAL: Final = 30.0
DEFAULT_QUEUE_SIZE: Final = 32
DEFAULT_MAX_INFLIGHT: Final = 1
DEFAULT_CLIENT_BACKLOG: Final = 16
"""Requests one client may have outstanding before it is no longer read from."""
DEFAULT_METRICS_INTERVAL: Final = 60.0
DEFAULT_BUSY_POLL: Final = 0.0002
"""200 µs of polling after I/O: a few loopback round trips, far below a device's answer."""
MAX_INFLIGHT_LIMIT: Final = 1024
"""Upper bound for --max-inflight; Modbus ids are 16 bits, and no device pipelines more."""

_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PLAIN_NUMBER: Final = re.compile(r"\d+(?:\.\d*)?|\.\d+")


def parse_duration(text: str) -> float:
    """Seconds from a Go-style duration (``500ms``, ``1m30s``) or plain seconds (``1.5``).

    Raises:
        ConfigError: empty, negative or otherwise unreadable text.
    """
    value = text.strip()
    if _PLAIN_NUMBER.fullmatch(value):
        return float(value)
    if value == "0":
        return 0.0
    position = 0
    total = 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position == 0 or position != len(value):
        raise ConfigError(
            f"invalid duration {text!r}: use seconds (1.5) or units like 500ms, 1s, 1m30s"
        )
    return total


def _parse_port(text: str, whole: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise ConfigError(f"invalid port in {whole!r}")
    port = int(text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"port {port} in {whole!r} is outside 0..65535")
    return port


def _split_host_port(text: str) -> tuple[str, str]:
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ConfigError(f"invalid address {text!r}: expected [HOST]:PORT")
        return host, rest[1:]
    host, colon, port = text.rpartition(":")
    if not colon:
        raise ConfigError(f"invalid address {text!r}: expected HOST:PORT")
    if ":" in host:
        raise ConfigError(f"invalid address {text!r}: write IPv6 hosts as [HOST]:PORT")
    return host, port


@dataclass(frozen=True, slots=True)
class Address:
    """A host and TCP port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_target(text: str) -> Address:
    """A target ``HOST:PORT`` (port 1..65535, host required).

    Raises:
        ConfigError: the text is not a usable target address.
    """
    host, port_text = _split_host_port(text.strip())
    if not host:
        raise ConfigError(f"invalid target {text!r}: the host is missing")
    port = _parse_port(port_text, text)
    if port == 0:
        raise ConfigError(f"invalid target {text!r}: port 0")
    return Address(host, port)


def parse_listen(text: str) -> Address:
    """A listen address: ``PORT``, ``:PORT`` or ``HOST:PORT`` (no host = all interfaces).

    Raises:
        ConfigError: the text is not a usable listen address.
    """
    value = text.strip()
    if value.isdigit():
        return Address("", _parse_port(value, text))
    host, port_text = _split_host_port(value)
    return Address(host, _parse_port(port_text, text))


@dataclass(frozen=True, slots=True)
class ModbusOptions:
    """Modbus gateway policy (only used with the modbus protocol)."""

    lenient_ids: bool = False
    coalesce: bool = True
    cache_ttl: float = 0.0
    read_only: bool = False

    def __post_init__(self) -> None:
        if self.cache_ttl < 0:
            raise ConfigError("--cache-ttl must not be negative")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything `tcp-multiplexer server` runs with."""

    protocol: ProtocolName = DEFAULT_PROTOCOL
    target: Address = field(default_factory=lambda: parse_target(DEFAULT_TARGET))
    listen: Address = field(default_factory=lambda: parse_listen(DEFAULT_LISTEN))
    timeout: float = DEFAULT_TIMEOUT
    """Longest wait for an answer, and longest wait for a free target connection."""
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    delay: float = 0.0
    """Pause after each target connect before its first request (the reference's --delay)."""
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    reconnect_backoff: float = DEFAULT_RECONNECT_BACKOFF
    health_check_interval: float = DEFAULT_HEALTH_CHECK_INTERVAL
    queue_size: int = DEFAULT_QUEUE_SIZE
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    client_backlog: int = DEFAULT_CLIENT_BACKLOG
    request_gap: float = 0.0
    """Minimum pause between two requests on one target connection."""
    max_idle: float = 0.0
    """Close a target connection idle this long (0 = never); reopened on demand."""
    metrics_interval: float = DEFAULT_METRICS_INTERVAL
    busy_poll: float = DEFAULT_BUSY_POLL
    """How long the event loop keeps polling after I/O before it sleeps (0 = never)."""
    modbus: ModbusOptions = field(default_factory=ModbusOptions)

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise ConfigError("--timeout must be positive")
        if self.connect_timeout <= 0:
            raise ConfigError("--connect-timeout must be positive")
        for name, value in (
            ("--delay", self.delay),
            ("--reconnect-backoff", self.reconnect_backoff),
            ("--health-check-interval", self.health_check_interval),
            ("--request-gap", self.request_gap),
            ("--max-idle", self.max_idle),
            ("--metrics-interval", self.metrics_interval),
            ("--busy-poll", self.busy_poll),
        ):
            if value < 0:
                raise ConfigError(f"{name} must not be negative")
        for name, count in (
            ("--max-connections", self.max_connections),
            ("--queue-size", self.queue_size),
            ("--max-inflight", self.max_inflight),
            ("--client-backlog", self.client_backlog),
        ):
            if count < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.max_inflight > MAX_INFLIGHT_LIMIT:
            raise ConfigError(f"--max-inflight must be at most {MAX_INFLIGHT_LIMIT}")
        if self.target.port == 0:
            raise ConfigError("the target port must not be 0")
