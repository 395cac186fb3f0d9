"""The public surface, pinned: every public module's ``__all__`` is exactly what is meant.

Names outside ``__all__`` are underscore-prefixed or imported from elsewhere, so a name
cannot become public by accident (a new public name is added here on purpose).
"""

from __future__ import annotations

import importlib
import inspect

import pytest

import devkit

PUBLIC = {
    "devkit": [
        "ASGIMiddleware",
        "ConfigError",
        "DevkitError",
        "Redactor",
        "Runtime",
        "Settings",
        "WSGIMiddleware",
        "__version__",
        "asgi",
        "get_logger",
        "health",
        "init",
        "shutdown",
        "wsgi",
    ],
    "devkit.config": [
        "DEFAULT_PROPAGATORS",
        "FRAMEWORKS",
        "LEVELS",
        "LEVEL_ALIASES",
        "LEVEL_NUMBERS",
        "MULTIPROCESS_VARIABLE",
        "PROBE_KINDS",
        "SERVER_INSTRUMENTORS",
        "UNMATCHED_ROUTE",
        "VARIABLES",
        "ExportOptions",
        "Framework",
        "Settings",
        "Variable",
        "multiprocess_dir",
        "reference_table",
        "source_of",
        "traces_endpoint",
    ],
    "devkit.exceptions": ["ConfigError", "DevkitError"],
    "devkit.health": [
        "CheckFn",
        "CheckResult",
        "HealthRegistry",
        "Kind",
        "LivenessWatchdog",
        "ProbeResult",
        "add_check",
        "begin_shutdown",
        "check",
        "circuit_breaker",
        "configure",
        "get_registry",
        "mark_started",
        "reset",
        "watchdog",
    ],
    "devkit.logs": [
        "ACCESS_LOGGER",
        "MAX_LOGGED_PATH",
        "AccessRequest",
        "Installation",
        "LogPipeline",
        "StdlibHandler",
        "add_tap",
        "get_logger",
        "install",
        "redact_query",
        "remove_tap",
    ],
    "devkit.metrics": [
        "DEFAULT_BUCKETS",
        "STANDARD_METHODS",
        "UNMATCHED",
        "ExemplarStore",
        "ObservedRequest",
        "RedMetrics",
        "buckets_for",
        "exposition",
        "mark_process_dead",
        "scrape_registry",
    ],
    "devkit.redaction": ["Mode", "Redactor"],
    "devkit.tracing": [],
    "devkit.tracing.provider": [
        "ProxyTracerProvider",
        "Tracing",
        "build_exporter",
        "build_resource",
        "build_tracing",
        "install_instrumentors",
        "install_propagator",
        "proxy_provider",
    ],
    "devkit.tracing.sampling": [
        "UNSET_STATUS",
        "ErrorBiasedSampler",
        "SamplingLimits",
        "TailSamplingProcessor",
        "ratio_bound",
        "ratio_keeps",
    ],
    "devkit.tracing.propagation": [
        "BAGGAGE_HEADER",
        "MAX_BAGGAGE_BYTES",
        "MAX_BAGGAGE_MEMBERS",
        "MAX_SERVER_TIMING_CHARS",
        "MAX_TRACESTATE_MEMBERS",
        "SERVER_TIMING_HEADER",
        "TRACEPARENT_HEADER",
        "TRACESTATE_HEADER",
        "W3CPropagator",
        "extract",
        "format_baggage",
        "format_trace_metric",
        "format_traceparent",
        "format_tracestate",
        "parse_baggage",
        "parse_trace_metric",
        "parse_traceparent",
        "parse_tracestate",
    ],
    "devkit.tracing.downstream": ["TraceResponses"],
    "devkit.http": ["ASGIMiddleware", "WSGIMiddleware", "asgi", "wsgi"],
    "devkit.http.asgi": ["ASGIMiddleware", "asgi"],
    "devkit.http.wsgi": ["WSGIMiddleware", "wsgi"],
    "devkit.integrations": ["enable_installed"],
    "devkit.integrations.django": ["PATCHES", "DevkitMiddleware"],
    "devkit.integrations.flask": ["PATCHES", "record_exception"],
    "devkit.integrations.starlette": ["PATCHES"],
    "devkit.testing": [
        "CapturedLogs",
        "CapturedSpans",
        "MetricSamples",
        "OTLPReceiver",
        "Received",
        "Reply",
        "Traffic",
        "devkit_logs",
        "devkit_metrics",
        "devkit_reset",
        "devkit_spans",
        "reset",
    ],
    "devkit.conventions": [
        "BUILD_INFO",
        "CIRCUIT_BREAKER_OPEN",
        "DEFAULT_BUCKETS",
        "DURATION",
        "ERRORS_TOTAL",
        "INTERNAL_ERRORS_TOTAL",
        "IN_PROGRESS",
        "LOG_RECORDS_DROPPED_TOTAL",
        "LOOP_LAG",
        "MEMORY_LIMIT",
        "MEMORY_USAGE",
        "PROCESS_CPU",
        "PROCESS_MEMORY",
        "PROCESS_START",
        "READY",
        "REQUESTS_TOTAL",
        "REQUEST_LABELS",
        "SPANS_DROPPED_TOTAL",
        "STANDARD_METHODS",
        "TRACES_SAMPLED_TOTAL",
        "UNMATCHED_ROUTE",
        "buckets_for",
        "le",
    ],
    "devkit.ops": [],
    "devkit.ops.slo": [
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
    ],
    "devkit.ops.rules": [
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
    ],
    "devkit.ops.rule_tests": ["PromtoolMissing", "SeriesError", "run", "test_files"],
    "devkit.ops.promql": [
        "Matcher",
        "MatcherError",
        "label_matcher",
        "parse_matchers",
        "quote",
        "regex_alternatives",
        "selector",
    ],
    "devkit.ops.prometheus": ["Prometheus", "PrometheusError", "Sample", "SeriesRange"],
    "devkit.ops.status": ["FiringAlert", "SLOStatus", "snapshot", "status"],
    "devkit.ops.dashboard": [
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
    ],
    "devkit.ops.canary": [
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
    ],
    "devkit.ops.canary_judge": [
        "EXIT_STATUS",
        "Comparison",
        "GateResult",
        "Judgement",
        "Querier",
        "compare",
        "hodges_lehmann",
        "judge",
        "mann_whitney",
    ],
    "devkit.ops.canary_rules": ["expression", "rule_groups", "run", "test_files"],
    "devkit.ops.canary_export": [
        "ALERTS_METRIC",
        "ArgoOptions",
        "alerts_query",
        "analysis_template",
        "flagger_analysis",
        "metric_name",
        "metric_templates",
        "render",
    ],
    "devkit.cli.canary": ["add_parser", "run"],
    "devkit.cli.dashboard": ["add_parser", "run"],
    "devkit.cli": ["main"],
    "devkit.cli.slo": ["add_parser", "run"],
    "devkit.cli.demo": ["add_parser", "demo", "run"],
    "devkit.cli.doctor": ["add_parser", "doctor", "run"],
    "devkit.cli.version": ["add_parser", "run"],
}


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_all_is_exactly_the_public_surface(name: str) -> None:
    module = importlib.import_module(name)
    assert sorted(module.__all__) == sorted(PUBLIC[name])
    for attribute in module.__all__:
        assert hasattr(module, attribute), f"{name}.__all__ names {attribute}, which is missing"


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_what_a_module_defines_is_public_only_on_purpose(name: str) -> None:
    module = importlib.import_module(name)
    defined = {
        attribute
        for attribute, value in vars(module).items()
        if not attribute.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == name
    }
    assert defined <= set(module.__all__)


def test_the_package_exports_nothing_else() -> None:
    """httpx's rule: ``dir(devkit)`` is ``__all__`` plus its submodules."""
    modules = {
        name
        for name, value in vars(devkit).items()
        if inspect.ismodule(value) and value.__name__.startswith("devkit.")
    }
    # "@..." names: pytest's assertion rewriting, in a package imported under it.
    public = {name for name in dir(devkit) if not name.startswith(("_", "@"))} - modules
    assert public - {"annotations"} == set(devkit.__all__) - {"__version__", "health"}
