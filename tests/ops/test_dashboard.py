"""``devkit dashboard``: the Grafana dashboard model, its data source file and the command.

The model is checked against the JSON Schemas of the grafana-foundation-sdk release the
``slo`` extra pins (vendored with their licence: ``vendor/grafana-foundation-sdk``), and
read back by that release's typed models. tests/integration/test_dashboard_prometheus.py
runs every query against a real Prometheus.
"""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
import tomllib
import urllib.parse
from dataclasses import fields
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from devkit import cli, conventions
from devkit.cli import dashboard as dashboard_command
from devkit.ops import dashboard as model_module
from devkit.ops.dashboard import (
    DashboardOptionError,
    DashboardOptions,
    dashboard,
    datasources,
    default_logs_query,
    expressions,
    render_datasources,
    uid_for,
)
from devkit.ops.rules import Series, alert_windows
from devkit.ops.slo import SLOFile, parse

jsonschema = pytest.importorskip("jsonschema")
yaml = pytest.importorskip("yaml")
pytest.importorskip("grafana_foundation_sdk")

ROOT = Path(__file__).resolve().parents[2]
VENDOR = Path(__file__).parent / "vendor" / "grafana-foundation-sdk"
#: The release the vendored schemas come from (vendor/grafana-foundation-sdk/README.md).
SCHEMA_RELEASE = "1769699379!11.6.0"
VARIABLE = re.compile(r"\$(\{\w+\}|\w+)")

SLO_DATA = {
    "service": "checkout",
    "slos": [
        {"name": "availability", "objective": 99.9, "sli": {"kind": "availability"}},
        {
            "name": "fast-items",
            "objective": 99,
            "window": "7d",
            "sli": {"kind": "latency", "threshold_s": 0.3, "routes": ["/items/{item_id}"]},
        },
    ],
}


@pytest.fixture
def options() -> DashboardOptions:
    return DashboardOptions(service="checkout")


@pytest.fixture
def model(options: DashboardOptions) -> dict[str, Any]:
    return dashboard(options)


@pytest.fixture
def slo_file() -> SLOFile:
    return parse(SLO_DATA, "slo.yaml")


def panels(model: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel but rows, rows' nested panels included."""
    out = []
    for panel in model["panels"]:
        out += [p for p in [panel, *panel.get("panels", [])] if p["type"] != "row"]
    return out


def panel(model: dict[str, Any], title: str) -> dict[str, Any]:
    (found,) = [p for p in panels(model) if p["title"] == title]
    return found


def variable(model: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [v for v in model["templating"]["list"] if v["name"] == name]
    return found


# -- the dashboard model ---------------------------------------------------------------------


def test_identity_schema_version_and_tags(model: dict[str, Any]) -> None:
    assert model["schemaVersion"] == 42
    assert model["uid"] == "devkit-checkout"
    assert model["tags"] == ["devkit"]
    assert "checkout" in model["title"]


def test_uid_is_stable_valid_and_distinct_per_service() -> None:
    names = ["checkout", "Checkout", "check.out", "check_out", "a" * 60, "b" * 60, "✓"]
    uids = [uid_for(name) for name in names]
    assert uids == [uid_for(name) for name in names]
    assert len(set(uids)) == len(names)
    assert all(re.fullmatch(r"devkit-[a-z0-9_-]+", uid) and len(uid) <= 40 for uid in uids)
    # Generated twice, the same JSON: importing it again replaces the dashboard.
    assert dashboard(DashboardOptions("checkout")) == dashboard(DashboardOptions("checkout"))


def test_variables_data_source_service_job_instance_route(model: dict[str, Any]) -> None:
    names = [v["name"] for v in model["templating"]["list"]]
    assert names == ["datasource", "service", "job", "instance", "route"]
    source = variable(model, "datasource")
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    assert source["current"]["value"] == "prometheus"

    service = variable(model, "service")
    assert service["query"] == f"label_values({conventions.BUILD_INFO}, service)"
    assert service["current"]["value"] == "checkout"
    assert (
        variable(model, "job")["query"]
        == f'label_values({conventions.BUILD_INFO}{{service="$service"}}, job)'
    )
    route = variable(model, "route")
    assert route["query"].startswith(f"label_values({conventions.REQUESTS_TOTAL}{{")
    assert route["query"].endswith(", route)")
    assert (route["multi"], route["includeAll"], route["allValue"]) == (True, True, ".*")
    for query in model["templating"]["list"][1:]:
        assert query["type"] == "query"
        assert query["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_every_panel_queries_the_chosen_data_source(model: dict[str, Any]) -> None:
    source = {"type": "prometheus", "uid": "${datasource}"}
    ids = [p["id"] for p in model["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels(model):
        assert p["datasource"] == source, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)) and all(refs), p["title"]
        assert all(t["datasource"] == source for t in p["targets"]), p["title"]


def test_red_panels(model: dict[str, Any]) -> None:
    (rate,) = panel(model, "Requests by route")["targets"]
    assert rate["expr"].startswith(f"sum by (route) (rate({conventions.REQUESTS_TOTAL}{{")
    assert 'route=~"$route"' in rate["expr"] and "[$__rate_interval]" in rate["expr"]
    assert rate["legendFormat"] == "{{route}}"

    (ratio,) = panel(model, "Error ratio by route")["targets"]
    errors, _, total = ratio["expr"].partition(
        f" or 0 * sum by (route) (rate({conventions.REQUESTS_TOTAL}"
    )
    # Routes without an error yet have no errors series: "or 0 * requests" makes them 0.
    assert errors.startswith(f"(sum by (route) (rate({conventions.ERRORS_TOTAL}{{")
    assert total.endswith(f"[$__rate_interval]))) / {rate['expr']}")
    assert panel(model, "Error ratio by route")["fieldConfig"]["defaults"]["unit"] == "percentunit"


def test_latency_panels_are_quantiles_per_route_with_exemplars(model: dict[str, Any]) -> None:
    for q, name in ((0.5, "50"), (0.95, "95"), (0.99, "99")):
        p = panel(model, f"Latency p{name} by route")
        (target,) = p["targets"]
        assert target["exemplar"] is True
        assert target["expr"].startswith(
            f"histogram_quantile({q}, sum by (le, route) (rate({conventions.DURATION}_bucket{{"
        )
        assert p["fieldConfig"]["defaults"]["unit"] == "s"
    latency = {f"Latency p{q} by route" for q in ("50", "95", "99")}
    others = [t for p in panels(model) if p["title"] not in latency for t in p["targets"]]
    assert others and not any(t.get("exemplar") for t in others)


def test_saturation_and_devkit_panels_use_the_runtime_names(model: dict[str, Any]) -> None:
    def expr(title: str) -> str:
        return " ".join(t["expr"] for t in panel(model, title)["targets"])

    assert conventions.IN_PROGRESS + "{" in expr("Requests in progress")
    assert f"{conventions.LOOP_LAG}_bucket{{" in expr("Event-loop lag")
    assert f"sum by (decision) (rate({conventions.TRACES_SAMPLED_TOTAL}{{" in expr(
        "Tail-sampling decisions"
    )
    assert f"sum by (reason) (rate({conventions.SPANS_DROPPED_TOTAL}{{" in expr("Spans dropped")
    assert f"(rate({conventions.INTERNAL_ERRORS_TOTAL}{{" in expr("Internal errors")
    for _, promql in expressions(model):
        # Every selector is narrowed to the chosen job and instances.
        for selector in re.findall(r"\b[a-z_:]+\{[^}]*\}", promql.replace("{{", "")):
            assert 'job=~"$job"' in selector and 'instance=~"$instance"' in selector, promql


def test_only_the_dashboards_variables_are_used(model: dict[str, Any]) -> None:
    declared = {v["name"] for v in model["templating"]["list"]} | {"__rate_interval"}
    for _, promql in expressions(model):
        used = {name.strip("{}") for name in VARIABLE.findall(promql)}
        assert used <= declared, promql


def test_slo_rows_use_the_recorded_series(options: DashboardOptions, slo_file: SLOFile) -> None:
    model = dashboard(options, slo_file)
    rows = [p["title"] for p in model["panels"] if p["type"] == "row"]
    assert rows[-2:] == ["SLO availability: 99.9 % over 30d", "SLO fast-items: 99 % over 7d"]
    promql = [e for _, e in expressions(model) if "slo=" in e]
    labels = '{slo="fast-items",service="checkout"}'
    assert f"1 - {Series.error_ratio_window}{labels}" in promql
    assert f"{Series.objective}{labels}" in promql
    assert f"{Series.budget_remaining}{labels}" in promql
    for window in alert_windows():
        assert f"{Series.burn_rate(window)}{labels}" in promql
    assert len(promql) == 2 * (3 + len(alert_windows()))
    # Without the SLO file the same dashboard has no SLO row.
    assert not [e for _, e in expressions(dashboard(options)) if "slo=" in e]


def test_slo_file_without_a_service_selects_by_slo_only(options: DashboardOptions) -> None:
    slo_file = parse({**SLO_DATA, "service": None} | {"slos": SLO_DATA["slos"][:1]})
    promql = [e for _, e in expressions(dashboard(options, slo_file)) if "slo=" in e]
    assert f'{Series.budget_remaining}{{slo="availability"}}' in promql


# -- the schema -------------------------------------------------------------------------------


def _schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((VENDOR / f"{name}.jsonschema.json").read_text())
    return loaded


def schema_errors(model: dict[str, Any]) -> list[str]:
    """Where ``model`` breaks the dashboard schema, or a panel's options, field config or
    queries break their plugin's schema."""
    errors = [
        f"{e.json_path}: {e.message}"
        for e in jsonschema.Draft7Validator(_schema("dashboard")).iter_errors(model)
    ]
    query = jsonschema.Draft7Validator(_schema("prometheus"))
    for p in panels(model):
        plugin = _schema(p["type"])["definitions"]
        parts = {"Options": p.get("options", {})}
        if "FieldConfig" in plugin:
            parts["FieldConfig"] = p["fieldConfig"]["defaults"].get("custom", {})
        for definition, value in parts.items():
            part = jsonschema.Draft7Validator(
                {"$ref": f"#/definitions/{definition}", "definitions": plugin}
            )
            errors += [f"{p['title']}: {definition}: {e.message}" for e in part.iter_errors(value)]
        for target in p["targets"]:
            errors += [f"{p['title']}: query: {e.message}" for e in query.iter_errors(target)]
    return errors


def test_the_model_validates_against_the_pinned_sdk_schema(
    options: DashboardOptions, slo_file: SLOFile
) -> None:
    model = dashboard(options, slo_file)
    assert {p["type"] for p in panels(model)} == {"timeseries", "stat"}
    assert schema_errors(model) == []


def test_the_schema_check_catches_a_broken_model(model: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(model))
    broken["panels"][1]["targets"][0]["exemplar"] = "yes"
    broken["templating"]["list"][4]["refresh"] = 7
    panel(broken, "Requests by route")["options"]["legend"]["placement"] = "top"
    found = "\n".join(schema_errors(broken))
    assert "'yes' is not of type 'boolean'" in found
    assert "7 is not one of" in found
    assert "'top' is not one of" in found


def test_the_vendored_schema_is_the_installed_releases() -> None:
    """Moving the pin means vendoring the new release's schema (see its README)."""
    assert version("grafana-foundation-sdk") == SCHEMA_RELEASE
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert f"grafana-foundation-sdk=={SCHEMA_RELEASE}" in extras["slo"]
    assert SCHEMA_RELEASE in (VENDOR / "README.md").read_text()
    assert "Apache License" in (VENDOR / "LICENSE").read_text()


def test_the_sdks_typed_models_read_the_model_back(
    options: DashboardOptions, slo_file: SLOFile
) -> None:
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    model = dashboard(options, slo_file)
    assert json.loads(JSONEncoder().encode(Dashboard.from_json(model))) == model


# -- the data source file ---------------------------------------------------------------------


def provisioned(options: DashboardOptions) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(render_datasources(options))
    return loaded


def explored(url: str) -> dict[str, Any]:
    """The Explore pane a provisioned link opens, once Grafana has read ``$$`` as ``$``."""
    path, _, query = url.replace("$$", "$").partition("?")
    assert path == "/explore"
    params = urllib.parse.parse_qs(query)
    assert params["schemaVersion"] == ["1"]
    (pane,) = json.loads(params["panes"][0]).values()
    loaded: dict[str, Any] = pane
    return loaded


def test_datasource_file_links_trace_id_to_the_trace_and_its_logs(
    options: DashboardOptions,
) -> None:
    data = provisioned(options)
    assert data["apiVersion"] == 1
    (source,) = data["datasources"]
    assert (source["type"], source["uid"], source["name"]) == (
        "prometheus",
        "prometheus",
        "Prometheus",
    )
    assert source["jsonData"]["timeInterval"] == "15s"
    traces, logs = source["jsonData"]["exemplarTraceIdDestinations"]
    assert traces["name"] == logs["name"] == "trace_id"
    assert traces["datasourceUid"] == "tempo"
    assert "url" not in traces and "datasourceUid" not in logs

    # Grafana expands $NAME in provisioning files: $$ is its escape for a literal $.
    url = logs["url"]
    assert "$${__value.raw}" in url and re.search(r"(?<!\$)\$\{", url) is None
    pane = explored(url)
    assert pane["datasource"] == "loki"
    (logs_query,) = pane["queries"]
    assert logs_query["datasource"] == {"type": "loki", "uid": "loki"}
    assert logs_query["expr"] == default_logs_query("checkout")
    assert logs_query["expr"] == (
        '{service_name="checkout"} |= "${__value.raw}" | json | trace_id="${__value.raw}"'
    )
    assert pane["range"] == {"from": "${__from}", "to": "${__to}"}


def test_the_dashboard_selects_the_data_source_the_file_provisions() -> None:
    options = DashboardOptions(
        service="checkout",
        prometheus_uid="prom-eu",
        prometheus_name="Prometheus EU",
        traces_uid="traces",
        logs_uid="logs",
        logs_query='{app="checkout"} | json | trace_id="${__value.raw}"',
        scrape_interval="30s",
    )
    (source,) = provisioned(options)["datasources"]
    current = variable(dashboard(options), "datasource")["current"]
    assert (current["value"], current["text"]) == (source["uid"], source["name"])
    traces, logs = source["jsonData"]["exemplarTraceIdDestinations"]
    assert traces["datasourceUid"] == "traces"
    assert explored(logs["url"])["queries"][0]["expr"] == options.logs_query
    assert source["jsonData"]["timeInterval"] == "30s"


@pytest.mark.parametrize(("empty", "left"), [("traces_uid", "url"), ("logs_uid", "datasourceUid")])
def test_an_empty_uid_leaves_its_destination_out(empty: str, left: str) -> None:
    (source,) = datasources(DashboardOptions("checkout", **{empty: ""}))["datasources"]
    (destination,) = source["jsonData"]["exemplarTraceIdDestinations"]
    assert left in destination
    none = DashboardOptions("checkout", traces_uid="", logs_uid="")
    assert "exemplarTraceIdDestinations" not in datasources(none)["datasources"][0]["jsonData"]


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("service", " ", "a service name"),
        ("prometheus_uid", "", "a Grafana uid"),
        ("prometheus_uid", "has space", "a Grafana uid"),
        ("traces_uid", "x" * 41, "a Grafana uid"),
        ("prometheus_url", "prometheus:9090", "an http(s) URL"),
        ("scrape_interval", "15", "a duration"),
        ("logs_query", '{app="x"}', "${__value.raw}"),
    ],
)
def test_bad_options_name_the_option(field: str, value: str, expected: str) -> None:
    kwargs: dict[str, Any] = {"service": "checkout", field: value}
    with pytest.raises(DashboardOptionError) as caught:
        DashboardOptions(**kwargs)
    assert caught.value.option == field
    assert expected in caught.value.problem and repr(value) in caught.value.problem


# -- the command ------------------------------------------------------------------------------


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(["dashboard", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_command_prints_the_dashboard(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["--service", "checkout"], capsys)
    assert (code, err) == (0, "")
    assert json.loads(out) == dashboard(DashboardOptions("checkout"))


def test_command_service_defaults_to_the_environments(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "payments")
    code, out, _ = run([], capsys)
    assert code == 0 and json.loads(out)["uid"] == "devkit-payments"


def test_command_with_slo_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "slo.yaml"
    path.write_text(yaml.safe_dump(SLO_DATA))
    code, out, err = run(["--slo", str(path)], capsys)
    assert (code, err) == (0, "")
    model = json.loads(out)
    assert model == dashboard(DashboardOptions("checkout"), parse(SLO_DATA))


def test_command_prints_the_datasource_file(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--datasources", "--service", "checkout", "--traces-uid", "t", "--logs-uid", ""]
    code, out, err = run(argv, capsys)
    assert (code, err) == (0, "")
    assert out == render_datasources(DashboardOptions("checkout", traces_uid="t", logs_uid=""))
    assert out.startswith("# Grafana data source provisioning")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--prometheus-uid", "a b"], "--prometheus-uid: 'a b' is invalid"),
        (["--scrape-interval", "soon"], "--scrape-interval: 'soon' is invalid"),
        (["--logs-query", "{a=1}"], "--logs-query: '{a=1}' is invalid"),
        (["--slo", "missing.yaml"], "missing.yaml: cannot be read"),
    ],
)
def test_command_bad_value_exits_2_with_one_message(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(["--service", "checkout", *argv], capsys)
    assert (code, out) == (2, "")
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err


def test_command_bad_slo_file_names_the_file_and_field(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "slo.yaml"
    path.write_text("slos:\n  - name: x\n    objective: 100\n    sli: {kind: availability}\n")
    code, out, err = run(["--slo", str(path)], capsys)
    assert (code, out) == (2, "")
    assert err.startswith(f"error: {path}: slos[0] (x): objective: 100 is invalid")
    assert err.count("\n") == 1


def test_command_bad_environment_exits_2_naming_the_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEVKIT_SLOW_THRESHOLD_MS", "slow")
    code, _, err = run([], capsys)
    assert code == 2 and err.startswith("error: DEVKIT_SLOW_THRESHOLD_MS=")


def test_command_unknown_flag_is_argparses_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["dashboard", "--colour", "blue"])
    assert caught.value.code == 2
    assert "unrecognized arguments: --colour blue" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["grafana_foundation_sdk", "yaml"])
def test_command_without_the_extra_says_what_to_install(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    code, out, err = run(["--service", "checkout"], capsys)
    assert (code, out) == (2, "")
    assert (
        err == f"error: devkit dashboard needs {module}: pip install 'devkit-observability[slo]'\n"
    )


def test_command_help_states_the_models_defaults() -> None:
    """--help repeats DashboardOptions' defaults (the command imports nothing until it
    runs): they must not drift."""
    helps = {flag: text for flag, _, text in dashboard_command._OPTIONS}
    for option in fields(DashboardOptions):
        if option.name == "service":
            continue
        flag = "--" + option.name.replace("_", "-")
        shown = option.default or default_logs_query("SERVICE")
        assert f"(default: {shown}" in helps[flag], flag


def test_public_names() -> None:
    assert sorted(dashboard_command.__all__) == ["add_parser", "run"]
    # What the model module defines is public only through __all__ (the rule of
    # tests/test_public_api.py).
    defined = {
        name
        for name, value in vars(model_module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == model_module.__name__
    }
    assert defined <= set(model_module.__all__)
    assert all(hasattr(model_module, name) for name in model_module.__all__)


def test_importing_devkit_does_not_import_the_sdk() -> None:
    code = (
        "import sys, devkit, devkit.cli, devkit.ops.dashboard\n"
        "assert 'grafana_foundation_sdk' not in sys.modules, 'imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
