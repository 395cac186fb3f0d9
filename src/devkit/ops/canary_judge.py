"""The canary judge: each gate's PromQL for both sides, a threshold, and a test of noise.

For every gate the judge asks Prometheus, at one instant, how many requests each side
served over the gate's window and the gate's value on each side; then, with SciPy (the
``canary`` extra), the same expression over each interval of the window (a range query),
and compares the two sets of samples with a one-sided Mann-Whitney U test, the test
Kayenta's NetflixACAJudge classifies metrics with. A gate fails only when the canary is
worse than the threshold *and* significantly worse: a canary that is unlucky over one
window is not rolled back. The Hodges-Lehmann estimate of the shift (the median of the
pairwise differences) and its distribution-free confidence interval say by how much.

Without SciPy, or with too few intervals, the threshold alone decides, and the judgement
says so. Inconclusive is not a pass: too few requests, a side without series or a
Prometheus that does not answer each make a gate inconclusive with its own reason.
"""

from __future__ import annotations

import importlib
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from devkit.ops.canary import (
    CanaryConfig,
    CanaryError,
    CanaryFileError,
    Gate,
    Side,
    requests_query,
    value_query,
)
from devkit.ops.prometheus import PrometheusError, Sample, SeriesRange
from devkit.ops.slo import format_duration

__all__ = [
    "EXIT_STATUS",
    "Comparison",
    "GateResult",
    "Judgement",
    "Querier",
    "compare",
    "hodges_lehmann",
    "judge",
    "mann_whitney",
]

Verdict = Literal["promote", "rollback", "inconclusive"]
GateVerdict = Literal["pass", "fail", "inconclusive"]

#: The process exit status of each verdict (2 is bad input).
EXIT_STATUS: dict[str, int] = {"promote": 0, "rollback": 1, "inconclusive": 3}

_NO_SCIPY = (
    "SciPy is not installed (pip install 'devkit-observability[canary]'): "
    "threshold-only verdicts, without a test of noise"
)

#: ``(canary samples, baseline samples, alternative) -> p-value``.
Test = Callable[[Sequence[float], Sequence[float], str], float]


class Querier(Protocol):
    """What the judge asks of Prometheus (:class:`devkit.ops.prometheus.Prometheus`)."""

    url: str

    def query(self, expr: str, at: float | None = None) -> list[Sample]: ...

    def query_range(
        self, expr: str, start: float, end: float, step: float
    ) -> list[SeriesRange]: ...


@dataclass(frozen=True)
class Comparison:
    """The per-interval samples of both sides, compared."""

    #: One-sided Mann-Whitney U: the chance of a canary this much worse by noise alone.
    p_value: float
    #: Hodges-Lehmann: the median of every canary-minus-baseline difference.
    shift: float
    #: The shift's distribution-free confidence interval (at 1 - significance).
    interval: tuple[float, float]
    samples: tuple[int, int]


@dataclass
class GateResult:
    """One gate's verdict and the figures behind it."""

    gate: Gate
    verdict: GateVerdict
    reason: str
    baseline: float | None = None
    canary: float | None = None
    threshold: float | None = None
    requests: dict[str, float | None] = field(default_factory=dict)
    comparison: Comparison | None = None
    queries: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        c = self.comparison
        return {
            "name": self.gate.name,
            "window": self.gate.window,
            "rule": self.gate.rule,
            "verdict": self.verdict,
            "reason": self.reason,
            "baseline": _finite(self.baseline),
            "canary": _finite(self.canary),
            "threshold": _finite(self.threshold),
            "requests": {k: _finite(v) for k, v in self.requests.items()},
            "p_value": c.p_value if c else None,
            "shift": c.shift if c else None,
            "shift_interval": list(c.interval) if c else None,
            "intervals": {"baseline": c.samples[0], "canary": c.samples[1]} if c else None,
            "queries": self.queries,
        }


@dataclass
class Judgement:
    """Every gate's result and the verdict they add up to."""

    gates: list[GateResult]
    baseline: Side
    canary: Side
    at: float
    #: ``mann-whitney`` or ``threshold-only``.
    statistics: str
    notes: list[str] = field(default_factory=list)
    #: Why Prometheus could not be asked (it did not answer), when it could not.
    unanswered: str | None = None

    @property
    def verdict(self) -> Verdict:
        """``rollback`` when a gate fails, else ``inconclusive`` when one cannot be judged,
        else ``promote``: a failure is evidence even beside gates without data."""
        verdicts = {g.verdict for g in self.gates}
        if "fail" in verdicts:
            return "rollback"
        if "inconclusive" in verdicts or not self.gates:
            return "inconclusive"
        return "promote"

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS[self.verdict]

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "baseline": self.baseline.text,
            "canary": self.canary.text,
            "at": self.at,
            "statistics": self.statistics,
            "notes": self.notes,
            "unanswered": self.unanswered,
            "gates": [g.to_json() for g in self.gates],
        }

    def table(self) -> str:
        """The gates as a Markdown table, each gate's reason, the notes and the verdict."""
        head = ["gate", "window", "baseline", "canary", "threshold", "p-value", "verdict"]
        rows = [head, ["---"] * len(head)]
        for g in self.gates:
            op = "<=" if g.gate.better == "lower" else ">="
            rows.append(
                [
                    g.gate.name,
                    g.gate.window,
                    _show(g.gate, g.baseline),
                    _show(g.gate, g.canary),
                    f"{op} {_show(g.gate, g.threshold)}" if g.threshold is not None else "—",
                    f"{g.comparison.p_value:.2g}" if g.comparison else "—",
                    g.verdict,
                ]
            )
        lines = ["| " + " | ".join(row) + " |" for row in rows]
        lines += [f"{g.gate.name}: {g.verdict}: {g.reason}" for g in self.gates]
        lines += [f"note: {note}" for note in self.notes]
        failed = [g.gate.name for g in self.gates if g.verdict == "fail"]
        unsure = [g.gate.name for g in self.gates if g.verdict == "inconclusive"]
        detail = f" (failed: {', '.join(failed)})" if failed else ""
        if not failed and unsure:
            detail = f" (cannot judge: {', '.join(unsure)})"
        lines.append(f"verdict: {self.verdict}{detail}")
        return "\n".join(lines) + "\n"


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


#: How a value of each unit reads in the table and the reasons.
_UNITS: dict[str, Callable[[float], str]] = {
    "ratio": lambda v: f"{v:.2%}",
    "seconds": lambda v: f"{v * 1000:.1f} ms",
    "bytes": lambda v: f"{v / 2**20:.1f} MiB",
    "cores": lambda v: f"{v:.3g} cores",
}


def _show(gate: Gate, value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    show = _UNITS.get(gate.unit)
    return show(value) if show else f"{value:.4g}"


def mann_whitney() -> Test | None:
    """SciPy's one-sided Mann-Whitney U test, or None without SciPy."""
    try:
        # Through importlib: SciPy ships no type hints, and what it returns is read as Any.
        mannwhitneyu = importlib.import_module("scipy.stats").mannwhitneyu
    except ImportError:
        return None

    def test(canary: Sequence[float], baseline: Sequence[float], alternative: str) -> float:
        result = mannwhitneyu(canary, baseline, alternative=alternative)
        p = float(result.pvalue)
        # Every sample equal on both sides: no evidence of a difference.
        return 1.0 if math.isnan(p) else p

    return test


def hodges_lehmann(
    canary: Sequence[float], baseline: Sequence[float], confidence: float
) -> tuple[float, tuple[float, float]]:
    """The Hodges-Lehmann shift of ``canary`` from ``baseline`` and its confidence
    interval: order statistics of the pairwise differences, at ranks from the normal
    approximation of U's distribution (SciPy's ``mannwhitneyu`` gives no interval)."""
    differences = sorted(c - b for c in canary for b in baseline)
    n, m = len(canary), len(baseline)
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    k = math.floor(n * m / 2 - z * math.sqrt(n * m * (n + m + 1) / 12))
    k = max(0, min(k, len(differences) - 1))
    return statistics.median(differences), (differences[k], differences[-1 - k])


def compare(
    gate: Gate,
    baseline: Sequence[float],
    canary: Sequence[float],
    test: Test,
    significance: float,
) -> Comparison:
    """Whether ``canary``'s samples are worse than ``baseline``'s, in ``gate``'s direction."""
    alternative = "greater" if gate.better == "lower" else "less"
    p_value = test(canary, baseline, alternative)
    shift, interval = hodges_lehmann(canary, baseline, 1 - significance)
    return Comparison(p_value, shift, interval, (len(baseline), len(canary)))


def judge(
    config: CanaryConfig,
    baseline: Side,
    canary: Side,
    prometheus: Querier,
    *,
    at: float | None = None,
    test: Test | None = None,
) -> Judgement:
    """Every gate of ``config`` for ``canary`` against ``baseline``, as Prometheus sees
    them at ``at`` (default now). ``test`` defaults to :func:`mann_whitney`.

    Raises :class:`CanaryError` for input Prometheus rejects (a custom query it cannot
    parse, one that gives several series); a Prometheus that does not answer makes every
    gate from then on inconclusive, with the reason.
    """
    at = time.time() if at is None else at
    if test is None and config.statistics.enabled:
        test = mann_whitney()
    notes = []
    if not config.statistics.enabled:
        notes.append("statistics are off in the gates file: threshold-only verdicts")
        test = None
    elif test is None:
        notes.append(_NO_SCIPY)
    asker = _Asker(prometheus, at)
    results = []
    for gate in config.gates:
        if asker.down is not None:
            results.append(GateResult(gate, "inconclusive", asker.down))
            continue
        try:
            results.append(_gate(config, gate, baseline, canary, asker, test))
        except PrometheusError as exc:
            if exc.status is not None:
                raise _rejected(gate, exc) from None
            asker.down = f"Prometheus did not answer: {exc}"
            results.append(GateResult(gate, "inconclusive", asker.down))
    kind = "mann-whitney" if test is not None else "threshold-only"
    return Judgement(results, baseline, canary, at, kind, notes, asker.down)


def _rejected(gate: Gate, exc: PrometheusError) -> CanaryError:
    if gate.kind == "custom":
        return CanaryFileError(gate.source, f"{gate.where}: query", f"rejected: {exc}")
    return CanaryError(f"the {gate.name} gate's query was rejected: {exc}")


class _Asker:
    """The queries of one judgement, at one instant; request counts asked once a window."""

    def __init__(self, prometheus: Querier, at: float) -> None:
        self.prometheus = prometheus
        self.at = at
        self.down: str | None = None
        self._requests: dict[str, float | None] = {}

    def value(self, gate: Gate, side: Side, expr: str) -> float | None:
        samples = self.prometheus.query(expr, self.at)
        if len(samples) > 1:
            raise _several(gate, side, len(samples))
        return samples[0].value if samples else None

    def requests(self, gate: Gate, side: Side) -> float | None:
        expr = requests_query(side, gate.window)
        if expr not in self._requests:
            self._requests[expr] = self.value(gate, side, expr)
        return self._requests[expr]

    def samples(self, gate: Gate, side: Side, interval_s: float) -> list[float]:
        """The gate's value over each interval of its window, oldest first."""
        expr = value_query(gate, side, format_duration(interval_s))
        start = self.at - gate.window_s + interval_s
        series = self.prometheus.query_range(expr, start, self.at, interval_s)
        if len(series) > 1:
            raise _several(gate, side, len(series))
        points = series[0].points if series else []
        return [v for _, v in points if math.isfinite(v)]


def _several(gate: Gate, side: Side, count: int) -> CanaryError:
    message = f"gives {count} series for the {side.role}, not one: aggregate it (sum, avg)"
    if gate.kind == "custom":
        return CanaryFileError(gate.source, f"{gate.where}: query", message)
    return CanaryError(f"the {gate.name} gate's query {message}")


def _gate(
    config: CanaryConfig,
    gate: Gate,
    baseline: Side,
    canary: Side,
    asker: _Asker,
    test: Test | None,
) -> GateResult:
    sides = (baseline, canary)
    queries = {side.role: value_query(gate, side) for side in sides}
    result = GateResult(gate, "inconclusive", "", queries=queries)
    result.requests = {side.role: asker.requests(gate, side) for side in sides}
    missing = [s for s in sides if result.requests[s.role] is None]
    if missing:
        result.reason = "no request series for the " + " or the ".join(
            f"{s.role} (does --{s.role} {s.text} match a service Prometheus scrapes?)"
            for s in missing
        )
        return result
    few = [s.role for s in sides if (result.requests[s.role] or 0.0) < config.min_requests]
    if few:
        counts = ", ".join(f"{role} {result.requests[role]:.0f}" for role in few)
        result.reason = (
            f"too few requests over {gate.window}: {counts}, under the minimum of "
            f"{config.min_requests:g}"
        )
        return result
    result.baseline = asker.value(gate, baseline, queries["baseline"])
    result.canary = asker.value(gate, canary, queries["canary"])
    for side, value in ((baseline, result.baseline), (canary, result.canary)):
        if value is None:
            result.reason = f"no series for the {side.role}'s {gate.name}"
            return result
        if not math.isfinite(value):
            result.reason = f"the {side.role}'s {gate.name} is {value} (nothing to measure)"
            return result
    assert result.baseline is not None and result.canary is not None
    result.threshold = gate.threshold(result.baseline)
    breached = not gate.passes(result.baseline, result.canary)
    stats = config.statistics
    note = ""
    if test is not None:
        b = asker.samples(gate, baseline, stats.interval_s)
        c = asker.samples(gate, canary, stats.interval_s)
        if min(len(b), len(c)) >= stats.min_intervals:
            result.comparison = compare(gate, b, c, test, stats.significance)
        else:
            note = (
                f"; {min(len(b), len(c))} intervals of {stats.interval} on a side, fewer "
                f"than {stats.min_intervals}: the threshold alone decides"
            )
    shown = f"{_show(gate, result.canary)} against {_show(gate, result.threshold)} ({gate.rule})"
    comparison = result.comparison
    if not breached:
        result.verdict, result.reason = "pass", f"within the threshold: {shown}{note}"
        if comparison is not None:
            result.reason += f", {_stats(gate, comparison)}"
    elif comparison is None:
        result.verdict, result.reason = "fail", f"beyond the threshold: {shown}{note}"
    elif comparison.p_value < stats.significance:
        result.verdict = "fail"
        result.reason = f"beyond the threshold and significant: {shown}, {_stats(gate, comparison)}"
    else:
        result.verdict = "pass"
        result.reason = (
            f"beyond the threshold but not significant, within the noise: {shown}, "
            f"{_stats(gate, comparison)}"
        )
    return result


def _stats(gate: Gate, c: Comparison) -> str:
    def signed(value: float) -> str:
        text = _show(gate, abs(value))
        return ("-" if value < 0 else "+") + text

    low, high = c.interval
    return (
        f"p = {c.p_value:.2g}, shift {signed(c.shift)} ({signed(low)} to {signed(high)}) "
        f"over {c.samples[1]} canary and {c.samples[0]} baseline intervals"
    )
