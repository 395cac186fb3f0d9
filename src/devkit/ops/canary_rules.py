"""The canary's rollback triggers as Prometheus alerting rules, and their promtool tests.

Gates are judged at a step of a rollout; the triggers watch the canary all the time, in
Prometheus, and roll it back at once: a high error rate, a p99 far above the baseline's,
a crash loop, most processes unready, memory near the cgroup's limit, an open circuit
breaker (docs/canary.md has the defaults; the gates file moves them). The expressions
come from :mod:`devkit.ops.canary`, as the judge's and the exports' do.

:func:`test_files` builds ``promtool test rules`` cases from series shaped like a devkit
service's (same names, labels and ``le`` spelling), labelled as the two sides' matchers
select: each trigger fires no earlier than its ``for`` and soon after, alone; a canary
just under every limit, or beside a failing baseline, stays silent.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devkit import conventions
from devkit.conventions import le
from devkit.ops.canary import (
    ALERT_LABEL,
    CanaryConfig,
    Side,
    Trigger,
    error_rate,
    latency_quantile,
    memory_of_limit,
    open_breakers,
    ready_share,
    restarts,
)
from devkit.ops.rule_tests import SeriesError, _counter, _expand, _name, _promtool_test
from devkit.ops.slo import format_duration

__all__ = ["expression", "rule_groups", "run", "test_files"]

#: The test's sample and evaluation interval: a quarter of the default rate window.
_STEP_S = 15
#: Steps of healthy traffic before a trigger's condition starts.
_CALM = 40
#: Requests per step of each pod.
_REQUESTS = 60.0
#: Bucket bounds of the synthetic histograms: fast requests fall under the first, slow
#: ones under the later (a subset of devkit's, spelled as devkit writes them).
_FAST, _SLOWER, _SLOWEST = 0.1, 0.25, 1.0
_BOUNDS = (0.05, _FAST, _SLOWER, _SLOWEST)
_LIMIT_BYTES = 512 * 2**20
_DEPENDENCY = "payments"


def _n(value: float) -> str:
    return format(value, ".12g")


def expression(trigger: Trigger, config: CanaryConfig, baseline: Side, canary: Side) -> str:
    """The PromQL that holds while ``trigger``'s condition does (before its ``for``)."""
    window = config.rollback.rate_window
    limit = _n(trigger.limit)
    if trigger.name == "error_rate":
        return f"{error_rate(canary, window)} > {limit}"
    if trigger.name == "latency_p99":
        base = latency_quantile(baseline, 0.99, window)
        return f"{latency_quantile(canary, 0.99, window)} > on() ({base} * {limit})"
    if trigger.name == "restarts":
        return f"{restarts(canary, format_duration(trigger.within_s))} >= {limit}"
    if trigger.name == "unready":
        return f"1 - {ready_share(canary)} > {limit}"
    if trigger.name == "memory":
        return f"{memory_of_limit(canary)} > {limit}"
    return f"{open_breakers(canary)} > 0"


def _words(trigger: Trigger) -> str:
    limit, within = trigger.limit, format_duration(trigger.within_s)
    return {
        "error_rate": f"more than {limit:.1%} of its requests fail",
        "latency_p99": f"its p99 latency is above {limit:g}x the baseline's",
        "restarts": f"a process restarted {limit:g} times or more within {within}",
        "unready": f"more than {limit:.0%} of its processes are not ready",
        "memory": f"a process uses more than {limit:.0%} of its memory limit",
        "circuit_breaker": "a circuit breaker in front of a dependency is open",
    }[trigger.name] + (f" (for {format_duration(trigger.for_s)})" if trigger.for_s else "")


def _labels(config: CanaryConfig) -> dict[str, str]:
    return {
        ALERT_LABEL: config.name,
        **config.rollback.labels,
        "severity": config.rollback.severity,
    }


def rule_groups(config: CanaryConfig, baseline: Side, canary: Side) -> dict[str, Any]:
    """The rule file (``{"groups": [...]}``): one alert per trigger of ``config``."""
    rules = []
    for trigger in config.rollback.triggers:
        rule: dict[str, Any] = {
            "alert": trigger.alert,
            "expr": expression(trigger, config, baseline, canary),
        }
        if trigger.for_s:
            rule["for"] = format_duration(trigger.for_s)
        rule["labels"] = _labels(config)
        rule["annotations"] = {
            "summary": f"Canary {config.name}: roll back, {_words(trigger)}",
            "description": (
                f"The canary ({canary.text}) is compared with the baseline "
                f"({baseline.text}); devkit canary rules generated this rule."
            ),
        }
        rules.append(rule)
    return {"groups": [{"name": f"devkit-canary-{config.name}-rollback", "rules": rules}]}


# -- promtool test rules -----------------------------------------------------------------------


@dataclass
class _Pod:
    """One process of a side, phase by phase: ``(value, steps)`` pairs."""

    side: Side
    instance: str
    errors: list[tuple[float, int]]
    #: The bucket bound the requests' durations fall under.
    latency: list[tuple[float, int]]
    starts: list[tuple[float, int]] = field(default_factory=list)
    ready: list[tuple[float, int]] = field(default_factory=list)
    memory: list[tuple[float, int]] = field(default_factory=list)
    breaker: list[tuple[float, int]] = field(default_factory=list)


def _gauge(phases: Sequence[tuple[float, int]]) -> str:
    """promtool's notation for a gauge holding each value for its steps, laid out as
    ``_counter`` lays out a counter's phases (one more sample in the first)."""
    parts = []
    for index, (value, steps) in enumerate(phases):
        count = steps if index == 0 else steps - 1
        if count >= 0:
            parts.append(_expand(value, 0, count))
    return " ".join(parts)


def _instance(index: int) -> str:
    return f"10.0.0.{index + 1}:8000"


def _sample_labels(side: Side, instance: str) -> dict[str, str]:
    """Labels of a process's series that ``side``'s target matchers select."""
    labels = {"job": "checkout", "instance": instance}
    for matcher in side.target:
        if matcher.name == "instance" and matcher.op in ("=", "=~"):
            raise SeriesError(f"--{side.role} {matcher}: rule tests need instance left free")
        value = _example(side, matcher.op, matcher.literal, str(matcher))
        if value is not None:
            labels[matcher.name] = value
    return labels


def _example(side: Side, op: str, literal: str, text: str) -> str | None:
    """A value a label matcher accepts (None: leave the label out)."""
    if op == "=":
        return literal
    if op == "=~":
        choice = literal.split("|")[0]
        if not choice or any(c in choice for c in "\\.+*?()[]{}^$"):
            raise SeriesError(
                f"--{side.role} {text}: rule tests need an equality matcher or a regex of "
                "plain alternatives to build series from"
            )
        return choice
    return None


def _build_labels(pod: _Pod, labels: dict[str, str]) -> dict[str, str]:
    info = dict(labels)
    info["version"] = "1.1.0" if pod.side.role == "canary" else "1.0.0"
    info["service"] = "checkout"
    for matcher in pod.side.build:
        value = _example(pod.side, matcher.op, matcher.literal, str(matcher))
        if value is not None:
            info[matcher.name] = value
    return info


def _matches(side: Side, labels: dict[str, str], build: dict[str, str]) -> bool:
    """Whether ``side``'s matchers select a process with these series and build labels."""

    def one(op: str, pattern: str, value: str) -> bool:
        if op in ("=", "!="):
            return (value == pattern) == (op == "=")
        return (re.fullmatch(pattern, value) is not None) == (op == "=~")

    return all(one(m.op, m.literal, labels.get(m.name, "")) for m in side.target) and all(
        one(m.op, m.literal, build.get(m.name, "")) for m in side.build
    )


def _pod_series(pod: _Pod, other: Side) -> list[dict[str, str]]:
    labels = _sample_labels(pod.side, pod.instance)
    build = _build_labels(pod, labels)
    if not _matches(pod.side, labels, build):
        raise SeriesError(f"--{pod.side.role}: no series can be built that it selects")
    if _matches(other, labels, build):
        raise SeriesError(f"--{other.role} also selects the {pod.side.role}'s series")
    request = {**labels, "method": "GET", "route": "/checkout/{order_id}"}
    good = _counter([(_REQUESTS * (1 - share), steps) for share, steps in pod.errors])
    bad = _counter([(_REQUESTS * share, steps) for share, steps in pod.errors])
    steps = sum(s for _, s in pod.errors)
    out = [
        {"series": _name(conventions.REQUESTS_TOTAL, request, status_code="200"), "values": good},
        {"series": _name(conventions.REQUESTS_TOTAL, request, status_code="500"), "values": bad},
        {"series": _name(conventions.ERRORS_TOTAL, request, status_code="500"), "values": bad},
    ]
    for bound in (*_BOUNDS, float("inf")):
        under = _counter([(_REQUESTS if slow <= bound else 0.0, n) for slow, n in pod.latency])
        series = _name(conventions.DURATION + "_bucket", request, status_code="200", le=le(bound))
        out.append({"series": series, "values": under})
    gauges: tuple[tuple[str, list[tuple[float, int]], dict[str, str]], ...] = (
        (conventions.PROCESS_START, pod.starts or [(1000.0, steps)], {}),
        (conventions.READY, pod.ready or [(1.0, steps)], {}),
        (conventions.MEMORY_USAGE, pod.memory or [(0.5 * _LIMIT_BYTES, steps)], {}),
        (conventions.MEMORY_LIMIT, [(float(_LIMIT_BYTES), steps)], {}),
        (
            conventions.CIRCUIT_BREAKER_OPEN,
            pod.breaker or [(0.0, steps)],
            {"dependency": _DEPENDENCY},
        ),
        (conventions.BUILD_INFO, [(1.0, steps)], {}),
    )
    for metric, phases, extra in gauges:
        own = build if metric == conventions.BUILD_INFO else labels
        out.append({"series": _name(metric, own, **extra), "values": _gauge(phases)})
    return out


def _world(
    baseline: Side, canary: Side, pods: Sequence[tuple[str, dict[str, Any]]], steps: int
) -> list[dict[str, str]]:
    """Series of one baseline process and two canary ones; ``pods`` overrides the phases
    of ``b0``, ``c0`` or ``c1`` (healthy, fast and ready otherwise)."""
    changes = dict(pods)
    series: list[dict[str, str]] = []
    for index, (name, side, other) in enumerate(
        (("b0", baseline, canary), ("c0", canary, baseline), ("c1", canary, baseline))
    ):
        phases: dict[str, Any] = {"errors": [(0.0, steps)], "latency": [(_FAST, steps)]}
        phases.update(changes.get(name, {}))
        series += _pod_series(_Pod(side, _instance(index), **phases), other)
    return series


def test_files(
    config: CanaryConfig, baseline: Side, canary: Side, rule_file: str
) -> dict[str, dict[str, Any]]:
    """The ``promtool test rules`` file (by file name) for the rules in ``rule_file``."""
    groups = rule_groups(config, baseline, canary)
    rules = {r["alert"]: r for r in groups["groups"][0]["rules"]}
    alerts = list(rules)
    window = config.rollback.rate_window_s
    tests: list[dict[str, Any]] = []

    def expect(alert: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
        rule = rules[alert]
        return {
            "exp_labels": {**rule["labels"], **(extra or {})},
            "exp_annotations": dict(rule["annotations"]),
        }

    def silent(at: Sequence[int]) -> list[dict[str, Any]]:
        return [
            {"eval_time": format_duration(step * _STEP_S), "alertname": alert, "exp_alerts": []}
            for step in at
            for alert in alerts
        ]

    def case(
        name: str, pods: Sequence[tuple[str, dict[str, Any]]], steps: int, checks: Any
    ) -> None:
        tests.append(
            {
                "name": name,
                "interval": f"{_STEP_S}s",
                "input_series": _world(baseline, canary, pods, steps),
                "alert_rule_test": checks,
            }
        )

    total = _length(config)
    checkpoints = (_CALM // 2, _CALM + 20, _CALM + 40, total - 1)
    case("a healthy canary beside a healthy baseline: no alert", [], total, silent(checkpoints))
    case(
        "a failing, slow baseline: the canary's rules stay silent",
        [("b0", {"errors": [(0.5, total)], "latency": [(_SLOWEST, total)]})],
        total,
        silent(checkpoints),
    )
    under = _under_every_limit(config, total)
    case("a canary just under every limit: no alert", under, total, silent(checkpoints))

    for trigger in config.rollback.triggers:
        pods, extra = _breach(trigger, canary, total)
        start = _CALM * _STEP_S
        before = start + trigger.for_s - _STEP_S
        # The condition holds once the rate window has seen a step of it; a minute more
        # leaves room for the evaluation that notices.
        after = start + trigger.for_s + window + 60
        if trigger.name == "restarts":
            # Just before the restart that reaches the count, and just after it.
            last = _STEP_S * _restart_spacing(trigger) * (math.ceil(trigger.limit) - 1)
            before, after = start + last, start + last + 2 * _STEP_S
        checks = [
            {"eval_time": format_duration(before), "alertname": trigger.alert, "exp_alerts": []},
            {
                "eval_time": format_duration(after),
                "alertname": trigger.alert,
                "exp_alerts": [expect(trigger.alert, extra)],
            },
        ]
        checks += [
            {"eval_time": format_duration(after), "alertname": alert, "exp_alerts": []}
            for alert in alerts
            if alert != trigger.alert
        ]
        case(
            f"{trigger.alert}: {_words(trigger)}; fires in time, alone",
            pods,
            total,
            checks,
        )
    return {
        "tests.yml": {
            "rule_files": [rule_file],
            "evaluation_interval": f"{_STEP_S}s",
            "group_eval_order": [g["name"] for g in groups["groups"]],
            "tests": tests,
        }
    }


test_files.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def _length(config: CanaryConfig) -> int:
    """Steps of every case: the calm, then room for the slowest trigger to fire."""
    slowest = max(
        [t.for_s + config.rollback.rate_window_s + 120 for t in config.rollback.triggers]
        + [t.within_s + 120 for t in config.rollback.triggers]
        + [1200.0]
    )
    return _CALM + math.ceil(slowest / _STEP_S)


def _restart_spacing(trigger: Trigger) -> int:
    """Steps between restarts: a minute, or closer when the count must fit its window."""
    return max(
        1, min(60 // _STEP_S, int(trigger.within_s // _STEP_S) // (math.ceil(trigger.limit) + 1))
    )


def _starts(count: int, every: int, total: int) -> list[tuple[float, int]]:
    """A process's start time, changed ``count`` times ``every`` steps apart after the
    calm."""
    phases = [(1000.0, _CALM)]
    for i in range(count):
        steps = every if i < count - 1 else total - _CALM - every * (count - 1)
        phases.append((1000.0 + 60 * (i + 1), steps))
    return phases


def _breach(
    trigger: Trigger, canary: Side, total: int
) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, str] | None]:
    """Pods whose phases break ``trigger`` from step ``_CALM`` on, and the labels its
    alert carries beyond the rule's (None: only the rule's; a process's own otherwise)."""
    calm, rest = _CALM, total - _CALM
    c0 = _sample_labels(canary, _instance(1))
    if trigger.name == "error_rate":
        share = min(1.0, trigger.limit * 2)
        phases = {"errors": [(0.0, calm), (share, rest)]}
        return [("c0", phases), ("c1", phases)], None
    if trigger.name == "latency_p99":
        phases = {"latency": [(_FAST, calm), (_SLOWEST, rest)]}
        return [("c0", phases), ("c1", phases)], None
    if trigger.name == "restarts":
        count, every = math.ceil(trigger.limit), _restart_spacing(trigger)
        return [("c0", {"starts": _starts(count, every, total)})], c0
    if trigger.name == "unready":
        ready = {"ready": [(1.0, calm), (0.0, rest)]}
        return [("c0", ready), ("c1", ready)], None
    if trigger.name == "memory":
        high = min(1.0, (1 + trigger.limit) / 2) * _LIMIT_BYTES
        return [("c0", {"memory": [(0.5 * _LIMIT_BYTES, calm), (high, rest)]})], c0
    return [("c0", {"breaker": [(0.0, calm), (1.0, rest)]})], {"dependency": _DEPENDENCY}


def _under_every_limit(config: CanaryConfig, total: int) -> list[tuple[str, dict[str, Any]]]:
    """Canary processes just under each trigger's limit that the synthetic series can
    stay under (half the processes unready is not more than half)."""
    c0: dict[str, Any] = {}
    c1: dict[str, Any] = {}
    rollback = config.rollback
    if (t := rollback.get("error_rate")) is not None:
        c0["errors"] = c1["errors"] = [(t.limit * 0.8, total)]
    if (t := rollback.get("latency_p99")) is not None and t.limit > _SLOWER / _FAST + 0.1:
        c0["latency"] = c1["latency"] = [(_SLOWER, total)]
    if (t := rollback.get("restarts")) is not None and t.limit >= 2:
        c0["starts"] = _starts(math.ceil(t.limit) - 1, _restart_spacing(t), total)
    if (t := rollback.get("unready")) is not None and t.limit >= 0.5:
        c1["ready"] = [(0.0, total)]
    if (t := rollback.get("memory")) is not None:
        c0["memory"] = [(t.limit * 0.95 * _LIMIT_BYTES, total)]
    return [("c0", c0), ("c1", c1)]


def run(
    config: CanaryConfig,
    baseline: Side,
    canary: Side,
    directory: Path | None = None,
    promtool: str = "promtool",
) -> tuple[bool, str]:
    """Write the rules and their tests (to ``directory``, else a temporary one) and run
    ``promtool test rules``: (passed, what promtool printed)."""
    import yaml

    from devkit.ops.rules import render

    files = {"rules.yml": render(rule_groups(config, baseline, canary))}
    tests = test_files(config, baseline, canary, "rules.yml")
    for name, content in tests.items():
        files[name] = yaml.safe_dump(content, sort_keys=False, width=1000)
    return _promtool_test(files, list(tests), directory, promtool)
