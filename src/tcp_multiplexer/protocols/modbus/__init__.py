"""modbus: Modbus/TCP to clients; Modbus/TCP, RTU over TCP or RTU on a serial line to
devices; owned transaction ids, coalescing, a register image kept fresh by background
polls (and stale answers while the device is down), write rules and a read-only mode,
and routing by unit id with unit remapping."""

from __future__ import annotations

from typing import Final

from tcp_multiplexer.protocols.modbus import access
from tcp_multiplexer.protocols.modbus.access import WriteFilter
from tcp_multiplexer.protocols.modbus.client_framing import RtuClientProtocol
from tcp_multiplexer.protocols.modbus.codec import (
    client_codec,
    plan_targets,
    route_key,
    target_codec,
    target_codec_for,
)
from tcp_multiplexer.protocols.modbus.device import ModbusDevice
from tcp_multiplexer.protocols.modbus.gateway import ModbusGatewayPolicy
from tcp_multiplexer.protocols.modbus.options import (
    OPTIONS,
    ModbusOptions,
    make_options,
    option_values,
    path_options,
)
from tcp_multiplexer.protocols.modbus.polling import Polling
from tcp_multiplexer.protocols.spec import (
    BackgroundContext,
    ClientIdentity,
    EventCounts,
    PolicyContext,
    ProtocolName,
    ProtocolSpec,
)

EVENTS: Final = (
    "image_answers",
    "image_misses",
    "stale_answers",
    "poll_reads",
    "merged_reads",
    "late_polls",
    "refused_ranges",
    "writes_refused",
    "writes_ignored",
    "device_exceptions",
    "exceptions_sent_0x01",
    "exceptions_sent_0x02",
    "exceptions_sent_0x03",
    "exceptions_sent_0x06",
    "exceptions_sent_0x0a",
    "exceptions_sent_0x0b",
    "unrouted",
)
"""What the Modbus codecs and policy count, besides the core's own counters."""


def client_filter(
    options: ModbusOptions, identity: ClientIdentity, events: EventCounts
) -> WriteFilter | None:
    """What a client may write: its rule, or `read-only` for everyone."""
    return access.client_filter(options.write_rules, options.read_only, identity, events)


def gateway_policy(options: ModbusOptions, context: PolicyContext) -> ModbusGatewayPolicy:
    """The policy of one target: its route's image, stale and read-only settings over
    the bridge's."""
    plan = context.plan
    return ModbusGatewayPolicy(
        path_options(options, plan.keys, plan.settings),
        context.events,
        context.clock,
        context.log,
        context.previous,
        timeout=context.timeout,
    )


def background(options: ModbusOptions, context: BackgroundContext) -> Polling | None:
    """The poller of one target with a register image (None without one)."""
    policy = context.policy
    if not isinstance(policy, ModbusGatewayPolicy) or policy.image is None:
        return None
    plan = context.plan
    return Polling(
        path_options(options, plan.keys, plan.settings),
        policy,
        context.dispatch,
        context.pool,
        clock=context.clock,
        log=context.log,
        events=context.events,
    )


SPEC = ProtocolSpec(
    name=ProtocolName.MODBUS,
    summary="a Modbus/TCP ADU: 7-byte MBAP header (protocol id 0, length 2..254) and PDU",
    client_codec=client_codec,
    target_codec=target_codec,
    responder=ModbusDevice,
    options=OPTIONS,
    make_options=make_options,
    option_values=option_values,
    gateway_policy=gateway_policy,
    background=background,
    client_filter=client_filter,
    events=EVENTS,
    plan_targets=plan_targets,
    target_codec_for=target_codec_for,
    route_key=route_key,
    framed_client=RtuClientProtocol,
    # Routes and unit maps reach each target through its plan; the policy and the
    # write rules are read per request.
    connection_options=lambda options: options.lenient_ids,
)

__all__ = ["SPEC", "ModbusOptions"]
