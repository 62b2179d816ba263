"""How to reach the MQTT broker: the `[mqtt]` table's values and what they mean."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from tcp_multiplexer.errors import ConfigError

PASSWORD_VARIABLE: Final = "TCP_MULTIPLEXER_MQTT_PASSWORD"  # noqa: S105 - its name
PUBLISH_EXTRA: Final = "pip install 'tcp-multiplexer[publish]'"
PORTS: Final = {"mqtt": 1883, "mqtts": 8883}


def mqtt_url_value(value: object) -> str:
    """`mqtt`: an mqtt:// or mqtts:// URL with a host (and a port).

    Raises:
        ConfigError: another scheme, no host, a bad port, a user or password in it.
    """
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT], got {value!r}")
    text = value.strip()
    parts = urlsplit(text if "://" in text else f"mqtt://{text}")
    if parts.scheme not in PORTS:
        raise ConfigError(f"{text!r}: the scheme is mqtt:// or mqtts://, not {parts.scheme}://")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"{text!r}: give the user as username and the password in password-file or "
            f"{PASSWORD_VARIABLE}, not in the URL"
        )
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{text!r}: the port is not a number in 1..65535") from None
    if not parts.hostname:
        raise ConfigError(f"{text!r}: no host")
    if parts.path not in ("", "/") or parts.query:
        raise ConfigError(f"{text!r}: a broker URL has no path or query")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port or PORTS[parts.scheme]}"


def topic_value(value: object) -> str:
    """A topic prefix: no wildcards, no empty levels."""
    if not isinstance(value, str) or not value.strip("/ "):
        raise ConfigError(f"expected a topic such as tcp-multiplexer, got {value!r}")
    text = value.strip().strip("/")
    if any(char in text for char in "+#\0") or "//" in text:
        raise ConfigError(f"{text!r}: a topic prefix has no + or # and no empty level")
    return text


def switch_value(value: object) -> bool:
    """true or false (also as text, from the command line)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "no", "off", "0"):
        return False
    raise ConfigError(f"expected true or false, got {value!r}")


def read_password(path: str | None) -> str | None:
    """The broker password: the first line of `path`, else the environment's
    TCP_MULTIPLEXER_MQTT_PASSWORD, else None.

    Raises:
        ConfigError: the file cannot be read (the password itself is never named).
    """
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not text"
            raise ConfigError(
                f"{path}: cannot read it: {reason}", key="mqtt-password-file"
            ) from None
        return text.splitlines()[0] if text.strip() else ""
    return os.environ.get(PASSWORD_VARIABLE)


def aiomqtt_available() -> bool:
    try:
        import aiomqtt  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """Where and how the bridges publish."""

    url: str
    ca_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_id: str = "tcp-multiplexer"
    base_topic: str = "tcp-multiplexer"
    discovery_prefix: str = "homeassistant"
    discovery: bool = True

    @property
    def host(self) -> str:
        return str(urlsplit(self.url).hostname)

    @property
    def port(self) -> int:
        return int(urlsplit(self.url).port or PORTS[urlsplit(self.url).scheme])

    @property
    def tls(self) -> bool:
        return self.url.startswith("mqtts://")

    def tls_context(self) -> ssl.SSLContext | None:
        """The context an mqtts:// connection is made with (the CA file's, or the
        system's); None for mqtt://."""
        if not self.tls:
            return None
        return ssl.create_default_context(cafile=self.ca_file)
