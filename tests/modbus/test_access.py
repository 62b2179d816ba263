"""The write-rules grammar and its filter: what each rule lets a client write, and one
clear message for every mistake."""

from __future__ import annotations

import ipaddress
from collections import Counter

import pytest

from tcp_multiplexer.errors import ConfigError
from tcp_multiplexer.protocols.modbus.access import (
    client_filter,
    parse_grant,
    parse_rule,
    rules_value,
)
from tcp_multiplexer.protocols.modbus.mbap import FunctionCode
from tcp_multiplexer.protocols.spec import ClientIdentity
from tests.modbus.adu import read_request, write_register

WRITE_SINGLE = int(FunctionCode.WRITE_SINGLE_REGISTER)
WRITE_MULTIPLE = int(FunctionCode.WRITE_MULTIPLE_REGISTERS)
WRITE_COIL = int(FunctionCode.WRITE_SINGLE_COIL)


def client(
    address: str = "192.168.1.20",
    *,
    names: frozenset[str] = frozenset(),
    roles: frozenset[str] = frozenset(),
) -> ClientIdentity:
    return ClientIdentity(ipaddress.ip_address(address), names, roles)


def test_a_grant_names_units_function_codes_table_and_ranges() -> None:
    grant = parse_grant("unit 1,3-4 fc 6 holding 100,102-104")
    assert grant.units == frozenset({1, 3, 4})
    assert grant.functions == frozenset({WRITE_SINGLE})
    assert grant.ranges == ((100, 100), (102, 104))
    assert grant.allows(3, WRITE_SINGLE, 103, 2)
    assert not grant.allows(3, WRITE_SINGLE, 104, 2), "the write runs past 104"
    assert not grant.allows(2, WRITE_SINGLE, 100, 1), "unit 2 is not listed"
    assert not grant.allows(1, WRITE_MULTIPLE, 100, 1), "only fc 6"


def test_a_grant_without_fc_covers_the_table_and_star_every_unit() -> None:
    grant = parse_grant("  UNIT *  coils 0-7 ")
    assert grant.units is None
    assert grant.functions == frozenset({WRITE_COIL, int(FunctionCode.WRITE_MULTIPLE_COILS)})
    assert grant.allows(200, WRITE_COIL, 7, 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("holding 1-2", "write it as 'unit 1 holding 40100-40110'"),
        ("unit 1 inputs 1-2", "write it as"),
        ("unit 256 holding 1", "unit id range '256' is outside 0..255"),
        ("unit 1 holding 70000", "address range '70000' is outside 0..65535"),
        ("unit 1 holding 9-3", "backwards"),
        ("unit 1 fc 5 holding 1", "function codes [5] do not write holding"),
    ],
)
def test_a_bad_grant_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        parse_grant(text)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("clients = x", "each rule is a table"),
        ({"clients": ["10.0.0.1"]}, 'says access = "read-only" or "read-write", or lists'),
        ({"access": "read-only", "writes": ["unit 1 holding 1"]}, "or lists writes"),
        ({"access": "sometimes"}, "access 'sometimes' is not read-only or read-write"),
        ({"access": "read-only", "who": ["x"]}, "unknown key 'who' in a rule"),
        ({"clients": ["10.0.0.300"], "access": "read-only"}, "10.0.0.300"),
        ({"roles": [3], "access": "read-only"}, "roles must be a string or a list of strings"),
    ],
)
def test_a_bad_rule_says_what_is_wrong(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_rule(value)
    assert message in str(caught.value)


def test_write_rules_must_be_a_list_of_tables() -> None:
    with pytest.raises(ConfigError, match="write-rules is a list of tables"):
        rules_value({"access": "read-only"})


RULES = rules_value(
    [
        {"clients": ["192.168.1.20"], "writes": ["unit 1 holding 40100-40110"]},
        {"clients": ["192.168.1.0/24"], "access": "read-only"},
        {"names": ["scada.example"], "roles": ["operator"], "access": "read-write"},
        {"roles": ["operator"], "writes": "unit 1 coils 0"},
    ]
)


def refusal(identity: ClientIdentity, request: bytes) -> int | None:
    """The exception code the filter answers `request` with, or None if it passes."""
    events: Counter[str] = Counter()
    rule_filter = client_filter(RULES, "", identity, events)
    if rule_filter is None:
        return None
    answer = rule_filter.refusal(request)
    if answer is None:
        return None
    assert events["writes_refused"] == 1
    return answer[8]


def test_the_first_matching_rule_decides() -> None:
    evcc = client("192.168.1.20")
    assert refusal(evcc, write_register(1, 1, 40105, 7)) is None
    assert refusal(evcc, write_register(1, 1, 40111, 7)) == 0x02, "outside the range"
    assert refusal(evcc, write_register(1, 2, 40105, 7)) == 0x01, "unit 2: not at all"
    assert refusal(evcc, read_request(1, 1, 40105, 2)) is None, "reads always pass"
    assert refusal(client("192.168.1.10"), write_register(1, 1, 40105, 7)) == 0x01


def test_names_and_roles_must_both_match_when_a_rule_gives_both() -> None:
    scada = client("10.0.0.5", names=frozenset({"scada.example"}), roles=frozenset({"operator"}))
    assert client_filter(RULES, "", scada, Counter()) is None, "read-write: no filter"
    operator = client("10.0.0.6", names=frozenset({"laptop"}), roles=frozenset({"operator"}))
    assert refusal(operator, write_register(1, 1, 40105, 7)) == 0x01, "coils only"


def test_a_client_no_rule_matches_only_reads() -> None:
    stranger = client("10.9.9.9")
    assert refusal(stranger, write_register(1, 1, 40105, 7)) == 0x01
    assert refusal(stranger, read_request(1, 1, 40105, 2)) is None


def test_without_rules_read_only_is_for_everyone_and_otherwise_nothing_is_filtered() -> None:
    assert client_filter((), "", client(), Counter()) is None
    read_only = client_filter((), "deny", client(), Counter())
    assert read_only is not None
    assert read_only.refusal(write_register(1, 1, 1, 1)) is not None


def test_each_rule_keeps_its_toml_text() -> None:
    assert (
        RULES[0].text == '{ clients = ["192.168.1.20"], writes = ["unit 1 holding 40100-40110"] }'
    )
