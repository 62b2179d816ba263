"""A SunSpec device for the tests: a pymodbus TCP server holding a common model (1), a
three-phase inverter (103) and a three-phase meter (203), encoded by pysunspec2 from the
SunSpec Alliance's definitions, with scale factors and points left not implemented
(pysunspec2 writes SunSpec's not-implemented value for every point not set here).
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import sunspec2.device as sunspec_device
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from tests.helpers import LOOPBACK
from tests.peers import listening_port

BASE: Final = 40000
COMMON: Final = {
    "Mn": "ExampleSolar",
    "Md": "Hybrid 5000",
    "Opt": "opt",
    "Vr": "1.2.3",
    "SN": "SN0001",
    "DA": 1,
}
INVERTER: Final = {
    "A": 123,
    "A_SF": -1,  # 12.3 A
    "AphA": 41,
    "AphB": 42,
    # AphC not implemented (0xFFFF)
    "PhVphA": 2301,
    "PhVphB": 2302,
    "PhVphC": 2303,
    "V_SF": -1,  # 230.1 V
    "W": 2500,
    "W_SF": 0,
    "Hz": 5001,
    "Hz_SF": -2,  # 50.01 Hz
    "WH": 123456,
    "WH_SF": 0,  # 123456 Wh
    "TmpCab": 345,
    # Tmp_SF not implemented (0x8000): the temperatures are unknown
    "St": 4,
}
METER: Final = {
    "A": -52,
    "A_SF": -1,
    "W": -1500,
    "W_SF": 0,
    "Hz": 4999,
    "Hz_SF": -2,
    "TotWhImp": 98765,
    "TotWhExp": 4321,
    "TotWh_SF": 0,
}
"""The values set (raw, before scaling); the expected scaled values are in the tests."""


def model_registers(model_id: int, values: Mapping[str, Any]) -> bytes:
    """One model as pysunspec2 encodes it: its id, its length and its registers."""
    model = sunspec_device.Model(model_id=model_id)
    for name, value in values.items():
        model.points[name].value = value
    data: bytes = model.get_mb()
    return data


def device_registers(
    models: tuple[tuple[int, Mapping[str, Any]], ...] = (
        (1, COMMON),
        (103, INVERTER),
        (203, METER),
    ),
) -> list[int]:
    """The marker, the models and the end marker, as register values from BASE."""
    data = b"SunS" + b"".join(model_registers(mid, values) for mid, values in models)
    data += struct.pack(">HH", 0xFFFF, 0)
    return list(struct.unpack(f">{len(data) // 2}H", data))


def _device(registers: list[int], base: int) -> SimDevice:
    return SimDevice(
        0,
        simdata=(
            [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
            [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
            [SimData(base, values=registers, datatype=DataType.REGISTERS)],
            [SimData(0, values=[0] * 16, datatype=DataType.REGISTERS)],
        ),
    )


@contextlib.asynccontextmanager
async def sunspec_server(
    registers: list[int] | None = None, base: int = BASE
) -> AsyncIterator[ModbusTcpServer]:
    """A running pymodbus TCP server holding a SunSpec device at `base`; stopped on exit.
    Its port: `listening_port(server)`."""
    server = ModbusTcpServer(
        _device(device_registers() if registers is None else registers, base),
        address=(LOOPBACK, 0),
    )
    await server.serve_forever(background=True)
    try:
        yield server
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]


def port_of(server: ModbusTcpServer) -> int:
    return listening_port(server)
