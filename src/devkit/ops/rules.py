"""Prometheus rules for an SLO file: recording rules, burn-rate alerts, the absent alert.

Per SLO, one group records, for every window an alert looks at, the request rate, the bad
event rate, their ratio and the burn rate (the error ratio over the error budget); over the
SLO's own window, the counted events (``increase``, never an average of short ratios, which
understates errors when traffic is uneven), the error ratio and the budget left. A second
group holds the multi-window multi-burn-rate alerts of the SRE workbook, with burn factors
derived from each SLO's window, and the alert for a service whose metrics are gone.

The expressions of the SLIs (:func:`sli_rates`, :func:`sli_counts`) are shared with
``devkit slo status``, which asks Prometheus the same questions without the rules loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from devkit.conventions import BUILD_INFO, DURATION, ERRORS_TOTAL, REQUESTS_TOTAL, le
from devkit.ops.promql import label_matcher, quote, selector
from devkit.ops.slo import SLO, SLOFile, burn_alerts, format_duration

__all__ = [
    "ABSENT_ALERT",
    "PAGE_ALERT",
    "PREFIX",
    "TICKET_ALERT",
    "Series",
    "alert_windows",
    "recorded",
    "render",
    "rule_groups",
    "series",
    "sli_counts",
    "sli_rates",
]

#: The prefix of every recorded series.
PREFIX = "devkit_slo"
PAGE_ALERT = "DevkitSLOBudgetBurnPage"
TICKET_ALERT = "DevkitSLOBudgetBurnTicket"
ABSENT_ALERT = "DevkitSLOMetricsAbsent"
#: How long the service's metrics may be missing before the absent alert fires.
ABSENT_FOR = "10m"
#: The evaluation interval of the incremental budget's group (and its increase window).
INCREMENT = "5m"


@dataclass(frozen=True)
class Series:
    """The names of the recorded series (labels ``slo`` and, with a service, ``service``)."""

    @staticmethod
    def requests_rate(window: str) -> str:
        """Requests per second over ``window``."""
        return f"{PREFIX}:requests:rate{window}"

    @staticmethod
    def bad_rate(window: str) -> str:
        """Bad events (errors, or requests slower than the threshold) per second."""
        return f"{PREFIX}:bad:rate{window}"

    @staticmethod
    def error_ratio(window: str) -> str:
        """Bad events over all events in ``window`` (0..1)."""
        return f"{PREFIX}:error_ratio:rate{window}"

    @staticmethod
    def burn_rate(window: str) -> str:
        """The error ratio over the error budget: 1 spends the budget in exactly the SLO
        window, 14.4 spends 2 % of a 30-day budget in an hour."""
        return f"{PREFIX}:burn_rate:rate{window}"

    requests_window = f"{PREFIX}:requests:slo_window"
    bad_window = f"{PREFIX}:bad:slo_window"
    error_ratio_window = f"{PREFIX}:error_ratio:slo_window"
    #: 1 - error ratio / budget over the SLO window: 1 untouched, 0 spent, below 0 overspent.
    budget_remaining = f"{PREFIX}:error_budget_remaining:ratio"
    objective = f"{PREFIX}:objective:ratio"
    budget = f"{PREFIX}:error_budget:ratio"
    requests_increment = f"{PREFIX}:requests:increase{INCREMENT}"
    bad_increment = f"{PREFIX}:bad:increase{INCREMENT}"


series = Series()


def alert_windows() -> tuple[str, ...]:
    """Every window an alert looks at, shortest first (5m ... 3d)."""
    seconds = sorted(
        {w for a in burn_alerts("page") + burn_alerts("ticket") for w in (a.long_s, a.short_s)}
    )
    return tuple(format_duration(s) for s in seconds)


def _matchers(slo_file: SLOFile, slo: SLO) -> list[str]:
    return [
        slo_file.selector,
        label_matcher("route", slo.sli.routes),
        label_matcher("method", slo.sli.methods),
    ]


def sli_rates(slo_file: SLOFile, slo: SLO, window: str) -> tuple[str, str]:
    """PromQL for (requests per second, bad events per second) over ``window``."""
    return _sli(slo_file, slo, "rate", window)


def sli_counts(slo_file: SLOFile, slo: SLO, window: str) -> tuple[str, str]:
    """PromQL for (requests, bad events) counted over ``window``."""
    return _sli(slo_file, slo, "increase", window)


def _sli(slo_file: SLOFile, slo: SLO, function: str, window: str) -> tuple[str, str]:
    matchers = _matchers(slo_file, slo)
    if slo.sli.kind == "availability":
        total = f"sum({function}({selector(REQUESTS_TOTAL, matchers)}[{window}]))"
        # The errors series appears with the first error: none yet is none bad.
        bad = f"(sum({function}({selector(ERRORS_TOTAL, matchers)}[{window}])) or vector(0))"
        return total, bad
    assert slo.sli.threshold_s is not None
    total = f"sum({function}({selector(DURATION + '_count', matchers)}[{window}]))"
    bucket = selector(DURATION + "_bucket", matchers, f"le={quote(le(slo.sli.threshold_s))}")
    good = f"sum({function}({bucket}[{window}]))"
    return total, f"clamp_min({total} - {good}, 0)"


def _labels(slo_file: SLOFile, slo: SLO) -> dict[str, str]:
    labels = {"slo": slo.name}
    if slo_file.service:
        labels["service"] = slo_file.service
    return labels


def _of(name: str, labels: dict[str, str]) -> str:
    """A recorded series of this SLO."""
    return selector(name, [f"{k}={quote(v)}" for k, v in labels.items()])


def recorded(slo_file: SLOFile, slo: SLO, name: str) -> str:
    """The selector of the series ``name`` the rules record for ``slo`` (dashboards)."""
    return _of(name, _labels(slo_file, slo))


def _number(value: float) -> str:
    return format(value, ".12g")


def rule_groups(slo_file: SLOFile) -> dict[str, Any]:
    """The rule file (``{"groups": [...]}``) for every SLO of ``slo_file``."""
    groups: list[dict[str, Any]] = []
    for slo in slo_file.slos:
        groups += _recording_groups(slo_file, slo)
        groups.append(_alert_group(slo_file, slo))
    return {"groups": groups}


def _recording_groups(slo_file: SLOFile, slo: SLO) -> list[dict[str, Any]]:
    labels = _labels(slo_file, slo)
    rules: list[dict[str, Any]] = []

    def record(name: str, expr: str) -> None:
        rules.append({"record": name, "expr": expr, "labels": dict(labels)})

    budget = _number(slo.budget)
    for window in alert_windows():
        total, bad = sli_rates(slo_file, slo, window)
        record(series.requests_rate(window), total)
        record(series.bad_rate(window), bad)
        record(
            series.error_ratio(window),
            f"{_of(series.bad_rate(window), labels)} / {_of(series.requests_rate(window), labels)}",
        )
        record(series.burn_rate(window), f"{_of(series.error_ratio(window), labels)} / {budget}")
    groups: list[dict[str, Any]] = []
    if slo_file.budget_evaluation == "incremental":
        # Each 5-minute increase is recorded once every 5 minutes, so summing them over
        # the window counts every event once, at the cost of a 5-minute step.
        increments: list[dict[str, Any]] = []
        total, bad = sli_counts(slo_file, slo, INCREMENT)
        increments.append(
            {"record": series.requests_increment, "expr": total, "labels": dict(labels)}
        )
        increments.append({"record": series.bad_increment, "expr": bad, "labels": dict(labels)})
        groups.append(
            {
                "name": f"devkit-slo-{slo.name}-increments",
                "interval": INCREMENT,
                "rules": increments,
            }
        )
        record(
            series.requests_window,
            f"sum_over_time({_of(series.requests_increment, labels)}[{slo.window}])",
        )
        record(
            series.bad_window, f"sum_over_time({_of(series.bad_increment, labels)}[{slo.window}])"
        )
    else:
        total, bad = sli_counts(slo_file, slo, slo.window)
        record(series.requests_window, total)
        record(series.bad_window, bad)
    record(
        series.error_ratio_window,
        f"{_of(series.bad_window, labels)} / {_of(series.requests_window, labels)}",
    )
    record(series.budget_remaining, f"1 - {_of(series.error_ratio_window, labels)} / {budget}")
    record(series.objective, f"vector({_number(slo.objective_ratio)})")
    record(series.budget, f"vector({budget})")
    # The increments first: the window's sum then includes the increment recorded at the
    # same evaluation (where the evaluation order follows the file, as in promtool).
    groups.append({"name": f"devkit-slo-{slo.name}", "rules": rules})
    return groups


def _alert_group(slo_file: SLOFile, slo: SLO) -> dict[str, Any]:
    labels = _labels(slo_file, slo)
    alerting = slo.alerting
    about = f"SLO {slo.name}" + (f" of {slo_file.service}" if slo_file.service else "")
    rules = []
    for severity, name, label in (
        ("page", PAGE_ALERT, alerting.page_severity),
        ("ticket", TICKET_ALERT, alerting.ticket_severity),
    ):
        conditions = []
        spans = []
        for alert in burn_alerts(severity):  # type: ignore[arg-type]
            factor = _number(alert.factor(slo.window_s))
            long, short = format_duration(alert.long_s), format_duration(alert.short_s)
            condition = (
                f"{_of(series.burn_rate(long), labels)} > {factor}"
                f" and {_of(series.burn_rate(short), labels)} > {factor}"
            )
            if alerting.min_request_rate > 0:
                condition += (
                    f" and {_of(series.requests_rate(long), labels)}"
                    f" >= {_number(alerting.min_request_rate)}"
                )
            conditions.append(f"({condition})")
            spans.append(f"{alert.budget_fraction:.0%} of the budget in {long}")
        rules.append(
            {
                "alert": name,
                "expr": "\nor\n".join(conditions),
                "labels": {**labels, **alerting.labels, "severity": label},
                "annotations": _annotations(
                    f"{about} is burning its {slo.window} error budget"
                    + (" fast" if severity == "page" else ""),
                    f"At this rate {' or '.join(spans)} would be spent "
                    f"(objective {slo.objective:g} %).",
                    alerting.runbook_url,
                ),
            }
        )
    service = f"service={quote(slo_file.service)}" if slo_file.service else ""
    rules.append(
        {
            "alert": ABSENT_ALERT,
            "expr": f"absent({selector(BUILD_INFO, slo_file.selector, service)})",
            "for": ABSENT_FOR,
            "labels": {**labels, **alerting.labels, "severity": alerting.page_severity},
            "annotations": _annotations(
                f"{about}: the service's metrics are missing",
                f"No {BUILD_INFO} series for {ABSENT_FOR}: the service is down or no longer "
                "scraped, and its SLO cannot be judged.",
                alerting.runbook_url,
            ),
        }
    )
    return {"name": f"devkit-slo-{slo.name}-alerts", "rules": rules}


def _annotations(summary: str, description: str, runbook: str | None) -> dict[str, str]:
    out = {"summary": summary, "description": description}
    if runbook:
        out["runbook_url"] = runbook
    return out


def render(rules: dict[str, Any]) -> str:
    """The rule file as YAML (needs the ``slo`` extra)."""
    import yaml

    return str(yaml.safe_dump(rules, sort_keys=False, width=1000, allow_unicode=True))
