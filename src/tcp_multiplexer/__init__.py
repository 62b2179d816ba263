"""tcp-multiplexer: many request/response TCP clients sharing few target connections."""

__version__ = "0.2.0"

__all__ = ["__version__"]
