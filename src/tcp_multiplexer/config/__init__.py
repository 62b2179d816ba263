"""Configuration: frozen dataclasses (model), the option tables (schema), and the one
function that builds them from option values (build)."""

from tcp_multiplexer.config.build import build_app, build_bridge
from tcp_multiplexer.config.model import AppConfig, BridgeConfig

__all__ = ["AppConfig", "BridgeConfig", "build_app", "build_bridge"]
