"""Options, declared once for the command line and the config file, and their values.

An `Option` names a setting (its key is the long flag without dashes: ``max-connections``,
also written ``max_connections`` in a file), says how to read its value and what it is
by default. The command line turns each into an argparse argument; the config file
reads the same keys; both go through the same parser, so a value means the same
wherever it is written: durations as ``"500ms"``, ``"1m30s"`` or plain seconds, counts as
whole numbers, addresses as ``HOST:PORT``.

Value parsers take what the command line gives (a string) or what TOML gives (a
string, a number, a boolean, a list) and raise `ConfigError` with a message that does
not name the option: the caller adds the flag or the key.
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from typing import Any, Final

from tcp_multiplexer.errors import ConfigError

# ---------------------------------------------------------------------------- durations

_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS: Final = {
    "ns": Fraction(1, 10**9),
    "us": Fraction(1, 10**6),
    "µs": Fraction(1, 10**6),
    "ms": Fraction(1, 10**3),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
}
"""Exact, so that ``200us`` is the float nearest 0.0002 (and reads back as written)."""
_PLAIN_NUMBER: Final = re.compile(r"\d+(?:\.\d*)?|\.\d+")


def parse_duration(text: str) -> float:
    """Seconds from a Go-style duration (``500ms``, ``1m30s``) or plain seconds (``1.5``).

    Raises:
        ConfigError: empty, negative or otherwise unreadable text.
    """
    value = text.strip()
    if _PLAIN_NUMBER.fullmatch(value):
        return float(value)
    position = 0
    total = Fraction(0)
    for match in _DURATION_PART.finditer(value):
        if match.start() != position:
            break
        total += Fraction(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position == 0 or position != len(value):
        raise ConfigError(
            f"invalid duration {text!r}: use seconds (1.5) or units like 500ms, 1s, 1m30s"
        )
    return float(total)


def format_duration(seconds: float) -> str:
    """`seconds` as a duration that `parse_duration` reads back (``500ms``, ``1m30s``)."""
    if seconds == 0:
        return "0"
    if seconds < 1:
        for unit, scale in (("us", 1e-6), ("ms", 1e-3)):
            count = seconds / scale
            if count < 1000 and abs(count - round(count)) < 1e-6:
                return f"{round(count)}{unit}"
        return f"{seconds:g}"
    whole = round(seconds)
    if abs(seconds - whole) > 1e-9:
        return f"{seconds:g}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [
        f"{hours}h" if hours else "",
        f"{minutes}m" if minutes else "",
        f"{secs}s" if secs else "",
    ]
    return "".join(parts)


def duration_value(value: object) -> float:
    """A duration: a string `parse_duration` reads, or a number of seconds (>= 0)."""
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(f"invalid duration {value!r}: must not be negative")
        return float(value)
    raise ConfigError(f"expected a duration such as '5s' or a number of seconds, got {value!r}")


def count_value(minimum: int) -> Callable[[object], int]:
    """A parser for whole numbers of at least `minimum`."""

    def parse(value: object) -> int:
        if isinstance(value, bool):
            raise ConfigError(f"{value!r} is not a whole number")
        if isinstance(value, str):
            text = value.strip()
            try:
                value = int(text)
            except ValueError:
                raise ConfigError(f"{text!r} is not a whole number") from None
        if not isinstance(value, int):
            raise ConfigError(f"{value!r} is not a whole number")
        if value < minimum:
            raise ConfigError(f"{value} is below the minimum of {minimum}")
        return value

    return parse


def flag_value(value: object) -> bool:
    """A yes/no setting: true or false."""
    if isinstance(value, bool):
        return value
    raise ConfigError(f"expected true or false, got {value!r}")


def text_value(value: object) -> str:
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ConfigError(f"expected a non-empty string, got {value!r}")


def choice_value(choices: Sequence[str]) -> Callable[[object], str]:
    """A parser for one of `choices` (any case)."""

    def parse(value: object) -> str:
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        raise ConfigError(f"{value!r} is not one of {', '.join(choices)}")

    return parse


# ---------------------------------------------------------------------------- addresses


LISTEN_FRAMINGS: Final = {"rtu+tcp": "rtu", "auto": "auto", "serial": "serial"}
"""Listen URL schemes naming the framing a listener's clients speak (Modbus): RTU
frames over TCP, told per connection from its first bytes, or a serial line the
multiplexer is a slave on (its URL kept whole in `Address.host`)."""


@dataclass(frozen=True, slots=True)
class Address:
    """A host and TCP port (an empty host listens on every interface); for a listener,
    the framing its clients speak if not the protocol's own (``rtu``, ``auto``)."""

    host: str
    port: int
    framing: str = ""

    def __str__(self) -> str:
        if self.framing == "serial":
            return self.host
        text = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        if not self.framing:
            return text
        scheme = next(key for key, value in LISTEN_FRAMINGS.items() if value == self.framing)
        return f"{scheme}://{text}"


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
    """A listen address: ``PORT``, ``:PORT`` or ``HOST:PORT`` (no host = all interfaces),
    also as a URL: ``tcp://``, and for Modbus ``rtu+tcp://`` (clients sending RTU frames
    over TCP) or ``auto://`` (either, told per connection).

    Raises:
        ConfigError: the text is not a usable listen address.
    """
    value = text.strip()
    framing = ""
    scheme, separator, rest = value.partition("://")
    if separator:
        if scheme.lower() != "tcp" and scheme.lower() not in LISTEN_FRAMINGS:
            known = ", ".join(f"{name}://" for name in ("tcp", *LISTEN_FRAMINGS))
            raise ConfigError(f"{text!r}: a listen URL is {known}, not {scheme}://")
        framing = LISTEN_FRAMINGS.get(scheme.lower(), "")
        if framing == "serial":
            return Address(value, 0, framing)  # checked as a serial line by the config
        value = rest.rstrip("/")
    if value.isdigit():
        return Address("", _parse_port(value, text), framing)
    host, port_text = _split_host_port(value)
    return Address(host, _parse_port(port_text, text), framing)


def _string(value: object, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and what == "listen address":
        return str(value)
    raise ConfigError(f"expected a {what} string, got {value!r}")


def listen_value(value: object) -> Address:
    """A listen address (a bare number is a port)."""
    return parse_listen(_string(value, "listen address"))


def local_listen_value(value: object) -> Address:
    """A listen address that stays on loopback unless a host is given."""
    address = listen_value(value)
    return address if address.host else Address("127.0.0.1", address.port)


@functools.lru_cache(maxsize=256)
def bound_hosts(host: str) -> frozenset[str]:
    """The IP addresses a listener on `host` binds (``0.0.0.0`` and ``::`` for every
    interface; ``localhost`` its loopback addresses); a name that does not resolve is
    kept as it is written."""
    if not host:
        return frozenset(("0.0.0.0", "::"))  # noqa: S104 - a name for every interface, not bound here
    try:
        return frozenset((str(ipaddress.ip_address(host.split("%", 1)[0])),))
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        return frozenset((host,))
    return frozenset(str(info[4][0]).split("%", 1)[0] for info in found)


def _clash(one: str, other: str) -> bool:
    """True if listening on host address `one` keeps a listener on `other` (same port)
    from opening: the same address, or either is every interface of the other's family
    (asyncio sets IPV6_V6ONLY, so ``::`` does not cover IPv4)."""
    if one == other:
        return True
    try:
        first, second = ipaddress.ip_address(one), ipaddress.ip_address(other)
    except ValueError:
        return False
    return first.version == second.version and (first.is_unspecified or second.is_unspecified)


def listen_clash(one: Address, other: Address) -> bool:
    """True if a listener on `one` and one on `other` cannot both open: the same port
    (not 0: any free port) on the same interface, however each is spelled
    (``localhost:5020`` and ``127.0.0.1:5020``, ``5020`` and ``127.0.0.1:5020``)."""
    if one.port != other.port or one.port == 0:
        return False
    return any(
        _clash(first, second)
        for first in bound_hosts(one.host)
        for second in bound_hosts(other.host)
    )


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def network_value(value: object) -> Network:
    """An address range: ``192.168.1.0/24``, ``fd00::/8``, or one address."""
    text = _string(value, "CIDR")
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ConfigError(f"{text!r} is not an address or an address range (CIDR)") from None


def client_address(peer: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A client's IP address from a socket's peer name (IPv4-mapped IPv6 as IPv4)."""
    if not isinstance(peer, tuple) or not peer:
        return None
    try:
        address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


# ---------------------------------------------------------------------------- options


class Scope(StrEnum):
    """Where an option belongs."""

    BRIDGE = "bridge"
    """Per bridge: `[[bridge]]` tables in the file, the one bridge on the command line."""
    GLOBAL = "global"
    """Per process: the file's global tables, and the command line even with a file."""


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: its key, how to read its value, its default, its help.

    A `parse` of None makes a flag: on the command line its presence means true, in a
    file it takes true or false.
    """

    key: str
    help: str
    parse: Callable[[object], Any] | None
    default: Any
    flags: tuple[str, ...] = ()
    """Command-line spellings; default ``--KEY``. The first long one is shown in errors."""
    metavar: str | None = None
    repeatable: bool = False
    """The command line takes it several times (each adds a value)."""
    group: str = ""
    """The --help section it is listed in."""
    scope: Scope = Scope.BRIDGE
    table: str = ""
    """For global options: the config file table it sits in (``logging``)."""
    file_key: str = ""
    """The key inside `table`, when it differs from `key` (``[metrics] listen``)."""
    command_line_too: bool = True
    """False for what only a config file can say (tables of rules)."""
    render: Callable[[Any], str] | None = None
    """The value as TOML, for what is not a plain value (tables of rules)."""
    bare: str | None = None
    """The value of the flag given alone, without one (``--read-only`` is ``deny``);
    None: the option always takes a value."""

    @property
    def field(self) -> str:
        """The config dataclass field it sets."""
        return self.key.replace("-", "_")

    @property
    def command_line(self) -> tuple[str, ...]:
        return self.flags or (f"--{self.key}",)

    def read(self, value: object) -> Any:
        """`value` as this option's type.

        Raises:
            ConfigError: with this option as its key.
        """
        if value is None:  # an option that is off by default and was not given
            return () if self.repeatable else None
        try:
            if self.parse is None:
                return flag_value(value)
            if self.repeatable:
                items = value if isinstance(value, list | tuple) else [value]
                return tuple(self.parse(item) for item in items)
            return self.parse(value)
        except ConfigError as exc:
            raise ConfigError(exc.message, key=self.key) from None


def index_options(options: Sequence[Option]) -> dict[str, Option]:
    """Options by key, with the ``max_connections`` spelling too."""
    by_key: dict[str, Option] = {}
    for option in options:
        by_key[option.key] = option
        by_key[option.field] = option
    return by_key


# ---------------------------------------------------------------------------- arguments


def positive_duration_argument(text: str) -> float:
    """An argparse type: a duration longer than 0 (``500ms``, ``1s``, ``1.5``)."""
    try:
        value = parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be longer than 0")
    return value


def unit_argument(text: str) -> int:
    """An argparse type: a Modbus unit id, 0..255."""
    if not text.isdigit() or not 0 <= int(text) <= 255:
        raise argparse.ArgumentTypeError(f"a unit id is 0..255, got {text!r}")
    return int(text)
