"""Where a bridge's requests go: a target URL.

    HOST:PORT                     Modbus/TCP, or the bridge's protocol, over TCP
    tcp://HOST:PORT               the same, spelled out
    rtu+tcp://HOST:PORT           Modbus RTU frames over a TCP socket (an RTU-over-TCP
                                  converter: Elfin EW11, USR, Waveshare)
    serial:///dev/ttyUSB0?baudrate=9600&parity=E&stopbits=1&bytesize=8
                                  Modbus RTU on a serial line (a USB RS-485 adapter);
                                  defaults 9600 baud, 8E1, the Modbus serial default

Clients always speak the bridge's protocol over TCP; only the target side changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.options import Address, parse_target

TCP: Final = "tcp"
RTU_TCP: Final = "rtu+tcp"
SERIAL: Final = "serial"
SCHEMES: Final = (TCP, RTU_TCP, SERIAL)
PARITIES: Final = {"N": "none", "E": "even", "O": "odd"}
DEFAULT_BAUDRATE: Final = 9600
DEFAULT_PARITY: Final = "E"
DEFAULT_STOPBITS: Final = 1
DEFAULT_BYTESIZE: Final = 8
BAUDRATES: Final = range(300, 4_000_001)
"""What a UART and a USB adapter can do; RS-485 devices use 1,200 to 115,200."""
FAST_LINE_BAUD: Final = 19_200
"""Above this the inter-frame silence is fixed (Modbus over serial line v1.02, 2.5.1.1)."""
FAST_LINE_SILENCE: Final = 0.00175
"""1.75 ms: the fixed silence above 19,200 baud."""


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed target URL (see the module docstring)."""

    scheme: str = TCP
    address: Address | None = None
    """The host and port of TCP and RTU-over-TCP targets."""
    device: str = ""
    """The serial port of a serial target."""
    baudrate: int = DEFAULT_BAUDRATE
    parity: str = DEFAULT_PARITY
    stopbits: int = DEFAULT_STOPBITS
    bytesize: int = DEFAULT_BYTESIZE

    @classmethod
    def tcp(cls, address: Address) -> Target:
        return cls(TCP, address)

    @property
    def framing(self) -> str:
        """``mbap`` (Modbus/TCP, and every other protocol) or ``rtu``."""
        return "mbap" if self.scheme == TCP else "rtu"

    @property
    def is_serial(self) -> bool:
        return self.scheme == SERIAL

    @property
    def bits_per_character(self) -> int:
        """Start bit, data bits, parity bit, stop bits."""
        return 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits

    def transmit_time(self, size: int) -> float:
        """Seconds `size` bytes take on the line."""
        return size * self.bits_per_character / self.baudrate

    @property
    def silence(self) -> float:
        """The quiet a serial line needs between two frames: 3.5 character times, or
        1.75 ms above 19,200 baud. 0 for TCP targets (a converter keeps its own)."""
        if not self.is_serial:
            return 0.0
        if self.baudrate > FAST_LINE_BAUD:
            return FAST_LINE_SILENCE
        return 3.5 * self.bits_per_character / self.baudrate

    def __str__(self) -> str:
        if self.scheme == SERIAL:
            return (
                f"serial://{self.device}?baudrate={self.baudrate}&parity={self.parity}"
                f"&stopbits={self.stopbits}&bytesize={self.bytesize}"
            )
        text = str(self.address)
        return text if self.scheme == TCP else f"{self.scheme}://{text}"


def _serial(text: str, path: str, query: str) -> Target:
    if not path or path == "/":
        raise ConfigError(f"{text!r}: name the serial port, as in serial:///dev/ttyUSB0")
    settings: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in ("baudrate", "parity", "stopbits", "bytesize"):
            raise ConfigError(
                f"{text!r}: unknown serial setting {key!r} (baudrate, parity, stopbits, bytesize)"
            )
        settings[key] = value
    try:
        baudrate = int(settings.get("baudrate", DEFAULT_BAUDRATE))
        stopbits = int(settings.get("stopbits", DEFAULT_STOPBITS))
        bytesize = int(settings.get("bytesize", DEFAULT_BYTESIZE))
    except ValueError:
        raise ConfigError(f"{text!r}: baudrate, stopbits and bytesize are numbers") from None
    parity = settings.get("parity", DEFAULT_PARITY).upper()[:1]
    if baudrate not in BAUDRATES:
        raise ConfigError(f"{text!r}: baudrate {baudrate} is outside 300..4000000")
    if parity not in PARITIES:
        raise ConfigError(f"{text!r}: parity is N, E or O")
    if stopbits not in (1, 2):
        raise ConfigError(f"{text!r}: stopbits is 1 or 2")
    if bytesize != 8:
        raise ConfigError(f"{text!r}: Modbus RTU uses 8 data bits (bytesize=8)")
    return Target(SERIAL, None, path, baudrate, parity, stopbits, bytesize)


def parse_target_url(text: str) -> Target:
    """A target from its URL, or from a plain ``HOST:PORT`` (TCP).

    Raises:
        ConfigError: an unknown scheme, a bad address or serial setting.
    """
    value = text.strip()
    scheme, separator, rest = value.partition("://")
    if not separator:
        return Target.tcp(parse_target(value))
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigError(
            f"{text!r}: unknown scheme {scheme!r} (use tcp://, rtu+tcp:// or serial://)"
        )
    if scheme == SERIAL:
        parts = urlsplit(value)
        return _serial(text, parts.path, parts.query)
    address = parse_target(rest.rstrip("/"))
    return Target(scheme, address)


def target_url_value(value: object) -> Target:
    """The `target` option: a URL, or HOST:PORT."""
    if isinstance(value, Target):
        return value
    if isinstance(value, Address):
        return Target.tcp(value)
    if not isinstance(value, str):
        raise ConfigError(f"expected a target URL or HOST:PORT string, got {value!r}")
    return parse_target_url(value)


@dataclass(frozen=True, slots=True)
class TargetPlan:
    """One target a bridge sends to: the route keys it serves (Modbus unit ids; None:
    every one no route takes), how keys are rewritten for it (Modbus unit map), and the
    settings its route sets (option values by field name, over the bridge's)."""

    target: Target
    keys: frozenset[int] | None = None
    key_map: Mapping[int, int] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)


def single_target(options: object, default: Target | None) -> list[TargetPlan]:
    """The plan of a protocol without routes: its one TCP target.

    Raises:
        ConfigError: no target, or an RTU or serial one (Modbus only).
    """
    if default is None:
        raise ConfigError("every bridge needs a target", key="target")
    if default.scheme != TCP:
        raise ConfigError(f"{default.scheme}:// targets are for the modbus protocol", key="target")
    return [TargetPlan(default)]
