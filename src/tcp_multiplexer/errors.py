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


class UpstreamError(MultiplexerError):
    """A target connection could not carry a request."""


class UpstreamUnavailable(UpstreamError):
    """No target connection could be established."""


class UpstreamTimeout(UpstreamError):
    """The target did not answer within the request timeout."""


class UpstreamClosed(UpstreamError):
    """The target connection closed before the answer was complete."""
