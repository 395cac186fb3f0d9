"""A Grafana dashboard for a devkit service, and the data source file that goes with it.

:func:`dashboard` returns the dashboard JSON model (RED panels per route, saturation,
devkit's own health and, given an SLO file, one row per SLO over the series the SLO rules
record); :func:`datasources` and :func:`render_datasources` return Grafana's provisioning
file for the Prometheus data source whose exemplars open the kept trace and its logs.

Both are built from one :class:`DashboardOptions`, so the data source uid the dashboard
selects is the one the file provisions. Every query is PromQL over the names in
:mod:`devkit.conventions` and :class:`devkit.ops.rules.Series`, never retyped. The
dashboard is built with ``grafana-foundation-sdk`` and the YAML with PyYAML (both in the
``slo`` extra), imported inside the functions so that ``import devkit`` needs neither.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from devkit.conventions import (
    BUILD_INFO,
    DURATION,
    ERRORS_TOTAL,
    IN_PROGRESS,
    INTERNAL_ERRORS_TOTAL,
    LOOP_LAG,
    REQUESTS_TOTAL,
    SPANS_DROPPED_TOTAL,
    TRACES_SAMPLED_TOTAL,
)
from devkit.exceptions import DevkitError
from devkit.ops import rules
from devkit.ops.promql import quote, selector
from devkit.ops.rules import Series, alert_windows
from devkit.ops.slo import SLO, SLOFile, parse_duration

if TYPE_CHECKING:
    from grafana_foundation_sdk.builders import dashboard as gd
    from grafana_foundation_sdk.builders import prometheus as gp
    from grafana_foundation_sdk.cog.builder import Builder
    from grafana_foundation_sdk.models import dashboard as gm

    Panel = Builder[gm.Panel]

__all__ = [
    "DATASOURCE_VARIABLE",
    "SCHEMA_VERSION",
    "TAGS",
    "TRACE_ID_LABEL",
    "DashboardOptionError",
    "DashboardOptions",
    "dashboard",
    "datasources",
    "default_logs_query",
    "expressions",
    "render_datasources",
    "uid_for",
]

#: The dashboard schema version of Grafana 12. The SDK release pinned for Grafana 11.6
#: writes 41; the one migration between them (``hideFrom.tooltip`` in field overrides)
#: touches nothing this dashboard uses, and Grafana 11 loads a newer version as it is.
SCHEMA_VERSION = 42
TAGS = ("devkit",)
#: The template variable holding the Prometheus data source; every panel queries it.
DATASOURCE_VARIABLE = "datasource"
#: The exemplar label devkit writes the kept trace's id under (not Tempo's ``traceID``).
TRACE_ID_LABEL = "trace_id"
#: Grafana's data link variable for the value of the exemplar's label.
_TRACE_ID_VALUE = "${__value.raw}"
_UID = re.compile(r"[a-zA-Z0-9_-]{1,40}")
_PREFIX = "devkit-"
# Every panel filters on these variables; request panels on the route as well.
_TARGET = ('job=~"$job"', 'instance=~"$instance"')
_ROUTE = 'route=~"$route"'
_RATE = "$__rate_interval"
_QUANTILES = (0.5, 0.95, 0.99)


class DashboardOptionError(DevkitError, ValueError):
    """A bad :class:`DashboardOptions` field; ``option`` names it (the command line's flag
    is the same name with dashes)."""

    def __init__(self, option: str, problem: str) -> None:
        self.option = option
        self.problem = problem
        super().__init__(f"{option}: {problem}")


@dataclass(frozen=True)
class DashboardOptions:
    """What the dashboard and the data source file are generated for.

    An empty ``traces_uid`` or ``logs_uid`` leaves that exemplar destination out.
    ``logs_query`` is LogQL in which ``${__value.raw}`` stands for the trace id; empty:
    :func:`default_logs_query` for ``service``.
    """

    service: str
    prometheus_uid: str = "prometheus"
    prometheus_name: str = "Prometheus"
    prometheus_url: str = "http://prometheus:9090"
    #: Prometheus's scrape interval, which Grafana needs to size ``$__rate_interval``.
    scrape_interval: str = "15s"
    traces_uid: str = "tempo"
    logs_uid: str = "loki"
    logs_query: str = ""

    def __post_init__(self) -> None:
        for name, check in _CHECKS.items():
            try:
                check(getattr(self, name))
            except ValueError as exc:
                raise DashboardOptionError(name, str(exc)) from None

    @property
    def effective_logs_query(self) -> str:
        """The LogQL the logs destination runs."""
        return self.logs_query or default_logs_query(self.service)


def _expect(valid: bool, value: str, expected: str) -> None:
    if not valid:
        raise ValueError(f"{value!r} is invalid: expected {expected}")


def _uid(value: str, optional: bool = True) -> None:
    _expect(
        bool((optional and value == "") or _UID.fullmatch(value)),
        value,
        "a Grafana uid: 1 to 40 letters, digits, '-' or '_'"
        + (" (empty: none)" if optional else ""),
    )


def _url(value: str) -> None:
    parts = urllib.parse.urlsplit(value)
    # $NAME is Grafana's provisioning syntax for an environment variable: left to Grafana.
    valid = value.startswith("$") or (parts.scheme in ("http", "https") and bool(parts.netloc))
    _expect(valid, value, "an http(s) URL such as http://prometheus:9090")


def _interval(value: str) -> None:
    try:
        valid = parse_duration(value) > 0
    except ValueError:
        valid = False
    _expect(valid, value, "a duration such as 15s or 1m")


_CHECKS: dict[str, Callable[[str], None]] = {
    "service": lambda v: _expect(bool(v.strip()), v, "a service name"),
    "prometheus_uid": lambda v: _uid(v, optional=False),
    "prometheus_name": lambda v: _expect(bool(v.strip()), v, "a data source name"),
    "prometheus_url": _url,
    "scrape_interval": _interval,
    "traces_uid": _uid,
    "logs_uid": _uid,
    "logs_query": lambda v: _expect(
        v == "" or _TRACE_ID_VALUE in v, v, f"LogQL with {_TRACE_ID_VALUE} where the trace id goes"
    ),
}


def default_logs_query(service: str) -> str:
    """LogQL for the logs of one trace of ``service``: devkit's JSON logs carry
    ``trace_id``; the line filter first lets Loki skip lines before parsing them."""
    return (
        f"{{service_name={quote(service)}}} |= {quote(_TRACE_ID_VALUE)}"
        f" | json | {TRACE_ID_LABEL}={quote(_TRACE_ID_VALUE)}"
    )


def uid_for(service: str) -> str:
    """The dashboard uid for ``service``: the same on every run, so importing it again
    replaces the dashboard rather than adding one. A name that is not already a short,
    plain uid gets a hash so that two names never share one."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", service.lower()).strip("-") or "service"
    if slug == service and len(_PREFIX + slug) <= 40:
        return _PREFIX + slug
    digest = hashlib.sha256(service.encode()).hexdigest()[:8]
    return f"{_PREFIX}{slug[: 40 - len(_PREFIX) - 9]}-{digest}"


# -- the data source file ---------------------------------------------------------------------


def datasources(options: DashboardOptions) -> dict[str, Any]:
    """Grafana's data source provisioning file (``apiVersion: 1``) as data: the Prometheus
    data source, its exemplars' ``trace_id`` linked to the trace and to the trace's logs.

    The trace opens in the traces data source by uid (Grafana queries it with the trace id,
    which is what Tempo expects). A uid destination can only send the bare id, so the logs
    open through a URL: Explore on the logs data source with the LogQL query.
    """
    destinations: list[dict[str, str]] = []
    if options.traces_uid:
        destinations.append(
            {
                "name": TRACE_ID_LABEL,
                "datasourceUid": options.traces_uid,
                "urlDisplayLabel": "Open the trace",
            }
        )
    if options.logs_uid:
        destinations.append(
            {
                "name": TRACE_ID_LABEL,
                "url": _explore_url(options.logs_uid, options.effective_logs_query),
                "urlDisplayLabel": "Logs of the trace",
            }
        )
    json_data: dict[str, Any] = {
        "httpMethod": "POST",
        "timeInterval": options.scrape_interval,
    }
    if destinations:
        json_data["exemplarTraceIdDestinations"] = destinations
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": options.prometheus_name,
                "type": "prometheus",
                "uid": options.prometheus_uid,
                "access": "proxy",
                "url": options.prometheus_url,
                "jsonData": json_data,
            }
        ],
    }


def render_datasources(options: DashboardOptions) -> str:
    """The data source file as YAML (needs PyYAML, in the ``slo`` extra).

    Grafana expands ``$NAME`` and ``${NAME}`` in provisioning files as environment
    variables, which would erase ``${__value.raw}``: the exemplar destinations' ``$`` are
    written ``$$``, Grafana's escape.
    """
    import yaml

    data = datasources(options)
    for source in data["datasources"]:
        for destination in source["jsonData"].get("exemplarTraceIdDestinations", []):
            for key, value in destination.items():
                destination[key] = value.replace("$", "$$")
    header = "# Grafana data source provisioning, generated by `devkit dashboard --datasources`.\n"
    return header + str(yaml.safe_dump(data, sort_keys=False, width=1000, allow_unicode=True))


def _explore_url(logs_uid: str, query: str) -> str:
    """Grafana Explore on ``logs_uid`` running ``query`` over the time range in view.

    Percent-encoded except for the ``${...}`` variables, which Grafana replaces when the
    link is followed.
    """
    pane = {
        "datasource": logs_uid,
        "queries": [{"refId": "A", "datasource": {"type": "loki", "uid": logs_uid}, "expr": query}],
        "range": {"from": "${__from}", "to": "${__to}"},
    }
    panes = urllib.parse.quote(json.dumps({"logs": pane}, separators=(",", ":")), safe="")
    panes = re.sub(r"%24%7B([\w.:]+)%7D", r"${\1}", panes)
    return f"/explore?schemaVersion=1&panes={panes}"


# -- the dashboard ----------------------------------------------------------------------------


def dashboard(options: DashboardOptions, slo_file: SLOFile | None = None) -> dict[str, Any]:
    """The dashboard JSON model (what Grafana's import and provisioning take).

    Rows: overview, traffic and errors, latency (with exemplars), saturation, devkit's own
    health, then one row per SLO of ``slo_file``.
    """
    from grafana_foundation_sdk.builders import dashboard as gd
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import DashboardCursorSync

    board = _Board(options)
    builder = (
        gd.Dashboard(f"devkit / {options.service}")
        .uid(uid_for(options.service))
        .description(
            f"RED metrics, saturation and tracing health of {options.service}, "
            "generated by `devkit dashboard`."
        )
        .tags(list(TAGS))
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .time("now-1h", "now")
        .refresh("1m")
    )
    for variable in board.variables():
        builder = builder.with_variable(variable)
    for row, panels in board.rows(slo_file):
        builder = builder.with_row(row)
        for panel in panels:
            builder = builder.with_panel(panel)
    model = builder.build()
    # The SDK's builder has no setter for it.
    model.schema_version = SCHEMA_VERSION
    result: dict[str, Any] = json.loads(JSONEncoder().encode(model))
    return result


def expressions(model: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Every (panel title, PromQL) of a dashboard model, rows' nested panels included."""
    for panel in model.get("panels", []):
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                if "expr" in target:
                    yield inner.get("title", ""), target["expr"]


class _Board:
    """The dashboard's pieces; numbers the panels so links to a panel stay valid."""

    def __init__(self, options: DashboardOptions) -> None:
        from grafana_foundation_sdk.models.dashboard import DataSourceRef

        self.options = options
        self.datasource = DataSourceRef(type_val="prometheus", uid=f"${{{DATASOURCE_VARIABLE}}}")
        self._ids = iter(range(1, 10_000))

    # -- variables

    def variables(self) -> list[Builder[gm.VariableModel]]:
        from grafana_foundation_sdk.builders import dashboard as gd
        from grafana_foundation_sdk.models.dashboard import (
            VariableOption,
            VariableRefresh,
            VariableSort,
        )

        o = self.options
        source = (
            gd.DatasourceVariable(DATASOURCE_VARIABLE)
            .label("Data source")
            .type("prometheus")
            .current(VariableOption(selected=True, text=o.prometheus_name, value=o.prometheus_uid))
        )

        def query(name: str, label: str, metric: str, *matchers: str) -> gd.QueryVariable:
            return (
                gd.QueryVariable(name)
                .label(label)
                .datasource(self.datasource)
                .query(f"label_values({selector(metric, *matchers)}, {name})")
                .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
                .sort(VariableSort.ALPHABETICAL_ASC)
            )

        service = query("service", "Service", BUILD_INFO).current(
            VariableOption(selected=True, text=o.service, value=o.service)
        )
        every = VariableOption(selected=True, text="All", value="$__all")
        # Request metrics carry target labels, not the service: the service picks its jobs.
        job = (
            query("job", "Job", BUILD_INFO, 'service="$service"')
            .multi(True)
            .include_all(True)
            .current(every)
        )
        # ".*" rather than a list of every value: instances and routes that appear later
        # are included too.
        instance = (
            query("instance", "Instance", BUILD_INFO, 'service="$service"', 'job=~"$job"')
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(every)
        )
        route = (
            query("route", "Route", REQUESTS_TOTAL, *_TARGET)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(every)
        )
        return [source, service, job, instance, route]

    # -- rows

    def rows(self, slo_file: SLOFile | None) -> Iterator[tuple[gd.Row, list[Panel]]]:
        yield self._row("Overview"), self._overview()
        yield self._row("Traffic and errors"), self._traffic()
        yield self._row("Latency (points are exemplars: click one for its trace)"), self._latency()
        yield self._row("Saturation"), self._saturation()
        yield self._row("devkit: sampling, buffers, internal errors"), self._devkit()
        if slo_file is None:
            return
        for slo in slo_file.slos:
            title = f"SLO {slo.name}: {slo.objective:g} % over {slo.window}"
            yield self._row(title), self._slo(slo_file, slo)

    def _row(self, title: str) -> gd.Row:
        from grafana_foundation_sdk.builders import dashboard as gd

        return gd.Row(title).id(next(self._ids))

    def _overview(self) -> list[Panel]:
        requests = selector(REQUESTS_TOTAL, *_TARGET, _ROUTE)
        errors = selector(ERRORS_TOTAL, *_TARGET, _ROUTE)
        return [
            self._stat("Requests", "reqps", f"sum(rate({requests}[{_RATE}]))"),
            self._stat(
                "Error ratio",
                "percentunit",
                # The errors series appears with a route's first error: none is 0.
                f"(sum(rate({errors}[{_RATE}])) or vector(0)) / sum(rate({requests}[{_RATE}]))",
                description="5xx answers and unhandled exceptions over all requests.",
            ),
            self._stat("Latency p99", "s", _quantile(0.99, ())),
            self._stat(
                "Instances by version",
                "none",
                f"count by (version) ({selector(BUILD_INFO, *_TARGET)})",
                legend="{{version}}",
                description=f"Targets exposing {BUILD_INFO}, by the service version they run.",
            ),
        ]

    def _traffic(self) -> list[Panel]:
        requests = selector(REQUESTS_TOTAL, *_TARGET, _ROUTE)
        errors = selector(ERRORS_TOTAL, *_TARGET, _ROUTE)
        by_route = f"sum by (route) (rate({requests}[{_RATE}]))"
        return [
            self._series("Requests by route", "reqps", [(by_route, "{{route}}")]),
            self._series(
                "Requests by status code",
                "reqps",
                [(f"sum by (status_code) (rate({requests}[{_RATE}]))", "{{status_code}}")],
            ),
            self._series(
                "Error ratio by route",
                "percentunit",
                [
                    (
                        # A route without errors has no errors series yet: 0, not a gap.
                        f"(sum by (route) (rate({errors}[{_RATE}])) or 0 * {by_route})"
                        f" / {by_route}",
                        "{{route}}",
                    )
                ],
                description=f"{ERRORS_TOTAL} over {REQUESTS_TOTAL}: 5xx answers and "
                "unhandled exceptions.",
            ),
        ]

    def _latency(self) -> list[Panel]:
        return [
            self._series(
                f"Latency p{q * 100:g} by route",
                "s",
                [(_quantile(q, ("route",)), "{{route}}")],
                exemplars=True,
                description="From the duration histogram's buckets. Each point is an "
                "exemplar: a request of a trace the sampler kept.",
            )
            for q in _QUANTILES
        ]

    def _saturation(self) -> list[Panel]:
        lag = selector(LOOP_LAG + "_bucket", *_TARGET)
        lag_sum = selector(LOOP_LAG + "_sum", *_TARGET)
        lag_count = selector(LOOP_LAG + "_count", *_TARGET)
        return [
            self._series(
                "Requests in progress",
                "none",
                [(f"sum by (instance) ({selector(IN_PROGRESS, *_TARGET)})", "{{instance}}")],
                width=12,
            ),
            self._series(
                "Event-loop lag",
                "s",
                [
                    (
                        f"histogram_quantile(0.99, sum by (le, instance) (rate({lag}[{_RATE}])))",
                        "p99 {{instance}}",
                    ),
                    (
                        f"sum by (instance) (rate({lag_sum}[{_RATE}]))"
                        f" / sum by (instance) (rate({lag_count}[{_RATE}]))",
                        "mean {{instance}}",
                    ),
                ],
                width=12,
                description="How late a timer fires on the asyncio event loop: code "
                "blocking the loop delays every request on it (asyncio servers only).",
            ),
        ]

    def _devkit(self) -> list[Panel]:
        def per_second(metric: str, by: str) -> str:
            return f"sum by ({by}) (rate({selector(metric, *_TARGET)}[{_RATE}]))"

        return [
            self._series(
                "Tail-sampling decisions",
                "cps",
                [(per_second(TRACES_SAMPLED_TOTAL, "decision"), "{{decision}}")],
            ),
            self._series(
                "Spans dropped",
                "cps",
                [(per_second(SPANS_DROPPED_TOTAL, "reason"), "{{reason}}")],
                no_value="0",
                description="Spans devkit's bounded buffers dropped (an exporter too slow "
                "or unreachable). The series appears with the first drop.",
            ),
            self._series(
                "Internal errors",
                "cps",
                [
                    (
                        per_second(INTERNAL_ERRORS_TOTAL, "component, reason"),
                        "{{component}}: {{reason}}",
                    )
                ],
                no_value="0",
                description="Failures inside devkit, counted instead of raised into the "
                "service. The series appears with the first one.",
            ),
        ]

    def _slo(self, slo_file: SLOFile, slo: SLO) -> list[Panel]:
        def recorded(name: str) -> str:
            return rules.recorded(slo_file, slo, name)

        about = slo.description or (
            "Share of requests answered without error."
            if slo.sli.kind == "availability"
            else f"Share of requests faster than {slo.sli.threshold_s:g} s."
        )
        return [
            self._series(
                "SLI against the objective",
                "percentunit",
                [
                    (f"1 - {recorded(Series.error_ratio_window)}", f"SLI over {slo.window}"),
                    (recorded(Series.objective), "objective"),
                ],
                width=10,
                min_zero=False,
                decimals=3,
                description=about,
            ),
            self._stat(
                "Error budget left",
                "percentunit",
                recorded(Series.budget_remaining),
                width=4,
                height=9,
                thresholds=("red", [(0.0, "orange"), (0.25, "green")]),
                description=f"Share of the {slo.window} error budget not yet spent; "
                "below 0 the objective is missed.",
            ),
            self._series(
                "Burn rate by window",
                "none",
                [(recorded(Series.burn_rate(w)), w) for w in alert_windows()],
                width=10,
                threshold_line=1.0,
                description="Error ratio over the error budget: at 1 the budget lasts "
                f"exactly {slo.window}; the burn-rate alerts fire on pairs of windows.",
            ),
        ]

    # -- panel builders

    def _target(self, expr: str, legend: str, ref: str, *, exemplars: bool) -> gp.Dataquery:
        from grafana_foundation_sdk.builders import prometheus as gp

        query = (
            gp.Dataquery()
            .expr(expr)
            .legend_format(legend)
            .ref_id(ref)
            .datasource(self.datasource)
            .range()
        )
        if exemplars:
            query = query.exemplar(True)
        return query

    def _series(
        self,
        title: str,
        unit: str,
        queries: list[tuple[str, str]],
        *,
        width: int = 8,
        height: int = 8,
        exemplars: bool = False,
        min_zero: bool = True,
        decimals: int | None = None,
        no_value: str | None = None,
        threshold_line: float | None = None,
        description: str = "",
    ) -> Panel:
        from grafana_foundation_sdk.builders import common as gc
        from grafana_foundation_sdk.builders import timeseries
        from grafana_foundation_sdk.models import common as cm

        panel: timeseries.Panel = (
            self._placed(timeseries.Panel(), title, unit, width, height, description)
            .line_width(1)
            .fill_opacity(10)
            .show_points(cm.VisibilityMode.NEVER)
            .legend(
                gc.VizLegendOptions()
                .display_mode(cm.LegendDisplayMode.LIST)
                .placement(cm.LegendPlacement.BOTTOM)
                .show_legend(True)
            )
            .tooltip(
                gc.VizTooltipOptions()
                .mode(cm.TooltipDisplayMode.MULTI)
                .sort(cm.SortOrder.DESCENDING)
            )
        )
        for ref, (expr, legend) in zip(_refs(), queries, strict=False):
            panel = panel.with_target(self._target(expr, legend, ref, exemplars=exemplars))
        if min_zero:
            panel = panel.min(0)
        if decimals is not None:
            panel = panel.decimals(decimals)
        if no_value is not None:
            panel = panel.no_value(no_value)
        if threshold_line is not None:
            panel = panel.thresholds(_thresholds("green", [(threshold_line, "red")]))
            panel = panel.thresholds_style(
                gc.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.DASHED)
            )
        return panel

    def _stat(
        self,
        title: str,
        unit: str,
        expr: str,
        *,
        legend: str = "",
        width: int = 6,
        height: int = 4,
        thresholds: tuple[str, list[tuple[float, str]]] | None = None,
        description: str = "",
    ) -> Panel:
        from grafana_foundation_sdk.builders import common as gc
        from grafana_foundation_sdk.builders import stat
        from grafana_foundation_sdk.models import common as cm

        panel: stat.Panel = (
            self._placed(stat.Panel(), title, unit, width, height, description)
            .with_target(self._target(expr, legend, "A", exemplars=False))
            .reduce_options(gc.ReduceDataOptions().calcs(["lastNotNull"]))
            .graph_mode(cm.BigValueGraphMode.AREA)
            .color_mode(cm.BigValueColorMode.VALUE)
            .text_mode(cm.BigValueTextMode.AUTO)
        )
        if thresholds is not None:
            panel = panel.thresholds(_thresholds(*thresholds))
        return panel

    def _placed(
        self, panel: Any, title: str, unit: str, width: int, height: int, description: str
    ) -> Any:
        """What every panel has: the next id, title, data source, unit and size."""
        panel = (
            panel.id(next(self._ids))
            .title(title)
            .datasource(self.datasource)
            .unit(unit)
            .span(width)
            .height(height)
        )
        return panel.description(description) if description else panel


def _quantile(q: float, by: tuple[str, ...]) -> str:
    buckets = selector(DURATION + "_bucket", *_TARGET, _ROUTE)
    return (
        f"histogram_quantile({q:g}, sum by ({', '.join(('le', *by))}) (rate({buckets}[{_RATE}])))"
    )


def _thresholds(base: str, steps: list[tuple[float, str]]) -> gd.ThresholdsConfig:
    """``base`` below the first step, then each (value, colour).

    Grafana writes the base step's value as null, which the schema (number) rejects; it
    reads the first step as the base whatever its value, so a number below the others is
    the same to Grafana and valid against the schema.
    """
    from grafana_foundation_sdk.builders import dashboard as gd
    from grafana_foundation_sdk.models.dashboard import Threshold, ThresholdsMode

    below = min(value for value, _ in steps) - 1
    return (
        gd.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=v, color=c) for v, c in [(below, base), *steps]])
    )


def _refs() -> Iterator[str]:
    """Query ids A, B, C...: Grafana needs them unique within a panel."""
    return iter("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
