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
    local_echo: bool = False
    """The adapter reads back what it sends (half duplex): each request's echo is read
    and checked before its answer."""
    rs485: bool = False
    """Switch the transmitter with RTS (the kernel's RS-485 mode, through pyserial)."""
    rts_level_for_tx: bool = True
    rts_delay_before_tx: float = 0.0
    """Seconds RTS is raised before the first bit goes out."""
    rts_delay_after_tx: float = 0.0
    """Seconds RTS stays raised after the last bit."""

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
            text = (
                f"serial://{self.device}?baudrate={self.baudrate}&parity={self.parity}"
                f"&stopbits={self.stopbits}&bytesize={self.bytesize}"
            )
            if self.local_echo:
                text += "&local-echo=1"
            if self.rs485:
                text += (
                    f"&rs485=1&rts-level-for-tx={int(self.rts_level_for_tx)}"
                    f"&rts-delay-before-tx={self.rts_delay_before_tx * 1000:g}"
                    f"&rts-delay-after-tx={self.rts_delay_after_tx * 1000:g}"
                )
            return text
        text = str(self.address)
        return text if self.scheme == TCP else f"{self.scheme}://{text}"


def _serial(text: str, path: str, query: str) -> Target:
    if not path or path == "/":
        raise ConfigError(f"{text!r}: name the serial port, as in serial:///dev/ttyUSB0")
    settings: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        key = key.replace("_", "-")
        if key not in SERIAL_SETTINGS:
            raise ConfigError(
                f"{text!r}: unknown serial setting {key!r} ({', '.join(SERIAL_SETTINGS)})"
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
    switches = {key: _switch(text, key, settings) for key in ("local-echo", "rs485")}
    rts_level = _switch(text, "rts-level-for-tx", settings, default=True)
    delays = {key: _milliseconds(text, key, settings) for key in _RTS_DELAYS}
    if not switches["rs485"] and any(key in settings for key in (*_RTS_DELAYS, "rts-level-for-tx")):
        raise ConfigError(f"{text!r}: the rts- settings go with rs485=1")
    return Target(
        SERIAL,
        None,
        path,
        baudrate,
        parity,
        stopbits,
        bytesize,
        local_echo=switches["local-echo"],
        rs485=switches["rs485"],
        rts_level_for_tx=rts_level,
        rts_delay_before_tx=delays["rts-delay-before-tx"],
        rts_delay_after_tx=delays["rts-delay-after-tx"],
    )


_RTS_DELAYS: Final = ("rts-delay-before-tx", "rts-delay-after-tx")
SERIAL_SETTINGS: Final = (
    "baudrate",
    "parity",
    "stopbits",
    "bytesize",
    "local-echo",
    "rs485",
    "rts-level-for-tx",
    *_RTS_DELAYS,
)


def _switch(text: str, key: str, settings: Mapping[str, str], *, default: bool = False) -> bool:
    value = settings.get(key)
    if value is None:
        return default
    if value.strip().lower() in ("1", "true", "yes", "on", ""):
        return True
    if value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{text!r}: {key} is 1 or 0, not {value!r}")


def _milliseconds(text: str, key: str, settings: Mapping[str, str]) -> float:
    """A delay given in milliseconds, as seconds."""
    value = settings.get(key, "0")
    try:
        milliseconds = float(value)
    except ValueError:
        milliseconds = -1.0
    if not 0 <= milliseconds <= 1000:
        raise ConfigError(f"{text!r}: {key} is milliseconds, 0..1000, not {value!r}")
    return milliseconds / 1000


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
