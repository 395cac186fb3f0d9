"""``devkit canary export``: the Argo Rollouts ``AnalysisTemplate`` and the Flagger
``MetricTemplate`` objects validate against the engines' published CRD schemas (vendored
with their licences: ``vendor/argo-rollouts``, ``vendor/flagger``), with unknown fields
rejected, and carry the judge's own PromQL."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from devkit.cli import main
from devkit.ops import canary, canary_export
from devkit.ops.canary import Side
from devkit.ops.canary_judge import judge
from devkit.ops.prometheus import Sample, SeriesRange

jsonschema = pytest.importorskip("jsonschema")

VENDOR = Path(__file__).parent / "vendor"
SIDES = {
    "version": ('version="1.3.0"', 'version="1.4.0"'),
    "target labels": ('track="stable"', 'track="canary"'),
    "argo arguments": (
        'rollouts_pod_template_hash="{{args.stable-hash}}"',
        'rollouts_pod_template_hash="{{args.canary-hash}}"',
    ),
}
GATES = {
    "name": "checkout",
    "min_requests": 200,
    "custom": [
        {
            "name": "conversion",
            "query": "sum(rate(orders_total{$selector}[$window]) $join)"
            " / sum(rate(http_requests_total{$selector}[$window]) $join)",
            "direction": "decrease",
            "tolerance": 5,
        }
    ],
}
#: Kubernetes object names: DNS-1123 subdomains.
NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _strict(schema: Any) -> Any:
    """The schema with unknown fields rejected where it lists the fields, as
    ``kubectl apply --validate=strict`` does (the API server would prune them)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def _crd(path: str, kind: str) -> tuple[str, dict[str, Any]]:
    """(apiVersion, strict schema) of ``kind`` in the vendored CRD file ``path``."""
    for doc in yaml.safe_load_all((VENDOR / path).read_text()):
        if doc["spec"]["names"]["kind"] == kind:
            version = next(v for v in doc["spec"]["versions"] if v.get("storage", True))
            api = f"{doc['spec']['group']}/{version['name']}"
            return api, _strict(version["schema"]["openAPIV3Schema"])
    raise AssertionError(f"no {kind} in {path}")


def _validate(obj: dict[str, Any], path: str) -> None:
    api, schema = _crd(path, obj["kind"])
    assert obj["apiVersion"] == api
    assert NAME.fullmatch(obj["metadata"]["name"]), obj["metadata"]["name"]
    errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(obj)]
    assert errors == [], errors


def _sides(kind: str) -> tuple[Side, Side]:
    baseline, canary_side = SIDES[kind]
    return (
        Side.parse("baseline", baseline, templates=True),
        Side.parse("canary", canary_side, templates=True),
    )


@pytest.mark.parametrize("kind", list(SIDES))
@pytest.mark.parametrize("alerts", [False, True], ids=["gates", "gates and alerts"])
def test_the_argo_template_validates_against_the_crd(kind: str, alerts: bool) -> None:
    config = canary.parse(GATES)
    template = canary_export.analysis_template(
        config, *_sides(kind), "http://prometheus:9090", with_alerts=alerts
    )
    _validate(template, "argo-rollouts/analysis-template-crd.yaml")
    metrics = template["spec"]["metrics"]
    expected = ["error-rate", "latency-p99", "latency-p50", "cpu", "memory", "conversion"]
    assert [m["name"] for m in metrics] == expected + (["rollback-alerts"] if alerts else [])
    for metric in metrics:
        assert metric["successCondition"].startswith("len(result) > 0 && ")
        assert metric["failureCondition"].startswith("len(result) > 0 && ")
    args = [a["name"] for a in template["spec"].get("args", [])]
    assert args == (["canary-hash", "stable-hash"] if kind == "argo arguments" else [])


def test_a_strict_schema_catches_a_misspelt_field() -> None:
    """The validation has teeth: an unknown field fails, as a wrong type does."""
    template = canary_export.analysis_template(
        canary.defaults(), *_sides("version"), "http://prometheus:9090"
    )
    template["spec"]["metrics"][0]["sucessCondition"] = "true"
    with pytest.raises(AssertionError, match="sucessCondition"):
        _validate(template, "argo-rollouts/analysis-template-crd.yaml")
    flagger = canary_export.metric_templates(canary.defaults(), *_sides("version"))[0]
    flagger["spec"]["provider"]["type"] = "prom"
    with pytest.raises(AssertionError, match="'prom' is not one of"):
        _validate(flagger, "flagger/crd.yaml")


@pytest.mark.parametrize("kind", list(SIDES))
def test_the_flagger_templates_validate_against_the_crds(kind: str) -> None:
    config = canary.parse(GATES)
    templates = canary_export.metric_templates(
        config, *_sides(kind), "http://prometheus.monitoring:9090", with_alerts=True
    )
    for template in templates:
        _validate(template, "flagger/crd.yaml")
    names = [t["metadata"]["name"] for t in templates]
    assert (
        names[0] == "devkit-checkout-error-rate" and names[-1] == "devkit-checkout-rollback-alerts"
    )
    # The Canary's analysis entries that use them, against the Canary CRD's schema.
    _, schema = _crd("flagger/crd.yaml", "Canary")
    items = schema["properties"]["spec"]["properties"]["analysis"]["properties"]["metrics"]
    analysis = canary_export.flagger_analysis(config, 60.0, with_alerts=True)
    assert list(jsonschema.Draft7Validator(items).iter_errors(analysis)) == []
    assert [a["templateRef"]["name"] for a in analysis] == names
    assert all(a["thresholdRange"] == {"max": 0} for a in analysis)


class Recorder:
    """A Prometheus whose every side served plenty and reads 1: the judge's queries kept."""

    url = "http://prometheus.test"

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        return [Sample({}, 1000.0 if expr.startswith("sum(increase(") else 1.0)]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[SeriesRange]:
        return [SeriesRange({}, [(start, 1.0)] * 10)]


@pytest.mark.parametrize("kind", ["version", "target labels"])
def test_the_exports_hold_the_judges_promql(kind: str) -> None:
    config = canary.parse(GATES)
    baseline, canary_side = _sides(kind)
    judgement = judge(config, baseline, canary_side, Recorder())
    argo = canary_export.analysis_template(config, baseline, canary_side, "http://p:9090")
    flagger = canary_export.metric_templates(config, baseline, canary_side)
    argo_queries = [m["provider"]["prometheus"]["query"] for m in argo["spec"]["metrics"]]
    flagger_queries = [t["spec"]["query"] for t in flagger]
    assert argo_queries == flagger_queries
    assert len(judgement.gates) == len(argo_queries) == 6
    for result, query in zip(judgement.gates, argo_queries, strict=True):
        gate = result.gate
        b, c = result.queries["baseline"], result.queries["canary"]
        # The canary's value against the threshold the baseline's sets, as the judge has it.
        bound = f"({b}) + 0.005" if gate.mode == "increase" else f"({b}) * {gate.limit:.12g}"
        head = f"({c}) - on() ({bound})" if gate.better == "lower" else f"({bound}) - on() ({c})"
        assert query.split("\n")[0] == head
        for side in (baseline, canary_side):
            guard = f"and on() ({canary.requests_query(side, gate.window)} >= 200)"
            assert guard in query


def _condition(text: str, result: list[float]) -> bool:
    """An Argo Rollouts condition (expr-lang) as it reads here: ``&&`` short-circuits."""
    return bool(eval(text.replace("&&", "and"), {"len": len, "result": result}))


@pytest.mark.parametrize(
    ("result", "phase"),
    [([], "Inconclusive"), ([-0.002], "Successful"), ([0.0], "Successful"), ([0.03], "Failed")],
    ids=["empty", "under", "at", "over"],
)
def test_argo_reads_an_empty_result_as_inconclusive(result: list[float], phase: str) -> None:
    """argo-rollouts' evaluate.EvaluateResult: failure first, then neither: Inconclusive."""
    template = canary_export.analysis_template(canary.defaults(), *_sides("version"), "http://p")
    metric = template["spec"]["metrics"][0]
    success = _condition(metric["successCondition"], result)
    failure = _condition(metric["failureCondition"], result)
    got = "Failed" if failure else "Successful" if success else "Inconclusive"
    assert got == phase


def test_the_export_command_writes_yaml_the_engines_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gates = tmp_path / "gates.yaml"
    gates.write_text(yaml.safe_dump(GATES))
    baseline, canary_side = SIDES["argo arguments"]
    argv = ["canary", "export", "--baseline", baseline, "--canary", canary_side]
    argv += ["--gates", str(gates)]
    assert main([*argv, "--format", "argo", "--prometheus", "http://prometheus:9090"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# Generated by devkit canary export from {gates}: baseline ")
    (template,) = list(yaml.safe_load_all(out))
    _validate(template, "argo-rollouts/analysis-template-crd.yaml")
    metric = template["spec"]["metrics"][0]
    assert (metric["interval"], metric["count"], metric["failureLimit"]) == ("1m", 5, 1)

    assert main([*argv, "--format", "flagger", "--interval", "30s", "--rollback-alerts"]) == 0
    out = capsys.readouterr().out
    templates = list(yaml.safe_load_all(out))
    assert len(templates) == 7
    for template in templates:
        _validate(template, "flagger/crd.yaml")
    comment = "\n".join(
        line.removeprefix("# ") for line in out.splitlines() if line.startswith("# ")
    )
    analysis = yaml.safe_load(comment.split("spec.analysis:\n", 1)[1])
    assert analysis["metrics"][0] == {
        "name": "error-rate",
        "templateRef": {"name": "devkit-checkout-error-rate"},
        "thresholdRange": {"max": 0},
        "interval": "30s",
    }

    assert main([*argv, "--format", "argo"]) == 2
    assert "error: --prometheus: Argo Rollouts needs the address" in capsys.readouterr().err
    assert main([*argv, "--format", "argo", "--prometheus", "http://p", "--count", "0"]) == 2
    assert "error: --count: 0 is too small" in capsys.readouterr().err
