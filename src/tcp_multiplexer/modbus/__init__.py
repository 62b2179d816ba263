"""Modbus gateway policy: refused writes, coalesced reads, the read cache."""

from tcp_multiplexer.modbus.gateway import ModbusGatewayPolicy

__all__ = ["ModbusGatewayPolicy"]
