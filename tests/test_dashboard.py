"""The Grafana dashboard and the monitoring stack in packaging/: the dashboard's JSON is
well formed, every metric its PromQL asks for is really exported by a running
multiplexer (scraped and parsed by prometheus-client's own parser), and the compose
file, Prometheus and Grafana provisioning agree on names, ports and paths."""

from __future__ import annotations

import asyncio
import difflib
import importlib
import json
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tcp_multiplexer.config.file import parse_config
from tcp_multiplexer.options import Address
from tcp_multiplexer.protocols.modbus.device import holding_register_value
from tcp_multiplexer.protocols.modbus.options import ModbusOptions
from tcp_multiplexer.protocols.spec import ProtocolName
from tcp_multiplexer.targets.server import TargetConfig, TargetServer
from tests.helpers import (
    LOOPBACK,
    eventually,
    mux_config,
    running_app,
    wait_for_target_connection,
)
from tests.modbus.adu import (
    READ_HOLDING,
    WRITE_REGISTER,
    exchange,
    read_request,
    registers_of,
    write_register,
)

PACKAGING: Final = Path(__file__).resolve().parent.parent / "packaging"
GRAFANA: Final = PACKAGING / "grafana"
MONITORING: Final = PACKAGING / "monitoring"
DASHBOARD: Final = GRAFANA / "dashboard.json"
DATASOURCES: Final = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS: Final = GRAFANA / "provisioning" / "dashboards" / "dashboards.yml"
PROMETHEUS: Final = MONITORING / "prometheus.yml"
COMPOSE: Final = MONITORING / "compose.yml"

TEST_TIMEOUT: Final = 20.0
"""Bound of the scrape test's body (asyncio.timeout); pytest-timeout is the outer guard."""
DATASOURCE_UID: Final = "prometheus"
"""The uid of the provisioned Prometheus datasource, the dashboard's default."""
PREFIX: Final = "tcp_multiplexer_"
METRIC: Final = re.compile(r"(?<![A-Za-z0-9_:])tcp_multiplexer_[A-Za-z0-9_:]*")
"""A metric name in PromQL: an identifier starting with the prefix."""
RATE_OF: Final = re.compile(r"\b(?:rate|irate|increase)\s*\(\s*(tcp_multiplexer_[A-Za-z0-9_:]*)")
HISTOGRAM_SUFFIXES: Final = ("_bucket", "_sum", "_count")
GROUPING: Final = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
SELECTOR: Final = re.compile(r"\{([^{}]*)\}")
MATCHER: Final = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
LEGEND_LABEL: Final = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
SERVICE: Final = re.compile(r"^  ([A-Za-z0-9][A-Za-z0-9_.-]*):\s*$", re.MULTILINE)
"""A service of the compose file (two spaces in, under `services:`)."""


# ------------------------------------------------------------------ the dashboard's JSON


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return dashboard


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside (collapsed) rows too."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def query_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in all_panels(dashboard["panels"]) if panel["type"] != "row"]


def variable(dashboard: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [item for item in dashboard["templating"]["list"] if item["name"] == name]
    return found


def variable_query(item: dict[str, Any]) -> str:
    query = item["query"]
    return str(query["query"] if isinstance(query, dict) else query)


def expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: the panels' targets and the query variables."""
    exprs = [target["expr"] for panel in query_panels(dashboard) for target in panel["targets"]]
    exprs += [
        variable_query(item) for item in dashboard["templating"]["list"] if item["type"] == "query"
    ]
    return exprs


def metric_names(expr: str) -> set[str]:
    return set(METRIC.findall(expr))


def test_the_dashboard_is_well_formed() -> None:
    dashboard = load_dashboard()
    assert dashboard["title"]
    assert dashboard["uid"]
    assert dashboard["schemaVersion"] >= 36
    panels = query_panels(dashboard)
    assert len(panels) >= 9
    ids = [panel["id"] for panel in all_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels:
        title = panel.get("title")
        assert title, f"panel {panel['id']} has a title"
        assert panel["type"] in ("timeseries", "stat", "state-timeline", "gauge", "table")
        assert set(panel["gridPos"]) >= {"x", "y", "w", "h"}, title
        assert 0 <= panel["gridPos"]["x"] < panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["fieldConfig"]["defaults"]["unit"], f"{title}: a unit"
        targets = panel["targets"]
        assert targets, f"{title}: targets"
        ref_ids = [target["refId"] for target in targets]
        assert len(ref_ids) == len(set(ref_ids)), f"{title}: refIds are unique"
        for target in targets:
            assert isinstance(target["expr"], str), title
            assert metric_names(target["expr"]), f"{title}: {target['expr']!r} asks for no metric"
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            assert '=~"$bridge"' in target["expr"], f"{title}: filtered by the bridge variable"
            for datasource in (panel["datasource"], target["datasource"]):
                assert datasource["type"] == "prometheus", title
                assert datasource["uid"] in ("${datasource}", DATASOURCE_UID), title


def test_the_dashboard_has_its_variables_and_panels() -> None:
    dashboard = load_dashboard()
    source = variable(dashboard, "datasource")
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    assert source["current"]["value"] == DATASOURCE_UID, "the provisioned datasource"
    bridge = variable(dashboard, "bridge")
    assert bridge["type"] == "query"
    assert variable_query(bridge) == "label_values(tcp_multiplexer_requests_total, bridge)"
    assert bridge["multi"] is True
    assert bridge["includeAll"] is True
    panels = {panel["title"]: panel for panel in query_panels(dashboard)}
    wanted = {
        "tcp_multiplexer_requests_total": "reqps",
        "tcp_multiplexer_answer_latency_seconds_bucket": "s",
        "tcp_multiplexer_gateway_answers_total": "reqps",
        "tcp_multiplexer_target_up": None,
        "tcp_multiplexer_last_answer_age_seconds": "s",
        "tcp_multiplexer_clients": None,
        "tcp_multiplexer_queue_depth": None,
        "tcp_multiplexer_target_reconnects_total": None,
        "tcp_multiplexer_target_connect_failures_total": None,
        "tcp_multiplexer_events_total": None,
    }
    for name, unit in wanted.items():
        using = [
            panel
            for panel in panels.values()
            if any(name in metric_names(target["expr"]) for target in panel["targets"])
        ]
        assert using, f"a panel shows {name}"
        if unit is not None:
            assert any(panel["fieldConfig"]["defaults"]["unit"] == unit for panel in using), name
    latency = [
        target["expr"]
        for panel in panels.values()
        for target in panel["targets"]
        if "tcp_multiplexer_answer_latency_seconds_bucket" in target["expr"]
    ]
    quantiles = {
        float(match)
        for expr in latency
        for match in re.findall(r"histogram_quantile\(\s*([0-9.]+)", expr)
    }
    assert quantiles >= {0.5, 0.9, 0.99}
    assert all(re.search(r"by \([^)]*\ble\b", expr) for expr in latency), "sum by le"
    (up,) = [panel for panel in panels.values() if panel["title"] == "Target up"]
    assert up["type"] in ("stat", "state-timeline")
    rows = [panel for panel in dashboard["panels"] if panel["type"] == "row"]
    assert any(row.get("repeat") == "bridge" for row in rows), "a row per bridge"


def test_the_metric_names_are_extracted_from_promql() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (le) (rate(tcp_multiplexer_a_seconds_bucket{b=~"x"}'
        "[5m]))) / on() group_left tcp_multiplexer_b_total + notmy_tcp_multiplexer_c"
    )
    assert metric_names(expr) == {"tcp_multiplexer_a_seconds_bucket", "tcp_multiplexer_b_total"}


# ------------------------------------------------------------------ the exposition


@dataclass(frozen=True, slots=True)
class Exposition:
    """A scrape of /metrics, parsed by prometheus-client."""

    families: dict[str, str]
    """Family name (counters without `_total`) -> type."""
    samples: dict[str, list[dict[str, str]]]
    """Sample name (as PromQL sees it) -> the label sets of its samples."""

    def family_of(self, name: str) -> tuple[str, str] | None:
        """(family, type) a sample name belongs to, None if there is none."""
        if name.endswith("_total") and self.families.get(name[: -len("_total")]) == "counter":
            return name[: -len("_total")], "counter"
        for suffix in HISTOGRAM_SUFFIXES:
            base = name[: -len(suffix)]
            if name.endswith(suffix) and self.families.get(base) == "histogram":
                return base, "histogram"
        if name in self.families:
            return name, self.families[name]
        return None

    def labels_of(self, name: str) -> set[str]:
        return {label for labels in self.samples.get(name, []) for label in labels}


def parse_exposition(text: str) -> Exposition:
    families: dict[str, str] = {}
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(dict(sample.labels))
    return Exposition(families, samples)


def fetch(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback http
        return response.status, response.read().decode()


def registers(address: int, count: int, unit: int = 1) -> list[int]:
    return [holding_register_value(unit, address + offset) for offset in range(count)]


async def scrape_with_every_feature() -> Exposition:
    """/metrics of an App that has seen answers, cache hits, a refused write and a gateway
    answer, with per-client metrics and the capture on: every family with samples."""
    async with TargetServer(TargetConfig(protocol=ProtocolName.MODBUS)) as target:
        config = replace(
            mux_config(
                target.port,
                protocol=ProtocolName.MODBUS,
                modbus=ModbusOptions(cache_ttl=60.0, read_only="deny"),
            ),
            metrics_listen=Address(LOOPBACK, 0),
            metrics_per_client=True,
            capture=10,
        )
        async with running_app(config) as app:
            bridge = app.bridges["test"]
            await wait_for_target_connection(bridge)
            reads = [read_request(tid, 1, 10 * tid, 4) for tid in range(1, 5)]
            again = read_request(9, 1, 10, 4)  # the first read again: from the cache
            refused = write_register(10, 1, 10, 5)
            answers = await exchange(bridge.port, [*reads, again, refused])
            for tid, answer in enumerate(answers[:4], start=1):
                assert answer[7] == READ_HOLDING
                assert registers_of(answer) == registers(10 * tid, 4)
            assert answers[4][9:] == answers[0][9:], "the cached answer"
            assert answers[5][7:9] == bytes((WRITE_REGISTER | 0x80, 0x01)), "refused write"
            await target.stop()
            await eventually(lambda: bridge.pool.unreachable, message="the target known down")
            (down,) = await exchange(bridge.port, [read_request(11, 1, 500, 2)])
            assert down[7:9] == bytes((READ_HOLDING | 0x80, 0x0A)), "a gateway answer"
            await eventually(lambda: bridge.metrics.clients == 0, message="the clients gone")
            assert app.observability is not None
            url = f"http://{LOOPBACK}:{app.observability.port}/metrics"
            status, text = await asyncio.to_thread(fetch, url)
            assert status == 200
            return parse_exposition(text)


@pytest.mark.timeout(60)
async def test_every_metric_on_the_dashboard_is_exported() -> None:
    dashboard = load_dashboard()
    async with asyncio.timeout(TEST_TIMEOUT):
        exposition = await scrape_with_every_feature()
    used = {name for expr in expressions(dashboard) for name in metric_names(expr)}
    assert used, "the dashboard asks for metrics"
    exported = sorted(exposition.samples)
    for name in sorted(used):
        hint = difflib.get_close_matches(name, exported, n=3)
        assert exposition.family_of(name) is not None, f"{name} is not exported (near: {hint})"
        assert exposition.samples.get(name), f"{name} has no samples (near: {hint})"
    for expr in expressions(dashboard):
        for name in RATE_OF.findall(expr):
            found = exposition.family_of(name)
            assert found is not None, name
            family, kind = found
            assert kind in ("counter", "histogram"), f"rate() of the {kind} {family}: {expr}"
    for panel in query_panels(dashboard):
        for target in panel["targets"]:
            expr = target["expr"]
            available = {"__name__"}
            for name in metric_names(expr):
                available |= exposition.labels_of(name)
            asked = set(LEGEND_LABEL.findall(target.get("legendFormat", "")))
            for grouping in GROUPING.findall(expr):
                asked |= {label.strip() for label in grouping.split(",") if label.strip()}
            for selector in SELECTOR.findall(expr):
                asked |= set(MATCHER.findall(selector))
            missing = asked - available
            assert not missing, f"{panel['title']}: labels {missing} not on {expr}"
    assert all(
        labels["bridge"] == "test"
        for name, label_sets in exposition.samples.items()
        if name in used
        for labels in label_sets
    )


# ------------------------------------------------------------------ the monitoring stack


def yaml_or_none() -> Any:
    try:
        return importlib.import_module("yaml")
    except ImportError:
        return None


def services(compose: str) -> dict[str, str]:
    """Each compose service's block of text, by name."""
    body = compose.split("\nservices:\n", 1)[1].split("\nvolumes:\n", 1)[0]
    matches = list(SERVICE.finditer(body))
    return {
        match.group(1): body[match.end() : following.start() if following else len(body)]
        for match, following in zip(matches, [*matches[1:], None], strict=True)
    }


def mounts(block: str) -> list[tuple[str, str]]:
    """(source, destination) of each `- SOURCE:DEST[:ro]` volume line of a service."""
    found = []
    for line in block.splitlines():
        match = re.fullmatch(r"\s+- ([^\s:\"]+):([^\s:\"]+)(?::ro)?", line)
        if match:
            found.append((match.group(1), match.group(2)))
    return found


def scrape_targets(prometheus: str) -> list[str]:
    return re.findall(r"targets:\s*\[\s*\"([^\"]+)\"", prometheus)


def test_prometheus_scrapes_the_compose_multiplexer_on_the_metrics_port() -> None:
    compose = COMPOSE.read_text(encoding="utf-8")
    prometheus = PROMETHEUS.read_text(encoding="utf-8")
    assert re.search(r"^\s+- job_name: tcp-multiplexer$", prometheus, re.MULTILINE)
    assert re.search(r"^\s+scrape_interval: 15s$", prometheus, re.MULTILINE)
    (scraped,) = scrape_targets(prometheus)
    host, _colon, port = scraped.rpartition(":")
    blocks = services(compose)
    assert host in blocks, f"{host} is a compose service"
    assert host == "multiplexer"
    # The comment tells the user what to add to site.toml: the same port.
    (listen,) = re.findall(r'^#\s+listen = "([^"]+)"$', compose, re.MULTILINE)
    assert listen == f"0.0.0.0:{port}"
    assert "[metrics]" in compose
    assert "docker compose -f packaging/monitoring/compose.yml up -d" in compose
    assert "http://localhost:3000" in compose
    # What the comment says to set in a copy of example.toml validates, and listens there.
    example = (PACKAGING / "example.toml").read_text(encoding="utf-8")
    loopback = 'listen = "127.0.0.1:9502"'
    assert loopback in example
    site = parse_config(example.replace(loopback, f'listen = "{listen}"'), "site.toml")
    assert site.metrics_listen == Address("0.0.0.0", int(port))
    multiplexer = blocks[host]
    assert re.search(r"^\s+context: \.\./\.\.$", multiplexer, re.MULTILINE)
    assert re.search(r"^\s+dockerfile: packaging/Dockerfile$", multiplexer, re.MULTILINE)
    assert 'command: ["server", "--config", "/etc/tcp-multiplexer/site.toml"]' in multiplexer
    assert "- ../site.toml:/etc/tcp-multiplexer/site.toml:ro" in multiplexer
    assert (MONITORING / "../../packaging/Dockerfile").resolve().is_file()


def test_the_compose_mounts_match_the_provisioning() -> None:
    compose = COMPOSE.read_text(encoding="utf-8")
    blocks = services(compose)
    assert set(blocks) >= {"multiplexer", "prometheus", "grafana"}
    assert re.search(r"^\s+image: prom/prometheus\S*$", blocks["prometheus"], re.MULTILINE)
    assert re.search(r"^\s+image: grafana/grafana\S*$", blocks["grafana"], re.MULTILINE)
    assert ("./prometheus.yml", "/etc/prometheus/prometheus.yml") in mounts(blocks["prometheus"])
    grafana = dict(mounts(blocks["grafana"]))
    for source, _destination in grafana.items():
        if not source.endswith("-data"):  # named volumes
            assert (MONITORING / source).exists(), f"{source} exists"
    assert grafana["../grafana/provisioning/datasources"] == (
        "/etc/grafana/provisioning/datasources"
    )
    assert grafana["../grafana/provisioning/dashboards"] == "/etc/grafana/provisioning/dashboards"
    (dashboard_path,) = re.findall(r"^\s+path: (\S+)$", PROVIDERS.read_text(), re.MULTILINE)
    assert dashboard_path == "/var/lib/grafana/dashboards"
    assert grafana["../grafana/dashboard.json"].startswith(dashboard_path + "/")
    assert re.search(r"GF_AUTH_ANONYMOUS_ENABLED: \"?true\"?", blocks["grafana"])
    assert re.search(r"GF_AUTH_ANONYMOUS_ORG_ROLE: \"?Viewer\"?", blocks["grafana"])
    assert '"3000:3000"' in blocks["grafana"]
    datasources = DATASOURCES.read_text(encoding="utf-8")
    (url,) = re.findall(r"^\s+url: (\S+)$", datasources, re.MULTILINE)
    assert url == "http://prometheus:9090"
    assert url.split("//")[1].split(":")[0] in blocks, "the datasource host is a service"
    assert re.search(rf"^\s+uid: {DATASOURCE_UID}$", datasources, re.MULTILINE)
    assert re.search(r"^\s+type: prometheus$", datasources, re.MULTILINE)
    assert re.search(r"^\s+type: file$", PROVIDERS.read_text(encoding="utf-8"), re.MULTILINE)


def test_the_yaml_files_parse() -> None:
    yaml = yaml_or_none()
    if yaml is None:
        pytest.skip("PyYAML is not installed: the text checks above stand in")
    documents = {
        path: yaml.safe_load(path.read_text(encoding="utf-8"))
        for path in (DATASOURCES, PROVIDERS, PROMETHEUS, COMPOSE)
    }
    (source,) = documents[DATASOURCES]["datasources"]
    assert (source["uid"], source["url"]) == (DATASOURCE_UID, "http://prometheus:9090")
    (provider,) = documents[PROVIDERS]["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    (job,) = documents[PROMETHEUS]["scrape_configs"]
    assert job["job_name"] == "tcp-multiplexer"
    assert job["static_configs"][0]["targets"] == ["multiplexer:9502"]
    compose = documents[COMPOSE]
    assert compose["services"]["multiplexer"]["build"] == {
        "context": "../..",
        "dockerfile": "packaging/Dockerfile",
    }
    assert set(compose["services"]) == {"multiplexer", "prometheus", "grafana"}
