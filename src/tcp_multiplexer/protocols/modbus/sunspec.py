"""SunSpec: find a device's models, decode them, and name their values as points.

A SunSpec device holds "SunS" at 40000, 0 or 50000 (holding registers), then a chain
of models, each its id, its length L and L registers, up to the id 0xFFFF. `ScanWalk`
walks that chain without doing any I/O: it says which registers to read next and takes
what the device answered (protocols/modbus/sunspec_scan.py drives it through a
target's dispatcher). What each model's registers mean comes from the SunSpec
Alliance's model definitions, which the pysunspec2 package ships as JSON (the
`publish` extra); none are typed here.

`model_points` turns the models found into points (points.py), named
``m<model>_<point>`` (``m103_w``; a second model of the same id ``m203_2_w``; a
repeating group's instance ``m160_module1_dcw``), with SunSpec's scale factors, its
not-implemented value per type, units and Home Assistant's classes. `describe` prints a
scan with every value decoded and scaled.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.protocols.modbus.points import Point, Value

BASES: Final = (40000, 0, 50000)
"""Where the "SunS" marker may sit, in the order they are tried."""
MARKER: Final = b"SunS"
END_ID: Final = 0xFFFF
MAX_READ: Final = 125
MAX_MODELS: Final = 100
"""A chain longer than this is taken as a device that does not end it."""
PUBLISHED_MODELS: Final = frozenset(
    {1, 101, 102, 103, 111, 112, 113, 120, 122, 123, 124, 160}
    | {201, 202, 203, 204, 211, 212, 213, 214}
    | {701, 713, 714, 802, 803, 804}
)
"""Models whose points go into a map (common, inverter, nameplate, status, controls,
storage, MPPT, meters, DER measurements and storage, batteries); others are printed."""
PUBLISH_EXTRA: Final = "pip install 'tcp-multiplexer[publish]'"

# SunSpec point type: (point type, not-implemented raw value as the point decodes it).
_TYPES: Final[dict[str, tuple[str, int | None]]] = {
    "int16": ("i16", -0x8000),
    "sunssf": ("i16", -0x8000),
    "uint16": ("u16", 0xFFFF),
    "count": ("u16", 0xFFFF),
    "enum16": ("u16", 0xFFFF),
    "bitfield16": ("u16", 0xFFFF),
    "acc16": ("u16", 0),
    "int32": ("i32", -0x80000000),
    "uint32": ("u32", 0xFFFFFFFF),
    "enum32": ("u32", 0xFFFFFFFF),
    "bitfield32": ("u32", 0xFFFFFFFF),
    "acc32": ("u32", 0),
    "int64": ("i64", -0x8000000000000000),
    "uint64": ("u64", 0xFFFFFFFFFFFFFFFF),
    "acc64": ("u64", 0),
    "float32": ("f32", None),
    "float64": ("f64", None),
    "string": ("string", None),
}
"""What a SunSpec type is as a point, and the raw value that means "not implemented"
(floats: NaN; strings: all zeros; both handled by the point itself)."""
_SIZES: Final = {"pad": 1, "ipaddr": 2, "ipv6addr": 8, "eui48": 4}
"""Types published as nothing, with their registers."""
_UNITS: Final[dict[str, tuple[str | None, str | None]]] = {
    # SunSpec's unit: (unit of measurement, Home Assistant device class)
    "W": ("W", "power"),
    "VA": ("VA", "apparent_power"),
    "var": ("var", "reactive_power"),
    "Var": ("var", "reactive_power"),
    "VAr": ("var", "reactive_power"),
    "Wh": ("Wh", "energy"),
    "WH": ("Wh", "energy"),
    "kWh": ("kWh", "energy"),
    "VAh": ("VAh", None),
    "varh": ("varh", None),
    "Varh": ("varh", None),
    "A": ("A", "current"),
    "V": ("V", "voltage"),
    "Hz": ("Hz", "frequency"),
    "C": ("°C", "temperature"),
    "Pct": ("%", None),
    "%": ("%", None),
    "%WHRtg": ("%", None),
    "% AhrRtg": ("%", None),
    "Secs": ("s", "duration"),
    "Sec": ("s", "duration"),
    "Ah": ("Ah", None),
    "AH": ("Ah", None),
    "W/m2": ("W/m²", "irradiance"),
    "W/m^2": ("W/m²", "irradiance"),
    "cos()": (None, "power_factor"),
    "PF": (None, "power_factor"),
}
_STATE_OF_CHARGE: Final = frozenset({"SoC", "ChaState"})
_SLUG: Final = re.compile(r"[^a-z0-9_]+")


@dataclass(frozen=True, slots=True)
class Model:
    """One model the device holds: its id, the address of its id register, and its L
    registers (as bytes, two per register)."""

    id: int
    address: int
    data: bytes

    @property
    def length(self) -> int:
        return len(self.data) // 2

    @property
    def start(self) -> int:
        """The address of its first register after the id and the length."""
        return self.address + 2


@dataclass(frozen=True, slots=True)
class SunSpecDevice:
    """What a scan found on one unit."""

    unit: int
    base: int
    models: tuple[Model, ...]

    def info(self) -> dict[str, str]:
        """Manufacturer, model, serial number and version from the common model (1),
        as far as it says them."""
        common = next((model for model in self.models if model.id == 1), None)
        if common is None:
            return {}
        keys = {"Mn": "manufacturer", "Md": "model", "SN": "serial_number", "Vr": "sw_version"}
        found: dict[str, str] = {}
        for entry in layout(common):
            key = keys.get(entry.name)
            value = entry.value(common, {})
            if key is not None and isinstance(value, str) and entry.group_path == ():
                found[key] = value
        return found


# ---------------------------------------------------------------------------- the walk


class ScanWalk:
    """The scan of one unit as a sequence of reads (see the module docstring).

    Ask `next_read()` for the next (address, count) to read from the holding registers;
    give its registers to `answered`, or `refused()` when the device answered it with
    an exception. When `next_read()` gives None the walk is over: `device` is what it
    found, or None with `error` saying why.
    """

    def __init__(self, unit: int) -> None:
        self.unit = unit
        self._bases = list(BASES)
        self._base = -1
        self._at = -1
        """The address of the model header being read, or -1 while looking for the
        marker."""
        self._model_id = 0
        self._length = 0
        self._body = bytearray()
        self._models: list[Model] = []
        self._over = False
        self.device: SunSpecDevice | None = None
        self.error = ""

    def next_read(self) -> tuple[int, int] | None:
        if self._over:
            return None
        if self._at < 0:
            return (self._bases[0], 2)
        if self._length and len(self._body) < self._length * 2:
            done = len(self._body) // 2
            return (self._at + 2 + done, min(MAX_READ, self._length - done))
        return (self._at, 2)

    def answered(self, registers: bytes) -> None:
        if self._over:
            return
        if self._at < 0:
            if registers[:4] == MARKER:
                self._base = self._bases[0]
                self._at = self._base + 2
            else:
                self._next_base()
            return
        if self._length:
            self._body += registers
            if len(self._body) >= self._length * 2:
                self._add_model()
            return
        if len(registers) < 4:
            self._finish()
            return
        model_id, length = struct.unpack(">HH", registers[:4])
        if model_id == END_ID:
            self._finish()
            return
        if self._at + 2 + length > 0xFFFF:
            self._finish(f"model {model_id} at {self._at} runs past address 65535")
            return
        self._model_id = model_id
        self._length = length
        self._body = bytearray()
        if not length:
            self._add_model()

    def refused(self) -> None:
        """The device answered the last read with an exception."""
        if self._over:
            return
        if self._at < 0:
            self._next_base()
        else:
            # Some devices refuse the read past their last model instead of ending the
            # chain with 0xFFFF: what was found stands.
            self._finish()

    def failed(self, reason: str) -> None:
        """The last read got no answer: the walk ends with nothing."""
        self._over = True
        self.error = reason

    def _next_base(self) -> None:
        self._bases.pop(0)
        if not self._bases:
            self._over = True
            self.error = "no SunSpec marker ('SunS') at 40000, 0 or 50000"

    def _add_model(self) -> None:
        self._models.append(Model(self._model_id, self._at, bytes(self._body)))
        self._at += 2 + self._length
        self._length = 0
        self._body = bytearray()
        if len(self._models) >= MAX_MODELS:
            self._finish(f"more than {MAX_MODELS} models: the chain does not end")

    def _finish(self, error: str = "") -> None:
        self._over = True
        if error:
            self.error = error
        if self._models or not error:
            self.device = SunSpecDevice(self.unit, self._base, tuple(self._models))


# ---------------------------------------------------------------------------- definitions


def definition(model_id: int) -> Mapping[str, Any] | None:
    """The SunSpec Alliance's definition of a model (pysunspec2's), or None if it has
    none (a vendor's model).

    Raises:
        ConfigError: pysunspec2 is not installed (the publish extra).
    """
    try:
        import sunspec2.device as sunspec_device
        import sunspec2.mdef as sunspec_mdef
    except ImportError:
        raise ConfigError(f"SunSpec needs pysunspec2: {PUBLISH_EXTRA}", key="sunspec") from None
    try:
        found: Mapping[str, Any] = sunspec_device.get_model_def(model_id)
    except sunspec_mdef.ModelDefinitionError:
        return None
    return found


def available() -> bool:
    """True when pysunspec2 (the publish extra) is installed."""
    try:
        definition(1)
    except ConfigError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Entry:
    """One point of a model where it sits: its definition, its offset in the model's
    registers (after the id and length), the groups it is in (name and instance, 1 up)."""

    name: str
    definition: Mapping[str, Any]
    offset: int
    size: int
    group_path: tuple[tuple[str, int], ...] = ()
    scale: str | int | None = None
    """Its scale factor: the name (an Entry's `key`) of the point holding it, or a
    number."""

    @property
    def key(self) -> str:
        """Its name with its groups (``module1_DCW``), unique in its model."""
        return "_".join([*(f"{name}{index}" for name, index in self.group_path), self.name])

    @property
    def type(self) -> str:
        return str(self.definition.get("type", ""))

    def registers(self, model: Model) -> bytes:
        return model.data[self.offset * 2 : (self.offset + self.size) * 2]

    def raw(self, model: Model) -> int | float | str | None:
        """Its value before scaling; None where SunSpec says "not implemented"."""
        kind = _TYPES.get(self.type)
        data = self.registers(model)
        if kind is None or len(data) < self.size * 2:
            return None
        point = Point(
            name="x",
            address=0,
            type=kind[0],
            length=self.size if kind[0] == "string" else 1,
            not_implemented=kind[1],
        )
        value = point.raw(data)
        return None if isinstance(value, bool) else value

    def value(self, model: Model, entries: Mapping[str, Entry]) -> Value | None:
        """Its value scaled as SunSpec says; None: not implemented, or its scale factor
        is not."""
        raw = self.raw(model)
        if raw is None or isinstance(raw, str) or self.scale is None:
            return raw
        if isinstance(self.scale, int):
            factor: float | None = self.scale
        else:
            scale_entry = entries.get(self.scale)
            scale_raw = scale_entry.raw(model) if scale_entry is not None else None
            factor = float(scale_raw) if isinstance(scale_raw, int) else None
        return Point(name="x", address=0, type="i32", scale="sf").scaled(raw, factor)


def layout(model: Model) -> list[Entry]:
    """Every point of `model` where it sits, repeating groups as many times as the
    model holds them; [] for a model without a definition."""
    found = definition(model.id)
    if found is None:
        return []
    entries: list[Entry] = []
    _lay_out(found["group"], model, 0, (), (), entries, top=True)
    return entries


def _lay_out(
    group: Mapping[str, Any],
    model: Model,
    offset: int,
    path: tuple[tuple[str, int], ...],
    scopes: tuple[dict[str, Entry], ...],
    entries: list[Entry],
    *,
    top: bool,
) -> int:
    """Lay out one instance of `group` from `offset`; returns the offset after it."""
    here: dict[str, Entry] = {}
    scopes = (here, *scopes)
    for point in group.get("points", ()):
        name = str(point["name"])
        if top and name in ("ID", "L"):
            continue  # the model's header, not in its L registers
        kind = str(point.get("type", ""))
        size = int(point.get("size") or _SIZES.get(kind, 1))
        here[name] = Entry(name, point, offset, size, path)
        offset += size
    # A scale factor is a point of the group or of one enclosing it (often after the
    # points it scales), or a number.
    for name, entry in here.items():
        sf = entry.definition.get("sf")
        if isinstance(sf, str):
            scale: str | int | None = next((s[sf].key for s in scopes if sf in s), None)
            if scale is None and sf.lstrip("-").isdigit():
                scale = int(sf)
            here[name] = replace(entry, scale=scale)
        elif isinstance(sf, int):
            here[name] = replace(entry, scale=sf)
    entries.extend(here.values())
    for child in group.get("groups", ()):
        length = _group_length(child)
        count = _group_count(child, here, model, offset, length, top=top)
        for index in range(1, count + 1):
            offset = _lay_out(
                child,
                model,
                offset,
                (*path, (str(child["name"]), index)),
                scopes,
                entries,
                top=False,
            )
    return offset


def _group_length(group: Mapping[str, Any]) -> int:
    size = sum(
        int(point.get("size") or _SIZES.get(str(point.get("type")), 1))
        for point in group.get("points", ())
    )
    for child in group.get("groups", ()):
        count = child.get("count")
        size += _group_length(child) * (count if isinstance(count, int) and count > 0 else 0)
    return size


def _group_count(
    group: Mapping[str, Any],
    scope: Mapping[str, Entry],
    model: Model,
    offset: int,
    length: int,
    *,
    top: bool,
) -> int:
    """How many times a group repeats: its count, the point its count names, or as many
    as fit in what is left of the model."""
    count = group.get("count")
    if isinstance(count, int) and count > 0:
        return count
    if isinstance(count, str) and count in scope:
        value = scope[count].raw(model)
        if isinstance(value, int):
            return max(0, min(value, (model.length - offset) // max(1, length)))
    if not length:
        return 0
    return max(0, (model.length - offset) // length) if top else 1


# ---------------------------------------------------------------------------- points


def _slug(text: str) -> str:
    return _SLUG.sub("_", text.lower()).strip("_")


def model_points(
    device: SunSpecDevice,
    every: float,
    *,
    prefix: str = "",
    models: frozenset[int] = PUBLISHED_MODELS,
) -> list[Point]:
    """Points for the models of `device` among `models`: named, scaled, typed and
    classed as the module docstring says, read every `every` seconds."""
    points: list[Point] = []
    seen: dict[int, int] = {}
    for model in device.models:
        if model.id not in models:
            continue
        seen[model.id] = seen.get(model.id, 0) + 1
        model_prefix = f"{prefix}m{model.id}" + (f"_{seen[model.id]}" if seen[model.id] > 1 else "")
        found = definition(model.id)
        label = str(found["group"].get("label", f"Model {model.id}")) if found else ""
        for entry in layout(model):
            point = _point(device, model, entry, model_prefix, label, every)
            if point is not None:
                points.append(point)
    return points


def _point(
    device: SunSpecDevice,
    model: Model,
    entry: Entry,
    prefix: str,
    model_label: str,
    every: float,
) -> Point | None:
    kind = _TYPES.get(entry.type)
    if kind is None:
        return None  # padding and addresses: nothing to publish
    name = f"{prefix}_{_slug(entry.key)}"[:64]
    scale: float | str | None = None
    if isinstance(entry.scale, str):
        scale = f"{prefix}_{_slug(entry.scale)}"[:64]
    elif isinstance(entry.scale, int):
        scale = 10.0**entry.scale
    units = entry.definition.get("units")
    unit_of_measurement, device_class = _UNITS.get(str(units), (None, None))
    if unit_of_measurement is None and device_class is None and units:
        unit_of_measurement = str(units).strip() or None
    state_class: str | None = None
    numeric = kind[0] not in ("string",) and entry.type not in (
        "enum16",
        "enum32",
        "bitfield16",
        "bitfield32",
        "sunssf",
    )
    if numeric and (unit_of_measurement is not None or device_class is not None):
        state_class = "measurement"
    if entry.type.startswith("acc"):
        state_class = "total_increasing"
    elif device_class == "energy":
        device_class = "energy_storage"  # a rating or what is stored, not a meter
    if entry.name in _STATE_OF_CHARGE and unit_of_measurement == "%":
        device_class = "battery"
    if entry.name == "PF" and device_class is None:
        device_class = "power_factor"
    if not numeric:
        unit_of_measurement = device_class = None
    label = str(entry.definition.get("label") or entry.name)
    groups = " ".join(f"{group.capitalize()} {index}" for group, index in entry.group_path)
    return Point(
        name=name,
        address=model.start + entry.offset,
        unit=device.unit,
        table="holding",
        type=kind[0],
        length=entry.size if kind[0] == "string" else 1,
        scale=scale,
        unit_of_measurement=unit_of_measurement,
        device_class=device_class,
        state_class=state_class,
        every=every,
        not_implemented=kind[1],
        label=" ".join(part for part in (model_label, groups, label) if part),
    )


# ---------------------------------------------------------------------------- printing


def describe(device: SunSpecDevice, where: str) -> Iterator[str]:
    """What a scan found, a line at a time: each model and each value, scaled."""
    ids = ", ".join(str(model.id) for model in device.models)
    yield (
        f"SunSpec device at {where}, unit {device.unit}: marker at {device.base}, "
        f"{len(device.models)} model(s): {ids}"
    )
    info = device.info()
    if info:
        yield "  " + ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in info.items())
    for model in device.models:
        found = definition(model.id)
        label = str(found["group"].get("label", "")) if found else "no definition known"
        mapped = "" if model.id in PUBLISHED_MODELS else ", not mapped"
        yield ""
        yield (f"model {model.id} {label} (at {model.address}, {model.length} registers{mapped})")
        entries = layout(model)
        by_key = {entry.key: entry for entry in entries}
        for entry in entries:
            if entry.type not in _TYPES:
                continue
            value = entry.value(model, by_key)
            units = entry.definition.get("units")
            if value is not None:
                shown = _shown(value)
                if units and entry.type != "sunssf":
                    shown += f" {_UNITS.get(str(units), (str(units), None))[0] or ''}".rstrip()
            elif entry.raw(model) is None:
                shown = "unknown (not implemented)"
            else:
                shown = "unknown (its scale factor is not implemented)"
            text = str(entry.definition.get("label") or "")
            if entry.type == "sunssf" and not text:
                text = "scale factor"
            yield f"  {entry.key:<18} {text[:34]:<34} {shown}"


def _shown(value: Value) -> str:
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else str(value)
    return str(value)


def every_for(cache_ttl: float) -> float:
    """How often a bridge's SunSpec points are read: 5 s, or half of `cache_ttl` if
    that is shorter (a poll must come round before its values go stale)."""
    return min(5.0, cache_ttl / 2)


def units_value(value: object) -> tuple[int, ...]:
    """The `sunspec` option: true (unit 1), false, a unit, a list of units, or ``1,240``.

    Raises:
        ConfigError: not one of those.
    """
    if isinstance(value, bool):
        return (1,) if value else ()
    items: Sequence[object]
    if isinstance(value, int):
        items = [value]
    elif isinstance(value, str):
        if value.strip().lower() in ("true", "yes", "on"):
            return (1,)
        if value.strip().lower() in ("false", "no", "off", ""):
            return ()
        items = value.split(",")
    elif isinstance(value, list | tuple):
        items = value
    else:
        raise ConfigError(f"expected true, false or unit ids, got {value!r}")
    units: list[int] = []
    for item in items:
        try:
            unit = int(str(item).strip()) if not isinstance(item, bool) else -1
        except ValueError:
            unit = -1
        if not 1 <= unit <= 247:
            raise ConfigError(f"a SunSpec unit is 1..247, got {item!r}")
        if unit not in units:
            units.append(unit)
    return tuple(units)


def units_toml(units: tuple[int, ...]) -> str:
    if not units:
        return "false"
    return "true" if units == (1,) else "[" + ", ".join(str(unit) for unit in units) + "]"


def scan_summary(device: SunSpecDevice, points: int) -> str:
    """One line for the log: what a bridge's scan found and publishes."""
    info = device.info()
    named = " ".join(info[key] for key in ("manufacturer", "model") if key in info)
    return (
        f"SunSpec unit {device.unit}: models {', '.join(str(m.id) for m in device.models)}"
        + (f" ({named})" if named else "")
        + f"; publishing {points} point(s)"
    )
