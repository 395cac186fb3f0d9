"""The SLO file: service level objectives over devkit's own metrics, validated strictly.

``load(path)`` reads an ``slo.yaml`` (YAML needs the ``slo`` extra) and returns an
:class:`SLOFile`; ``parse(data, source)`` does the same for data already loaded. Every
mistake is an :class:`SLOFileError` naming the file, the SLO, the field and what is
expected, because a rule generated from a wrong field is silently wrong: a latency
threshold that is not a bucket bound matches no series, a route typed differently from
its template counts nothing. ``slo.schema.json`` in this package describes the same format
for editors.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, NoReturn

from devkit.config import UNMATCHED_ROUTE
from devkit.conventions import DEFAULT_BUCKETS, STANDARD_METHODS, le
from devkit.exceptions import DevkitError
from devkit.ops.promql import MatcherError, parse_matchers

__all__ = [
    "ALERT_WINDOWS",
    "SLI",
    "SLO",
    "Alerting",
    "BurnAlert",
    "SLOFile",
    "SLOFileError",
    "burn_alerts",
    "format_duration",
    "load",
    "parse",
    "parse_duration",
    "schema",
]

SLIKind = Literal["availability", "latency"]
_NAME = re.compile(r"[a-z0-9_-]+")
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DAY = 86400.0
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_RESERVED_LABELS = frozenset({"slo", "severity", "service", "alertname", "__name__"})


class SLOFileError(DevkitError, ValueError):
    """A bad SLO file: names the file, the item and field, and what is expected."""

    def __init__(self, source: str, where: str, message: str) -> None:
        self.source = source
        self.where = where
        super().__init__(f"{source}: {where}: {message}" if where else f"{source}: {message}")


#: What a file checker raises: built from (file, item and field, message).
_FileError = Callable[[str, str, str], Exception]


@dataclass(frozen=True)
class SLI:
    """What counts as a bad event: an error (availability) or a slow request (latency)."""

    kind: SLIKind
    #: Latency SLIs: requests slower than this many seconds are bad (a bucket bound).
    threshold_s: float | None = None
    #: Route templates and methods the SLI is narrowed to (empty: every one).
    routes: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()


@dataclass(frozen=True)
class Alerting:
    """How the burn-rate alerts of an SLO are labelled and when they stay quiet."""

    page_severity: str = "critical"
    ticket_severity: str = "warning"
    labels: Mapping[str, str] = field(default_factory=dict)
    runbook_url: str | None = None
    #: Requests per second over an alert's long window below which it does not fire:
    #: a handful of requests must not page anyone. Default: one request a minute.
    min_request_rate: float = 1 / 60


@dataclass(frozen=True)
class SLO:
    """One objective: ``objective`` percent of events good over ``window_s`` seconds."""

    name: str
    objective: float
    sli: SLI
    window_s: float = 30 * _DAY
    description: str = ""
    alerting: Alerting = field(default_factory=Alerting)

    @property
    def objective_ratio(self) -> float:
        """0.999 for 99.9 %."""
        return round(self.objective / 100.0, 12)

    @property
    def budget(self) -> float:
        """The error budget: the share of events allowed to be bad (0.001 for 99.9 %)."""
        return round(1.0 - self.objective / 100.0, 12)

    @property
    def window(self) -> str:
        return format_duration(self.window_s)


@dataclass(frozen=True)
class SLOFile:
    """An SLO file: its SLOs and what every rule about them shares."""

    slos: tuple[SLO, ...]
    service: str | None = None
    #: PromQL label matchers added to every selector (``job="checkout"``): which target's
    #: series the SLOs are about, in a Prometheus that scrapes several.
    selector: str = ""
    #: ``exact``: long windows from the counters' increase over the whole window;
    #: ``incremental``: from 5-minute increases recorded every 5 minutes and summed
    #: (cheaper to evaluate, no double counting).
    budget_evaluation: Literal["exact", "incremental"] = "exact"
    source: str = "<slo file>"


@dataclass(frozen=True)
class BurnAlert:
    """One multi-window burn-rate condition (the SRE workbook's table)."""

    severity: Literal["page", "ticket"]
    #: The share of the SLO window's budget spent within ``long_s`` that fires it.
    budget_fraction: float
    long_s: float
    short_s: float

    def factor(self, window_s: float) -> float:
        """The burn rate at which ``budget_fraction`` of the budget goes in ``long_s``:
        14.4 for 2 % in 1 h of a 30-day budget, 3.36 for a 7-day one."""
        return round(self.budget_fraction * window_s / self.long_s, 6)


#: Page on 2 % of the budget in 1 h (5 min short window) or 5 % in 6 h (30 min); ticket
#: on 10 % in 1 d (2 h) or 10 % in 3 d (6 h). The burn factors follow from each SLO's
#: own window.
ALERT_WINDOWS: tuple[BurnAlert, ...] = (
    BurnAlert("page", 0.02, 3600.0, 300.0),
    BurnAlert("page", 0.05, 6 * 3600.0, 1800.0),
    BurnAlert("ticket", 0.10, _DAY, 2 * 3600.0),
    BurnAlert("ticket", 0.10, 3 * _DAY, 6 * 3600.0),
)
_LONGEST_ALERT_WINDOW = max(a.long_s for a in ALERT_WINDOWS)


def burn_alerts(severity: Literal["page", "ticket"]) -> tuple[BurnAlert, ...]:
    return tuple(a for a in ALERT_WINDOWS if a.severity == severity)


def parse_duration(text: str) -> float:
    """``30d``, ``6h``, ``1h30m`` (Prometheus's syntax, without ``y``) in seconds."""
    if not isinstance(text, str) or not text or _DURATION.sub("", text):
        raise ValueError(text)
    return sum(int(n) * _UNITS[unit] for n, unit in _DURATION.findall(text))


def format_duration(seconds: float) -> str:
    """The shortest Prometheus duration for ``seconds`` in days and smaller units
    (``30d``, ``7d``, ``5m``, ``1h30m``): SLO windows read in days."""
    out = []
    rest = round(seconds * 1000)
    for unit, size in (("d", 86400000), ("h", 3600000), ("m", 60000)):
        count, rest = divmod(rest, size)
        if count:
            out.append(f"{count}{unit}")
    count, rest = divmod(rest, 1000)
    if count:
        out.append(f"{count}s")
    if rest:
        out.append(f"{rest}ms")
    return "".join(out) or "0s"


def schema() -> dict[str, Any]:
    """The JSON Schema of the SLO file (shipped as ``devkit/ops/slo.schema.json``)."""
    text = resources.files("devkit.ops").joinpath("slo.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def load(path: str | Path, *, buckets: Sequence[float] = DEFAULT_BUCKETS) -> SLOFile:
    """Read and validate an SLO file (YAML or JSON)."""
    return parse(_read(path, SLOFileError, "slo"), str(path), buckets=buckets)


def _read(path: str | Path, error: _FileError, extra: str) -> object:
    """The data of a YAML or JSON file (YAML needs PyYAML, which ``extra`` installs); every
    failure an ``error`` naming the file (the canary's gates file is read the same way)."""
    source = str(path)
    try:
        text = Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(source, "", f"cannot be read: {exc}") from None
    try:
        import yaml
    except ImportError:
        if not source.endswith(".json"):
            raise error(
                source,
                "",
                f"reading YAML needs PyYAML: pip install 'devkit-observability[{extra}]'",
            ) from None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise error(source, "", f"not valid JSON: {exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(source, where, f"not valid YAML: {problem}") from None


def parse(
    data: object, source: str = "<slo file>", *, buckets: Sequence[float] = DEFAULT_BUCKETS
) -> SLOFile:
    """Validate loaded data (a mapping) into an :class:`SLOFile`.

    ``buckets`` are the duration histogram's bounds of the service (``buckets_for`` its
    slow threshold): a latency threshold must be one of them.
    """
    check = _Checker(source)
    top = check.mapping(data, "", "a mapping with a 'slos' list")
    check.only(top, "", {"service", "selector", "slos", "budget_evaluation"})
    service = check.optional_text(top, "", "service")
    selector = check.optional_text(top, "", "selector") or ""
    if selector:
        try:
            parse_matchers(selector)
        except MatcherError as exc:
            raise SLOFileError(source, "selector", str(exc)) from None
    evaluation = top.get("budget_evaluation", "exact")
    if evaluation not in ("exact", "incremental"):
        check.fail("budget_evaluation", evaluation, "exact or incremental")
    items = top.get("slos")
    if not isinstance(items, list) or not items:
        check.fail("slos", items, "a non-empty list of SLOs")
    slos = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        slo = _parse_slo(check, index, item, tuple(sorted(set(buckets))))
        if slo.name in seen:
            raise SLOFileError(source, f"slos[{index}] ({slo.name}): name", "already used")
        seen.add(slo.name)
        slos.append(slo)
    return SLOFile(tuple(slos), service, selector, evaluation, source)


def _parse_slo(check: _Checker, index: int, item: object, buckets: tuple[float, ...]) -> SLO:
    where = f"slos[{index}]"
    slo = check.mapping(item, where, "a mapping with name, objective and sli")
    name = slo.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        check.fail(f"{where}: name", name, "[a-z0-9_-]+")
    where = f"slos[{index}] ({name})"
    check.only(slo, where, {"name", "objective", "window", "description", "sli", "alerting"})
    objective = slo.get("objective")
    if (
        isinstance(objective, bool)
        or not isinstance(objective, int | float)
        or not math.isfinite(objective)
        or not 0 < objective < 100
    ):
        check.fail(f"{where}: objective", objective, "a percentage above 0 and below 100")
    window_s = 30 * _DAY
    if "window" in slo:
        try:
            window_s = parse_duration(slo["window"])
        except ValueError:
            check.fail(f"{where}: window", slo["window"], "a duration such as 30d, 28d or 7d")
        if not _LONGEST_ALERT_WINDOW <= window_s <= 366 * _DAY:
            check.fail(
                f"{where}: window",
                slo["window"],
                "from 3d (the longest alert window) to 366d",
            )
    description = check.optional_text(slo, where, "description") or ""
    sli = _parse_sli(check, f"{where}: sli", slo.get("sli"), buckets)
    alerting = _parse_alerting(check, f"{where}: alerting", slo.get("alerting", {}))
    return SLO(name, float(objective), sli, window_s, description, alerting)


def _parse_sli(check: _Checker, where: str, value: object, buckets: tuple[float, ...]) -> SLI:
    sli = check.mapping(value, where, "a mapping with a kind")
    kind = sli.get("kind")
    if kind not in ("availability", "latency"):
        check.fail(f"{where}.kind", kind, "availability or latency")
    allowed = {"kind", "routes", "methods"} | ({"threshold_s"} if kind == "latency" else set())
    check.only(sli, where, allowed)
    threshold: float | None = None
    if kind == "latency":
        threshold = _threshold(check, f"{where}.threshold_s", sli.get("threshold_s"), buckets)
    routes = check.strings(sli, where, "routes")
    for route in routes:
        if not (route.startswith("/") or route == UNMATCHED_ROUTE):
            check.fail(f"{where}.routes", route, "a route template such as /items/{item_id}")
    methods = check.strings(sli, where, "methods")
    for method in methods:
        if method not in STANDARD_METHODS and method != "_OTHER":
            check.fail(f"{where}.methods", method, "standard methods in upper case, or _OTHER")
    return SLI(kind, threshold, routes, methods)


def _threshold(check: _Checker, where: str, value: object, buckets: tuple[float, ...]) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        check.fail(where, value, "seconds, one of the bucket bounds " + _bounds(buckets))
    for bound in buckets:
        if math.isclose(bound, float(value), rel_tol=1e-9):
            return bound
    below = [b for b in buckets if b < value]
    above = [b for b in buckets if b > value]
    nearest = " and ".join(le(b) for b in (below[-1:] + above[:1]))
    raise SLOFileError(
        check.source,
        where,
        f"{value!r} is not a bucket bound of http_request_duration_seconds, so no series "
        f"would match it; the nearest bounds are {nearest} (all: {_bounds(buckets)})",
    )


def _bounds(buckets: Sequence[float]) -> str:
    return ", ".join(le(b) for b in buckets)


def _parse_alerting(check: _Checker, where: str, value: object) -> Alerting:
    alerting = check.mapping(value, where, "a mapping")
    check.only(
        alerting,
        where,
        {"page_severity", "ticket_severity", "labels", "runbook_url", "min_request_rate"},
    )
    page = check.optional_text(alerting, where, "page_severity") or "critical"
    ticket = check.optional_text(alerting, where, "ticket_severity") or "warning"
    labels = alerting.get("labels", {})
    if not isinstance(labels, dict):
        check.fail(f"{where}.labels", labels, "a mapping of label names to strings")
    for key, label in labels.items():
        if not isinstance(key, str) or not _LABEL_NAME.fullmatch(key) or key in _RESERVED_LABELS:
            check.fail(
                f"{where}.labels",
                key,
                "label names [a-zA-Z_][a-zA-Z0-9_]* other than "
                + ", ".join(sorted(_RESERVED_LABELS)),
            )
        if not isinstance(label, str):
            check.fail(f"{where}.labels.{key}", label, "a string")
    runbook = check.optional_text(alerting, where, "runbook_url")
    rate = alerting.get("min_request_rate", Alerting.min_request_rate)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate < math.inf:
        check.fail(f"{where}.min_request_rate", rate, "requests per second, 0 or more")
    return Alerting(page, ticket, dict(labels), runbook, float(rate))


class _Checker:
    """Raises :class:`SLOFileError` (or the ``error`` given) naming this file."""

    def __init__(self, source: str, error: _FileError = SLOFileError) -> None:
        self.source = source
        self.error = error

    def fail(self, where: str, value: object, expected: str) -> NoReturn:
        raise self.error(self.source, where, f"{value!r} is invalid: expected {expected}")

    def mapping(self, value: object, where: str, expected: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(where or "top level", value, expected)
        return value

    def only(self, value: Mapping[str, Any], where: str, allowed: set[str]) -> None:
        unknown = sorted(str(k) for k in value if k not in allowed)
        if unknown:
            raise self.error(
                self.source,
                f"{where}: {unknown[0]}" if where else unknown[0],
                "unknown field; expected one of " + ", ".join(sorted(allowed)),
            )

    def optional_text(self, value: Mapping[str, Any], where: str, key: str) -> str | None:
        text = value.get(key)
        if text is None:
            return None
        if not isinstance(text, str) or not text.strip() or len(text) > 1024:
            self.fail(f"{where}: {key}" if where else key, text, "a non-empty string")
        return text.strip()

    def strings(self, value: Mapping[str, Any], where: str, key: str) -> tuple[str, ...]:
        items = value.get(key, [])
        if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
            self.fail(f"{where}.{key}", items, "a list of non-empty strings")
        return tuple(dict.fromkeys(items))
