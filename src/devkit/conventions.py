"""The names devkit's telemetry carries: metric names, labels and histogram buckets.

The runtime writes its metrics with these constants, and ``devkit.ops`` builds recording
rules, alerts, dashboards and canary queries from the same ones, so a generated rule can
never drift from what a service exposes (tools outside devkit rely on the names too:
shared/SPEC.md section 4).
"""

from __future__ import annotations

from prometheus_client.utils import floatToGoString

from devkit.config import UNMATCHED_ROUTE

__all__ = [
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
]

#: Requests served, by ``method``, ``route`` (template) and ``status_code``.
REQUESTS_TOTAL = "http_requests_total"
#: 5xx answers and unhandled exceptions (as 500), same labels; a series appears with its
#: first error.
ERRORS_TOTAL = "http_requests_errors_total"
#: Request duration histogram, same labels (``_bucket`` with ``le``, ``_sum``, ``_count``).
DURATION = "http_request_duration_seconds"
#: Requests being served, by ``method``.
IN_PROGRESS = "http_requests_in_progress"
#: The labels of the three request metrics.
REQUEST_LABELS = ("method", "route", "status_code")
#: The ``method`` label: one of these, or ``_OTHER``.
STANDARD_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
#: Delay of a timer on the server's event loop (histogram).
LOOP_LAG = "devkit_event_loop_lag_seconds"
#: Tail-sampling decisions by ``decision``.
TRACES_SAMPLED_TOTAL = "devkit_traces_sampled_total"
#: Spans dropped by devkit's bounded buffers, by ``reason``.
SPANS_DROPPED_TOTAL = "devkit_spans_dropped_total"
#: Log records the OTLP log export dropped, by ``reason`` (the JSON lines are not dropped).
LOG_RECORDS_DROPPED_TOTAL = "devkit_log_records_dropped_total"
#: Failures inside devkit that were counted instead of raised, by ``component`` and
#: ``reason``.
INTERNAL_ERRORS_TOTAL = "devkit_internal_errors_total"
#: 1, with ``service``, ``version``, ``environment`` and ``devkit_version`` labels: what rules,
#: dashboards and canary comparisons select or join on.
BUILD_INFO = "devkit_build_info"
#: 1 while this process is ready (started, not draining, last readiness probe passed).
READY = "devkit_ready"
#: 1 while the circuit breaker in front of ``dependency`` is open (``health.circuit_breaker``).
CIRCUIT_BREAKER_OPEN = "devkit_circuit_breaker_open"
#: The memory limit and usage of the process's cgroup (its container), when it has them.
MEMORY_LIMIT = "devkit_memory_limit_bytes"
MEMORY_USAGE = "devkit_memory_usage_bytes"
#: From prometheus-client's process collector: CPU seconds, resident memory, start time
#: (a changed start time is a restart).
PROCESS_CPU = "process_cpu_seconds_total"
PROCESS_MEMORY = "process_resident_memory_bytes"
PROCESS_START = "process_start_time_seconds"

#: prometheus-client's default buckets plus 0.3 s, the default latency SLO.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.3,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)


def buckets_for(slow_threshold_s: float) -> tuple[float, ...]:
    """The duration buckets of a service whose slow threshold is ``slow_threshold_s``:
    the defaults with the threshold added, so "slower than slow" is exact."""
    return tuple(sorted(set(DEFAULT_BUCKETS) | {round(slow_threshold_s, 6)}))


def le(bound: float) -> str:
    """A bucket bound as the ``le`` label prometheus-client writes it (``0.3``, ``1.0``,
    ``+Inf``): a selector with another spelling matches nothing."""
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]
