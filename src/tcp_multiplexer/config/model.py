"""The configuration the process runs with: frozen, validated dataclasses.

`AppConfig` (the process) holds one `BridgeConfig` per bridge. Defaults live here
only (the option tables in config/schema.py take them from here); validation happens in
`__post_init__`, so a config is valid wherever it was built. Nothing below the config
reads flags or files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, cast

from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.options import Address, Network, listen_clash, parse_listen
from tcp_multiplexer.protocols.registry import get_spec
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.publishing.settings import MqttSettings
from tcp_multiplexer.target import Target, TargetPlan, parse_target_url

DEFAULT_PROTOCOL: Final = ProtocolName.ECHO
DEFAULT_TARGET: Final = "127.0.0.1:1234"
DEFAULT_LISTEN: Final = "8000"
DEFAULT_TIMEOUT: Final = 60.0
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
DEFAULT_MAX_CONNECTIONS: Final = 1
DEFAULT_RECONNECT_BACKOFF: Final = 1.0
DEFAULT_HEALTH_CHECK_INTERVAL: Final = 30.0
DEFAULT_QUEUE_SIZE: Final = 32
DEFAULT_MAX_INFLIGHT: Final = 1
DEFAULT_RECYCLE_AFTER: Final = 3
"""Timeouts in a row after which a target connection is reopened."""
DEFAULT_CLIENT_BACKLOG: Final = 16
"""Requests one client may have outstanding before it is no longer read from."""
DEFAULT_METRICS_INTERVAL: Final = 60.0
DEFAULT_BUSY_POLL: Final = 0.0002
"""200 µs of polling after I/O: a few loopback round trips, far below a device's answer."""
DEFAULT_LOG_LEVEL: Final = "notice"
LOG_LEVELS: Final = ("warning", "notice", "info", "debug")
DEFAULT_LOG_FORMAT: Final = "plain"
LOG_FORMATS: Final = ("plain", "json")
DEFAULT_MQTT_CLIENT_ID: Final = "tcp-multiplexer"
DEFAULT_MQTT_BASE_TOPIC: Final = "tcp-multiplexer"
DEFAULT_MQTT_DISCOVERY_PREFIX: Final = "homeassistant"
MAX_CAPTURE: Final = 100_000
"""Transactions a bridge may keep for /capture: a few hundred bytes each."""
MAX_INFLIGHT_LIMIT: Final = 1024
"""Upper bound for --max-inflight; Modbus ids are 16 bits, and no device pipelines more."""


def _where(one: Address, other: Address) -> str:
    """Where two clashing listen addresses meet, as a user wrote them."""
    if one == other:
        return str(one)
    return f"port {one.port} ({one} and {other})"


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    """One bridge: its listeners, its target, its protocol and how it shares the target."""

    name: str = ""
    """Unique in the process; names the bridge in logs and metrics. Empty: named after
    its first listen address."""
    protocol: str = DEFAULT_PROTOCOL
    target: Target | None = field(default_factory=lambda: parse_target_url(DEFAULT_TARGET))
    """Where requests go (a URL: tcp, rtu+tcp, serial; an Address is taken as TCP).
    None only for a bridge whose routes name every target."""
    listen: tuple[Address, ...] = field(default_factory=lambda: (parse_listen(DEFAULT_LISTEN),))
    timeout: float = DEFAULT_TIMEOUT
    """Longest wait for an answer, and longest wait for a free target connection."""
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    delay: float = 0.0
    """Pause after each target connect before its first request (the reference's --delay)."""
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    reconnect_backoff: float = DEFAULT_RECONNECT_BACKOFF
    health_check_interval: float = DEFAULT_HEALTH_CHECK_INTERVAL
    queue_size: int = DEFAULT_QUEUE_SIZE
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    client_backlog: int = DEFAULT_CLIENT_BACKLOG
    request_gap: float = 0.0
    """Minimum pause between two requests on one target connection."""
    max_idle: float = 0.0
    """Close a target connection idle this long (0 = never); reopened on demand."""
    recycle_after_timeouts: int = DEFAULT_RECYCLE_AFTER
    """Reopen a target connection after this many timeouts in a row (0 = never)."""
    max_connection_age: float = 0.0
    """Reopen a target connection this old once idle (0 = never)."""
    allow: tuple[Network, ...] = ()
    """Client address ranges let in (empty: everyone)."""
    max_clients: int | None = None
    """Clients connected at once, at most (None: no limit)."""
    client_idle_timeout: float = 0.0
    """Close a client that sends nothing this long (0: never; quiet clients stay)."""
    tls_cert: str | None = None
    """Listen with TLS: this certificate (PEM), with `tls_key`."""
    tls_key: str | None = None
    tls_client_ca: str | None = None
    """Require client certificates signed by this CA (mutual TLS)."""
    target_tls: bool = False
    """Connect to the target with TLS."""
    target_ca: str | None = None
    """The CA the target's certificate must be signed by (default: the system's)."""
    target_cert: str | None = None
    """A client certificate to present to the target, with `target_key`."""
    target_key: str | None = None
    protocol_options: Any = None
    """The protocol's own options object (ModbusOptions...); None: its defaults."""
    profile: str | None = None
    """The device profile whose settings filled in what was not given (for check-config)."""

    def __post_init__(self) -> None:
        spec = get_spec(self.protocol)
        object.__setattr__(self, "protocol", spec.name)
        default_options = spec.default_options()
        if self.protocol_options is None:
            object.__setattr__(self, "protocol_options", default_options)
        elif type(self.protocol_options) is not type(default_options):
            raise ConfigError(
                f"{type(self.protocol_options).__name__} are not {spec.name} options",
                key="protocol",
            )
        if not self.name:
            object.__setattr__(self, "name", str(self.listen[0]) if self.listen else "")
        if not self.listen:
            raise ConfigError("give at least one address", key="listen")
        for index, address in enumerate(self.listen):
            for earlier in self.listen[:index]:
                if listen_clash(earlier, address):
                    raise ConfigError(f"{_where(earlier, address)} is given twice", key="listen")
        framed = next((address for address in self.listen if address.framing), None)
        if framed is not None and self.protocol != ProtocolName.MODBUS:
            raise ConfigError(
                f"{framed}: rtu+tcp://, auto:// and serial:// are for Modbus", key="listen"
            )
        for address in self.listen:
            if address.framing == "serial":
                self._check_serial_listen(address)
        if framed is not None and self.tls_cert is not None:
            raise ConfigError(
                f"{framed}: TLS clients speak Modbus/TCP; listen on tcp:// with TLS",
                key="listen",
            )
        if self.timeout <= 0:
            raise ConfigError("must be positive", key="timeout")
        if self.connect_timeout <= 0:
            raise ConfigError("must be positive", key="connect-timeout")
        for key, value in (
            ("delay", self.delay),
            ("reconnect-backoff", self.reconnect_backoff),
            ("health-check-interval", self.health_check_interval),
            ("request-gap", self.request_gap),
            ("max-idle", self.max_idle),
            ("max-connection-age", self.max_connection_age),
            ("client-idle-timeout", self.client_idle_timeout),
        ):
            if value < 0:
                raise ConfigError("must not be negative", key=key)
        for key, count in (
            ("max-connections", self.max_connections),
            ("queue-size", self.queue_size),
            ("max-inflight", self.max_inflight),
            ("client-backlog", self.client_backlog),
        ):
            if count < 1:
                raise ConfigError("must be at least 1", key=key)
        if self.max_inflight > MAX_INFLIGHT_LIMIT:
            raise ConfigError(f"must be at most {MAX_INFLIGHT_LIMIT}", key="max-inflight")
        target = cast(object, self.target)
        if isinstance(target, Address):
            object.__setattr__(self, "target", Target.tcp(target))
        target_address = self.target.address if self.target is not None else None
        if target_address is not None and target_address.port == 0:
            raise ConfigError("the port must not be 0", key="target")
        if self.target_tls and self.target is not None and self.target.is_serial:
            raise ConfigError("is for TCP targets, not a serial line", key="target-tls")
        self.targets()  # routes, unit maps and schemes are checked here
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("goes with tls-key: give both", key="tls-cert")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("needs tls-cert and tls-key to listen with", key="tls-client-ca")
        if (self.target_cert is None) != (self.target_key is None):
            raise ConfigError("goes with target-key: give both", key="target-cert")
        if not self.target_tls and (self.target_ca or self.target_cert):
            raise ConfigError(
                "is for target-tls: turn it on",
                key="target-ca" if self.target_ca else "target-cert",
            )

    def _check_serial_listen(self, address: Address) -> None:
        """A serial listener's line settings and units (the units it answers, or those
        the bridge routes)."""
        from tcp_multiplexer.protocols.modbus.serial_listen import parse_serial_listen

        try:
            listen = parse_serial_listen(address.host)
        except ConfigError as exc:
            raise ConfigError(exc.message, key="listen") from None
        if any(plan.target.device == listen.line.device for plan in self.targets()):
            raise ConfigError(
                f"{listen.line.device} is a target of this bridge: a port is listened on "
                "or sent to, not both",
                key="listen",
            )
        if listen.units is None and not serial_units(self, listen.units):
            raise ConfigError(
                f"{address}: name the units the line's master may ask for (units=2 or "
                "units=2-3), or route units",
                key="listen",
            )

    def targets(self) -> list[TargetPlan]:
        """Every target the bridge sends to, its own first (more with routes).

        Raises:
            ConfigError: no target, conflicting routes, or a scheme its protocol cannot
                speak.
        """
        return get_spec(self.protocol).plan_targets(self.protocol_options, self.target)


def serial_units(bridge: BridgeConfig, given: frozenset[int] | None) -> frozenset[int]:
    """The units a serial listener of `bridge` answers: those its URL names, else those
    the bridge routes."""
    if given is not None:
        return given
    routes = getattr(bridge.protocol_options, "routes", ())
    return frozenset(unit for route in routes for unit in route.units)


@dataclass(frozen=True, slots=True)
class AppConfig:
    """The process: its bridges and what they share (logging, the poller)."""

    bridges: tuple[BridgeConfig, ...] = field(default_factory=lambda: (BridgeConfig(),))
    log_level: str = DEFAULT_LOG_LEVEL
    """warning, notice (the daemon's life, the default), info (-v: connections, the
    metrics line) or debug (-d: hex dumps too)."""
    log_format: str = DEFAULT_LOG_FORMAT
    """plain lines, or one JSON object a line."""
    metrics_interval: float = DEFAULT_METRICS_INTERVAL
    """How often the metrics line is logged at info level (0 = never)."""
    busy_poll: float = DEFAULT_BUSY_POLL
    """How long the event loop keeps polling after I/O before it sleeps (0 = never)."""
    metrics_listen: Address | None = None
    """Where /metrics, /healthz, the status page and /capture are served (None: off)."""
    metrics_per_client: bool = False
    """Metrics per client address too (at most 1,000, the rest as "other")."""
    capture: int = 0
    """Transactions each bridge keeps for /capture (0: off)."""
    mqtt: str | None = None
    """The MQTT broker the bridges' points are published to (mqtt:// or mqtts:// URL);
    None: no MQTT."""
    mqtt_ca_file: str | None = None
    mqtt_username: str | None = None
    mqtt_password_file: str | None = None
    mqtt_password: str | None = field(default=None, repr=False, compare=False)
    """From `mqtt_password_file` or TCP_MULTIPLEXER_MQTT_PASSWORD; never shown."""
    mqtt_client_id: str = DEFAULT_MQTT_CLIENT_ID
    mqtt_base_topic: str = DEFAULT_MQTT_BASE_TOPIC
    mqtt_discovery_prefix: str = DEFAULT_MQTT_DISCOVERY_PREFIX
    mqtt_discovery: bool = True
    source: str | None = None
    """The config file it was read from; None: the command line alone."""

    @property
    def mqtt_settings(self) -> MqttSettings | None:
        """Where and how the bridges publish (None: they do not)."""
        if self.mqtt is None:
            return None
        return MqttSettings(
            self.mqtt,
            self.mqtt_ca_file,
            self.mqtt_username,
            self.mqtt_password,
            self.mqtt_client_id,
            self.mqtt_base_topic,
            self.mqtt_discovery_prefix,
            self.mqtt_discovery,
        )

    def __post_init__(self) -> None:
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(
                f"{self.log_level!r} is not one of {', '.join(LOG_LEVELS)}", key="log-level"
            )
        for key, value in (
            ("metrics-interval", self.metrics_interval),
            ("busy-poll", self.busy_poll),
        ):
            if value < 0:
                raise ConfigError("must not be negative", key=key)
        if self.capture < 0:
            raise ConfigError("must not be negative", key="capture")
        if self.capture > MAX_CAPTURE:
            raise ConfigError(f"must be at most {MAX_CAPTURE}", key="capture")
        if self.mqtt is None:
            given: tuple[tuple[str, str | None, str | None], ...] = (
                ("mqtt-ca-file", self.mqtt_ca_file, None),
                ("mqtt-username", self.mqtt_username, None),
                ("mqtt-password-file", self.mqtt_password_file, None),
                ("mqtt-client-id", self.mqtt_client_id, DEFAULT_MQTT_CLIENT_ID),
                ("mqtt-base-topic", self.mqtt_base_topic, DEFAULT_MQTT_BASE_TOPIC),
            )
            for setting, text, default in given:
                if text != default:
                    raise ConfigError("is set, but no MQTT broker is: give mqtt's url", key=setting)
        if self.metrics_listen is not None and self.metrics_listen.framing:
            raise ConfigError("serves HTTP: give HOST:PORT", key="metrics-listen")
        if self.capture and self.metrics_listen is None:
            raise ConfigError(
                "needs a metrics listener (metrics-listen) to serve it", key="capture"
            )
        if self.metrics_per_client and self.metrics_listen is None:
            raise ConfigError("needs a metrics listener (metrics-listen)", key="metrics-per-client")
        names = [bridge.name for bridge in self.bridges]
        for name in names:
            if names.count(name) > 1:
                raise ConfigError(f"two bridges are named {name!r}")
        seen: list[tuple[Address, str]] = []
        for bridge in self.bridges:
            for address in bridge.listen:
                for earlier, other in seen:
                    if other != bridge.name and listen_clash(earlier, address):
                        raise ConfigError(
                            f"bridges {other!r} and {bridge.name!r} both listen on "
                            + _where(earlier, address)
                        )
                seen.append((address, bridge.name))
        metrics = self.metrics_listen
        if metrics is not None:
            for address, name in seen:
                if listen_clash(address, metrics):
                    raise ConfigError(
                        f"{metrics} is bridge {name!r}'s address ({address}): the "
                        "metrics listener must not be reachable on a bridge's port",
                        key="metrics-listen",
                    )

    def bridge(self, name: str) -> BridgeConfig:
        """The bridge named `name`.

        Raises:
            KeyError: there is none.
        """
        for bridge in self.bridges:
            if bridge.name == name:
                return bridge
        raise KeyError(name)
