"""Who may write: per-client rules, matched on the client's address or certificate.

A bridge's `write-rules` are tried in order; the first whose criteria all match the
client decides (a rule without criteria matches everyone):

    write-rules = [
      # evcc may set the wallbox's charge current, and nothing else.
      { clients = ["192.168.1.20"], writes = ["unit 1 holding 40100-40110"] },
      # Home Assistant reads only.
      { clients = ["192.168.1.10/32"], access = "read-only" },
      # An operator certificate (Modbus/TCP Security role) may write anything.
      { roles = ["operator"], access = "read-write" },
    ]

Criteria: `clients` (addresses or CIDR ranges), `names` (a name in the client
certificate's subject or SAN) and `roles` (its Modbus/TCP Security role); a rule
matches when, for each criterion it gives, one listed value matches. Each rule says
`access = "read-only"` or `"read-write"`, or lists `writes`: what the client may write,
each ``unit U [fc F] TABLE RANGES``, for example ``unit 1 holding 40100-40110``,
``unit 1,3 coils 0-7``, ``unit * fc 6 holding 100,102-104``. TABLE is ``holding``
(function codes 6, 16, 22 and the write of 23) or ``coils`` (5, 15); addresses are the
protocol's, 0 to 65535, as clients send them. A client no rule matches may only read.
Without rules, `read-only` (the bridge's flag) is the rule for everyone.

A refused write is answered by the multiplexer (exception 0x01 when the client may not
use that function at all, 0x02 when the addresses are outside what it may write) and
never reaches the device: no cache entry is dropped, no coalesced read disturbed.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.options import Network, network_value
from tcp_multiplexer.protocols.modbus.functions import WRITE_FUNCTIONS, written_range
from tcp_multiplexer.protocols.modbus.mbap import ExceptionCode, FunctionCode, exception_response
from tcp_multiplexer.protocols.spec import ClientIdentity

READ_ONLY: Final = "read-only"
DENY: Final = "deny"
"""`read-only = "deny"` (or true): writes are refused with exception 0x01."""
IGNORE: Final = "ignore"
"""`read-only = "ignore"`: writes are acknowledged as the device would, never sent."""
_READ_ONLY_WORDS: Final = {"": "", "false": "", "off": "", "true": DENY, DENY: DENY, IGNORE: IGNORE}
READ_WRITE: Final = "read-write"
LISTED: Final = "listed"
TABLES: Final = {
    "holding": frozenset(
        {
            FunctionCode.WRITE_SINGLE_REGISTER,
            FunctionCode.WRITE_MULTIPLE_REGISTERS,
            FunctionCode.MASK_WRITE_REGISTER,
            FunctionCode.READ_WRITE_MULTIPLE_REGISTERS,
        }
    ),
    "coils": frozenset({FunctionCode.WRITE_SINGLE_COIL, FunctionCode.WRITE_MULTIPLE_COILS}),
}
_GRANT: Final = re.compile(
    r"unit\s+(?P<units>\*|[0-9,\- ]+?)\s+(?:fc\s+(?P<fcs>[0-9, ]+?)\s+)?"
    r"(?P<table>holding|coils)\s+(?P<ranges>[0-9,\- ]+)",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class WriteGrant:
    """What one ``writes`` entry allows."""

    units: frozenset[int] | None
    """None: every unit."""
    functions: frozenset[int]
    ranges: tuple[tuple[int, int], ...]
    """Inclusive (first, last) address ranges."""

    def allows_function(self, unit: int, function: int) -> bool:
        return (self.units is None or unit in self.units) and function in self.functions

    def allows(self, unit: int, function: int, first: int, count: int) -> bool:
        if not self.allows_function(unit, function):
            return False
        last = first + count - 1
        return any(low <= first and last <= high for low, high in self.ranges)


def _numbers(text: str, what: str, limit: int) -> list[tuple[int, int]]:
    spans = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ConfigError(f"{part!r} is not a {what} or a range of them")
        first, last = int(low), int(high) if dash else int(low)
        if not 0 <= first <= last <= limit:
            raise ConfigError(f"{what} range {part!r} is outside 0..{limit} or backwards")
        spans.append((first, last))
    if not spans:
        raise ConfigError(f"no {what} given")
    return spans


def parse_grant(text: str) -> WriteGrant:
    """One ``writes`` entry (see the module docstring).

    Raises:
        ConfigError: it does not read as ``unit U [fc F] TABLE RANGES``.
    """
    match = _GRANT.fullmatch(text.strip())
    if match is None:
        raise ConfigError(
            f"{text!r}: write it as 'unit 1 holding 40100-40110' (unit: numbers or *; "
            "table: holding or coils; addresses 0-65535)"
        )
    units: frozenset[int] | None = None
    if match["units"].strip() != "*":
        units = frozenset(
            unit
            for low, high in _numbers(match["units"], "unit id", 255)
            for unit in range(low, high + 1)
        )
    table = frozenset(int(code) for code in TABLES[match["table"].lower()])
    functions = table
    if match["fcs"]:
        asked = frozenset(low for low, _high in _numbers(match["fcs"], "function code", 255))
        if not asked <= table:
            raise ConfigError(
                f"{text!r}: function codes {sorted(asked - table)} do not write {match['table']}"
            )
        functions = asked
    ranges = tuple(_numbers(match["ranges"], "address", 0xFFFF))
    return WriteGrant(units, functions, ranges)


@dataclass(frozen=True, slots=True)
class WriteRule:
    """One rule: whom it matches and what they may write."""

    clients: tuple[Network, ...] = ()
    names: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()
    access: str = READ_ONLY
    writes: tuple[WriteGrant, ...] = ()
    text: str = ""
    """The rule as a TOML inline table, for logs and check-config."""

    def matches(self, identity: ClientIdentity) -> bool:
        if self.clients and (
            identity.address is None or not any(identity.address in net for net in self.clients)
        ):
            return False
        if self.names and not self.names & identity.names:
            return False
        return not (self.roles and not self.roles & identity.roles)


_RULE_KEYS: Final = frozenset(("clients", "names", "roles", "access", "writes"))


def _strings(value: object, key: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, str) and item.strip() for item in items):
        raise ConfigError(f"{key} must be a string or a list of strings")
    return [str(item).strip() for item in items]


def parse_rule(value: object) -> WriteRule:
    """One rule from its table (see the module docstring).

    Raises:
        ConfigError: an unknown key, a bad address, grant or access.
    """
    if not isinstance(value, Mapping):
        raise ConfigError('each rule is a table: { clients = [...], access = "read-only" }')
    unknown = set(value) - _RULE_KEYS
    if unknown:
        raise ConfigError(
            f"unknown key {sorted(unknown)[0]!r} in a rule (use {', '.join(sorted(_RULE_KEYS))})"
        )
    clients = (
        tuple(network_value(item) for item in _strings(value["clients"], "clients"))
        if "clients" in value
        else ()
    )
    names = frozenset(_strings(value["names"], "names")) if "names" in value else frozenset()
    roles = frozenset(_strings(value["roles"], "roles")) if "roles" in value else frozenset()
    has_access, has_writes = "access" in value, "writes" in value
    if has_access == has_writes:
        raise ConfigError('each rule says access = "read-only" or "read-write", or lists writes')
    if has_access:
        access = value["access"]
        if access not in (READ_ONLY, READ_WRITE):
            raise ConfigError(f"access {access!r} is not read-only or read-write")
        writes: tuple[WriteGrant, ...] = ()
    else:
        access = LISTED
        writes = tuple(parse_grant(item) for item in _strings(value["writes"], "writes"))
    return WriteRule(clients, names, roles, str(access), writes, _rule_toml(value))


def _rule_toml(value: Mapping[str, object]) -> str:
    """A rule table as the TOML inline table that reads back as it."""
    parts = []
    for key in ("clients", "names", "roles", "access", "writes"):
        if key not in value:
            continue
        item = value[key]
        if key == "access":
            parts.append(f"{key} = {json.dumps(item)}")
        else:
            strings = _strings(item, key)
            parts.append(f"{key} = [{', '.join(json.dumps(one) for one in strings)}]")
    return "{ " + ", ".join(parts) + " }"


def rules_toml(rules: tuple[WriteRule, ...]) -> str:
    """The `write-rules` option as TOML (check-config)."""
    return "[" + ", ".join(rule.text for rule in rules) + "]"


def rules_value(value: object) -> tuple[WriteRule, ...]:
    """The `write-rules` option: a list of rule tables."""
    if isinstance(value, tuple) and all(isinstance(item, WriteRule) for item in value):
        return value
    if not isinstance(value, list):
        raise ConfigError("write-rules is a list of tables: [ { clients = [...], ... }, ... ]")
    return tuple(parse_rule(item) for item in value)


class WriteFilter:
    """Refuses the writes one client may not make (a session's request filter)."""

    __slots__ = ("_events", "_rule")

    def __init__(self, rule: WriteRule, events: Counter[str]) -> None:
        self._rule = rule
        self._events = events

    def refusal(self, request: bytes) -> bytes | None:
        """The exception answer refusing `request`, or None if it may go to the device."""
        function = request[7]
        if function not in WRITE_FUNCTIONS:
            return None
        rule = self._rule
        if rule.access == READ_WRITE:
            return None
        code = ExceptionCode.ILLEGAL_FUNCTION
        if rule.access == LISTED:
            unit = request[6]
            written = written_range(request)
            if any(grant.allows_function(unit, function) for grant in rule.writes):
                if written is not None and any(
                    grant.allows(unit, function, written[1], written[2]) for grant in rule.writes
                ):
                    return None
                code = ExceptionCode.ILLEGAL_DATA_ADDRESS
        self._events["writes_refused"] += 1
        self._events[f"exceptions_sent_0x{code:02x}"] += 1
        return exception_response(request, code)


EVERYONE_READS: Final = WriteRule(access=READ_ONLY, text='{ access = "read-only" }')


def read_only_value(value: object) -> str:
    """`read-only`: true or ``deny``, ``ignore``, or false (off, as "")."""
    if isinstance(value, bool):
        return DENY if value else ""
    if isinstance(value, str) and value.strip().lower() in _READ_ONLY_WORDS:
        return _READ_ONLY_WORDS[value.strip().lower()]
    raise ConfigError(f"expected true, false, {DENY!r} or {IGNORE!r}, got {value!r}")


def read_only_toml(value: str) -> str:
    """`read-only` as TOML (check-config)."""
    return json.dumps(value) if value else "false"


def client_filter(
    rules: Sequence[WriteRule], read_only: str, identity: ClientIdentity, events: Counter[str]
) -> WriteFilter | None:
    """The filter for a client: the first rule that matches it; with no rules,
    `read-only = "deny"` or nothing to filter (``ignore`` is the gateway policy's)."""
    if not rules:
        return WriteFilter(EVERYONE_READS, events) if read_only == DENY else None
    for rule in rules:
        if rule.matches(identity):
            return None if rule.access == READ_WRITE else WriteFilter(rule, events)
    return WriteFilter(EVERYONE_READS, events)
