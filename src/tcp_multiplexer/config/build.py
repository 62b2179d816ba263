"""One function from a mapping of option values to a validated `AppConfig`.

The command line and a config file both end here, with values as they were written
(strings from the command line, TOML values from a file), so every default and every
check lives once. Errors are `ConfigError`s whose key names the option; the caller
says where the value came from.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from typing import Any

from tcp_multiplexer.config.model import AppConfig, BridgeConfig
from tcp_multiplexer.config.schema import BRIDGE_OPTIONS, GLOBAL_OPTIONS, protocol_options
from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.options import Option, index_options
from tcp_multiplexer.profiles import get_profile
from tcp_multiplexer.protocols.registry import get_spec
from tcp_multiplexer.publishing.settings import PUBLISH_EXTRA, aiomqtt_available, read_password
from tcp_multiplexer.transports.serial import serial_available
from tcp_multiplexer.transports.tls import client_context, server_context

_BRIDGE: dict[str, Option] = index_options(BRIDGE_OPTIONS)
_GLOBAL: dict[str, Option] = index_options(GLOBAL_OPTIONS)


def _read(options: Mapping[str, Option], values: Mapping[str, object]) -> dict[str, Any]:
    """Every option's value by field name: the given one read, or the default."""
    given = {options[key].field: value for key, value in values.items()}
    return {
        option.field: option.read(given.get(option.field, option.default))
        for option in dict.fromkeys(options.values())
    }


def build_bridge(values: Mapping[str, object]) -> BridgeConfig:
    """A bridge from option values by key (``max-connections`` or ``max_connections``).

    Raises:
        ConfigError: an unknown key, an option of another protocol, or a bad value.
    """
    values = with_profile(values)
    protocol_option = _BRIDGE["protocol"]
    protocol = protocol_option.read(values.get("protocol", protocol_option.default))
    spec = get_spec(protocol)
    known = {**_BRIDGE, **index_options(spec.options)}
    for key in values:
        if key not in known:
            raise ConfigError(_unknown_key(key, protocol), key=key.replace("_", "-"))
    read = _read(known, values)
    options = spec.make_options({option.field: read[option.field] for option in spec.options})
    core = {option.field: read[option.field] for option in BRIDGE_OPTIONS}
    if "target" not in _spelled(values) and read.get("route"):
        core["target"] = None  # the routes name every target
    bridge = BridgeConfig(**core, protocol_options=options)
    check_tls_files(bridge)
    check_serial_support(bridge)
    return bridge


def _spelled(values: Mapping[str, object]) -> set[str]:
    """The keys of `values` as a file spells them (``max-connections``)."""
    return {key.replace("_", "-") for key in values}


def with_profile(values: Mapping[str, object]) -> Mapping[str, object]:
    """`values` with its profile's settings for every key it does not give itself.

    Raises:
        ConfigError: no such profile, or one made for another protocol.
    """
    name = values.get("profile")
    if name is None:
        return values
    profile = get_profile(_BRIDGE["profile"].read(name))
    given = _spelled(values)
    made_for = profile.settings.get("protocol")
    if made_for is not None and "protocol" in given:
        protocol = _BRIDGE["protocol"].read(values["protocol"])
        if protocol != made_for:
            raise ConfigError(
                f"{profile.name} is a profile for {made_for} devices; this bridge's "
                f"protocol is {protocol}",
                key="profile",
            )
    merged = dict(values)
    for key, value in profile.settings.items():
        if key not in given:
            merged[key] = value
    return merged


def check_serial_support(bridge: BridgeConfig) -> None:
    """A serial target needs the serial extra installed.

    Raises:
        ConfigError: it is not.
    """
    if any(plan.target.is_serial for plan in bridge.targets()) and not serial_available():
        raise ConfigError(
            "serial targets need pyserial-asyncio-fast: pip install 'tcp-multiplexer[serial]'",
            key="target",
        )


def check_tls_files(bridge: BridgeConfig) -> None:
    """Read the bridge's certificates and keys once, so a bad one is a config error
    naming its setting.

    Raises:
        ConfigError: a file cannot be read, or does not hold a certificate or key.
    """
    files = (
        ("tls-cert", bridge.tls_cert),
        ("tls-key", bridge.tls_key),
        ("tls-client-ca", bridge.tls_client_ca),
        ("target-ca", bridge.target_ca),
        ("target-cert", bridge.target_cert),
        ("target-key", bridge.target_key),
    )
    for key, path in files:
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}", key=key) from None
    try:
        if bridge.tls_cert is not None and bridge.tls_key is not None:
            server_context(bridge.tls_cert, bridge.tls_key, bridge.tls_client_ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use it: {_tls_reason(exc)}", key="tls-cert") from None
    try:
        if bridge.target_tls:
            client_context(bridge.target_ca, bridge.target_cert, bridge.target_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use it: {_tls_reason(exc)}", key="target-tls") from None


def _tls_reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return str(exc.strerror or exc)


def _unknown_key(key: str, protocol: str) -> str:
    spelled = key.replace("_", "-")
    owners = [
        name for name, options in protocol_options().items() if spelled in index_options(options)
    ]
    if owners:
        return f"is a {' and '.join(owners)} option; this bridge's protocol is {protocol}"
    return "unknown option"


def build_app(
    global_values: Mapping[str, object],
    bridges: Sequence[Mapping[str, object]],
    *,
    source: str | None = None,
) -> AppConfig:
    """The process config from its global option values and each bridge's.

    -v and -d (``verbose``, ``debug``) raise the log level above what ``log-level`` says.

    Raises:
        ConfigError: as `build_bridge`; for a bridge, `ConfigError.bridge` says which.
    """
    for key in global_values:
        if key not in _GLOBAL:
            raise ConfigError("unknown option", key=key.replace("_", "-"))
    read = _read(_GLOBAL, global_values)
    level = "debug" if read["debug"] else "info" if read["verbose"] else read["log_level"]
    built = []
    for index, values in enumerate(bridges):
        try:
            built.append(build_bridge(values))
        except ConfigError as exc:
            exc.bridge = str(values.get("name") or f"#{index + 1}")
            raise
    return AppConfig(
        bridges=tuple(built),
        log_level=level,
        log_format=read["log_format"],
        metrics_interval=read["metrics_interval"],
        busy_poll=read["busy_poll"],
        metrics_listen=read["metrics_listen"],
        metrics_per_client=read["metrics_per_client"],
        capture=read["capture"],
        **_mqtt_fields(read),
        source=source,
    )


def _mqtt_fields(read: Mapping[str, Any]) -> dict[str, Any]:
    """The [mqtt] settings, the password read (never shown), the extra checked.

    Raises:
        ConfigError: the password file cannot be read, or aiomqtt is not installed.
    """
    fields = {
        name: read[name]
        for name in (
            "mqtt",
            "mqtt_ca_file",
            "mqtt_username",
            "mqtt_password_file",
            "mqtt_client_id",
            "mqtt_base_topic",
            "mqtt_discovery_prefix",
            "mqtt_discovery",
        )
    }
    if read["mqtt"] is not None:
        if not aiomqtt_available():
            raise ConfigError(f"needs aiomqtt: {PUBLISH_EXTRA}", key="mqtt")
        fields["mqtt_password"] = read_password(read["mqtt_password_file"])
    return fields
