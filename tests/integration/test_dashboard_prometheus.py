"""The generated dashboard against a real Prometheus scraping a devkit service.

uvicorn serves the FastAPI example (conftest's ``server``, every trace kept) and a
Prometheus scrapes it every second, with the rules ``devkit slo rules`` generates for an
SLO file loaded and evaluated every second. After some traffic with errors and slow
requests, every query of the dashboard (with ``--slo``) runs as Grafana would run it, its
variables set to concrete values: none fails, and the RED, SLO and variable queries
return data. The latency queries' exemplars carry the label the data source file links.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from servers import Prometheus, Server, poll
from servers import prometheus as start_prometheus
from test_prometheus import JOB, TRACE_ID, Traffic

from devkit.ops.dashboard import TRACE_ID_LABEL, DashboardOptions, dashboard, expressions
from devkit.ops.rules import render, rule_groups
from devkit.ops.slo import SLOFile, parse

pytestmark = pytest.mark.integration
pytest.importorskip("grafana_foundation_sdk")

SERVICE = "shop"  # conftest's server
SLO_FILE = {
    "service": SERVICE,
    "selector": f'job="{JOB}"',
    "slos": [
        {"name": "availability", "objective": 99.5, "sli": {"kind": "availability"}},
        {"name": "fast", "objective": 99, "sli": {"kind": "latency", "threshold_s": 0.3}},
    ],
}
# What Grafana puts in place of the variables: the job scraped, all instances and routes.
VALUES = {
    "service": SERVICE,
    "job": JOB,
    "instance": ".*",
    "route": ".*",
    "__rate_interval": "30s",
}
RED = {
    "Requests",
    "Error ratio",
    "Latency p99",
    "Requests by route",
    "Requests by status code",
    "Error ratio by route",
    "Latency p50 by route",
    "Latency p95 by route",
    "Latency p99 by route",
}
ROUTES = {"/items/{item_id}", "/boom", "/slow"}


def substitute(text: str) -> str:
    """``text`` with the dashboard's variables replaced by :data:`VALUES`."""
    out = re.sub(r"\$\{?(\w+)\}?", lambda m: VALUES[m.group(1)], text)
    assert "$" not in out, out
    return out


@pytest.fixture(scope="module")
def slo_file() -> SLOFile:
    return parse(SLO_FILE, "slo.yaml")


@pytest.fixture(scope="module")
def model(slo_file: SLOFile) -> dict[str, Any]:
    return dashboard(DashboardOptions(SERVICE, scrape_interval="1s"), slo_file)


@pytest.fixture(scope="module")
def prometheus(
    tmp_path_factory: pytest.TempPathFactory, server: Server, slo_file: SLOFile
) -> Iterator[Prometheus]:
    tmp = tmp_path_factory.mktemp("prometheus-dashboard")
    rules = tmp / "slo-rules.yml"
    rules.write_text(render(rule_groups(slo_file)))
    with start_prometheus(tmp, {JOB: server.port}, [rules]) as prom:
        prom.wait_scraped(JOB)
        traffic = Traffic(server.url)
        traffic.drive(8.0)
        assert not traffic.failures and set(traffic.statuses) == {"/items", "/boom", "/slow"}
        yield prom


def over_last_minute(prometheus: Prometheus, endpoint: str, expr: str, **params: str) -> Any:
    """``endpoint`` of the API asked about ``expr`` over the last minute, as Grafana asks."""
    now = time.time()
    return prometheus.api(endpoint, query=expr, start=str(now - 60), end=str(now), **params)


def query_range(prometheus: Prometheus, expr: str) -> list[dict[str, Any]]:
    """``expr`` as Grafana's range query, one point a second."""
    data = over_last_minute(prometheus, "query_range", expr, step="1")
    assert data["resultType"] == "matrix", data
    return list(data["result"])


def last(series: dict[str, Any]) -> float:
    return float(series["values"][-1][1])


def test_the_slo_rules_load_and_evaluate(prometheus: Prometheus) -> None:
    groups = prometheus.api("rules")["groups"]
    assert len(groups) == 4, [g["name"] for g in groups]
    for group in groups:
        for rule in group["rules"]:
            assert rule["health"] in ("ok", "unknown") and not rule.get("lastError"), rule


def test_every_dashboard_query_runs(prometheus: Prometheus, model: dict[str, Any]) -> None:
    queries = list(expressions(model))
    assert len(queries) > 20
    for _, expr in queries:
        # An error (a parse error, a bad matcher) fails inside api(); no data is allowed
        # here for series that need an event first (drops, internal errors).
        query_range(prometheus, substitute(expr))


def test_red_queries_return_data(prometheus: Prometheus, model: dict[str, Any]) -> None:
    red = [(title, substitute(expr)) for title, expr in expressions(model) if title in RED]
    assert {title for title, _ in red} == RED
    for title, expr in red:
        result = poll(lambda e=expr: query_range(prometheus, e), bool)
        assert result, f"{title}: no data for {expr}"
        assert all(math.isfinite(last(s)) for s in result), (title, result)
        if title.endswith("by route"):
            assert {s["metric"]["route"] for s in result} >= ROUTES, (title, result)

    def by_route(title: str) -> dict[str, float]:
        (expr,) = [e for t, e in red if t == title]
        return {s["metric"]["route"]: last(s) for s in query_range(prometheus, expr)}

    # /boom always fails; the other routes have no errors series at all and read 0.
    ratios = by_route("Error ratio by route")
    assert {route: ratios[route] for route in ROUTES} == {
        "/boom": 1.0,
        "/items/{item_id}": 0.0,
        "/slow": 0.0,
    }
    assert by_route("Latency p50 by route")["/slow"] > 0.3


def test_slo_queries_return_data(prometheus: Prometheus, model: dict[str, Any]) -> None:
    slo = [(title, substitute(expr)) for title, expr in expressions(model) if "slo=" in expr]
    assert len(slo) == 2 * 10
    for title, expr in slo:
        result = poll(lambda e=expr: query_range(prometheus, e), bool)
        assert len(result) == 1, f"{title}: {expr} -> {result}"
    budget = [e for t, e in slo if t == "Error budget left" and "availability" in e]
    # A quarter of the requests fail against a 0.5 % budget: it is overspent.
    assert last(query_range(prometheus, budget[0])[0]) < 0


def test_variable_queries_list_the_service(prometheus: Prometheus, model: dict[str, Any]) -> None:
    values = {}
    for variable in model["templating"]["list"]:
        if variable["type"] != "query":
            continue
        # label_values(SELECTOR, LABEL) is Grafana's: the series API answers it.
        found = re.fullmatch(r"label_values\((.+), (\w+)\)", substitute(variable["query"]))
        assert found, variable["query"]
        selector, label = found.groups()
        values[variable["name"]] = set(
            prometheus.api(f"label/{label}/values", **{"match[]": selector})
        )
    assert values["service"] == {SERVICE}
    assert values["job"] == {JOB}
    assert len(values["instance"]) == 1
    assert values["route"] >= ROUTES


def test_latency_exemplars_carry_the_linked_label(
    prometheus: Prometheus, model: dict[str, Any]
) -> None:
    """Grafana asks query_exemplars with the query of a target that has exemplars on; the
    data source file links the label named ``trace_id`` to the trace."""
    exemplar_queries = [
        substitute(target["expr"])
        for panel in model["panels"]
        for target in panel.get("targets", [])
        if target.get("exemplar")
    ]
    assert len(exemplar_queries) == 3
    for expr in exemplar_queries:
        series = poll(lambda e=expr: over_last_minute(prometheus, "query_exemplars", e), bool)
        found = [exemplar for one in series for exemplar in one["exemplars"]]
        assert found, expr
        assert all(TRACE_ID.fullmatch(e["labels"][TRACE_ID_LABEL]) for e in found)
