"""Where each SLO stands now: SLI, error budget left, burn rates and the alerts that fire.

``devkit slo status`` asks Prometheus the questions the recording rules answer, with the
same expressions (``devkit.ops.rules.sli_counts`` / ``sli_rates``), so it works whether the
rules are loaded or not and agrees with them when they are. The deployment gate reads
its exit status: a spent budget means no deploys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from devkit.ops import rules
from devkit.ops.prometheus import Prometheus
from devkit.ops.slo import SLO, SLOFile, burn_alerts, format_duration

__all__ = ["FiringAlert", "SLOStatus", "snapshot", "status"]


@dataclass(frozen=True)
class FiringAlert:
    """A burn-rate condition that holds now (what the generated alert would fire)."""

    severity: str
    long_window: str
    short_window: str
    factor: float


@dataclass
class SLOStatus:
    """One SLO over one window, as Prometheus sees it now."""

    slo: str
    objective: float
    window: str
    #: Events counted over the window; None when Prometheus has no series for them.
    requests: float | None
    bad: float | None
    burn_rates: dict[str, float | None] = field(default_factory=dict)
    alerts: list[FiringAlert] = field(default_factory=list)
    budget: float = 0.0

    @property
    def error_ratio(self) -> float | None:
        if self.requests is None or self.bad is None or not self.requests > 0:
            return None
        return max(0.0, min(1.0, self.bad / self.requests))

    @property
    def sli(self) -> float | None:
        ratio = self.error_ratio
        return None if ratio is None else 1.0 - ratio

    @property
    def budget_remaining(self) -> float | None:
        ratio = self.error_ratio
        return None if ratio is None else 1.0 - ratio / self.budget

    @property
    def state(self) -> str:
        """``no data`` (no series), ``no traffic``, ``spent``, ``burning`` (an alert would
        fire) or ``ok``."""
        if self.requests is None:
            return "no data"
        remaining = self.budget_remaining
        if remaining is None:
            return "no traffic"
        if remaining <= 0:
            return "spent"
        return "burning" if self.alerts else "ok"

    def to_json(self) -> dict[str, Any]:
        return {
            "slo": self.slo,
            "objective": self.objective,
            "window": self.window,
            "state": self.state,
            "requests": _finite(self.requests),
            "bad": _finite(self.bad),
            "sli": _finite(self.sli),
            "error_ratio": _finite(self.error_ratio),
            "budget_remaining": _finite(self.budget_remaining),
            "burn_rates": {w: _finite(v) for w, v in self.burn_rates.items()},
            "alerts": [
                {
                    "severity": a.severity,
                    "long_window": a.long_window,
                    "short_window": a.short_window,
                    "factor": a.factor,
                }
                for a in self.alerts
            ],
        }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def status(
    slo_file: SLOFile, prometheus: Prometheus, window_s: float | None = None
) -> list[SLOStatus]:
    """Every SLO's status, over ``window_s`` (default: each SLO's own window)."""
    return [_one(slo_file, slo, prometheus, window_s) for slo in slo_file.slos]


def _one(slo_file: SLOFile, slo: SLO, prometheus: Prometheus, window_s: float | None) -> SLOStatus:
    window = format_duration(window_s or slo.window_s)
    total, bad = rules.sli_counts(slo_file, slo, window)
    requests = prometheus.value(total)
    result = SLOStatus(
        slo=slo.name,
        objective=slo.objective_ratio,
        window=window,
        requests=requests,
        bad=prometheus.value(bad) if requests is not None else None,
        budget=slo.budget,
    )
    request_rates: dict[str, float | None] = {}
    for name in rules.alert_windows():
        rate, bad_rate = rules.sli_rates(slo_file, slo, name)
        request_rate = prometheus.value(rate)
        request_rates[name] = request_rate
        bad_value = prometheus.value(bad_rate) if request_rate is not None else None
        if request_rate and bad_value is not None and request_rate > 0:
            result.burn_rates[name] = (bad_value / request_rate) / slo.budget
        else:
            result.burn_rates[name] = None
    for severity in ("page", "ticket"):
        for alert in burn_alerts(severity):
            long, short = format_duration(alert.long_s), format_duration(alert.short_s)
            factor = alert.factor(slo.window_s)
            long_burn, short_burn = result.burn_rates[long], result.burn_rates[short]
            request_rate = request_rates[long] or 0.0
            if (
                long_burn is not None
                and short_burn is not None
                and long_burn > factor
                and short_burn > factor
                and request_rate >= slo.alerting.min_request_rate
            ):
                result.alerts.append(FiringAlert(severity, long, short, factor))
    return result


def snapshot(slo_file: SLOFile, exposition: str) -> list[SLOStatus]:
    """Every SLO over what one service counted since it started, read from one scrape of
    its ``/metrics`` (classic text or OpenMetrics) instead of Prometheus.

    For a quick look without a Prometheus (``devkit demo``): no burn rates, and the
    selector, which names target labels Prometheus adds, does not apply.
    """
    from prometheus_client import parser
    from prometheus_client.openmetrics import parser as openmetrics

    if exposition.rstrip().endswith("# EOF"):
        families = openmetrics.text_string_to_metric_families(exposition)  # type: ignore[no-untyped-call]
    else:
        families = parser.text_string_to_metric_families(exposition)
    samples = [sample for family in families for sample in family.samples]
    return [_from_samples(slo, samples) for slo in slo_file.slos]


def _from_samples(slo: SLO, samples: list[Any]) -> SLOStatus:
    from devkit.conventions import DURATION, ERRORS_TOTAL, REQUESTS_TOTAL, le

    def total(name: str, **extra: str) -> float | None:
        values = [
            s.value
            for s in samples
            if s.name == name
            and (not slo.sli.routes or s.labels.get("route") in slo.sli.routes)
            and (not slo.sli.methods or s.labels.get("method") in slo.sli.methods)
            and all(s.labels.get(k) == v for k, v in extra.items())
        ]
        return float(sum(values)) if values else None

    if slo.sli.kind == "availability":
        requests = total(REQUESTS_TOTAL)
        bad = total(ERRORS_TOTAL) or 0.0
    else:
        assert slo.sli.threshold_s is not None
        requests = total(DURATION + "_count")
        good = total(DURATION + "_bucket", le=le(slo.sli.threshold_s)) or 0.0
        bad = max(0.0, (requests or 0.0) - good)
    return SLOStatus(
        slo=slo.name,
        objective=slo.objective_ratio,
        window="since start",
        requests=requests,
        bad=bad if requests is not None else None,
        budget=slo.budget,
    )
