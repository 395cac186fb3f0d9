"""Canary analysis: the gates a new version passes against the baseline beside it, the
rollback triggers, the gates file that configures both, and their PromQL.

A canary is judged against the baseline running *at the same time*, never against history:
both sides see the same traffic mix, the same dependencies and the same time of day.
Which series belong to which side is given as PromQL label matchers (:class:`Side`).
Every query here is built from the names in :mod:`devkit.conventions`, and the judge, the
rollback rules and the Argo Rollouts / Flagger exports all take their PromQL from this
module, so what a pipeline runs and what a rollout engine runs are the same questions.

``load(path)`` reads a gates file (YAML needs the ``canary`` extra; JSON does not) and
``parse(data, source)`` validates loaded data; without a file, :func:`defaults` holds the
documented thresholds. Every mistake is a :class:`CanaryFileError` naming the file, the
item, the field and what is expected.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from string import Template
from typing import Any, Literal

from devkit.conventions import (
    BUILD_INFO,
    CIRCUIT_BREAKER_OPEN,
    DURATION,
    ERRORS_TOTAL,
    MEMORY_LIMIT,
    MEMORY_USAGE,
    PROCESS_CPU,
    PROCESS_MEMORY,
    PROCESS_START,
    READY,
    REQUESTS_TOTAL,
)
from devkit.exceptions import DevkitError
from devkit.ops.promql import Matcher, MatcherError, parse_matchers, selector
from devkit.ops.slo import _Checker, _read, format_duration, parse_duration

__all__ = [
    "ALERT_LABEL",
    "BUILD_INFO_LABELS",
    "GATES",
    "JOIN_LABELS",
    "PLACEHOLDERS",
    "TRIGGERS",
    "CanaryConfig",
    "CanaryError",
    "CanaryFileError",
    "Gate",
    "Rollback",
    "Side",
    "Statistics",
    "Trigger",
    "defaults",
    "error_rate",
    "latency_quantile",
    "load",
    "margin_query",
    "memory_of_limit",
    "open_breakers",
    "parse",
    "ready_share",
    "requests_query",
    "restarts",
    "value_query",
]

#: Labels only ``devkit_build_info`` carries: a side selected on them is joined onto every
#: series through the build-info metric of the same target.
BUILD_INFO_LABELS = frozenset({"service", "version", "environment", "devkit_version"})
#: The labels that identify one scrape target, on which that join matches.
JOIN_LABELS = ("job", "instance")
#: The label every rollback alert carries, with the gates file's ``name``: what an
#: exported analysis looks for among the firing alerts.
ALERT_LABEL = "devkit_canary"
#: The placeholders a custom gate's query may use (``$window``, ``$selector``, ``$join``).
PLACEHOLDERS = ("window", "selector", "join")

Better = Literal["lower", "higher"]
Mode = Literal["ratio", "increase"]

_NAME = re.compile(r"[a-z0-9]([a-z0-9_-]{0,40}[a-z0-9])?")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_TEMPLATE = re.compile(r"\{\{.*?\}\}")
_MINUTE = 60.0


class CanaryError(DevkitError, ValueError):
    """A bad argument of a canary command (a selector, a window): the message names it."""


class CanaryFileError(CanaryError):
    """A bad gates file: names the file, the item and field, and what is expected."""

    def __init__(self, source: str, where: str, message: str) -> None:
        self.source = source
        self.where = where
        super().__init__(f"{source}: {where}: {message}" if where else f"{source}: {message}")


@dataclass(frozen=True)
class Side:
    """Which series are the baseline's or the canary's.

    Matchers on target labels (``job``, ``pod``, a ``track`` label from the pod's labels)
    are added to every selector. Matchers on :data:`BUILD_INFO_LABELS` (``version="1.4.0"``)
    exist on ``devkit_build_info`` only, so every per-target expression is multiplied by
    that target's build-info series, matched on ``job`` and ``instance``: the series of a
    process count for the side whose version that process reports.
    """

    role: str
    text: str
    target: tuple[Matcher, ...]
    build: tuple[Matcher, ...]

    @classmethod
    def parse(cls, role: str, text: str, *, templates: bool = False) -> Side:
        """The side ``role`` (``baseline`` or ``canary``) from the matchers of ``--role``.

        ``templates``: whether ``{{ ... }}`` may stand in a value (an Argo Rollouts
        argument, a Flagger variable), which only an exported template can resolve.
        """
        try:
            matchers = parse_matchers(text)
        except MatcherError as exc:
            raise CanaryError(f"--{role}: {exc}") from None
        if not templates:
            for matcher in matchers:
                if _TEMPLATE.search(matcher.value):
                    raise CanaryError(
                        f"--{role}: {matcher} holds a template, which only the rollout "
                        "engine resolves: use it with devkit canary export"
                    )
        target = tuple(m for m in matchers if m.name not in BUILD_INFO_LABELS)
        build = tuple(m for m in matchers if m.name in BUILD_INFO_LABELS)
        return cls(role, text.strip(), target, build)

    @property
    def matchers(self) -> tuple[Matcher, ...]:
        return self.target + self.build

    @property
    def target_text(self) -> str:
        """The target matchers, comma-separated (``$selector`` in a custom query)."""
        return ",".join(str(m) for m in self.target)

    def select(self, metric: str, *extra: str) -> str:
        """``metric{...}`` narrowed to this side's targets."""
        return selector(metric, self.target_text, *extra)

    @property
    def join(self) -> str:
        """What keeps a per-target expression to this side's build (``$join``): empty
        when the side names no build-info label."""
        if not self.build:
            return ""
        info = selector(BUILD_INFO, [str(m) for m in self.matchers])
        return f"* on({', '.join(JOIN_LABELS)}) group_left() {info}"

    def per_target(self, expr: str) -> str:
        """``expr`` (a function call or selector whose series keep ``job`` and
        ``instance``) kept to this side."""
        return f"{expr} {self.join}" if self.build else expr


@dataclass(frozen=True)
class Gate:
    """One comparison of the canary with the baseline over ``window_s``.

    ``ratio``: the canary may reach ``limit`` times the baseline (``lower`` is better) or
    may not fall under it (``higher``); ``increase``: it may exceed the baseline by
    ``limit`` (an absolute amount, a ratio of requests for the error rate).
    """

    name: str
    kind: str
    window_s: float
    limit: float
    mode: Mode = "ratio"
    better: Better = "lower"
    #: A custom gate's PromQL template (``$window``, ``$selector``, ``$join``).
    query: str = ""
    #: The file and the item the gate comes from, for errors about its query.
    source: str = ""
    where: str = ""
    unit: str = ""

    @property
    def window(self) -> str:
        return format_duration(self.window_s)

    def threshold(self, baseline: float) -> float:
        """The worst value the canary may show next to ``baseline``."""
        if self.mode == "ratio":
            return baseline * self.limit
        return baseline + self.limit if self.better == "lower" else baseline - self.limit

    def passes(self, baseline: float, canary: float) -> bool:
        bound = self.threshold(baseline)
        return canary <= bound if self.better == "lower" else canary >= bound

    @property
    def rule(self) -> str:
        """``canary <= baseline x 1.2``: the gate in words, for tables and docs."""
        op = "<=" if self.better == "lower" else ">="
        if self.mode == "ratio":
            return f"canary {op} baseline x {self.limit:g}"
        sign = "+" if self.better == "lower" else "-"
        amount = f"{self.limit * 100:g} pp" if self.unit == "ratio" else f"{self.limit:g}"
        return f"canary {op} baseline {sign} {amount}"


@dataclass(frozen=True)
class Statistics:
    """How the per-interval samples of both sides are compared (Mann-Whitney U)."""

    #: The length of one interval: the range query's step and its rate window.
    interval_s: float = _MINUTE
    #: The p-value under which the canary counts as significantly worse.
    significance: float = 0.05
    #: Fewer intervals than this on a side: the threshold alone decides.
    min_intervals: int = 5
    enabled: bool = True

    @property
    def interval(self) -> str:
        return format_duration(self.interval_s)


@dataclass(frozen=True)
class Trigger:
    """A condition that rolls the canary back at once (an alerting rule)."""

    name: str
    alert: str
    #: A share (error rate, unready pods, memory of the limit), a factor (p99 over the
    #: baseline's), a count (restarts) or unused (circuit breakers).
    limit: float
    for_s: float = 0.0
    #: The window restarts are counted over.
    within_s: float = 0.0


@dataclass(frozen=True)
class Rollback:
    """The rollback triggers, and what the alerts carry."""

    triggers: tuple[Trigger, ...]
    #: The rate window of the error-rate and latency triggers.
    rate_window_s: float = _MINUTE
    labels: Mapping[str, str] = field(default_factory=dict)
    severity: str = "critical"

    @property
    def rate_window(self) -> str:
        return format_duration(self.rate_window_s)

    def get(self, name: str) -> Trigger | None:
        return next((t for t in self.triggers if t.name == name), None)


@dataclass(frozen=True)
class CanaryConfig:
    """A gates file: the gates, the rollback triggers and the verdict's rules."""

    gates: tuple[Gate, ...]
    rollback: Rollback
    statistics: Statistics = field(default_factory=Statistics)
    #: Requests each side must have served over a gate's window for it to be judged.
    min_requests: float = 100.0
    #: Names the exported templates and labels the rollback alerts (``devkit_canary``).
    name: str = "canary"
    source: str = "<defaults>"

    def with_windows(self, window_s: float | None, interval_s: float | None) -> CanaryConfig:
        """Every gate judged over ``window_s`` and/or sampled every ``interval_s``."""
        gates = self.gates
        if window_s is not None:
            gates = tuple(replace(g, window_s=window_s) for g in gates)
        statistics = self.statistics
        if interval_s is not None:
            statistics = replace(statistics, interval_s=interval_s)
        return replace(self, gates=gates, statistics=statistics)


# -- the defaults: the gates and triggers of docs/canary.md ----------------------------------

#: name -> (file field, the file's unit per stored unit, default limit, window, mode, unit)
GATES: dict[str, tuple[str, float, float, float, Mode, str]] = {
    "error_rate": ("max_increase", 100.0, 0.005, 15 * _MINUTE, "increase", "ratio"),
    "latency_p99": ("max_ratio", 1.0, 1.2, 15 * _MINUTE, "ratio", "seconds"),
    "latency_p50": ("max_ratio", 1.0, 1.1, 15 * _MINUTE, "ratio", "seconds"),
    "cpu": ("max_ratio", 1.0, 1.5, 10 * _MINUTE, "ratio", "cores"),
    "memory": ("max_ratio", 1.0, 1.3, 10 * _MINUTE, "ratio", "bytes"),
}
_CUSTOM_WINDOW_S = 30 * _MINUTE

#: name -> (alert, file field, the file's unit per stored unit, default limit, for, within)
TRIGGERS: dict[str, tuple[str, str, float, float, float, float]] = {
    "error_rate": ("DevkitCanaryErrorRate", "above", 100.0, 0.05, 2 * _MINUTE, 0.0),
    "latency_p99": ("DevkitCanaryLatency", "factor", 1.0, 3.0, 5 * _MINUTE, 0.0),
    "restarts": ("DevkitCanaryCrashLoop", "count", 1.0, 3.0, 0.0, 5 * _MINUTE),
    "unready": ("DevkitCanaryUnready", "above", 100.0, 0.5, _MINUTE, 0.0),
    "memory": ("DevkitCanaryMemoryLimit", "above", 100.0, 0.9, 3 * _MINUTE, 0.0),
    "circuit_breaker": ("DevkitCanaryCircuitBreakerOpen", "", 1.0, 0.0, _MINUTE, 0.0),
}


def defaults() -> CanaryConfig:
    """The documented gates and triggers, as a gates file without any field gives them."""
    return parse({}, "<defaults>")


def load(path: str | Path) -> CanaryConfig:
    """Read and validate a gates file (YAML or JSON)."""
    return parse(_read(path, CanaryFileError, "canary"), str(path))


def parse(data: object, source: str = "<gates file>") -> CanaryConfig:
    """Validate loaded data (a mapping; empty for the defaults) into a :class:`CanaryConfig`."""
    check = _Checker(source, CanaryFileError)
    top = check.mapping({} if data is None else data, "", "a mapping of gates and rollback")
    check.only(top, "", {"name", "min_requests", "statistics", "gates", "custom", "rollback"})
    name = top.get("name", "canary")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        check.fail("name", name, "lower-case letters, digits, - and _ (a Kubernetes name part)")
    min_requests = _number(check, "min_requests", top.get("min_requests", 100), 0, math.inf)
    statistics = _parse_statistics(check, top.get("statistics", {}))
    gates = _parse_gates(check, top.get("gates", {}))
    gates += _parse_custom(check, top.get("custom", []), {g.name for g in gates} | set(GATES))
    for gate in gates:
        if gate.window_s < statistics.interval_s:
            raise CanaryFileError(
                source,
                "statistics.interval",
                f"{statistics.interval} is longer than the {gate.name} gate's window "
                f"{gate.window}: a window holds whole intervals",
            )
    rollback = _parse_rollback(check, top.get("rollback", {}))
    return CanaryConfig(gates, rollback, statistics, min_requests, name, source)


def _number(
    check: _Checker,
    where: str,
    value: object,
    low: float,
    high: float,
    *,
    above: bool = False,
    under: bool = False,
) -> float:
    """A number from ``low`` to ``high``; ``above`` / ``under``: excluding that bound."""
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and (value > low if above else value >= low)
        and (value < high if under else value <= high)
    )
    if not ok:
        expected = f"a number, {f'above {low:g}' if above else f'{low:g} or more'}"
        if high < math.inf:
            expected += f", under {high:g}" if under else f", at most {high:g}"
        check.fail(where, value, expected)
    return float(value)  # type: ignore[arg-type]


def _duration(check: _Checker, where: str, value: object, *, zero: bool = False) -> float:
    try:
        seconds = parse_duration(value)  # type: ignore[arg-type]
    except ValueError:
        check.fail(where, value, "a duration such as 30s, 5m or 1h")
    if not zero and seconds <= 0:
        check.fail(where, value, "a duration above 0s")
    return seconds


def _enabled(check: _Checker, where: str, item: Mapping[str, Any]) -> bool:
    enabled = item.get("enabled", True)
    if not isinstance(enabled, bool):
        check.fail(f"{where}.enabled", enabled, "true or false")
    return enabled


def _parse_statistics(check: _Checker, value: object) -> Statistics:
    item = check.mapping(value, "statistics", "a mapping")
    check.only(item, "statistics", {"interval", "significance", "min_intervals", "enabled"})
    interval = _duration(check, "statistics.interval", item.get("interval", "1m"))
    significance = _number(
        check, "statistics.significance", item.get("significance", 0.05), 0, 0.5, above=True
    )
    intervals = item.get("min_intervals", 5)
    if isinstance(intervals, bool) or not isinstance(intervals, int) or intervals < 3:
        check.fail("statistics.min_intervals", intervals, "a whole number, 3 or more")
    return Statistics(interval, significance, intervals, _enabled(check, "statistics", item))


def _parse_gates(check: _Checker, value: object) -> tuple[Gate, ...]:
    items = check.mapping(value, "gates", "a mapping of gate names to settings")
    check.only(items, "gates", set(GATES))
    gates = []
    for name, (limit_field, scale, limit, window_s, mode, unit) in GATES.items():
        where = f"gates.{name}"
        item = check.mapping(items.get(name, {}), where, f"a mapping with {limit_field}, window")
        check.only(item, where, {limit_field, "window", "enabled"})
        if not _enabled(check, where, item):
            continue
        if limit_field in item:
            low = 0.0 if mode == "increase" else 1.0
            limit = _number(check, f"{where}.{limit_field}", item[limit_field], low, 1e6) / scale
        if "window" in item:
            window_s = _duration(check, f"{where}.window", item["window"])
        gates.append(
            Gate(
                name,
                name,
                window_s,
                limit,
                mode,
                "lower",
                source=check.source,
                where=where,
                unit=unit,
            )
        )
    return tuple(gates)


def _parse_custom(check: _Checker, value: object, taken: set[str]) -> tuple[Gate, ...]:
    if not isinstance(value, list):
        check.fail("custom", value, "a list of custom gates")
    gates = []
    for index, raw in enumerate(value):
        where = f"custom[{index}]"
        item = check.mapping(raw, where, "a mapping with name, query, direction, tolerance")
        name = item.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            check.fail(f"{where}.name", name, "lower-case letters, digits, - and _")
        if name in taken:
            raise CanaryFileError(check.source, f"{where} ({name}): name", "already used")
        taken.add(name)
        where = f"{where} ({name})"
        check.only(item, where, {"name", "query", "direction", "tolerance", "window", "enabled"})
        query = _custom_query(check, f"{where}: query", item.get("query"))
        direction = item.get("direction")
        if direction not in ("increase", "decrease"):
            check.fail(
                f"{where}: direction",
                direction,
                "increase (a rise is a regression, as latency) or decrease (a fall is, as "
                "conversions)",
            )
        tolerance = _number(check, f"{where}: tolerance", item.get("tolerance"), 0, 100) / 100
        window_s = _CUSTOM_WINDOW_S
        if "window" in item:
            window_s = _duration(check, f"{where}: window", item["window"])
        if not _enabled(check, where, item):
            continue
        better: Better = "lower" if direction == "increase" else "higher"
        limit = 1 + tolerance if better == "lower" else 1 - tolerance
        gates.append(
            Gate(name, "custom", window_s, limit, "ratio", better, query, check.source, where)
        )
    return tuple(gates)


def _custom_query(check: _Checker, where: str, query: object) -> str:
    if not isinstance(query, str) or not query.strip():
        check.fail(where, query, "PromQL with $selector or $join, and $window")
    template = Template(query)
    if not template.is_valid():
        check.fail(where, query, "$ only before a placeholder (write $$ for a dollar sign)")
    names = set(template.get_identifiers())
    unknown = sorted(names - set(PLACEHOLDERS))
    if unknown:
        raise CanaryFileError(
            check.source,
            where,
            f"unknown placeholder ${unknown[0]}; expected "
            + ", ".join(f"${p}" for p in PLACEHOLDERS),
        )
    if not names & {"selector", "join"}:
        raise CanaryFileError(
            check.source,
            where,
            "uses neither $selector nor $join, so it would read the same series for the "
            "baseline and the canary",
        )
    return query.strip()


def _parse_rollback(check: _Checker, value: object) -> Rollback:
    item = check.mapping(value, "rollback", "a mapping of triggers")
    check.only(item, "rollback", {*TRIGGERS, "rate_window", "labels", "severity"})
    rate_window_s = _duration(check, "rollback.rate_window", item.get("rate_window", "1m"))
    labels = item.get("labels", {})
    if not isinstance(labels, dict):
        check.fail("rollback.labels", labels, "a mapping of label names to strings")
    for key, label in labels.items():
        if not isinstance(key, str) or not _LABEL_NAME.fullmatch(key) or key in _RESERVED:
            check.fail(
                "rollback.labels",
                key,
                "label names [a-zA-Z_][a-zA-Z0-9_]* other than " + ", ".join(sorted(_RESERVED)),
            )
        if not isinstance(label, str):
            check.fail(f"rollback.labels.{key}", label, "a string")
    severity = check.optional_text(item, "rollback", "severity") or "critical"
    triggers = []
    for name, (alert, limit_field, scale, limit, for_s, within_s) in TRIGGERS.items():
        where = f"rollback.{name}"
        fields = {"for", "enabled"} | ({limit_field} if limit_field else set())
        if name == "restarts":
            fields = {"count", "within", "enabled"}
        trigger = check.mapping(item.get(name, {}), where, "a mapping")
        check.only(trigger, where, fields)
        if not _enabled(check, where, trigger):
            continue
        if limit_field and limit_field in trigger:
            # A share of 100 % or more never is exceeded: the trigger could not fire.
            share = scale == 100.0
            low = 1.0 if limit_field in ("factor", "count") else 0.0
            value = trigger[limit_field]
            high = 100.0 if share else 1e6
            limit = _number(check, f"{where}.{limit_field}", value, low, high, under=share) / scale
        if "for" in trigger:
            for_s = _duration(check, f"{where}.for", trigger["for"], zero=True)
        if "within" in trigger:
            within_s = _duration(check, f"{where}.within", trigger["within"])
        triggers.append(Trigger(name, alert, limit, for_s, within_s))
    return Rollback(tuple(triggers), rate_window_s, dict(labels), severity)


#: Labels the rollback alerts set themselves.
_RESERVED = frozenset({"alertname", "severity", ALERT_LABEL, "__name__"})


# -- PromQL ------------------------------------------------------------------------------------


def _num(value: float) -> str:
    return format(value, ".12g")


def _rate(side: Side, metric: str, window: str, function: str = "rate") -> str:
    return side.per_target(f"{function}({side.select(metric)}[{window}])")


def requests_query(side: Side, window: str) -> str:
    """Requests ``side`` served over ``window``."""
    return f"sum({_rate(side, REQUESTS_TOTAL, window, 'increase')})"


def error_rate(side: Side, window: str) -> str:
    """The share of ``side``'s requests that failed (5xx, unhandled) over ``window``; the
    errors series appears with the first error, so none yet reads zero."""
    errors = f"(sum({_rate(side, ERRORS_TOTAL, window)}) or vector(0))"
    return f"{errors} / sum({_rate(side, REQUESTS_TOTAL, window)})"


def latency_quantile(side: Side, quantile: float, window: str) -> str:
    """The ``quantile`` of ``side``'s request durations over ``window``."""
    buckets = _rate(side, DURATION + "_bucket", window)
    return f"histogram_quantile({_num(quantile)}, sum by (le) ({buckets}))"


def value_query(gate: Gate, side: Side, window: str | None = None) -> str:
    """The value of ``gate`` for ``side`` over ``window`` (default the gate's own): one
    series, the same PromQL whether a window of minutes (the verdict) or one interval (a
    sample for the statistics)."""
    window = window or gate.window
    if gate.kind == "error_rate":
        return error_rate(side, window)
    if gate.kind == "latency_p99":
        return latency_quantile(side, 0.99, window)
    if gate.kind == "latency_p50":
        return latency_quantile(side, 0.5, window)
    if gate.kind == "cpu":
        # Per process, not summed: the canary usually runs fewer pods than the baseline.
        return f"avg({_rate(side, PROCESS_CPU, window)})"
    if gate.kind == "memory":
        return f"avg({_rate(side, PROCESS_MEMORY, window, 'avg_over_time')})"
    return _custom(gate, side, window)


def _custom(gate: Gate, side: Side, window: str) -> str:
    if side.build and "$join" not in gate.query:
        raise CanaryFileError(
            gate.source,
            f"{gate.where}: query",
            f"--{side.role} selects on {', '.join(sorted({m.name for m in side.build}))}, "
            f"which only {BUILD_INFO} carries: put $join after each per-target "
            "expression, inside the aggregation, as in sum(rate(x{$selector}[$window]) $join)",
        )
    return Template(gate.query).substitute(window=window, selector=side.target_text, join=side.join)


def margin_query(gate: Gate, baseline: Side, canary: Side, min_requests: float) -> str:
    """How far the canary is past the gate's threshold: at most 0 passes, above 0 fails.

    For rollout engines, which judge one query against a fixed number: the baseline
    comparison is in the PromQL. Too few requests on either side, or a side without
    series, gives an empty result (no verdict), as the judge's inconclusive.
    """
    b = value_query(gate, baseline)
    c = value_query(gate, canary)
    if gate.mode == "ratio":
        bound = f"({b}) * {_num(gate.limit)}"
    else:
        bound = f"({b}) {'+' if gate.better == 'lower' else '-'} {_num(gate.limit)}"
    margin = f"({c}) - on() ({bound})" if gate.better == "lower" else f"({bound}) - on() ({c})"
    guards = "".join(
        f"\nand on() ({requests_query(side, gate.window)} >= {_num(min_requests)})"
        for side in (baseline, canary)
    )
    return margin + guards


def ready_share(side: Side) -> str:
    """The share of ``side``'s processes that are ready now."""
    return f"avg({side.per_target(side.select(READY))})"


def restarts(side: Side, within: str) -> str:
    """Restarts of each of ``side``'s processes within ``within`` (a new start time)."""
    return side.per_target(f"changes({side.select(PROCESS_START)}[{within}])")


def memory_of_limit(side: Side) -> str:
    """Each of ``side``'s processes' cgroup memory over its limit."""
    return side.per_target(f"({side.select(MEMORY_USAGE)} / {side.select(MEMORY_LIMIT)})")


def open_breakers(side: Side) -> str:
    """1 for each dependency whose circuit breaker is open in one of ``side``'s processes."""
    return f"max by (dependency) ({side.per_target(side.select(CIRCUIT_BREAKER_OPEN))})"
