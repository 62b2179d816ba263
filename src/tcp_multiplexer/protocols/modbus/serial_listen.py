"""A serial listener's URL: the line the multiplexer is a slave on, and the units it
answers there.

    serial:///dev/ttyUSB1?baudrate=9600&parity=E&units=2-3

The line settings are a serial target's (target.py); `units` names the unit ids it
answers for (default: the units the bridge routes). A master on that line (an
inverter's meter port) asks; the multiplexer answers for those units, from the register
image where fresh or through the unit's target, and stays silent for every other unit,
as a bus requires.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.protocols.modbus.routes import parse_units
from tcp_multiplexer.target import Target, parse_target_url


@dataclass(frozen=True, slots=True)
class SerialListen:
    line: Target
    units: frozenset[int] | None
    """The units answered; None: those the bridge routes."""


def parse_serial_listen(text: str) -> SerialListen:
    """A serial listener's URL (see the module docstring).

    Raises:
        ConfigError: a bad line setting or unit list.
    """
    parts = urlsplit(text)
    query = parse_qsl(parts.query, keep_blank_values=True)
    units_text = [value for key, value in query if key == "units"]
    rest = urlencode([(key, value) for key, value in query if key != "units"])
    line = parse_target_url(
        f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{rest}" if rest else "")
    )
    units = None
    if units_text:
        try:
            units = parse_units(units_text[-1])
        except ConfigError as exc:
            raise ConfigError(f"{text!r}: units: {exc.message}") from None
        if 0 in units:
            raise ConfigError(f"{text!r}: unit 0 is the broadcast, no slave's unit")
    return SerialListen(line, units)
