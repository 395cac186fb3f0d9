"""The canary's gates for the engines that run rollouts: an Argo Rollouts
``AnalysisTemplate`` and Flagger ``MetricTemplate`` objects.

Both engines judge one query against a fixed number, so each gate is exported as its
margin (:func:`devkit.ops.canary.margin_query`): the canary's value minus the threshold the
baseline sets, at most 0 to pass, with the judge's own queries inside. Too few requests or
a side without series gives an empty result. Argo Rollouts reads ``result[0]`` of an empty
result as an error (argo-rollouts #1466), so each condition is guarded with
``len(result) > 0``, and a measurement that meets neither condition is Inconclusive, which
pauses the rollout: devkit's exit status 3. Flagger halts the advancement on a query
without a value and counts it as a failed check.

The noise test stays with ``devkit canary judge``: the engines see the threshold alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from devkit.ops.canary import ALERT_LABEL, CanaryConfig, Gate, Side, margin_query
from devkit.ops.promql import quote
from devkit.ops.slo import format_duration

__all__ = [
    "ALERTS_METRIC",
    "ArgoOptions",
    "alerts_query",
    "analysis_template",
    "flagger_analysis",
    "metric_name",
    "metric_templates",
    "render",
]

#: The metric that reads the firing rollback alerts (``devkit canary rules``).
ALERTS_METRIC = "rollback-alerts"

_ARGS = re.compile(r"\{\{\s*args\.([A-Za-z0-9_.-]+)\s*\}\}")


@dataclass(frozen=True)
class ArgoOptions:
    """How often Argo Rollouts measures each gate and how many bad measurements it allows."""

    interval_s: float = 60.0
    count: int = 5
    failure_limit: int = 1
    inconclusive_limit: int = 1


def metric_name(gate: Gate) -> str:
    """The gate's name as a Kubernetes name part (``error-rate``)."""
    return gate.name.replace("_", "-")


def alerts_query(config: CanaryConfig) -> str:
    """How many of the canary's rollback alerts fire (0 when none)."""
    labels = f'ALERTS{{alertstate="firing",{ALERT_LABEL}={quote(config.name)}}}'
    return f"count({labels}) or vector(0)"


def _queries(
    config: CanaryConfig, baseline: Side, canary: Side, with_alerts: bool
) -> list[tuple[str, str]]:
    """(metric name, query): each gate's margin, then the firing alerts if asked."""
    queries = [
        (metric_name(g), margin_query(g, baseline, canary, config.min_requests))
        for g in config.gates
    ]
    return queries + ([(ALERTS_METRIC, alerts_query(config))] if with_alerts else [])


def analysis_template(
    config: CanaryConfig,
    baseline: Side,
    canary: Side,
    address: str,
    options: ArgoOptions | None = None,
    *,
    with_alerts: bool = False,
) -> dict[str, Any]:
    """The ``AnalysisTemplate``: one Prometheus metric per gate (and, ``with_alerts``, one
    that fails at the first firing rollback alert)."""
    options = options or ArgoOptions()
    metrics = []
    queries = _queries(config, baseline, canary, with_alerts)
    for name, query in queries:
        alerts = name == ALERTS_METRIC
        metric: dict[str, Any] = {
            "name": name,
            "interval": format_duration(options.interval_s),
            "count": options.count,
            # An empty result meets neither condition: Inconclusive, not an error.
            "successCondition": f"len(result) > 0 && result[0] {'==' if alerts else '<='} 0",
            "failureCondition": "len(result) > 0 && result[0] > 0",
            "failureLimit": 0 if alerts else options.failure_limit,
        }
        if not alerts:
            metric["inconclusiveLimit"] = options.inconclusive_limit
        metric["provider"] = {"prometheus": {"address": address, "query": query}}
        metrics.append(metric)
    spec: dict[str, Any] = {"metrics": metrics}
    args = sorted({a for _, query in queries for a in _ARGS.findall(query)})
    if args:
        spec = {"args": [{"name": a} for a in args], **spec}
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": {"name": f"devkit-{config.name}", "labels": _labels(config)},
        "spec": spec,
    }


def metric_templates(
    config: CanaryConfig,
    baseline: Side,
    canary: Side,
    address: str | None = None,
    *,
    with_alerts: bool = False,
) -> list[dict[str, Any]]:
    """One Flagger ``MetricTemplate`` per gate (``with_alerts``: and one for the alerts)."""
    provider: dict[str, str] = {"type": "prometheus"}
    if address:
        provider["address"] = address
    return [
        {
            "apiVersion": "flagger.app/v1beta1",
            "kind": "MetricTemplate",
            "metadata": {"name": f"devkit-{config.name}-{name}", "labels": _labels(config)},
            "spec": {"provider": dict(provider), "query": query},
        }
        for name, query in _queries(config, baseline, canary, with_alerts)
    ]


def flagger_analysis(
    config: CanaryConfig, interval_s: float = 60.0, *, with_alerts: bool = False
) -> list[dict[str, Any]]:
    """The entries of a Flagger ``Canary``'s ``spec.analysis.metrics`` that use the
    templates: a margin above 0 (or a firing alert) halts the advancement."""
    names = [metric_name(g) for g in config.gates] + ([ALERTS_METRIC] if with_alerts else [])
    return [
        {
            "name": name,
            "templateRef": {"name": f"devkit-{config.name}-{name}"},
            "thresholdRange": {"max": 0},
            "interval": format_duration(interval_s),
        }
        for name in names
    ]


def _labels(config: CanaryConfig) -> dict[str, str]:
    return {"app.kubernetes.io/managed-by": "devkit", ALERT_LABEL: config.name}


def render(documents: Sequence[dict[str, Any]], header: str = "") -> str:
    """YAML documents, ``---`` between them, ``header`` as comment lines before them."""
    import yaml

    class Dumper(yaml.SafeDumper):
        """Multi-line strings (the queries) as literal blocks, readable in review."""

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    texts = [
        yaml.dump(d, Dumper=Dumper, sort_keys=False, width=1000, allow_unicode=True)
        for d in documents
    ]
    return comment + "---\n".join(texts)
