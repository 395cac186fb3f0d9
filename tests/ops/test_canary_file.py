"""The gates file: the documented example, the defaults, and one message per mistake naming
the file, the item, the field and what is expected; the sides and their PromQL."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_canary_rules import run_promtool

from devkit.ops import canary
from devkit.ops.canary import CanaryError, CanaryFileError, Side

DOCS = Path(__file__).parents[2] / "docs" / "canary.md"


def _documented_file() -> str:
    """The gates file docs/canary.md shows in full."""
    text = DOCS.read_text()
    match = re.search(r"```yaml\n(# canary\.yaml\n.*?)```", text, re.S)
    assert match, "docs/canary.md shows a gates file starting with '# canary.yaml'"
    return match.group(1)


def test_the_documented_gates_file_is_valid_and_complete(tmp_path: Path) -> None:
    path = tmp_path / "canary.yaml"
    path.write_text(_documented_file())
    config = canary.load(path)
    assert config.name == "checkout" and config.source == str(path)
    names = [g.name for g in config.gates]
    assert names == [*canary.GATES, "conversion"]
    data = yaml.safe_load(path.read_text())
    # Every field the parser accepts appears in the documented example.
    assert set(data) == {"name", "min_requests", "statistics", "gates", "custom", "rollback"}
    assert set(data["gates"]) == set(canary.GATES)
    assert set(data["rollback"]) >= set(canary.TRIGGERS)


def test_no_file_is_the_documented_defaults() -> None:
    config = canary.defaults()
    assert [(g.name, g.window, g.rule) for g in config.gates] == [
        ("error_rate", "15m", "canary <= baseline + 0.5 pp"),
        ("latency_p99", "15m", "canary <= baseline x 1.2"),
        ("latency_p50", "15m", "canary <= baseline x 1.1"),
        ("cpu", "10m", "canary <= baseline x 1.5"),
        ("memory", "10m", "canary <= baseline x 1.3"),
    ]
    assert config.min_requests == 100 and config.name == "canary"
    assert config.statistics == canary.Statistics(60.0, 0.05, 5, True)
    triggers = {t.name: (t.limit, t.for_s, t.within_s) for t in config.rollback.triggers}
    assert triggers == {
        "error_rate": (0.05, 120.0, 0.0),
        "latency_p99": (3.0, 300.0, 0.0),
        "restarts": (3.0, 0.0, 300.0),
        "unready": (0.5, 60.0, 0.0),
        "memory": (0.9, 180.0, 0.0),
        "circuit_breaker": (0.0, 60.0, 0.0),
    }
    assert canary.parse(None, "<defaults>") == config


def test_fields_move_thresholds_windows_and_turn_gates_off() -> None:
    config = canary.parse(
        {
            "gates": {
                "error_rate": {"max_increase": 1, "window": "5m"},
                "cpu": {"enabled": False},
                "latency_p99": {"max_ratio": 1.5},
            },
            "rollback": {"memory": {"enabled": False}, "restarts": {"count": 5, "within": "10m"}},
            "min_requests": 0,
        }
    )
    gates = {g.name: g for g in config.gates}
    assert "cpu" not in gates and gates["error_rate"].limit == pytest.approx(0.01)
    assert gates["error_rate"].window == "5m" and gates["latency_p99"].limit == 1.5
    assert gates["latency_p99"].window == "15m"
    assert config.rollback.get("memory") is None
    restarts = config.rollback.get("restarts")
    assert restarts is not None and (restarts.limit, restarts.within_s) == (5.0, 600.0)


CUSTOM = {"name": "conversion", "query": "sum(x{$selector})", "direction": "increase"}


@pytest.mark.parametrize(
    ("data", "where", "message"),
    [
        ([], "top level", "[] is invalid: expected a mapping"),
        ({"gate": {}}, "gate", "unknown field; expected one of custom, gates, min_requests"),
        ({"name": "Checkout"}, "name", "'Checkout' is invalid: expected lower-case letters"),
        ({"min_requests": -1}, "min_requests", "-1 is invalid: expected a number, 0 or more"),
        ({"gates": {"errors": {}}}, "gates: errors", "unknown field; expected one of cpu,"),
        (
            {"gates": {"latency_p99": {"max_increase": 1}}},
            "gates.latency_p99: max_increase",
            "unknown field; expected one of enabled, max_ratio, window",
        ),
        (
            {"gates": {"latency_p99": {"max_ratio": 0.9}}},
            "gates.latency_p99.max_ratio",
            "0.9 is invalid: expected a number, 1 or more",
        ),
        (
            {"gates": {"cpu": {"window": "ten minutes"}}},
            "gates.cpu.window",
            "'ten minutes' is invalid: expected a duration such as 30s, 5m or 1h",
        ),
        (
            {"gates": {"cpu": {"enabled": "no"}}},
            "gates.cpu.enabled",
            "'no' is invalid: expected true or false",
        ),
        (
            {"statistics": {"significance": 0.9}},
            "statistics.significance",
            "0.9 is invalid: expected a number, above 0, at most 0.5",
        ),
        (
            {"statistics": {"interval": "20m"}},
            "statistics.interval",
            "20m is longer than the error_rate gate's window 15m",
        ),
        ({"custom": {}}, "custom", "{} is invalid: expected a list of custom gates"),
        (
            {"custom": [{**CUSTOM, "tolerance": 5}, {**CUSTOM, "tolerance": 5}]},
            "custom[1] (conversion): name",
            "already used",
        ),
        (
            {"custom": [{**CUSTOM, "name": "cpu", "tolerance": 5}]},
            "custom[0] (cpu): name",
            "already used",
        ),
        (
            {"custom": [{**CUSTOM, "tolerance": 5, "direction": "up"}]},
            "custom[0] (conversion): direction",
            "'up' is invalid: expected increase (a rise is a regression",
        ),
        (
            {"custom": [{**CUSTOM, "tolerance": 500}]},
            "custom[0] (conversion): tolerance",
            "500 is invalid: expected a number, 0 or more, at most 100",
        ),
        (
            {"custom": [{**CUSTOM, "tolerance": 5, "query": "sum(x)"}]},
            "custom[0] (conversion): query",
            "uses neither $selector nor $join",
        ),
        (
            {"custom": [{**CUSTOM, "tolerance": 5, "query": "sum(x{$selector}[$range])"}]},
            "custom[0] (conversion): query",
            "unknown placeholder $range; expected $window, $selector, $join",
        ),
        (
            {"custom": [{**CUSTOM, "tolerance": 5, "query": "sum(x{$selector}) * $ 2"}]},
            "custom[0] (conversion): query",
            "expected $ only before a placeholder",
        ),
        (
            {"rollback": {"error_rate": {"above": 100}}},
            "rollback.error_rate.above",
            "100 is invalid: expected a number, 0 or more, under 100",
        ),
        (
            {"rollback": {"restarts": {"for": "1m"}}},
            "rollback.restarts: for",
            "unknown field; expected one of count, enabled, within",
        ),
        (
            {"rollback": {"labels": {"severity": "page"}}},
            "rollback.labels",
            "'severity' is invalid: expected label names",
        ),
    ],
)
def test_each_mistake_names_the_file_item_and_field(data: Any, where: str, message: str) -> None:
    with pytest.raises(CanaryFileError) as caught:
        canary.parse(data, "canary.yaml")
    assert str(caught.value).startswith(f"canary.yaml: {where}"), str(caught.value)
    assert message in str(caught.value)


def test_a_yaml_mistake_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "canary.yaml"
    path.write_text("gates:\n  cpu: [1,\n")
    with pytest.raises(CanaryFileError, match=r"canary\.yaml: line 3, column 1: not valid YAML"):
        canary.load(path)


def test_a_json_file_needs_no_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "yaml", None)
    path = tmp_path / "canary.json"
    path.write_text('{"min_requests": 10}')
    assert canary.load(path).min_requests == 10
    (tmp_path / "canary.yaml").write_text("min_requests: 10\n")
    with pytest.raises(CanaryFileError, match=r"pip install 'devkit-observability\[canary\]'"):
        canary.load(tmp_path / "canary.yaml")


# -- sides and their PromQL --------------------------------------------------------------------


def test_build_info_labels_are_joined_and_target_labels_selected() -> None:
    side = Side.parse("canary", 'version="1.4.0", namespace="shop", environment=~"prod|eu"')
    assert [m.name for m in side.target] == ["namespace"]
    assert [m.name for m in side.build] == ["version", "environment"]
    assert side.select("up") == 'up{namespace="shop"}'
    assert side.join == (
        "* on(job, instance) group_left() "
        'devkit_build_info{namespace="shop",version="1.4.0",environment=~"prod|eu"}'
    )
    target_only = Side.parse("canary", 'track="canary"')
    assert target_only.join == "" and target_only.per_target("rate(x[1m])") == "rate(x[1m])"


def test_every_gate_reads_the_side_inside_its_aggregation() -> None:
    by_version = Side.parse("canary", 'version="1.4.0"')
    by_target = Side.parse("canary", 'track="canary"')
    for gate in canary.defaults().gates:
        joined = canary.value_query(gate, by_version)
        selected = canary.value_query(gate, by_target)
        # Every selector of the target kind carries the matcher, and the join follows
        # each per-target expression inside its aggregation.
        assert selected.count('track="canary"') == selected.count("[")
        assert joined.count('devkit_build_info{version="1.4.0"}') == joined.count("[")
        assert "devkit_build_info" not in selected
    errors = canary.value_query(canary.defaults().gates[0], by_version)
    assert errors.startswith("(sum(rate(http_requests_errors_total[15m]) * on(job, instance)")


def test_a_custom_query_with_build_info_sides_needs_join() -> None:
    config = canary.parse(
        {"custom": [{**CUSTOM, "tolerance": 5, "query": "sum(rate(x{$selector}[$window]))"}]},
        "canary.yaml",
    )
    gate = config.gates[-1]
    assert canary.value_query(gate, Side.parse("canary", 'track="c"')) == (
        'sum(rate(x{track="c"}[30m]))'
    )
    with pytest.raises(CanaryFileError) as caught:
        canary.value_query(gate, Side.parse("canary", 'version="1.4.0"'))
    assert str(caught.value).startswith("canary.yaml: custom[0] (conversion): query: --canary")
    assert "put $join after each per-target expression" in str(caught.value)


def test_the_margin_holds_both_sides_queries_and_the_guards() -> None:
    baseline, canary_side = Side.parse("baseline", 'v="1"'), Side.parse("canary", 'v="2"')
    gate = canary.defaults().gates[1]  # p99, ratio 1.2
    margin = canary.margin_query(gate, baseline, canary_side, 100)
    b, c = canary.value_query(gate, baseline), canary.value_query(gate, canary_side)
    assert margin.startswith(f"({c}) - on() (({b}) * 1.2)\n")
    assert f"and on() ({canary.requests_query(baseline, '15m')} >= 100)" in margin
    assert f"and on() ({canary.requests_query(canary_side, '15m')} >= 100)" in margin


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each expression (as a recording rule), both side kinds."""
    config = canary.parse(
        {
            "custom": [
                {
                    **CUSTOM,
                    "tolerance": 5,
                    "query": "sum(rate(x{$selector}[$window]) $join)"
                    " / sum(rate(y{$selector}[$window]) $join)",
                }
            ]
        }
    )
    rules = []
    for kind, (b, c) in {
        "build": ('version="1.3.0"', 'version="1.4.0"'),
        "target": ('track="stable", job="shop"', 'track="canary", job="shop"'),
        "both": ('version="1.3.0", job="shop"', 'version="1.4.0", job="shop"'),
    }.items():
        baseline, canary_side = Side.parse("baseline", b), Side.parse("canary", c)
        for gate in config.gates:
            for expr in (
                canary.value_query(gate, canary_side),
                canary.value_query(gate, canary_side, "1m"),
                canary.requests_query(canary_side, gate.window),
                canary.margin_query(gate, baseline, canary_side, 100),
            ):
                rules.append({"record": f"devkit:{kind}:{gate.name}", "expr": expr})
    (tmp_path / "queries.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "q", "rules": rules}]})
    )
    status, printed = run_promtool(tmp_path, "check", "rules", "queries.yml")
    assert status == 0, printed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version=1.4.0", "--canary: 'version=1.4.0' is not a list of PromQL label matchers"),
        ('version=~"(1.4"', "--canary: version=~: '(1.4' is not a regular expression"),
        ('hash="{{args.canary-hash}}"', "holds a template, which only the rollout engine"),
    ],
)
def test_a_bad_side_names_its_flag(text: str, message: str) -> None:
    with pytest.raises(CanaryError) as caught:
        Side.parse("canary", text)
    assert message in str(caught.value)
    assert Side.parse("canary", 'hash="{{args.canary-hash}}"', templates=True).target
