"""The Home Assistant add-on: its files checked as the add-on linter checks them (its
JSON schemas, packaging/ha-addon-lint, with jsonschema, and the extra rules its README
lists), and `tcp-multiplexer config from-addon` on its own: options in, a config file
check-config takes out, bad options named."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Final

import jsonschema
import pytest
import yaml

from tcp_multiplexer.addon import AddonError, addon_toml
from tcp_multiplexer.config.file import load_config
from tests.helpers import run_cli

ROOT: Final = Path(__file__).resolve().parent.parent
ADDON: Final = ROOT / "addon"
LINT: Final = ROOT / "packaging" / "ha-addon-lint"
UNSUPPORTED_ARCHES: Final = {"armhf", "armv7", "i386"}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def lint(config: dict[str, Any], build: dict[str, Any]) -> list[str]:
    """The linter's errors (and its architecture warnings, taken as errors here)."""
    errors: list[str] = []
    for document, schema_name in ((config, "config"), (build, "build")):
        schema = json.loads((LINT / f"{schema_name}.schema.json").read_text())
        validator = jsonschema.Draft7Validator(schema)
        errors += [f"{schema_name}: {error.message}" for error in validator.iter_errors(document)]
        properties = schema.get("properties", {})
        for key, value in document.items():
            if "default" in properties.get(key, {}) and properties[key]["default"] == value:
                errors.append(f"{schema_name}: {key} repeats its default {value!r}")
    if config.get("webui") and config.get("ingress"):
        errors.append("webui together with ingress")
    if config.get("ingress_port") == 0 and not config.get("host_network"):
        errors.append("ingress_port 0 without host_network")
    if config.get("full_access") and any(config.get(k) for k in ("devices", "gpio", "uart", "usb")):
        errors.append("full_access with devices, gpio, uart or usb")
    for obsolete in ("auto_uart", "watchdog", "codenotary", "full_access", "advanced"):
        if obsolete in config:
            errors.append(f"{obsolete} is obsolete or warned about")
    if any(":" in device for device in config.get("devices", [])):
        errors.append("devices entries are paths only")
    mapped = {str(entry).split(":")[0] for entry in config.get("map", [])}
    if {"config", "homeassistant_config"} <= mapped or {"config", "addon_config"} <= mapped:
        errors.append("map names config twice")
    if "config" in mapped:
        errors.append("map names config (use homeassistant_config)")
    errors += [f"arch {a} is unsupported" for a in config["arch"] if a in UNSUPPORTED_ARCHES]
    return errors


def test_the_addon_passes_the_linters_schemas_and_rules() -> None:
    config, build = load(ADDON / "config.yaml"), load(ADDON / "build.yaml")
    assert lint(config, build) == []
    assert set(config["arch"]) == {"aarch64", "amd64"}
    assert config["ingress"] is True
    assert config["uart"] is True
    assert "mqtt:want" in config["services"]
    assert config["version"] == load_version()
    repository = load(ROOT / "repository.yaml")
    assert repository["name"]
    for name in ("DOCS.md", "README.md", "CHANGELOG.md", "apparmor.txt", "Dockerfile", "run.sh"):
        assert (ADDON / name).read_text().strip(), name
    for name, size in (("icon.png", (128, 128)), ("logo.png", (250, 100))):
        data = (ADDON / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        assert (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")) == size
    dockerfile = (ADDON / "Dockerfile").read_text()
    assert "HEALTHCHECK" in dockerfile
    assert "ARG BUILD_FROM" in dockerfile


def test_the_linter_check_catches_what_it_should() -> None:
    config, build = load(ADDON / "config.yaml"), load(ADDON / "build.yaml")
    assert any("repeats its default" in e for e in lint({**config, "boot": "auto"}, build))
    assert any("watchdog" in e for e in lint({**config, "watchdog": "http://x"}, build))
    assert any("armv7" in e for e in lint({**config, "arch": ["armv7"]}, build))
    assert lint({**config, "slug": 5}, build)


def load_version() -> str:
    from tcp_multiplexer import __version__

    return __version__


def test_every_option_has_a_translation_and_ports_match() -> None:
    config = load(ADDON / "config.yaml")
    english = load(ADDON / "translations" / "en.yaml")
    assert set(config["schema"]) == set(english["configuration"])
    assert set(config["ports"]) == set(english["network"]) == set(config["ports_description"])
    listen_ports = {int(port.split("/")[0]) for port in config["ports"]}
    for bridge in config["options"]["bridges"]:
        assert bridge["listen_port"] in listen_ports


def test_the_default_options_make_a_valid_config(tmp_path: Path) -> None:
    options = load(ADDON / "config.yaml")["options"]
    path = tmp_path / "options.json"
    path.write_text(json.dumps(options))
    result = run_cli("config", "from-addon", str(path))
    assert result.returncode == 0, result.stderr
    config_path = tmp_path / "tcp-multiplexer.toml"
    config_path.write_text(result.stdout)
    checked = run_cli("check-config", str(config_path))
    assert checked.returncode == 0, checked.stderr


FULL: Final = {
    "log_level": "info",
    "mqtt_url": "",
    "bridges": [
        {
            "name": "inverter",
            "listen_port": 5020,
            "target": "192.168.1.22:502",
            "profile": "huawei-sdongle",
            "timeout": "5s",
            "cache_ttl": "2s",
            "polls": ["1:holding:32000:50:1s"],
            "read_only": "deny",
            "write_rules": ['{ clients = ["192.168.1.20"], access = "read-write" }'],
            "allow": ["192.168.1.0/24"],
        },
        {"name": "meter", "listen_port": 5021, "target": "rtu+tcp://192.168.1.40:8899"},
    ],
}


def test_every_option_reaches_the_config(tmp_path: Path) -> None:
    service = {"host": "core-mosquitto", "port": 1883, "username": "addons", "password": "x"}
    text = addon_toml(FULL, service)
    (tmp_path / "mqtt-password").write_text("x\n")
    path = tmp_path / "site.toml"
    path.write_text(text.replace("/data/mqtt-password", str(tmp_path / "mqtt-password")))
    config = load_config(str(path))
    inverter, meter = config.bridges
    assert (inverter.name, inverter.listen[0].port, inverter.timeout) == ("inverter", 5020, 5.0)
    assert inverter.protocol_options.cache_ttl == 2.0
    assert [str(poll) for poll in inverter.protocol_options.poll] == ["1:holding:32000:50:1s"]
    assert inverter.protocol_options.read_only == "deny"
    assert len(inverter.protocol_options.write_rules) == 1
    assert [str(net) for net in inverter.allow] == ["192.168.1.0/24"]
    assert inverter.delay == 2.0, "the profile's"
    assert str(meter.target) == "rtu+tcp://192.168.1.40:8899"
    assert config.mqtt == "mqtt://core-mosquitto:1883"
    assert config.mqtt_username == "addons"
    assert "x" not in re.findall(r'"([^"]*)"', text), "no password in the config"
    assert config.log_level == "info"
    named = addon_toml({**FULL, "mqtt_url": "mqtt://broker:1884"}, service)
    assert 'url = "mqtt://broker:1884"' in named
    assert "core-mosquitto" not in named


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "unknown option 'colour'"),
        ({"bridges": []}, "bridges: give at least one bridge"),
        ({"bridges": [{"name": "x", "target": "h:1"}]}, "bridges[0]: listen_port is needed"),
        ({"bridges": [{"name": "x", "listen_port": 70000, "target": "h:1"}]}, "not a port"),
        (
            {"bridges": [{"name": "x", "listen_port": 1, "target": "h:1", "write_rules": ["a"]}]},
            "is not a { ... } table",
        ),
    ],
)
def test_a_bad_option_is_named(change: dict[str, Any], message: str) -> None:
    with pytest.raises(AddonError, match=re.escape(message)):
        addon_toml({**FULL, **change}, None)


def test_the_command_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "options.json"
    path.write_text("{not json")
    result = run_cli("config", "from-addon", str(path))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "not JSON" in line
