"""Pure helpers: summaries of round samples, overhead ratios and the CI gate decision.

Each round gives one number per variant (its mean cost per operation in that round). We
summarise rounds by their *median* because the machine is shared and noisy: one slow round
(another process, a GC burst) moves the mean but not the median. Min and max are shown so a
reader can see how noisy the run was.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "MIN_RATIO_SUFFIX",
    "GateReport",
    "Outcome",
    "Summary",
    "check_gate",
    "overhead",
    "overhead_ratio",
    "per_second",
    "summarize",
]

#: Budget keys ending with this are lower bounds (``logging_min_ratio`` -> outcome ``logging``).
MIN_RATIO_SUFFIX = "_min_ratio"

#: A measured ratio, or the reason it could not be measured (e.g. a variant is unavailable).
Outcome = float | str


@dataclass(frozen=True)
class Summary:
    """Median, minimum and maximum of one variant's per-round samples."""

    median: float
    minimum: float
    maximum: float
    rounds: int


def summarize(samples: Sequence[float]) -> Summary:
    """Summarise per-round samples; raises ``ValueError`` when there are none."""
    if not samples:
        raise ValueError("no samples to summarise")
    return Summary(
        median=statistics.median(samples),
        minimum=min(samples),
        maximum=max(samples),
        rounds=len(samples),
    )


def overhead(variant: Summary, bare: Summary) -> float:
    """What a variant adds per operation: ``median(variant) - median(bare)``."""
    return variant.median - bare.median


def overhead_ratio(variant_overhead: float, reference_overhead: float) -> float | None:
    """``variant_overhead / reference_overhead``; ``None`` when the reference adds nothing.

    A reference overhead at or below zero means the measurement could not tell it from
    noise, so a ratio against it would be meaningless (or infinitely large).
    """
    if reference_overhead <= 0:
        return None
    return variant_overhead / reference_overhead


def per_second(us_per_op: float) -> float:
    """Operations per second from microseconds per operation."""
    if us_per_op <= 0:
        raise ValueError(f"cost per operation must be positive, got {us_per_op}")
    return 1_000_000.0 / us_per_op


@dataclass
class GateReport:
    """The gate's verdict and one line per budget entry explaining it."""

    passed: bool = True
    lines: list[str] = field(default_factory=list)

    def fail(self, line: str) -> None:
        self.passed = False
        self.lines.append("FAIL " + line)

    def ok(self, line: str) -> None:
        self.lines.append("ok   " + line)


def check_gate(budget: Mapping[str, float], outcomes: Mapping[str, Outcome]) -> GateReport:
    """Compare measured outcomes with the budget.

    ``budget`` maps a suite to the highest allowed ``devkit overhead / stack overhead``,
    and ``<name>_min_ratio`` to the lowest allowed ratio for outcome ``<name>`` (logging
    throughput relative to stdlib). An outcome that is a string (devkit unavailable, stack
    overhead indistinguishable from zero) fails: a gate that cannot measure must not pass.
    Budget entries for suites that were not run are skipped; if nothing at all was
    checked the gate fails, so a misspelt ``--suite`` cannot produce a green CI.
    """
    report = GateReport()
    checked = 0
    for key, limit in sorted(budget.items()):
        is_min = key.endswith(MIN_RATIO_SUFFIX)
        name = key.removesuffix(MIN_RATIO_SUFFIX) if is_min else key
        if name not in outcomes:
            report.lines.append(f"skip {name}: not run")
            continue
        checked += 1
        outcome = outcomes[name]
        if isinstance(outcome, str):
            report.fail(f"{name}: cannot be measured: {outcome}")
        elif is_min and outcome < limit:
            report.fail(f"{name}: devkit/baseline throughput {outcome:.2f} < minimum {limit:.2f}")
        elif not is_min and outcome > limit:
            report.fail(f"{name}: devkit/stack overhead {outcome:.2f} > budget {limit:.2f}")
        else:
            relation = ">=" if is_min else "<="
            report.ok(f"{name}: {outcome:.2f} {relation} {limit:.2f}")
    if checked == 0:
        report.fail("no budgeted suite was run; nothing was checked")
    return report
