"""Device profiles: what a family of devices needs, by name (`--profile NAME`).

Each profile is a set of option values, written as in a config file, and the reasons
for them, taken from what users of these devices report in the issue trackers of the
integrations and proxies they use. A profile fills in what the bridge (or route) does
not set itself: explicit options always win. `tcp-multiplexer profiles` prints them.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from tcp_multiplexer.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    device: str
    """The devices it is for, as a person would name them."""
    settings: Mapping[str, object]
    """Option values by key, as a config file writes them."""
    why: str
    notes: tuple[str, ...] = field(default=())
    """What the profile cannot set for you (unit ids, serial settings)."""


PROFILES: Final = {
    profile.name: profile
    for profile in (
        Profile(
            "huawei-sdongle",
            "Huawei SUN2000 inverters through the SDongle (or the inverter's own WLAN/FE)",
            {
                "protocol": "modbus",
                "delay": "2s",
                "request-gap": "50ms",
                "timeout": "5s",
                "connect-timeout": "10s",
                "max-connections": 1,
            },
            "The SDongle swallows requests sent in the first 1 to 2 s after a connection "
            "opens, and wants 50 ms or more between requests; Huawei's own guidance is a "
            "5 s answer timeout. More than one connection at a time is unreliable.",
            (
                "The inverter answers on unit 1 (the second on 2, ...); the dongle itself "
                "on unit 0. Clients that ask unit 0 for the inverter: --unit-map 0=1.",
            ),
        ),
        Profile(
            "solaredge",
            "SolarEdge inverters (Modbus/TCP, port 1502 by default)",
            {
                "protocol": "modbus",
                "timeout": "5s",
                "max-connections": 1,
                "max-idle": "300s",
            },
            "The inverter accepts one Modbus/TCP connection and drops it after about 330 "
            "s; closing an idle one first at 300 s (reopened on the next request) means no "
            "request is ever lost to that drop.",
            (
                "Meters and batteries behind the inverter answer on their own unit ids "
                "(usually 2 and 3 for meters); enable Modbus/TCP in the inverter's "
                "commissioning menu first.",
            ),
        ),
        Profile(
            "sma",
            "SMA Sunny Boy, Sunny Tripower and Sunny Island (Modbus/TCP, port 502)",
            {
                "protocol": "modbus",
                "timeout": "5s",
                "max-connections": 1,
                "cache-ttl": "1s",
            },
            "SMA devices answer within a second but slow down when several clients poll "
            "the same registers; one connection and a 1 s cache serve them all with one "
            "read.",
            ("SMA devices answer on unit 3, not 1: for clients that ask unit 1, --unit-map 1=3.",),
        ),
        Profile(
            "fronius",
            "Fronius Symo, Primo and GEN24 (Modbus/TCP through the Datamanager, port 502)",
            {
                "protocol": "modbus",
                "timeout": "5s",
                "max-connections": 1,
                "max-idle": "50s",
            },
            "The Datamanager is reported to drop a connection that stays idle for about "
            "a minute; closing it first at 50 s (reopened on demand) avoids failed reads.",
            (
                "The inverter is unit 1, a Fronius Smart Meter unit 200 (or 240); set "
                "'Modbus TCP' to 'int + SF' or 'float' in the inverter's web page first.",
            ),
        ),
        Profile(
            "sungrow",
            "Sungrow SH and SG inverters through the WiNet-S dongle",
            {
                "protocol": "modbus",
                "delay": "1s",
                "request-gap": "100ms",
                "timeout": "5s",
                "max-connections": 1,
            },
            "The WiNet-S accepts one Modbus connection at a time, misses requests sent "
            "right after connecting, and gives wrong answers or hangs when requests come "
            "back to back; a pause after connecting and between requests keeps it up.",
            ("The inverter is unit 1.",),
        ),
        Profile(
            "growatt",
            "Growatt inverters on their RS-485 port (USB adapter or RTU-over-TCP converter)",
            {
                "protocol": "modbus",
                "request-gap": "100ms",
                "timeout": "2s",
            },
            "Growatt inverters answer within a second on RS-485 but need a pause between "
            "requests, and read at most 125 registers at once.",
            (
                "The port runs at 9600 baud, 8N1 (not the Modbus default 8E1): "
                "serial:///dev/ttyUSB0?baudrate=9600&parity=N.",
            ),
        ),
        Profile(
            "rs485-meter",
            "Energy meters on an RS-485 bus (Eastron SDM120/SDM630/SDM72, ORNO, DDS238...)",
            {
                "protocol": "modbus",
                "timeout": "1s",
                "request-gap": "20ms",
            },
            "A meter answers within 100 ms or not at all: a short timeout keeps one "
            "missing meter from holding the whole bus, and a small pause helps the "
            "slower ones.",
            (
                "Many meters ship at 9600 baud 8N1 (Eastron: 9600, no parity, 1 stop bit): "
                "serial:///dev/ttyUSB0?parity=N. Give each meter on the bus its own unit "
                "id and route each id to the same serial URL.",
            ),
        ),
    )
}
"""Every profile by name."""


def get_profile(name: object) -> Profile:
    """The profile named `name`.

    Raises:
        ConfigError: no profile is called that.
    """
    profile = PROFILES.get(str(name).strip().lower()) if isinstance(name, str) else None
    if profile is None:
        raise ConfigError(
            f"no profile {name!r} (tcp-multiplexer profiles lists them: {', '.join(PROFILES)})"
        )
    return profile


def profile_value(value: object) -> str:
    """The `profile` option: a profile's name."""
    return get_profile(value).name


def describe_profiles() -> str:
    """What `tcp-multiplexer profiles` prints."""
    out = []
    for profile in PROFILES.values():
        # Each setting stays whole on its line: no-break spaces inside it while wrapping.
        settings = ", ".join(
            f"{key} = {value}".replace(" ", NO_BREAK) for key, value in profile.settings.items()
        )
        out.append(f"{profile.name}: {profile.device}")
        for label, text in (
            ("sets", settings),
            ("why", profile.why),
            *(("note", note) for note in profile.notes),
        ):
            out.extend(
                line.replace(NO_BREAK, " ")
                for line in textwrap.wrap(
                    text,
                    width=88,
                    initial_indent=f"  {label + ':':<6} ",
                    subsequent_indent=" " * 9,
                    break_on_hyphens=False,
                    break_long_words=False,
                )
            )
        out.append("")
    return "\n".join(out).rstrip() + "\n"


NO_BREAK: Final = "\u00a0"
"""Not whitespace to textwrap (which splits on ASCII whitespace only)."""
