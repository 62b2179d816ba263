"""Example target servers to try the multiplexer against, with scriptable faults.

`TargetServer` + `TargetConfig` for tests (same event loop, port 0, `wait_for` on the
live `stats`); `tcp-multiplexer example-server` (`targets.cli`) from the command line.
The Modbus device's initial values come from pure functions, so tests can compute them.
"""

from __future__ import annotations

from tcp_multiplexer.protocols.modbus.device import (
    ModbusDevice,
    coil_value,
    discrete_input_value,
    holding_register_value,
    input_register_value,
)
from tcp_multiplexer.protocols.responder import Answer, Responder
from tcp_multiplexer.targets.faults import Fault, FaultPlan, parse_fault
from tcp_multiplexer.targets.server import (
    OverLimit,
    TargetConfig,
    TargetServer,
    TargetStats,
    make_responder,
)

__all__ = [
    "Answer",
    "Fault",
    "FaultPlan",
    "ModbusDevice",
    "OverLimit",
    "Responder",
    "TargetConfig",
    "TargetServer",
    "TargetStats",
    "coil_value",
    "discrete_input_value",
    "holding_register_value",
    "input_register_value",
    "make_responder",
    "parse_fault",
]
