"""Config files: TOML, one `[[bridge]]` table per bridge, global settings in their own
tables. Read with tomllib and built by the same function as the command line, so a key
means what its flag means and every default lives once.

    [logging]                        # level, format, metrics-interval
    level = "notice"
    [poller]                         # busy-poll
    busy-poll = "200us"
    [[bridge]]
    name = "inverter"                # required, unique
    protocol = "modbus"
    listen = ["127.0.0.1:5020", "192.168.1.5:5020"]      # required
    target = "192.168.1.22:502"                          # required
    timeout = "5s"                   # as on the command line: "500ms", "1m30s" or seconds

Every error names the file, the bridge and the key, in one line:
``site.toml: bridge "battery": timeout: invalid duration 'x'``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from tcp_multiplexer.config.build import build_app
from tcp_multiplexer.config.model import AppConfig
from tcp_multiplexer.config.schema import GLOBAL_OPTIONS
from tcp_multiplexer.errors import ConfigError

BRIDGE_TABLE: Final = "bridge"
GLOBAL_TABLES: Final = frozenset(option.table for option in GLOBAL_OPTIONS if option.table)
"""The file's global tables: logging, poller (and what later options add)."""


class ConfigFileError(ConfigError):
    """A config file that cannot be used; `str()` is the one line to show."""


def _where(path: str, bridge: str | None) -> str:
    return f'{path}: bridge "{bridge}"' if bridge else path


def _global_values(path: str, document: Mapping[str, Any]) -> dict[str, object]:
    """The global tables as option values by key (``[logging] level`` -> ``log-level``)."""
    by_place = {
        (option.table, option.file_key or option.key): option
        for option in GLOBAL_OPTIONS
        if option.table
    }
    values: dict[str, object] = {}
    for table in GLOBAL_TABLES:
        section = document.get(table)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise ConfigFileError(f"{path}: [{table}] must be a table")
        for key, value in section.items():
            option = by_place.get((table, key.replace("_", "-")))
            if option is None:
                raise ConfigFileError(f"{path}: [{table}] {key}: unknown key")
            if option.key in _FILE_KEYS:
                value = _found(value, Path(path).parent)
            values[option.key] = value
    return values


_FILE_KEYS: Final = frozenset({"mqtt-password-file", "mqtt-ca-file"})
"""Global settings naming a file: relative to the config file, as a map is."""


def _found(value: object, folder: Path) -> object:
    """A file name (a `map`, a password file), relative to the config file's folder."""
    return str(folder / value) if isinstance(value, str) and value.strip() else value


def _maps_found(bridge: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """`bridge` with its map file, and its routes', found from the config file's folder
    (a map named in a file is relative to that file)."""
    found = dict(bridge)
    if "map" in found:
        found["map"] = _found(found["map"], folder)
    routes = found.get("route")
    if isinstance(routes, list):
        found["route"] = [
            {**route, "map": _found(route["map"], folder)}
            if isinstance(route, dict) and "map" in route
            else route
            for route in routes
        ]
    return found


def parse_config(
    text: str, path: str = "<config>", overrides: Mapping[str, object] | None = None
) -> AppConfig:
    """The AppConfig a config file's `text` describes; `overrides` are global option values
    from the command line, which win over the file's.

    Raises:
        ConfigFileError: not TOML, an unknown table or key, a bad value, a bridge without
            a name, two bridges with one name or one listen address.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: not valid TOML: {exc}") from None
    for table in document:
        if table != BRIDGE_TABLE and table not in GLOBAL_TABLES:
            known = ", ".join(sorted({*GLOBAL_TABLES, f"[[{BRIDGE_TABLE}]]"}))
            raise ConfigFileError(f"{path}: unknown table or key {table!r} (expected {known})")
    bridges = document.get(BRIDGE_TABLE)
    if bridges is None:
        raise ConfigFileError(f"{path}: no [[{BRIDGE_TABLE}]] table: nothing to run")
    if not isinstance(bridges, list) or not all(isinstance(item, dict) for item in bridges):
        raise ConfigFileError(f"{path}: write bridges as [[{BRIDGE_TABLE}]] tables")
    for index, bridge in enumerate(bridges):
        name = bridge.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigFileError(f"{path}: bridge #{index + 1}: name: every bridge needs a name")
        for required in ("target", "listen"):
            if required not in bridge:
                raise ConfigFileError(
                    f"{_where(path, name)}: {required}: every bridge needs a {required}"
                )
    folder = Path(path).parent
    bridges = [_maps_found(bridge, folder) for bridge in bridges]
    global_values = {**_global_values(path, document), **(overrides or {})}
    try:
        return build_app(global_values, bridges, source=path)
    except ConfigError as exc:
        raise ConfigFileError(f"{_where(path, exc.bridge)}: {exc.as_key()}") from None


def load_config(path: str | Path, overrides: Mapping[str, object] | None = None) -> AppConfig:
    """Read and validate the config file at `path` (see `parse_config`).

    Raises:
        ConfigFileError: it cannot be read, or is not a valid config.
    """
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError(f"{name}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"{name}: not UTF-8 text ({exc.reason})") from None
    return parse_config(text, name, overrides)
