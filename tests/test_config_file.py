"""Config files: several bridges from TOML, one validation with the command line, and
one clear line for every mistake; check-config prints what the server would run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcp_multiplexer.config.file import ConfigFileError, load_config, parse_config
from tcp_multiplexer.config.model import BridgeConfig
from tcp_multiplexer.config.render import render_config
from tcp_multiplexer.options import Address
from tcp_multiplexer.protocols.modbus.options import ModbusOptions
from tcp_multiplexer.target import Target
from tests.helpers import run_cli
from tests.tlscerts import make_ca

PACKAGING = Path(__file__).resolve().parent.parent / "packaging"

SITE = """
[logging]
level = "info"
format = "json"

[poller]
busy-poll = "1ms"

[[bridge]]
name = "inverter"
protocol = "modbus"
listen = ["127.0.0.1:5020", "[::1]:5020"]
target = "192.0.2.22:502"
timeout = "5s"
max_connections = 2
cache-ttl = 1.5

[[bridge]]
name = "meter"
protocol = "echo"
listen = 5021
target = "192.0.2.23:502"
reconnect-backoff = "250ms"
"""


def test_a_file_with_several_bridges() -> None:
    config = parse_config(SITE, "site.toml")
    assert (config.log_level, config.log_format, config.busy_poll) == ("info", "json", 0.001)
    inverter, meter = config.bridges
    assert inverter.name == "inverter"
    assert inverter.listen == (Address("127.0.0.1", 5020), Address("::1", 5020))
    assert inverter.target == Target.tcp(Address("192.0.2.22", 502))
    assert (inverter.timeout, inverter.max_connections) == (5.0, 2)
    assert inverter.protocol_options == ModbusOptions(cache_ttl=1.5)
    assert meter.listen == (Address("", 5021),)
    assert meter.reconnect_backoff == 0.25
    assert meter.timeout == BridgeConfig().timeout, "defaults as on the command line"
    assert config.source == "site.toml"


def test_command_line_globals_win_over_the_file() -> None:
    config = parse_config(SITE, "site.toml", {"debug": True, "log_format": "plain"})
    assert (config.log_level, config.log_format) == ("debug", "plain")


BRIDGE = '[[bridge]]\nname = "battery"\nlisten = "5020"\ntarget = "192.0.2.9:502"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("[[bridge]\n", "site.toml: not valid TOML: ", id="not-toml"),
        pytest.param(
            BRIDGE + 'timeout = "x"\n',
            "site.toml: bridge \"battery\": timeout: invalid duration 'x'",
            id="bad-duration",
        ),
        pytest.param(
            BRIDGE + "timeout = true\n",
            'site.toml: bridge "battery": timeout: expected a duration',
            id="wrong-type",
        ),
        pytest.param(
            BRIDGE.replace('"5020"', '"70000"'),
            'site.toml: bridge "battery": listen: port 70000',
            id="port-range",
        ),
        pytest.param(
            BRIDGE + "max-connections = 0\n",
            'site.toml: bridge "battery": max-connections: 0 is below the minimum of 1',
            id="count-range",
        ),
        pytest.param(
            BRIDGE + "colour = 1\n",
            'site.toml: bridge "battery": colour: unknown option',
            id="unknown-key",
        ),
        pytest.param(
            BRIDGE + "read-only = true\n",
            'site.toml: bridge "battery": read-only: is a modbus option',
            id="other-protocols-option",
        ),
        pytest.param(
            BRIDGE.replace('target = "192.0.2.9:502"\n', ""),
            'site.toml: bridge "battery": target: every bridge needs a target',
            id="no-target",
        ),
        pytest.param(
            BRIDGE.replace('name = "battery"\n', ""),
            "site.toml: bridge #1: name: every bridge needs a name",
            id="no-name",
        ),
        pytest.param(BRIDGE + BRIDGE, "two bridges are named 'battery'", id="same-name"),
        pytest.param(
            BRIDGE + BRIDGE.replace("battery", "wallbox"),
            "bridges 'battery' and 'wallbox' both listen on :5020",
            id="same-listen",
        ),
        pytest.param('[logging]\nlevel = "loud"\n' + BRIDGE, "log-level", id="bad-level"),
        pytest.param("[logging]\ncolour = 1\n" + BRIDGE, "[logging] colour: unknown", id="key"),
        pytest.param("[colours]\n" + BRIDGE, "unknown table or key 'colours'", id="table"),
        pytest.param('[logging]\nlevel = "info"\n', "no [[bridge]] table", id="no-bridge"),
    ],
)
def test_every_mistake_is_one_line_naming_file_bridge_and_key(text: str, message: str) -> None:
    with pytest.raises(ConfigFileError) as caught:
        parse_config(text, "site.toml")
    line = str(caught.value)
    assert "\n" not in line
    assert message in line
    assert line.startswith("site.toml: ")


def test_an_unreadable_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match=r"site\.toml: cannot read it"):
        load_config(tmp_path / "site.toml")


def test_what_check_config_prints_reads_back_as_the_same_config() -> None:
    config = parse_config(SITE, "site.toml")
    assert parse_config(render_config(config), "site.toml") == config


def test_check_config_prints_every_setting_and_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(SITE)
    result = run_cli("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert 'name = "inverter"' in result.stdout
    assert 'connect-timeout = "5s"' in result.stdout, "defaults filled in"
    assert "cache-ttl" in result.stdout
    assert parse_config(result.stdout, str(path)) == load_config(path)


def test_check_config_of_a_bad_file_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(BRIDGE + 'timeout = "x"\n')
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert f'{path}: bridge "battery": timeout: invalid duration' in line
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("first", "second", "where"),
    [
        pytest.param(
            '"localhost:16020"',
            '"127.0.0.1:16020"',
            "port 16020 (localhost:16020 and 127.0.0.1:16020)",
            id="localhost",
        ),
        pytest.param(
            "16020", '"127.0.0.1:16020"', "port 16020 (:16020 and 127.0.0.1:16020)", id="bare"
        ),
        pytest.param('"0.0.0.0:16020"', '"[::]:16020"', None, id="v4-and-v6-apart"),
        pytest.param('"127.0.0.1:16020"', '"[::1]:16020"', None, id="loopbacks-apart"),
        pytest.param('"127.0.0.1:16020"', '"127.0.0.1:16021"', None, id="ports-apart"),
    ],
)
def test_check_config_catches_one_port_spelled_two_ways(
    tmp_path: Path, first: str, second: str, where: str | None
) -> None:
    path = tmp_path / "site.toml"
    path.write_text(
        f'[[bridge]]\nname = "a"\nlisten = {first}\ntarget = "192.0.2.1:502"\n'
        f'[[bridge]]\nname = "b"\nlisten = {second}\ntarget = "192.0.2.2:502"\n'
    )
    result = run_cli("check-config", str(path))
    if where is None:
        assert result.returncode == 0, result.stderr
        header = result.stdout.splitlines()[0]
        assert "valid, 2 bridge(s)" in header
    else:
        assert result.returncode == 2
        (line,) = result.stderr.splitlines()
        assert f"bridges 'a' and 'b' both listen on {where}" in line


def test_check_config_refuses_a_profile_made_for_another_protocol(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(
        '[[bridge]]\nname = "web"\nprotocol = "http"\nprofile = "huawei-sdongle"\n'
        'listen = 8080\ntarget = "192.0.2.1:80"\n'
    )
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert 'bridge "web": profile: huawei-sdongle is a profile for modbus devices' in line


def test_a_bad_file_stops_the_server_at_start_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(BRIDGE + "max-inflight = 5000\n")
    result = run_cli("server", "--config", str(path))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert 'bridge "battery": max-inflight: must be at most 1024' in line


def test_bridge_options_on_the_command_line_with_a_file_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(BRIDGE)
    result = run_cli("server", "--config", str(path), "-v", "--timeout", "5s")
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "--timeout is a bridge option: with --config, set it in" in line


def test_the_shipped_example_is_valid() -> None:
    config = load_config(PACKAGING / "example.toml")
    assert [bridge.name for bridge in config.bridges] == ["inverter", "battery", "meter"]


def secure_site(folder: Path) -> str:
    """A bridge with every access and TLS setting, its certificates made in `folder`."""
    ca = make_ca(folder, "site")
    server = ca.issue("multiplexer", server=True)
    return f"""
[[bridge]]
name = "inverter"
protocol = "modbus"
listen = "127.0.0.1:802"
target = "192.0.2.22:502"
allow = ["192.168.1.0/24", "::1"]
max-clients = 8
client-idle-timeout = "10m"
tls-cert = "{server.cert}"
tls-key = "{server.key}"
tls-client-ca = "{ca.pem}"
write-rules = [
  {{ clients = ["192.168.1.20"], writes = ["unit 1 holding 40100-40110"] }},
  {{ roles = ["operator"], access = "read-write" }},
]
"""


def test_access_and_tls_settings_read_and_check_config_round_trips(tmp_path: Path) -> None:
    config = parse_config(secure_site(tmp_path), "site.toml")
    (bridge,) = config.bridges
    assert [str(network) for network in bridge.allow] == ["192.168.1.0/24", "::1/128"]
    assert (bridge.max_clients, bridge.client_idle_timeout) == (8, 600.0)
    assert bridge.tls_client_ca is not None
    assert isinstance(bridge.protocol_options, ModbusOptions)
    assert len(bridge.protocol_options.write_rules) == 2
    assert parse_config(render_config(config), "site.toml") == config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(
            ('"unit 1 holding 40100-40110"', '"unit 1 inputs 5"'),
            "write-rules: 'unit 1 inputs 5': write it as",
            id="bad-grant",
        ),
        pytest.param(
            ('access = "read-write"', 'access = "all"'),
            "write-rules: access 'all' is not read-only or read-write",
            id="bad-access",
        ),
        pytest.param(('"192.168.1.0/24"', '"192.168.1.0/33"'), "allow: ", id="bad-network"),
        pytest.param(
            ("multiplexer.key", "missing.key"),
            "tls-key: cannot read ",
            id="no-key-file",
        ),
        pytest.param(
            ("-ca.pem", "-ca.missing"),
            "-ca.missing: No such file or directory",
            id="no-ca-file",
        ),
        pytest.param(
            ("multiplexer.key", "multiplexer.pem"),
            "tls-cert: cannot use it: ",
            id="a-certificate-for-a-key",
        ),
    ],
)
def test_a_bad_access_or_tls_setting_is_one_line(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    text = secure_site(tmp_path).replace(*change)
    path = tmp_path / "site.toml"
    path.write_text(text)
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert f'{path}: bridge "inverter": ' in line
    assert message in line


def test_write_rules_are_a_config_file_setting_only() -> None:
    result = run_cli("server", "--write-rules", "x")
    assert result.returncode == 2
    assert "--write-rules" in result.stderr


IMAGE_SITE = """
[[bridge]]
name = "inverter"
protocol = "modbus"
listen = ["127.0.0.1:15020"]
target = "192.0.2.22:502"
cache-ttl = "2s"
serve-stale = "5m"
read-only = "ignore"
poll-merge-gap = 4
poll-max-registers = 64
route = [
  { units = "2", target = "192.0.2.23:502", cache-ttl = "10s", read-only = "deny", poll = [
    "2:input:0:20:5s",
    { unit = 2, table = "coils", address = 0, count = 16, every = "2s" },
  ] },
]

[[bridge.poll]]
unit = 1
table = "holding"
address = 40000
count = 50
every = "1s"

[[bridge.poll]]
unit = 2
table = "holding"
address = 0
count = 10
every = "3s"
"""


def test_image_settings_and_polls_read_per_bridge_and_route_and_round_trip() -> None:
    config = parse_config(IMAGE_SITE, "site.toml")
    (bridge,) = config.bridges
    options = bridge.protocol_options
    assert isinstance(options, ModbusOptions)
    assert (options.cache_ttl, options.serve_stale, options.read_only) == (2.0, 300.0, "ignore")
    assert (options.poll_merge_gap, options.poll_max_registers) == (4, 64)
    assert [str(poll) for poll in options.poll] == ["1:holding:40000:50:1s", "2:holding:0:10:3s"]
    (route,) = options.routes
    assert route.settings["cache_ttl"] == 10.0
    assert route.settings["read_only"] == "deny"
    assert [str(poll) for poll in route.settings["poll"]] == [
        "2:input:0:20:5s",
        "2:coils:0:16:2s",
    ]
    assert parse_config(render_config(config), "site.toml") == config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(
            ('every = "3s"', 'every = "30s"'),
            "poll: 2:holding:0:10:30s: every 30s is not shorter than cache-ttl 10s",
            id="slower-than-the-routes-ttl",
        ),
        pytest.param(
            ('every = "1s"', 'every = "2s"'),
            "poll: 1:holding:40000:50:2s: every 2s is not shorter than cache-ttl 2s",
            id="slower-than-the-bridges-ttl",
        ),
        pytest.param(
            ('"2:input:0:20:5s"', '"3:input:0:20:5s"'),
            "route: to 192.0.2.23:502: poll 3:input:0:20:5s: unit 3 is not one of the route's",
            id="a-routes-poll-of-another-unit",
        ),
        pytest.param(
            ('table = "holding"\naddress = 40000', 'table = "holdings"\naddress = 40000'),
            "table 'holdings' is not one of",
            id="bad-table",
        ),
        pytest.param(
            ('read-only = "ignore"', 'read-only = "sometimes"'),
            "read-only: expected true, false, 'deny' or 'ignore'",
            id="bad-read-only",
        ),
    ],
)
def test_a_bad_poll_or_image_setting_is_one_line(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    path = tmp_path / "site.toml"
    path.write_text(IMAGE_SITE.replace(*change))
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert f'{path}: bridge "inverter": ' in line
    assert message in line


def test_points_on_a_route_and_a_routes_map_are_found_beside_the_config(tmp_path: Path) -> None:
    (tmp_path / "meter.toml").write_text(
        '[[point]]\nname = "grid_power"\nunit = 2\naddress = 0\ntype = "i32"\nevery = "1s"\n'
    )
    path = tmp_path / "site.toml"
    path.write_text(
        BRIDGE
        + 'protocol = "modbus"\ncache-ttl = "2s"\n'
        + 'route = [{ units = "2", target = "192.0.2.10:502", map = "meter.toml", point = '
        + '[{ name = "grid_energy", unit = 2, address = 10, type = "u32", every = "1s" }] }]\n'
    )
    config = load_config(path)
    options = config.bridges[0].protocol_options
    assert isinstance(options, ModbusOptions)
    (route,) = options.routes
    assert route.settings["map"].path == str(tmp_path / "meter.toml")
    assert [point.name for point in route.settings["map"].points] == ["grid_power"]
    assert [point.name for point in route.settings["point"]] == ["grid_energy"]
    assert parse_config(render_config(config), str(path)) == config
    path.write_text(path.read_text().replace('units = "2"', 'units = "3"'))
    result = run_cli("check-config", str(path))
    assert result.returncode == 2
    assert "point 'grid_power': unit 2 is not one of the route's" in result.stderr
