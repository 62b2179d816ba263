"""Every option the server takes, declared once: the command line and config files are
both read from these tables (protocol options come from each protocol's spec)."""

from __future__ import annotations

from typing import Final

from tcp_multiplexer.config import model
from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.options import (
    Option,
    Scope,
    choice_value,
    count_value,
    duration_value,
    listen_value,
    local_listen_value,
    network_value,
    text_value,
)
from tcp_multiplexer.profiles import profile_value
from tcp_multiplexer.protocols.registry import SPECS, get_spec, protocol_names
from tcp_multiplexer.publishing.settings import mqtt_url_value, switch_value, topic_value
from tcp_multiplexer.target import target_url_value


def _protocol_value(value: object) -> str:
    return get_spec(text_value(value)).name


def _name_value(value: object) -> str:
    """A bridge name: printable, no spaces (it is a log prefix and a metric label)."""
    if not isinstance(value, str):
        raise ConfigError(f"expected a string, got {value!r}")
    name = value.strip()
    if any(not char.isprintable() or char.isspace() or char in '"\\' for char in name):
        raise ConfigError(f"{value!r} has spaces, quotes or unprintable characters")
    return name


TARGET_GROUP: Final = "target and listener (as in the reference)"
TIMING_GROUP: Final = "timing (durations: plain seconds like 1.5, or 500ms, 1s, 1m30s)"
POOL_GROUP: Final = "connections and queueing"
LOG_GROUP: Final = "logging"
ACCESS_GROUP: Final = "who may connect"
TLS_GROUP: Final = "TLS (certificates and keys are reread on SIGHUP)"
OBSERVE_GROUP: Final = "metrics, health, status page and capture"
MQTT_GROUP: Final = "publishing to MQTT and Home Assistant (config file: [mqtt])"

BRIDGE_OPTIONS: Final = (
    Option(
        "name",
        "the bridge's name in logs and metrics (default: its first listen address)",
        _name_value,
        "",
        metavar="NAME",
        group=TARGET_GROUP,
    ),
    Option(
        "protocol",
        f"application protocol: {', '.join(protocol_names())} (default: echo)",
        _protocol_value,
        model.DEFAULT_PROTOCOL,
        flags=("-p", "--applicationProtocol", "--protocol"),
        metavar="PROTO",
        group=TARGET_GROUP,
    ),
    Option(
        "target",
        "target server: HOST:PORT, or for Modbus devices rtu+tcp://HOST:PORT (an "
        "RTU-over-TCP converter) or serial:///dev/ttyUSB0?baudrate=9600&parity=E "
        f"(an RS-485 adapter; needs the serial extra) (default: {model.DEFAULT_TARGET})",
        target_url_value,
        model.DEFAULT_TARGET,
        flags=("-t", "--targetServer", "--target"),
        metavar="URL",
        group=TARGET_GROUP,
    ),
    Option(
        "profile",
        "device profile: settings a device family needs (huawei-sdongle, solaredge, sma, "
        "fronius, sungrow, growatt, rs485-meter; tcp-multiplexer profiles says what each "
        "sets); options given win over it",
        profile_value,
        None,
        metavar="NAME",
        group=TARGET_GROUP,
    ),
    Option(
        "listen",
        "address to listen on; a bare PORT listens on all interfaces; repeat it to listen on "
        "several; Modbus: rtu+tcp://HOST:PORT for clients sending RTU frames over TCP, "
        "auto://HOST:PORT for either, told per connection, serial:///dev/ttyUSB1?"
        "baudrate=9600&units=2 to answer a master on a serial line for those units "
        f"(default: {model.DEFAULT_LISTEN})",
        listen_value,
        model.DEFAULT_LISTEN,
        flags=("-l", "--listen"),
        metavar="[HOST:]PORT",
        repeatable=True,
        group=TARGET_GROUP,
    ),
    Option(
        "timeout",
        "longest wait for a target answer, and for a free target connection; a quiet "
        "client is never dropped for idling (default: 60)",
        duration_value,
        model.DEFAULT_TIMEOUT,
        metavar="DURATION",
        group=TIMING_GROUP,
    ),
    Option(
        "connect-timeout",
        "longest wait for a target connection to open (default: 5s)",
        duration_value,
        model.DEFAULT_CONNECT_TIMEOUT,
        metavar="DURATION",
        group=TIMING_GROUP,
    ),
    Option(
        "delay",
        "pause after each target connect before the first request, for devices that need "
        "time (default: 0)",
        duration_value,
        0.0,
        metavar="DURATION",
        group=TIMING_GROUP,
    ),
    Option(
        "reconnect-backoff",
        "first wait before reconnecting to the target; doubles per failure up to 30s, with "
        "jitter (default: 1s)",
        duration_value,
        model.DEFAULT_RECONNECT_BACKOFF,
        metavar="DURATION",
        group=TIMING_GROUP,
    ),
    Option(
        "health-check-interval",
        "idle time after which TCP keepalive probes target and client connections, so a "
        "dead (half-open) one is found: a target connection is replaced, a client's "
        "closed; closes and resets are seen at once (default: 30s)",
        duration_value,
        model.DEFAULT_HEALTH_CHECK_INTERVAL,
        metavar="DURATION",
        group=TIMING_GROUP,
    ),
    Option(
        "max-connections",
        "target connections used in parallel; opened as load needs them (default: 1)",
        count_value(1),
        model.DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        group=POOL_GROUP,
    ),
    Option(
        "max-inflight",
        "requests outstanding at once on one target connection (pipelining); answers are "
        "matched in order, or by transaction id for modbus (default: 1)",
        count_value(1),
        model.DEFAULT_MAX_INFLIGHT,
        metavar="N",
        group=POOL_GROUP,
    ),
    Option(
        "queue-size",
        "requests that may wait for a free target connection; when full, a client that "
        "adds a second waiting request is not read from until room frees (each client may "
        "always queue one) (default: 32)",
        count_value(1),
        model.DEFAULT_QUEUE_SIZE,
        metavar="N",
        group=POOL_GROUP,
    ),
    Option(
        "client-backlog",
        "requests one client may have outstanding before it is not read from (default: 16)",
        count_value(1),
        model.DEFAULT_CLIENT_BACKLOG,
        metavar="N",
        group=POOL_GROUP,
    ),
    Option(
        "request-gap",
        "minimum quiet time on one target connection between an answer (or request) and "
        "the next request (default: 0)",
        duration_value,
        0.0,
        metavar="DURATION",
        group=POOL_GROUP,
    ),
    Option(
        "allow",
        "let in only clients from this address or range (CIDR, IPv4 or IPv6); repeat it for "
        "several; others are closed at once, logged and counted (default: everyone)",
        network_value,
        None,
        metavar="CIDR",
        repeatable=True,
        group=ACCESS_GROUP,
    ),
    Option(
        "max-clients",
        "refuse connections past N clients at once (default: no limit)",
        count_value(1),
        None,
        metavar="N",
        group=ACCESS_GROUP,
    ),
    Option(
        "client-idle-timeout",
        "close a client that sends nothing this long (default: 0 = never: quiet pollers "
        "keep their connection)",
        duration_value,
        0.0,
        metavar="DURATION",
        group=ACCESS_GROUP,
    ),
    Option(
        "tls-cert",
        "listen with TLS (Modbus/TCP Security, HTTPS...): this certificate, PEM; with "
        "--tls-key; TLS 1.2 or newer",
        text_value,
        None,
        metavar="FILE",
        group=TLS_GROUP,
    ),
    Option(
        "tls-key",
        "the private key of --tls-cert, PEM",
        text_value,
        None,
        metavar="FILE",
        group=TLS_GROUP,
    ),
    Option(
        "tls-client-ca",
        "require client certificates signed by this CA (mutual TLS); the write rules can "
        "then match a certificate's names and Modbus role",
        text_value,
        None,
        metavar="FILE",
        group=TLS_GROUP,
    ),
    Option(
        "target-tls",
        "connect to the target with TLS (devices and gateways that speak Modbus/TCP "
        "Security themselves)",
        None,
        False,
        group=TLS_GROUP,
    ),
    Option(
        "target-ca",
        "the CA the target's certificate must be signed by (default: the system's CAs)",
        text_value,
        None,
        metavar="FILE",
        group=TLS_GROUP,
    ),
    Option(
        "target-cert",
        "a client certificate to present to the target, PEM; with --target-key",
        text_value,
        None,
        metavar="FILE",
        group=TLS_GROUP,
    ),
    Option(
        "target-key",
        "the private key of --target-cert, PEM",
        text_value,
        None,
        metavar="FILE",
        group=TLS_GROUP,
    ),
    Option(
        "max-idle",
        "close a target connection idle this long, before the device silently does; it "
        "reopens on the next request (default: 0 = never)",
        duration_value,
        0.0,
        metavar="DURATION",
        group=POOL_GROUP,
    ),
    Option(
        "recycle-after-timeouts",
        "close a target connection and open a new one after this many timeouts in a row "
        "with no answer between them: a device that stops answering on a connection it "
        f"keeps open (default: {model.DEFAULT_RECYCLE_AFTER}; 0 = never)",
        count_value(0),
        model.DEFAULT_RECYCLE_AFTER,
        metavar="N",
        group=POOL_GROUP,
    ),
    Option(
        "max-connection-age",
        "reopen a target connection this old once its requests are answered, for "
        "devices that wear out long connections (default: 0 = never)",
        duration_value,
        0.0,
        metavar="DURATION",
        group=POOL_GROUP,
    ),
)
"""Options of every bridge, whatever its protocol."""

GLOBAL_OPTIONS: Final = (
    Option(
        "verbose",
        "log each client and target connection, and a metrics line periodically",
        None,
        False,
        flags=("-v", "--verbose"),
        group=LOG_GROUP,
        scope=Scope.GLOBAL,
    ),
    Option(
        "debug",
        "also log every message in hex",
        None,
        False,
        flags=("-d", "--debug"),
        group=LOG_GROUP,
        scope=Scope.GLOBAL,
    ),
    Option(
        "log-level",
        "warning, notice (starting, listening, a target back, stopping), info (as -v) or "
        "debug (as -d) (default: notice)",
        choice_value(model.LOG_LEVELS),
        model.DEFAULT_LOG_LEVEL,
        metavar="LEVEL",
        group=LOG_GROUP,
        scope=Scope.GLOBAL,
        table="logging",
        file_key="level",
    ),
    Option(
        "log-format",
        "plain lines, or json: one JSON object a line with time, level, logger, bridge, "
        "message and the event's fields (default: plain)",
        choice_value(model.LOG_FORMATS),
        model.DEFAULT_LOG_FORMAT,
        metavar="FORMAT",
        group=LOG_GROUP,
        scope=Scope.GLOBAL,
        table="logging",
        file_key="format",
    ),
    Option(
        "metrics-interval",
        "how often -v logs the metrics line (default: 60s; 0 = never)",
        duration_value,
        model.DEFAULT_METRICS_INTERVAL,
        metavar="DURATION",
        group=LOG_GROUP,
        scope=Scope.GLOBAL,
        table="logging",
    ),
    Option(
        "metrics-listen",
        "serve /metrics (Prometheus), /healthz, /readyz, the status page at / and, with "
        "--capture, /capture on this address; a bare PORT stays on loopback "
        "(default: off)",
        local_listen_value,
        None,
        metavar="[HOST:]PORT",
        group=OBSERVE_GROUP,
        scope=Scope.GLOBAL,
        table="metrics",
        file_key="listen",
    ),
    Option(
        "metrics-per-client",
        "also count requests, errors and latency per client address (at most 1,000 "
        "addresses, the rest as 'other')",
        None,
        False,
        group=OBSERVE_GROUP,
        scope=Scope.GLOBAL,
        table="metrics",
        file_key="per-client",
    ),
    Option(
        "capture",
        "keep each bridge's last N transactions for /capture (JSON lines) and "
        "/capture.pcap (Wireshark) (default: 0 = off)",
        count_value(0),
        0,
        metavar="N",
        group=OBSERVE_GROUP,
        scope=Scope.GLOBAL,
        table="metrics",
    ),
    Option(
        "mqtt",
        "publish every bridge's points to this MQTT broker: mqtt://HOST[:PORT] or "
        "mqtts://HOST[:PORT] (TLS), with Home Assistant discovery; beside --config it "
        "wins over the file's [mqtt] url (needs the publish extra) (default: off)",
        mqtt_url_value,
        None,
        metavar="URL",
        group=MQTT_GROUP,
        scope=Scope.GLOBAL,
        table="mqtt",
        file_key="url",
    ),
    Option(
        "mqtt-ca-file",
        "the CA certificates an mqtts:// broker's certificate is checked against "
        "(default: the system's)",
        text_value,
        None,
        metavar="FILE",
        group=MQTT_GROUP,
        scope=Scope.GLOBAL,
        table="mqtt",
        file_key="ca-file",
    ),
    Option(
        "mqtt-username",
        "the broker user; its password comes from --mqtt-password-file or the "
        "environment variable TCP_MULTIPLEXER_MQTT_PASSWORD, never from the command line",
        text_value,
        None,
        metavar="NAME",
        group=MQTT_GROUP,
        scope=Scope.GLOBAL,
        table="mqtt",
        file_key="username",
    ),
    Option(
        "mqtt-password-file",
        "a file holding the broker password (its first line)",
        text_value,
        None,
        metavar="FILE",
        group=MQTT_GROUP,
        scope=Scope.GLOBAL,
        table="mqtt",
        file_key="password-file",
    ),
    Option(
        "mqtt-client-id",
        "the MQTT client id; each bridge connects as ID-BRIDGE "
        f"(default: {model.DEFAULT_MQTT_CLIENT_ID})",
        text_value,
        model.DEFAULT_MQTT_CLIENT_ID,
        metavar="ID",
        group=MQTT_GROUP,
        scope=Scope.GLOBAL,
        table="mqtt",
        file_key="client-id",
    ),
    Option(
        "mqtt-base-topic",
        "states go to BASE/BRIDGE/POINT, commands to BASE/BRIDGE/POINT/set "
        f"(default: {model.DEFAULT_MQTT_BASE_TOPIC})",
        topic_value,
        model.DEFAULT_MQTT_BASE_TOPIC,
        metavar="BASE",
        group=MQTT_GROUP,
        scope=Scope.GLOBAL,
        table="mqtt",
        file_key="base-topic",
    ),
    Option(
        "mqtt-discovery-prefix",
        "where Home Assistant looks for discovery configs "
        f"(default: {model.DEFAULT_MQTT_DISCOVERY_PREFIX})",
        topic_value,
        model.DEFAULT_MQTT_DISCOVERY_PREFIX,
        metavar="PREFIX",
        group=MQTT_GROUP,
        scope=Scope.GLOBAL,
        table="mqtt",
        file_key="discovery-prefix",
    ),
    Option(
        "mqtt-discovery",
        "announce a Home Assistant device per bridge and an entity per point (default: true)",
        switch_value,
        True,
        metavar="true|false",
        group=MQTT_GROUP,
        scope=Scope.GLOBAL,
        table="mqtt",
        file_key="discovery",
    ),
    Option(
        "busy-poll",
        "keep polling this long after each burst of I/O before sleeping: the next request "
        "or answer is usually that close, and waking from sleep costs more; costs CPU only "
        "while traffic flows; 0 = never (default: 200us)",
        duration_value,
        model.DEFAULT_BUSY_POLL,
        metavar="DURATION",
        group=TIMING_GROUP,
        scope=Scope.GLOBAL,
        table="poller",
    ),
)
"""Options of the process: on the command line, and in the file's global tables."""


def protocol_options() -> dict[str, tuple[Option, ...]]:
    """Each protocol's own options, by protocol name."""
    return {name: spec.options for name, spec in SPECS.items() if spec.options}
