"""The whole exception hierarchy of tcp-multiplexer."""

from __future__ import annotations


class MultiplexerError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(MultiplexerError):
    """A command-line or configuration value is invalid."""


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


# Target failures are not exceptions: on the callback path a request that the target
# cannot answer gets a `FailureReason` (framing.base), which the codec turns into the
# protocol's gateway answer. Nothing would catch an UpstreamError.
