"""Named values ("points"): what a range of registers means, and how to read it.

A bridge (or a route) declares points in its config table or in a map file it names:

    [[bridge.point]]                 # in a map file (map = "inverter.toml"): [[point]]
    name = "ac_power"                # a slug, unique per bridge
    unit = 1
    table = "holding"                # holding, input, coils or discrete
    address = 40083
    type = "i16"                     # u16 i16 u32 i32 u64 i64 f32 f64 bool string
    scale = "ac_power_sf"            # a number, or a point holding a SunSpec scale factor
    unit-of-measurement = "W"
    device-class = "power"           # Home Assistant's
    state-class = "measurement"
    every = "5s"                     # how often it is read (a poll; default 5 s)

Also `label` (what it is called where it is shown), `length` (registers, for
strings), `word-order` (big, the default, or little: the last register first),
`not-implemented` (the raw value that means "no value", as SunSpec's 0x8000 for an
i16), and for holding registers and coils `writable = true`
with `min` and `max`. Each point becomes a poll of its registers, merged with the
others; its value is decoded from ONE device answer in the register image, never from
registers read at different moments.
"""

from __future__ import annotations

import math
import re
import struct
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.options import duration_value, format_duration
from tcp_multiplexer.protocols.modbus.polls import TABLES, Poll

REGISTER_TYPES: Final = {
    "u16": (1, ">H"),
    "i16": (1, ">h"),
    "u32": (2, ">I"),
    "i32": (2, ">i"),
    "u64": (4, ">Q"),
    "i64": (4, ">q"),
    "f32": (2, ">f"),
    "f64": (4, ">d"),
}
"""Numeric types: registers taken, struct format (big-endian, first register first)."""
TYPES: Final = (*REGISTER_TYPES, "bool", "string")
BIT_TABLES: Final = frozenset({"coils", "discrete"})
WRITABLE_TABLES: Final = frozenset({"holding", "coils"})
DEFAULT_EVERY: Final = 5.0
SCALE_FACTOR_LIMIT: Final = 10
"""SunSpec scale factors are -10..10; anything else gives no value."""
_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
_KEYS: Final = frozenset(
    {
        "name",
        "unit",
        "table",
        "address",
        "type",
        "length",
        "word-order",
        "scale",
        "unit-of-measurement",
        "device-class",
        "state-class",
        "every",
        "writable",
        "min",
        "max",
        "not-implemented",
        "label",
    }
)
_POINT_HEADER: Final = re.compile(r"^[ \t]*\[\[[ \t]*point[ \t]*\]\]", re.MULTILINE)

Value = int | float | bool | str
"""A point's value: a number, a truth, or text."""


@dataclass(frozen=True, slots=True)
class Point:
    """One named value (see the module docstring)."""

    name: str
    address: int
    unit: int = 1
    table: str = "holding"
    type: str = "u16"
    length: int = 1
    """Registers a string takes."""
    word_order: str = "big"
    scale: float | str | None = None
    """A factor, or the name of the point holding a SunSpec scale factor (10 ** it)."""
    unit_of_measurement: str | None = None
    device_class: str | None = None
    state_class: str | None = None
    every: float = DEFAULT_EVERY
    writable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    not_implemented: int | None = None
    label: str | None = None
    """What it is called where it is shown (Home Assistant's entity name); its name if
    None."""

    @property
    def function(self) -> int:
        """The function code that reads its table."""
        return TABLES[self.table]

    @property
    def count(self) -> int:
        """Registers (or bits) it takes."""
        if self.type == "string":
            return self.length
        if self.type == "bool":
            return 1
        return REGISTER_TYPES[self.type][0]

    @property
    def numeric(self) -> bool:
        return self.type in REGISTER_TYPES

    def poll(self) -> Poll:
        """The poll that keeps it fresh."""
        return Poll(
            self.unit,
            self.table,
            self.address,
            self.count,
            self.every,
            f"point {self.name!r}",
        )

    def raw(self, data: bytes) -> int | float | bool | str | None:
        """Its value before scaling, from its registers' bytes (bits for coils and
        discrete inputs: one byte, bit 0); None where the device says "no value"."""
        if self.table in BIT_TABLES:
            return bool(data[0] & 1)
        if self.type == "bool":
            return data[:2] != b"\x00\x00"
        if self.type == "string":
            text = data.split(b"\x00", 1)[0].decode("utf-8", "replace").strip()
            return text or None
        words = [data[index : index + 2] for index in range(0, len(data), 2)]
        if self.word_order == "little":
            words.reverse()
        (value,) = struct.unpack(REGISTER_TYPES[self.type][1], b"".join(words))
        if isinstance(value, float):
            return None if math.isnan(value) or math.isinf(value) else value
        if self.not_implemented is not None and value == self.not_implemented:
            return None
        return int(value)

    def scaled(self, raw: int | float | bool | str | None, factor: float | None) -> Value | None:
        """`raw` times the point's scale (`factor`: the value a scale factor point gives,
        None if that point has none now)."""
        if raw is None or isinstance(raw, bool | str) or self.scale is None:
            return raw
        if isinstance(self.scale, str):
            if factor is None or not -SCALE_FACTOR_LIMIT <= factor <= SCALE_FACTOR_LIMIT:
                return None  # no scale factor, or not one SunSpec allows
            return _tidy(raw * 10.0**factor, -int(factor))
        return _tidy(raw * self.scale, _decimals(self.scale))

    def step(self) -> float:
        """The smallest change of its scaled value (1 unscaled; the scale for a number)."""
        if isinstance(self.scale, int | float) and self.type not in ("f32", "f64"):
            return abs(self.scale)
        return 1.0 if self.type not in ("f32", "f64") else 0.0

    def encode(self, value: float | bool, factor: float | None) -> bytes:
        """Its registers' bytes holding `value` (its scaled value; `factor`: its scale
        factor point's value now): one byte 0 or 1 for a coil.

        Raises:
            ValueError: it cannot hold that value, saying why.
        """
        if self.table in BIT_TABLES or self.type == "bool":
            raw_bool = bool(value)
            return bytes([raw_bool]) if self.table in BIT_TABLES else bytes([0, raw_bool])
        if self.type not in REGISTER_TYPES:
            raise ValueError(f"a {self.type} cannot be set")
        raw = float(value)
        if isinstance(self.scale, str):
            if factor is None or not -SCALE_FACTOR_LIMIT <= factor <= SCALE_FACTOR_LIMIT:
                raise ValueError(f"its scale factor {self.scale!r} is not known now")
            raw /= 10.0**factor
        elif self.scale is not None:
            raw /= self.scale
        fmt = REGISTER_TYPES[self.type][1]
        if self.type in ("f32", "f64"):
            data = struct.pack(fmt, raw)
        else:
            whole = round(raw)
            try:
                data = struct.pack(fmt, whole)
            except struct.error:
                raise ValueError(f"{value:g} does not fit a {self.type}") from None
        words = [data[index : index + 2] for index in range(0, len(data), 2)]
        if self.word_order == "little":
            words.reverse()
        return b"".join(words)


def _decimals(scale: float) -> int:
    """Digits after the point a value times `scale` needs (0.1: 1; 0.001: 3; 2: 0)."""
    if scale >= 1 or scale <= 0:
        return 0
    return min(12, max(0, math.ceil(-math.log10(scale) - 1e-9)))


def _tidy(value: float, decimals: int) -> int | float:
    """`value` rounded to `decimals` digits; whole when there are none."""
    if decimals <= 0:
        return round(value) if float(value).is_integer() else value
    return round(value, decimals)


# ---------------------------------------------------------------------------- reading


def _text(value: object, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key} must be a non-empty string, got {value!r}")
    return value.strip()


def _whole(value: object, key: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{key} {value} is outside {low}..{high}")
    return value


def _number(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    return float(value)


def parse_point(value: object) -> Point:
    """A point from its table.

    Raises:
        ConfigError: naming the point (when it has a name) and the key.
    """
    if isinstance(value, Point):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"a point is a table with a name, an address and a type, got {value!r}")
    name = value.get("name")
    label = f"point {name!r}" if isinstance(name, str) else "a point"
    try:
        return _point(value)
    except ConfigError as exc:
        raise ConfigError(f"{label}: {exc.message}") from None


def _point(value: Mapping[str, object]) -> Point:
    unknown = sorted(set(value) - _KEYS)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} (use {', '.join(sorted(_KEYS))})")
    if "name" not in value or "address" not in value:
        raise ConfigError("a point needs a name and an address")
    name = _text(value["name"], "name")
    if not _NAME.fullmatch(name):
        raise ConfigError(
            "the name must be a slug: lower-case letters, digits and _, starting with a letter"
        )
    table = _text(value.get("table", "holding"), "table").lower()
    if table not in TABLES:
        raise ConfigError(f"table {table!r} is not one of {', '.join(TABLES)}")
    default_type = "bool" if table in BIT_TABLES else "u16"
    kind = _text(value.get("type", default_type), "type").lower()
    if kind not in TYPES:
        raise ConfigError(f"type {kind!r} is not one of {', '.join(TYPES)}")
    if table in BIT_TABLES and kind != "bool":
        raise ConfigError(f"a point in {table} is a bool, not {kind}")
    length = _whole(value.get("length", 1), "length", 1, 125)
    if "length" in value and kind != "string":
        raise ConfigError("length is for strings")
    if kind == "string" and "length" not in value:
        raise ConfigError("a string needs its length in registers")
    unit = _whole(value.get("unit", 1), "unit", 0, 255)
    address = _whole(value["address"], "address", 0, 65535)
    order = _text(value.get("word-order", "big"), "word-order").lower()
    if order not in ("big", "little"):
        raise ConfigError(f"word-order {order!r} is not big or little")
    scale: float | str | None = None
    if "scale" in value:
        given = value["scale"]
        scale = _text(given, "scale") if isinstance(given, str) else _number(given, "scale")
        if kind not in REGISTER_TYPES:
            raise ConfigError(f"a {kind} has no scale")
    every = duration_value(value.get("every", DEFAULT_EVERY))
    if every <= 0:
        raise ConfigError("every must be longer than 0")
    writable = value.get("writable", False)
    if not isinstance(writable, bool):
        raise ConfigError(f"writable must be true or false, got {writable!r}")
    if writable and table not in WRITABLE_TABLES:
        raise ConfigError(f"only holding registers and coils are writable, not {table}")
    minimum = _number(value["min"], "min") if "min" in value else None
    maximum = _number(value["max"], "max") if "max" in value else None
    if (minimum is not None or maximum is not None) and not writable:
        raise ConfigError("min and max are for writable points")
    if minimum is not None and maximum is not None and minimum > maximum:
        raise ConfigError(f"min {minimum:g} is above max {maximum:g}")
    missing = value.get("not-implemented")
    if missing is not None and (isinstance(missing, bool) or not isinstance(missing, int)):
        raise ConfigError(f"not-implemented must be a whole number, got {missing!r}")
    point = Point(
        name=name,
        address=address,
        unit=unit,
        table=table,
        type=kind,
        length=length,
        word_order=order,
        scale=scale,
        unit_of_measurement=_optional_text(value, "unit-of-measurement"),
        device_class=_optional_text(value, "device-class"),
        state_class=_optional_text(value, "state-class"),
        every=every,
        writable=writable,
        minimum=minimum,
        maximum=maximum,
        not_implemented=missing,
        label=_optional_text(value, "label"),
    )
    if address + point.count > 65536:
        raise ConfigError("its registers run past address 65535")
    return point


def _optional_text(value: Mapping[str, object], key: str) -> str | None:
    return _text(value[key], key) if key in value else None


def check_points(points: Sequence[Point]) -> None:
    """Names unique, and each scale factor a point among them.

    Raises:
        ConfigError: naming the point.
    """
    by_name: dict[str, Point] = {}
    for point in points:
        if point.name in by_name:
            raise ConfigError(f"point {point.name!r} is declared twice", key="point")
        by_name[point.name] = point
    for point in points:
        if isinstance(point.scale, str):
            factor = by_name.get(point.scale)
            if factor is None:
                raise ConfigError(
                    f"point {point.name!r}: scale {point.scale!r} is no point of this bridge",
                    key="point",
                )
            if factor.type not in ("i16", "u16") or factor.unit != point.unit:
                raise ConfigError(
                    f"point {point.name!r}: scale factor {factor.name!r} must be an i16 of "
                    "the same unit",
                    key="point",
                )


def points_value(values: object) -> tuple[Point, ...]:
    """The `point` option: a list of point tables."""
    items = values if isinstance(values, list | tuple) else [values]
    return tuple(parse_point(item) for item in items)


# ---------------------------------------------------------------------------- map files


@dataclass(frozen=True, slots=True)
class PointMap:
    """A map file: where it is, and the points it holds."""

    path: str
    points: tuple[Point, ...]


def load_map(value: object) -> PointMap:
    """A map file's points (`value`: its path, already made absolute by the config file).

    Raises:
        ConfigError: the file cannot be read or is not TOML, or a point in it is bad:
            naming the file, the line of the point's table and the point.
    """
    if isinstance(value, PointMap):
        return value
    path = _text(value, "map")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    try:
        document = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(document) - {"point"})
    if unknown:
        raise ConfigError(f"{path}: unknown table or key {unknown[0]!r} (a map holds [[point]])")
    tables = document.get("point", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{path}: write points as [[point]] tables")
    lines = [text.count("\n", 0, match.start()) + 1 for match in _POINT_HEADER.finditer(text)]
    points = []
    for index, table in enumerate(tables):
        line = lines[index] if index < len(lines) else 0
        try:
            points.append(parse_point(table))
        except ConfigError as exc:
            raise ConfigError(f"{path} line {line}: {exc.message}") from None
    return PointMap(path, tuple(points))


def map_toml(value: PointMap | None) -> str:
    return "false" if value is None else _quoted(value.path)


def points_toml(points: Iterable[Point]) -> str:
    """Points as TOML inline tables that read back as the same points (check-config)."""
    return "[" + ", ".join(_point_toml(point) for point in points) + "]"


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def map_text(points: Iterable[Point], header: Sequence[str] = ()) -> str:
    """A map file holding `points` as [[point]] tables, after `header` as comments."""
    lines = [f"# {line}".rstrip() for line in header]
    for point in points:
        lines += ["", "[[point]]", *_point_parts(point)]
    return "\n".join(lines).lstrip("\n") + "\n"


def _point_toml(point: Point) -> str:
    return "{ " + ", ".join(_point_parts(point)) + " }"


def _point_parts(point: Point) -> list[str]:
    """The point's keys as TOML ``key = value`` pairs."""
    parts = [f"name = {_quoted(point.name)}"]
    if point.label is not None:
        parts.append(f"label = {_quoted(point.label)}")
    parts += [
        f"unit = {point.unit}",
        f"table = {_quoted(point.table)}",
        f"address = {point.address}",
        f"type = {_quoted(point.type)}",
    ]
    if point.type == "string":
        parts.append(f"length = {point.length}")
    if point.word_order != "big":
        parts.append(f"word-order = {_quoted(point.word_order)}")
    if point.scale is not None:
        scale = point.scale
        parts.append(f"scale = {_quoted(scale) if isinstance(scale, str) else repr(scale)}")
    for key, text in (
        ("unit-of-measurement", point.unit_of_measurement),
        ("device-class", point.device_class),
        ("state-class", point.state_class),
    ):
        if text is not None:
            parts.append(f"{key} = {_quoted(text)}")
    parts.append(f"every = {_quoted(format_duration(point.every))}")
    if point.writable:
        parts.append("writable = true")
    if point.minimum is not None:
        parts.append(f"min = {point.minimum!r}")
    if point.maximum is not None:
        parts.append(f"max = {point.maximum!r}")
    if point.not_implemented is not None:
        parts.append(f"not-implemented = {point.not_implemented}")
    return parts
