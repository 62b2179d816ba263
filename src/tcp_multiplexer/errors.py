"""The whole exception hierarchy of tcp-multiplexer."""

from __future__ import annotations


class MultiplexerError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(MultiplexerError):
    """A command-line or configuration value is invalid.

    `key` names the option it is about (``timeout``), when it is about one: the command
    line shows it as the flag (``--timeout must be positive``), a config file as the key
    (``timeout: must be positive``).
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key
        self.bridge: str | None = None
        """The bridge it is about, in a config with several."""

    def as_flag(self) -> str:
        """The error as the command line says it."""
        return f"--{self.key} {self.message}" if self.key else self.message

    def as_key(self) -> str:
        """The error as a config file check says it."""
        return f"{self.key}: {self.message}" if self.key else self.message


class FramingError(MultiplexerError):
    """A byte stream cannot be cut into messages of the named protocol."""

    def __init__(self, protocol: str, reason: str) -> None:
        super().__init__(f"{protocol}: {reason}")
        self.protocol = protocol
        self.reason = reason


class MessageTooLarge(FramingError):
    """A message is (or announces itself as) larger than the framer's limit."""


class MalformedMessage(FramingError):
    """The bytes violate the protocol's framing rules."""


class IncompleteMessage(FramingError):
    """The stream ended in the middle of a message."""


class DamagedMessage(FramingError):
    """One message arrived damaged (a bad checksum, a length that cannot be read) on a
    stream that goes on: the framer drops what it held and frames the next message; the
    request waiting for it fails. Raised only by framers of lines where that is
    possible (Modbus RTU), never poisoning."""


# Target failures are not exceptions: on the callback path a request that the target
# cannot answer gets a `FailureReason` (framing.base), which the codec turns into the
# protocol's gateway answer. Nothing would catch an UpstreamError.
