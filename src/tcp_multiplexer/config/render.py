"""An AppConfig written out as the config file that gives it: every setting, defaults
filled in (`tcp-multiplexer check-config`). Reading the text back gives the same config."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from tcp_multiplexer.config.model import AppConfig, BridgeConfig
from tcp_multiplexer.config.schema import BRIDGE_OPTIONS, GLOBAL_OPTIONS
from tcp_multiplexer.options import Address, Option, duration_value, format_duration
from tcp_multiplexer.protocols.registry import get_spec


def _value(option: Option, value: Any) -> str:
    """`value` of `option` as TOML."""
    if option.render is not None:
        return option.render(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if option.parse is duration_value:
        return json.dumps(format_duration(value))
    if isinstance(value, tuple):
        return "[" + ", ".join(json.dumps(str(item)) for item in value) + "]"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Address):
        return json.dumps(str(value))
    return json.dumps(str(value))


def _lines(options: Iterable[Option], values: dict[str, Any], *, key_of: Any = None) -> list[str]:
    lines = []
    for option in options:
        key = key_of(option) if key_of is not None else option.key
        value = values[option.key]
        if value is None:
            lines.append(f"# {key}: off")
        else:
            lines.append(f"{key} = {_value(option, value)}")
    return lines


def bridge_values(bridge: BridgeConfig) -> dict[str, Any]:
    """Every option of `bridge` by key, its protocol's included."""
    values: dict[str, Any] = {
        option.key: getattr(bridge, option.field) for option in BRIDGE_OPTIONS
    }
    values.update(get_spec(bridge.protocol).option_values(bridge.protocol_options))
    return values


def render_config(config: AppConfig) -> str:
    """`config` as a TOML config file with every setting."""
    out: list[str] = []
    tables: dict[str, list[Option]] = {}
    for option in GLOBAL_OPTIONS:
        if option.table:
            tables.setdefault(option.table, []).append(option)
    for table, options in tables.items():
        out.append(f"[{table}]")
        values = {option.key: getattr(config, option.field) for option in options}
        out.extend(_lines(options, values, key_of=lambda option: option.file_key or option.key))
        out.append("")
    for bridge in config.bridges:
        spec = get_spec(bridge.protocol)
        out.append("[[bridge]]")
        out.extend(_lines((*BRIDGE_OPTIONS, *spec.options), bridge_values(bridge)))
        out.append("")
    return "\n".join(out)


CHANGE_TEXT_LIMIT = 80
"""Longest value shown in a reload's log line; longer ones are cut."""


def _short(option: Option, value: Any) -> str:
    text = "off" if value is None else _value(option, value)
    if text.startswith('"') and text.endswith('"') and '"' not in text[1:-1]:
        text = text[1:-1]  # a plain word, as the log shows it: 5s, not "5s"
    return text if len(text) <= CHANGE_TEXT_LIMIT else text[: CHANGE_TEXT_LIMIT - 3] + "..."


def describe_changes(old: BridgeConfig, new: BridgeConfig) -> list[str]:
    """What differs between two configs of one bridge, one ``key old -> new`` per
    setting, in the order check-config prints them (a reload's log line)."""
    before, after = bridge_values(old), bridge_values(new)
    options = {option.key: option for option in (*BRIDGE_OPTIONS, *get_spec(new.protocol).options)}
    changes = [
        f"{key} {_short(option, before.get(key))} -> {_short(option, after.get(key))}"
        for key, option in options.items()
        if before.get(key) != after.get(key)
    ]
    return changes or ["nothing a setting shows (certificate files reread)"]
