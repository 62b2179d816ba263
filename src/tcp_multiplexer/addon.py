"""`tcp-multiplexer config from-addon OPTIONS.json [--mqtt-service FILE]`: the Home
Assistant add-on's options as a config file (TOML, on stdout).

The add-on (packaging/home-assistant/tcp-multiplexer) keeps what users set per device in
/data/options.json, in Home Assistant's snake_case:

    {"log_level": "notice",
     "bridges": [{"name": "inverter", "listen_port": 5020, "target": "192.168.1.22:502",
                  "profile": "huawei-sdongle", "timeout": "5s", "cache_ttl": "2s",
                  "polls": ["1:holding:32000:50:1s"], "read_only": "deny",
                  "write_rules": ["{ clients = [\\"192.168.1.20\\"], access = \\"read-write\\" }"],
                  "allow": ["192.168.1.0/24"], "sunspec": false}],
     "mqtt_url": "", "status_port": 9502}

Each bridge listens on every interface of the add-on's container at its `listen_port`
(Home Assistant maps the host port to it). With `--mqtt-service` (the JSON the
Supervisor gives for its MQTT service: host, port, username, password, ssl) the bridges
publish there, unless `mqtt_url` names another broker. The output goes through
`check-config` before the server starts; a bad option exits 2 naming it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

EXIT_USAGE: Final = 2
BRIDGE_KEYS: Final = {
    "name": "name",
    "target": "target",
    "profile": "profile",
    "timeout": "timeout",
    "cache_ttl": "cache-ttl",
    "polls": "poll",
    "read_only": "read-only",
    "allow": "allow",
    "sunspec": "sunspec",
}
"""Add-on option -> config file key, for what is copied as it is."""
KNOWN_BRIDGE_KEYS: Final = {*BRIDGE_KEYS, "listen_port", "write_rules"}
TOP_KEYS: Final = {"log_level", "bridges", "mqtt_url", "status_port"}
DEFAULT_STATUS_PORT: Final = 9502
MQTT_PASSWORD_FILE: Final = "/data/mqtt-password"  # noqa: S105 - a path, not a password
"""Where the add-on's start script writes the service's MQTT password (never in the
config itself)."""


class AddonError(Exception):
    """A bad option: its message names it."""


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _value(value: object, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _quoted(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return "[" + ", ".join(_quoted(item) for item in value) + "]"
    raise AddonError(f"{where}: {value!r} is not a text, a number, a truth or a list of texts")


def addon_toml(options: Mapping[str, Any], mqtt_service: Mapping[str, Any] | None) -> str:
    """The config file for the add-on's `options` (see the module docstring).

    Raises:
        AddonError: an unknown or bad option, naming it.
    """
    unknown = sorted(set(options) - TOP_KEYS)
    if unknown:
        raise AddonError(f"unknown option {unknown[0]!r} (use {', '.join(sorted(TOP_KEYS))})")
    lines = ["# Made by tcp-multiplexer config from-addon from the add-on's options.", ""]
    lines += ["[logging]", f"level = {_quoted(str(options.get('log_level', 'notice')))}", ""]
    status_port = options.get("status_port", DEFAULT_STATUS_PORT)
    if not isinstance(status_port, int) or not 1 <= status_port <= 65535:
        raise AddonError(f"status_port: {status_port!r} is not a port")
    lines += ["[metrics]", f'listen = "0.0.0.0:{status_port}"', ""]
    mqtt_url = options.get("mqtt_url") or ""
    if mqtt_url:
        lines += ["[mqtt]", f"url = {_quoted(str(mqtt_url))}", ""]
    elif mqtt_service:
        lines += _service_mqtt(mqtt_service)
    bridges = options.get("bridges")
    if not isinstance(bridges, list) or not bridges:
        raise AddonError("bridges: give at least one bridge")
    for index, bridge in enumerate(bridges):
        where = f"bridges[{index}]"
        if not isinstance(bridge, Mapping):
            raise AddonError(f"{where}: a bridge is a set of options")
        lines += _bridge(bridge, where)
    return "\n".join(lines)


def _service_mqtt(service: Mapping[str, Any]) -> list[str]:
    host = service.get("host")
    port = service.get("port", 1883)
    if not isinstance(host, str) or not host or not isinstance(port, int):
        raise AddonError("the MQTT service names no host and port")
    scheme = "mqtts" if service.get("ssl") else "mqtt"
    lines = ["[mqtt]", f'url = "{scheme}://{host}:{port}"']
    if service.get("username"):
        lines.append(f"username = {_quoted(str(service['username']))}")
    if service.get("password"):
        lines.append(f'password-file = "{MQTT_PASSWORD_FILE}"')
    return [*lines, ""]


def _bridge(bridge: Mapping[str, Any], where: str) -> list[str]:
    unknown = sorted(set(bridge) - KNOWN_BRIDGE_KEYS)
    if unknown:
        raise AddonError(f"{where}: unknown option {unknown[0]!r}")
    for required in ("name", "listen_port", "target"):
        if bridge.get(required) in (None, ""):
            raise AddonError(f"{where}: {required} is needed")
    port = bridge["listen_port"]
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise AddonError(f"{where}: listen_port {port!r} is not a port")
    lines = ["[[bridge]]", 'protocol = "modbus"', f'listen = ["0.0.0.0:{port}"]']
    for key, file_key in BRIDGE_KEYS.items():
        value = bridge.get(key)
        if value is None or value == "" or value == []:
            continue
        lines.append(f"{file_key} = {_value(value, f'{where}: {key}')}")
    rules = bridge.get("write_rules") or []
    if rules:
        if not isinstance(rules, list) or not all(isinstance(rule, str) for rule in rules):
            raise AddonError(f"{where}: write_rules are TOML inline tables, one a line")
        for rule in rules:
            if not re.fullmatch(r"\s*\{.*\}\s*", rule, re.DOTALL):
                raise AddonError(f"{where}: write rule {rule!r} is not a {{ ... }} table")
        lines.append("write-rules = [" + ", ".join(rule.strip() for rule in rules) + "]")
    return [*lines, ""]


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "config",
        help="make a config file: from-addon turns a Home Assistant add-on's options into one",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    from_addon = actions.add_parser(
        "from-addon",
        help="print the config file (TOML) for the add-on's /data/options.json",
        description="Print the config file for a Home Assistant add-on's options. Exit "
        "status 0, or 2 with one line naming a bad option.",
    )
    from_addon.add_argument("options", metavar="OPTIONS.json", help="the add-on's options")
    from_addon.add_argument(
        "--mqtt-service",
        metavar="FILE",
        help="the Supervisor's MQTT service (JSON): publish there unless mqtt_url is set",
    )
    from_addon.set_defaults(handler=run)


def _read_json(path: str, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise AddonError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AddonError(f"{path}: the {what} are not JSON: {exc}") from None


def run(args: argparse.Namespace) -> int:
    try:
        options = _read_json(args.options, "options")
        if not isinstance(options, dict):
            raise AddonError(f"{args.options}: the options are not a JSON object")
        service = _read_json(args.mqtt_service, "MQTT service") if args.mqtt_service else None
        print(addon_toml(options, service), end="")
    except AddonError as exc:
        print(f"tcp-multiplexer config from-addon: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0
