"""``promtool test rules`` cases for the rules of an SLO file, and running them.

For every SLO the cases feed synthetic series through the generated rules and check what
an operator relies on: a fast burn pages within the minutes the burn factors promise, a
slow burn opens a ticket and does not page, a burn under the factors and traffic under
the minimum rate stay silent, the budget left reads what the events spent, and a service
whose metrics are gone raises the absent alert. The series are the ones a devkit service
exposes (same names, labels and ``le`` spelling), narrowed as the SLO narrows them.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devkit.conventions import BUILD_INFO, DURATION, ERRORS_TOTAL, REQUESTS_TOTAL, le
from devkit.exceptions import DevkitError
from devkit.ops import rules
from devkit.ops.promql import parse_matchers
from devkit.ops.slo import SLO, SLOFile, burn_alerts

__all__ = ["PromtoolMissing", "SeriesError", "run", "test_files"]

#: The test's sample interval and the rules' evaluation interval (promtool 2.42 needs it).
_INTERVAL_MIN = 1
#: Requests per minute of the synthetic traffic (ten a second), unless the SLO's minimum
#: request rate asks for more.
_REQUESTS_PER_MIN = 600.0
#: Minutes of healthy history before a fast burn: the longest page window (6 h), and some.
_HISTORY_MIN = 370


class SeriesError(DevkitError, ValueError):
    """The selector has a matcher no synthetic series can be built for."""


class PromtoolMissing(DevkitError, RuntimeError):
    """``promtool`` (from the Prometheus release or the Debian package) is not installed."""


@dataclass(frozen=True)
class _Traffic:
    """Requests and bad events per minute, over a number of minutes."""

    requests: float
    bad: float
    minutes: int


def _counter(phases: Sequence[tuple[float, int]]) -> str:
    """promtool's expanding notation for a counter growing ``per_min`` for ``minutes``,
    phase after phase: ``0+600x10 6540+540x4`` (one sample a minute, from t=0)."""
    parts = []
    value = 0.0
    first = True
    for per_min, minutes in phases:
        if first:
            parts.append(_expand(value, per_min, minutes))
            value = _after(value, per_min, minutes)
            first = False
        elif minutes > 0:
            value += per_min
            parts.append(_expand(value, per_min, minutes - 1))
            value = _after(value, per_min, minutes - 1)
    return " ".join(parts)


def _after(start: float, step: float, times: int) -> float:
    """The last value of ``a+bxn`` as promtool computes it, one addition at a time: a
    phase that starts a hair below it would read as a counter reset."""
    value = start
    for _ in range(times):
        value += step
    return value


def _expand(start: float, step: float, times: int) -> str:
    """``a+bxn``; ``axn`` when ``b`` is 0 (``a+0xn`` would read as ``a`` plus hex ``0xn``)."""
    if step == 0:
        return f"{_n(start)}x{times}"
    return f"{_n(start)}+{_n(step)}x{times}"


def _n(value: float) -> str:
    """Exactly the float (shortest round-trip form): promtool must read what was summed."""
    return str(int(value)) if value == int(value) and abs(value) < 1e15 else repr(value)


def _series_labels(slo_file: SLOFile, slo: SLO) -> dict[str, str]:
    """Labels a series must carry to match the SLO's selectors."""
    labels: dict[str, str] = {}
    if slo_file.selector:
        for matcher in parse_matchers(slo_file.selector):
            if matcher.op == "=":
                labels[matcher.name] = matcher.literal
            elif matcher.op == "=~":
                choice = matcher.literal.split("|")[0]
                if not choice or any(c in choice for c in "\\.+*?()[]{}^$"):
                    raise SeriesError(
                        f"selector {matcher}: rule tests need an equality matcher or a regex "
                        "of plain alternatives to build series from"
                    )
                labels[matcher.name] = choice
    labels["method"] = slo.sli.methods[0] if slo.sli.methods else "GET"
    labels["route"] = slo.sli.routes[0] if slo.sli.routes else "/checkout/{order_id}"
    return labels


def _input_series(
    slo_file: SLOFile, slo: SLO, phases: Sequence[_Traffic], with_build_info: bool = True
) -> list[dict[str, str]]:
    base = _series_labels(slo_file, slo)
    good = _counter([(p.requests - p.bad, p.minutes) for p in phases])
    bad = _counter([(p.bad, p.minutes) for p in phases])
    total = _counter([(p.requests, p.minutes) for p in phases])
    minutes = sum(p.minutes for p in phases)
    out = []
    if slo.sli.kind == "availability":
        out.append({"series": _name(REQUESTS_TOTAL, base, status_code="200"), "values": good})
        out.append({"series": _name(REQUESTS_TOTAL, base, status_code="500"), "values": bad})
        out.append({"series": _name(ERRORS_TOTAL, base, status_code="500"), "values": bad})
    else:
        assert slo.sli.threshold_s is not None
        bound = le(slo.sli.threshold_s)
        out.append({"series": _name(DURATION + "_count", base, status_code="200"), "values": total})
        out.append(
            {
                "series": _name(DURATION + "_bucket", base, status_code="200", le=bound),
                "values": good,
            }
        )
        out.append(
            {
                "series": _name(DURATION + "_bucket", base, status_code="200", le="+Inf"),
                "values": total,
            }
        )
    if with_build_info:
        info = {k: v for k, v in base.items() if k not in ("method", "route")}
        if slo_file.service:
            info["service"] = slo_file.service
        out.append({"series": _name(BUILD_INFO, info), "values": _expand(1, 0, minutes)})
    return out


def _name(metric: str, labels: dict[str, str], **more: str) -> str:
    merged = {**labels, **more}
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in merged.items())
    return f"{metric}{{{inner}}}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _alert_labels(slo_file: SLOFile, slo: SLO, severity: str) -> dict[str, str]:
    labels = {"slo": slo.name}
    if slo_file.service:
        labels["service"] = slo_file.service
    return {**labels, **slo.alerting.labels, "severity": severity}


def _expected(slo_file: SLOFile, slos: Sequence[SLO], alertname: str) -> list[dict[str, Any]]:
    """The alerts ``alertname`` of these SLOs, as promtool should find them firing."""
    group = rules.rule_groups(SLOFile(tuple(slos), slo_file.service, slo_file.selector))
    out = []
    for rule in (r for g in group["groups"] for r in g["rules"] if r.get("alert") == alertname):
        labels = dict(rule["labels"])
        if alertname == rules.ABSENT_ALERT and slo_file.selector:
            # absent() labels its result with the selector's equality matchers.
            for matcher in parse_matchers(slo_file.selector):
                if matcher.op == "=":
                    labels.setdefault(matcher.name, matcher.literal)
        out.append({"exp_labels": labels, "exp_annotations": dict(rule["annotations"])})
    return out


def _alert_test(
    slo_file: SLOFile, slo: SLO, minute: int, alertname: str, firing: bool
) -> dict[str, Any]:
    return {
        "eval_time": f"{minute}m",
        "alertname": alertname,
        "exp_alerts": _expected(slo_file, [slo], alertname) if firing else [],
    }


def _min_factor(severity: str, slo: SLO) -> float:
    return min(a.factor(slo.window_s) for a in burn_alerts(severity))  # type: ignore[arg-type]


def _requests_per_min(slo: SLO) -> float:
    # Long windows dilute a rate measured over less data than they span (a 3-day rate
    # after two hours of traffic reads a thirty-sixth of it): keep the minimum-rate gate
    # well clear even then.
    return max(_REQUESTS_PER_MIN, slo.alerting.min_request_rate * 60 * 400)


def _cases(slo_file: SLOFile, slo: SLO) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the alerts' cases, the budget's cases)."""
    page, ticket = rules.PAGE_ALERT, rules.TICKET_ALERT
    budget = slo.budget
    rpm = _requests_per_min(slo)
    cases: list[dict[str, Any]] = []
    budget_cases: list[dict[str, Any]] = []
    name = f"{slo.name} ({slo.sli.kind}, {slo.objective:g} % over {slo.window})"

    # A fast burn after healthy history: the page fires when the first page condition's
    # long window has seen enough of it (factor x long window / burn rate).
    ratio = min(1.0, 100 * budget)
    burn = ratio / budget
    fast = [a for a in burn_alerts("page") if burn > a.factor(slo.window_s)]
    if fast:
        detect = min(a.factor(slo.window_s) * a.long_s / 60 / burn for a in fast)
        burn_minutes = max(60, math.ceil(detect) + 15)
        phases = [_Traffic(rpm, 0.0, _HISTORY_MIN), _Traffic(rpm, rpm * ratio, burn_minutes)]
        before = _HISTORY_MIN + max(0, math.floor(detect) - 2)
        after = _HISTORY_MIN + math.ceil(detect) + 2
        cases.append(
            {
                "name": f"{name}: {ratio:.4g} of requests bad pages within {math.ceil(detect)} min",
                "interval": f"{_INTERVAL_MIN}m",
                "input_series": _input_series(slo_file, slo, phases),
                "alert_rule_test": [
                    _alert_test(slo_file, slo, _HISTORY_MIN - 1, page, False),
                    _alert_test(slo_file, slo, before, page, False),
                    _alert_test(slo_file, slo, after, page, True),
                ],
            }
        )

    # A slow burn: above a ticket factor, below every page factor.
    low_ticket, low_page = _min_factor("ticket", slo), _min_factor("page", slo)
    slow = math.sqrt(low_ticket * low_page)
    phases = [_Traffic(rpm, rpm * min(1.0, slow * budget), 180)]
    cases.append(
        {
            "name": f"{name}: a {slow:.3g}x burn opens a ticket and pages no one",
            "interval": f"{_INTERVAL_MIN}m",
            "input_series": _input_series(slo_file, slo, phases),
            "alert_rule_test": [
                _alert_test(slo_file, slo, minute, alert, alert == ticket)
                for minute in (30, 120)
                for alert in (page, ticket)
            ],
        }
    )

    # Under every factor, the service's metrics present: silence.
    phases = [_Traffic(rpm, rpm * low_ticket * 0.5 * budget, 180)]
    cases.append(
        {
            "name": f"{name}: a {low_ticket * 0.5:.3g}x burn stays silent",
            "interval": f"{_INTERVAL_MIN}m",
            "input_series": _input_series(slo_file, slo, phases),
            "alert_rule_test": [
                _alert_test(slo_file, slo, minute, alert, False)
                for minute in (30, 120)
                for alert in (page, ticket, rules.ABSENT_ALERT)
            ],
        }
    )

    # Few requests, all of them bad: below the minimum request rate nobody is paged.
    if slo.alerting.min_request_rate > 0:
        few = slo.alerting.min_request_rate * 60 / 2
        phases = [_Traffic(few, few, 120)]
        cases.append(
            {
                "name": f"{name}: every request failing at half the minimum rate pages no one",
                "interval": f"{_INTERVAL_MIN}m",
                "input_series": _input_series(slo_file, slo, phases),
                "alert_rule_test": [
                    _alert_test(slo_file, slo, minute, alert, False)
                    for minute in (15, 90)
                    for alert in (page, ticket)
                ],
            }
        )

    # An hour spending the budget at its sustainable rate (a 1x burn), then an hour without
    # a bad event: half the budget's share bad over the window, so half the budget left,
    # while the last hour's burn rate reads zero.
    phases = [_Traffic(rpm, rpm * budget, 60), _Traffic(rpm, 0.0, 60)]
    labels = {"slo": slo.name, **({"service": slo_file.service} if slo_file.service else {})}
    matchers = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())

    def expect(series: str, minute: int, value: float) -> dict[str, Any]:
        return {
            "expr": f"round({series}{{{matchers}}}, 0.001)",
            "eval_time": f"{minute}m",
            "exp_samples": [{"labels": _name("", labels), "value": value}],
        }

    budget_cases.append(
        {
            "name": f"{name}: an hour at a 1x burn, then none, leaves half the budget",
            "interval": f"{_INTERVAL_MIN}m",
            "input_series": _input_series(slo_file, slo, phases),
            # promtool evaluates the rules up to the last alert test's time only: this one
            # (a 1x burn pages no one) carries them to the last expression test.
            "alert_rule_test": [_alert_test(slo_file, slo, 120, page, False)],
            "promql_expr_test": [
                expect(rules.series.burn_rate("1h"), 60, 1.0),
                expect(rules.series.budget_remaining, 60, 0.0),
                expect(rules.series.burn_rate("1h"), 120, 0.0),
                expect(rules.series.budget_remaining, 120, 0.5),
            ],
        }
    )

    return cases, [*budget_cases, _count_case(slo_file, slo)]


def _absent_case(slo_file: SLOFile) -> dict[str, Any]:
    """No metrics at all: every SLO's absent alert, after its wait."""
    slo = slo_file.slos[0]
    phases = [_Traffic(_REQUESTS_PER_MIN, 0.0, 30)]
    expected = _expected(slo_file, slo_file.slos, rules.ABSENT_ALERT)
    return {
        "name": "a service without metrics raises the absent alert of every SLO",
        "interval": f"{_INTERVAL_MIN}m",
        "input_series": _input_series(slo_file, slo, phases, with_build_info=False),
        "alert_rule_test": [
            {"eval_time": "5m", "alertname": rules.ABSENT_ALERT, "exp_alerts": []},
            {"eval_time": "15m", "alertname": rules.ABSENT_ALERT, "exp_alerts": expected},
        ],
    }


def _count_case(slo_file: SLOFile, slo: SLO) -> dict[str, Any]:
    """Every request counted once over the SLO window."""
    rpm = _requests_per_min(slo)
    labels = {"slo": slo.name, **({"service": slo_file.service} if slo_file.service else {})}
    matchers = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return {
        "name": f"{slo.name}: every request of the SLO window counted once",
        "interval": f"{_INTERVAL_MIN}m",
        "input_series": _input_series(slo_file, slo, [_Traffic(rpm, 0.0, 60)]),
        "promql_expr_test": [
            {
                "expr": f"round({rules.series.requests_window}{{{matchers}}})",
                "eval_time": "60m",
                "exp_samples": [{"labels": _name("", labels), "value": rpm * 60}],
            }
        ],
    }


def test_files(slo_file: SLOFile, rule_file: str) -> dict[str, dict[str, Any]]:
    """The ``promtool test rules`` files (by file name) for ``slo_file``'s rules, kept in
    ``rule_file``.

    The budget is tested in a file of its own where the incremental mode is used: promtool
    evaluates every group at the test's evaluation interval, so there it is the
    incremental group's own (5 minutes), as in Prometheus.
    """
    alerts: list[dict[str, Any]] = []
    budgets: list[dict[str, Any]] = []
    for slo in slo_file.slos:
        alert_cases, budget_cases = _cases(slo_file, slo)
        alerts += alert_cases
        budgets += budget_cases
    alerts.append(_absent_case(slo_file))
    # promtool evaluates groups it is not told the order of in any order; Prometheus in
    # the file's. The file's order puts each SLO's increments before the sums of them.
    order = [group["name"] for group in rules.rule_groups(slo_file)["groups"]]
    files = {"tests.yml": _file(rule_file, _INTERVAL_MIN, order, alerts)}
    if slo_file.budget_evaluation == "incremental":
        interval = int(rules.INCREMENT.rstrip("m"))
        files["tests-increments.yml"] = _file(rule_file, interval, order, budgets)
    else:
        files["tests.yml"]["tests"] += budgets
    return files


def _file(
    rule_file: str, interval_min: int, order: list[str], tests: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "rule_files": [rule_file],
        "evaluation_interval": f"{interval_min}m",
        "group_eval_order": order,
        "tests": tests,
    }


test_files.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def run(
    slo_file: SLOFile, directory: Path | None = None, promtool: str = "promtool"
) -> tuple[bool, str]:
    """Write the rules and their tests (to ``directory``, else a temporary one) and run
    ``promtool test rules`` on them: (passed, what promtool printed)."""
    import yaml

    files = {"rules.yml": rules.render(rules.rule_groups(slo_file))}
    tests = test_files(slo_file, "rules.yml")
    for name, content in tests.items():
        files[name] = yaml.safe_dump(content, sort_keys=False, width=1000)
    return _promtool_test(files, list(tests), directory, promtool)


def _promtool_test(
    files: dict[str, str], tests: list[str], directory: Path | None, promtool: str
) -> tuple[bool, str]:
    """Write ``files`` (name -> text) and run ``promtool test rules`` on ``tests`` among
    them (the canary's rule tests run the same way)."""
    binary = shutil.which(promtool)
    if binary is None:
        raise PromtoolMissing(
            f"{promtool} not found: it comes with Prometheus (Debian: apt-get install prometheus)"
        )
    with tempfile.TemporaryDirectory(prefix="devkit-rules-") as tmp:
        where = directory or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (where / name).write_text(text, "utf-8")
        result = subprocess.run(
            [binary, "test", "rules", *tests],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    return result.returncode == 0, (result.stdout + result.stderr).strip()
