"""Every use devkit makes of a third-party library's internals, each behind a probe.

devkit's request path and export thread take a few shortcuts through private attributes
of prometheus-client, the OpenTelemetry API and OTLP exporter, asyncio and Django
(docs/benchmarks.md#where-the-time-goes says what each saves). Each shortcut is probed
before it is used: when a dependency version no longer has the internal, devkit takes the
public path instead and stays correct, only slower. So that such a fallback is never
silent, :func:`fast_paths` reports which shortcuts are in use (``devkit doctor`` prints
it) and the test suite fails when a supported dependency version loses one
(``tests/test_compat.py``, and an integration test at the lowest supported versions).

Nothing else in devkit touches a third-party underscore name.
"""

from __future__ import annotations

import functools
from bisect import bisect_left as _bisect_left
from collections.abc import Callable, Sized
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext, TraceFlags, TraceState

__all__ = [
    "FastPath",
    "LogModel",
    "PlainObserve",
    "django_response_logged",
    "fast_paths",
    "global_tracer_provider_set",
    "http_transport_base",
    "log_model",
    "otlp_client_transport",
    "otlp_is_shut_down",
    "otlp_max_request_size",
    "otlp_sender",
    "plain_value",
    "plain_values",
    "ready_queue",
    "replace_otlp_transport",
    "requests_session",
    "runtime_context_var",
    "span_context_factory",
    "span_key",
    "suppress_instrumentation_key",
]


@dataclass(frozen=True)
class FastPath:
    """One shortcut: whether the installed dependency offers it, and if not, why."""

    name: str
    dependency: str
    active: bool
    detail: str = ""


# -- OpenTelemetry API -----------------------------------------------------------------------


@functools.cache
def runtime_context_var() -> ContextVar[Any] | None:
    """The ContextVar behind OpenTelemetry's default runtime context, or None.

    Setting it directly is what ``opentelemetry.context.attach`` does, minus two calls;
    any other runtime context (``OTEL_PYTHON_CONTEXT``) goes through the API.
    """
    try:
        from opentelemetry.context import _RUNTIME_CONTEXT
        from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext

        if type(_RUNTIME_CONTEXT) is ContextVarsRuntimeContext:
            var = getattr(_RUNTIME_CONTEXT, "_current_context", None)
            if isinstance(var, ContextVar):
                return var
    except Exception:
        pass
    return None


@functools.cache
def span_key() -> str:
    """The key under which the OpenTelemetry API keeps the current span in a Context.

    Read off a Context the public API built, so a request's Context can be built as one
    dict instead of through ``set_span_in_context``.
    """
    from opentelemetry import trace
    from opentelemetry.context import Context

    (key,) = trace.set_span_in_context(trace.INVALID_SPAN, Context())
    return str(key)


@functools.cache
def span_context_factory() -> Callable[[int, int, TraceFlags, TraceState], SpanContext]:
    """``(trace_id, span_id, flags, state) -> SpanContext`` for local, valid ids.

    ``SpanContext`` is a tuple whose constructor re-validates the ids; devkit draws its
    ids itself, so when building the tuple directly yields exactly what the constructor
    yields, the tuple is built directly. Otherwise the constructor is used.
    """
    from opentelemetry.trace import SpanContext, TraceFlags, TraceState

    def checked(trace_id: int, span_id: int, flags: TraceFlags, state: TraceState) -> SpanContext:
        return SpanContext(trace_id, span_id, False, flags, state)

    def direct(trace_id: int, span_id: int, flags: TraceFlags, state: TraceState) -> SpanContext:
        return tuple.__new__(SpanContext, (trace_id, span_id, False, flags, state, True))

    try:
        flags, state = TraceFlags(3), TraceState()
        probe = direct(5, 7, flags, state)
        fields = (
            probe.trace_id,
            probe.span_id,
            probe.is_remote,
            probe.trace_flags,
            probe.trace_state,
            probe.is_valid,
        )
        same = probe == checked(5, 7, flags, state) and fields == (5, 7, False, 3, state, True)
    except Exception:
        same = False
    return direct if same else checked


def global_tracer_provider_set() -> bool:
    """Whether a tracer provider was set as the OpenTelemetry global already.

    ``trace.get_tracer_provider()`` would answer with a proxy of its own instead.
    """
    from opentelemetry import trace

    return getattr(trace, "_TRACER_PROVIDER", None) is not None


@functools.cache
def suppress_instrumentation_key() -> str:
    """The context key instrumentations check before tracing a call (set while exporting)."""
    try:
        from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY
    except ImportError:
        from opentelemetry.context import create_key

        return create_key("suppress_instrumentation")
    return str(_SUPPRESS_INSTRUMENTATION_KEY)


# -- asyncio -----------------------------------------------------------------------------------


#: What stands for the queue of a loop that does not show it: never empty.
_HIDDEN_QUEUE: Sized = (True,)


def ready_queue(loop: Any) -> Sized:
    """The callbacks ``loop`` still runs in its current iteration: empty when idle.

    asyncio keeps them in ``loop._ready``, one deque for the loop's lifetime, so callers
    may keep it; a loop that does not show its queue (uvloop) counts as always busy.
    """
    queue = getattr(loop, "_ready", None)
    return queue if isinstance(queue, Sized) else _HIDDEN_QUEUE


# -- prometheus-client -----------------------------------------------------------------------

try:  # the single-process value type
    from prometheus_client.values import MutexValue as _MutexValue
except ImportError:  # another client version: every write goes through the public API
    _MutexValue = None  # type: ignore[assignment,misc]


def plain_value(child: Any, attribute: str = "_value", index: int | None = None) -> Any:
    """The ``MutexValue`` behind a label child's value (or its ``index``-th one), or None.

    prometheus-client guards each value with its own lock; devkit writes the values (and
    the exemplars) of its own request metrics directly under one lock of its own. That is
    equivalent as long as every write to these values holds devkit's lock (devkit's
    children are written only by ``RedMetrics``), and readers, which take the value's
    lock, see one whole float (one whole exemplar) either way. Any other value type
    (multiprocess mode's mmap-backed values, another client version) gives None.
    """
    value = getattr(child, attribute, None)
    if index is not None:
        value = value[index] if isinstance(value, list) else None
    if (
        type(value) is _MutexValue
        and type(getattr(value, "_value", None)) is float
        and hasattr(value, "_exemplar")
    ):
        return value
    return None


#: ``observe(duration_s, exemplars)`` over one label set's value objects: +1 on the
#: request counter, +duration and +1 in the right bucket on the duration histogram, and
#: the counter's and the bucket's exemplars (a pair, or None). The caller holds its lock.
PlainObserve = Callable[[float, "tuple[Any, Any] | None"], None]


def plain_values(counter_child: Any, histogram_child: Any) -> PlainObserve | None:
    """The request counter's and duration histogram's writer, or None (public API then)."""
    total = plain_value(counter_child)
    if total is None:
        return None
    try:
        sum_ = plain_value(histogram_child, "_sum")
        buckets = [
            plain_value(histogram_child, "_buckets", i)
            for i in range(len(histogram_child._buckets))
        ]
        bounds = [float(bound) for bound in histogram_child._upper_bounds]
    except (AttributeError, TypeError):
        return None
    if sum_ is None or not all(buckets) or len(buckets) != len(bounds):
        return None

    def observe(duration_s: float, exemplars: tuple[Any, Any] | None) -> None:
        bucket = buckets[_bisect_left(bounds, duration_s)]
        total._value += 1.0
        sum_._value += duration_s
        bucket._value += 1.0
        if exemplars is not None:
            total._exemplar, bucket._exemplar = exemplars

    return observe


def set_exemplars(
    counter_child: Any, histogram_child: Any, duration_s: float, exemplars: tuple[Any, Any]
) -> None:
    """Set the exemplars ``inc(1, exemplar)`` and ``observe(duration_s, exemplar)`` set (the
    counter's, and the bucket's ``duration_s`` falls in), without counting anything. The
    caller holds the lock devkit writes these values under. Values without exemplars
    (multiprocess mode's) ignore it."""
    try:
        counter_child._value.set_exemplar(exemplars[0])
        bounds, buckets = histogram_child._upper_bounds, histogram_child._buckets
        for bound, bucket in zip(bounds, buckets, strict=True):
            if duration_s <= bound:
                bucket.set_exemplar(exemplars[1])
                break
    except (AttributeError, ValueError):  # another client version: the exemplar is lost
        pass


# -- the OTLP/HTTP span exporter ---------------------------------------------------------------


@functools.cache
def http_transport_base() -> tuple[type[Any], type[Any]] | None:
    """``(BaseHTTPTransport, BaseHTTPResult)`` of the OTLP exporter's transport layer."""
    try:
        from opentelemetry.exporter.http.transport._base import BaseHTTPResult, BaseHTTPTransport
    except ImportError:
        return None
    return BaseHTTPTransport, BaseHTTPResult


def _otlp_client(exporter: Any) -> Any:
    try:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        return None
    if type(exporter) not in (OTLPSpanExporter, OTLPLogExporter):
        return None
    return getattr(exporter, "_client", None)


@dataclass(frozen=True)
class LogModel:
    """OpenTelemetry's logs data model and OTLP exporters. Public API, but under
    ``_logs`` modules while the logs signal's Python API is marked in development."""

    LogRecord: type[Any]
    SeverityNumber: Any
    ReadableLogRecord: type[Any]
    #: protocol -> the exporter class, for the exporters installed.
    exporters: dict[str, type[Any]]


def log_model() -> LogModel | None:
    """None when the installed SDK predates the model (the ``otlp`` extra brings it)."""
    try:
        from opentelemetry._logs import LogRecord, SeverityNumber
        from opentelemetry.sdk._logs import ReadableLogRecord
    except ImportError:
        return None
    exporters: dict[str, type[Any]] = {}
    try:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    except ImportError:
        pass
    else:
        exporters["http/protobuf"] = OTLPLogExporter
    try:
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (  # type: ignore[import-not-found]
            OTLPLogExporter as GrpcLogExporter,
        )
    except ImportError:
        pass
    else:
        exporters["grpc"] = GrpcLogExporter
    return LogModel(LogRecord, SeverityNumber, ReadableLogRecord, exporters)


def otlp_sender(exporter: Any) -> Callable[[bytes], bool] | None:
    """``data -> success``: a serialised request posted through the exporter's own HTTP
    client (endpoint, headers, compression, timeout, retries stay the exporter's)."""
    export = getattr(_otlp_client(exporter), "export", None)
    if not callable(export):
        return None

    def send(data: bytes) -> bool:
        return bool(getattr(export(data), "success", False))

    return send


def otlp_max_request_size(exporter: Any) -> int | None:
    """The largest request the exporter sends, when it has a bound."""
    size = getattr(exporter, "_max_request_size", None)
    return size if isinstance(size, int) else None


def otlp_is_shut_down(exporter: Any) -> bool:
    return bool(getattr(exporter, "_shutdown", False))


def otlp_client_transport(exporter: Any) -> tuple[str, Any] | None:
    """``(endpoint URL, transport)`` of an OTLP/HTTP span exporter's client, or None."""
    client = _otlp_client(exporter)
    endpoint = getattr(client, "_endpoint", None)
    transport = getattr(client, "_transport", None)
    if not isinstance(endpoint, str) or transport is None:
        return None
    return endpoint, transport


def replace_otlp_transport(exporter: Any, transport: Any) -> None:
    """Give the exporter's client another transport (see :func:`otlp_client_transport`)."""
    exporter._client._transport = transport


def requests_session(transport: Any) -> Any:
    """The ``requests`` session of the exporter's stock requests transport, or None."""
    try:
        from opentelemetry.exporter.http.transport._requests import RequestsHTTPTransport
    except ImportError:
        return None
    if type(transport) is not RequestsHTTPTransport:
        return None
    return getattr(transport, "_session", None)


# -- Django ------------------------------------------------------------------------------------


def django_response_logged(response: Any) -> bool:
    """Whether Django logged this response already (``django.utils.log.log_response``)."""
    return bool(getattr(response, "_has_been_logged", False))


# -- the report --------------------------------------------------------------------------------


def fast_paths() -> list[FastPath]:
    """Which shortcuts the installed dependencies offer, each probed on real objects.

    Shortcuts into optional dependencies that are not installed (the OTLP exporter,
    Django) are left out: they are not used either way.
    """
    return [
        *_opentelemetry_paths(),
        _asyncio_path(),
        _prometheus_path(),
        *_otlp_paths(),
        *_django_paths(),
    ]


def _path(name: str, dependency: str, active: bool, missing: str) -> FastPath:
    return FastPath(name, dependency, active, "" if active else missing)


def _opentelemetry_paths() -> list[FastPath]:
    import opentelemetry.context
    import opentelemetry.trace

    factory = span_context_factory()
    api = "opentelemetry-api"
    return [
        _path("context-var", api, runtime_context_var() is not None, "no ContextVar found"),
        _path(
            "span-context-tuple",
            api,
            factory.__name__ == "direct",
            "SpanContext is not the expected tuple",
        ),
        _path(
            "tracer-provider-global",
            api,
            hasattr(opentelemetry.trace, "_TRACER_PROVIDER"),
            "trace._TRACER_PROVIDER not found",
        ),
        _path(
            "suppress-instrumentation-key",
            api,
            hasattr(opentelemetry.context, "_SUPPRESS_INSTRUMENTATION_KEY"),
            "context._SUPPRESS_INSTRUMENTATION_KEY not found",
        ),
    ]


def _asyncio_path() -> FastPath:
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        ready = getattr(loop, "_ready", None)
    finally:
        loop.close()
    return _path("loop-ready-queue", "asyncio", isinstance(ready, Sized), "no loop._ready")


def _prometheus_path() -> FastPath:
    from prometheus_client import CollectorRegistry, Counter, Histogram

    registry = CollectorRegistry()
    counter = Counter("probe_total", "", ("a",), registry=registry).labels("x")
    histogram = Histogram("probe_seconds", "", ("a",), registry=registry).labels("x")
    found = plain_values(counter, histogram) is not None
    return _path("metric-values", "prometheus-client", found, "no MutexValue to write")


def _otlp_paths() -> list[FastPath]:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        return []
    exporter = OTLPSpanExporter(endpoint="http://127.0.0.1:4318/v1/traces")
    try:
        parts = otlp_client_transport(exporter)
        transport = parts[1] if parts is not None else None
        # Either devkit replaces requests' session (merged per post with the environment)
        # with its keep-alive connection, or the exporter posts through urllib3's pool,
        # which keeps connections alive without that cost.
        connection = http_transport_base() is not None and (
            requests_session(transport) is not None or _is_urllib3_transport(transport)
        )
        dependency = "opentelemetry-exporter-otlp-proto-http"
        return [
            _path(
                "otlp-encoder",
                dependency,
                otlp_sender(exporter) is not None,
                "the exporter has no HTTP client to post through",
            ),
            _path(
                "otlp-connection",
                dependency,
                connection,
                "neither a requests transport to replace nor urllib3's",
            ),
        ]
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]


def _is_urllib3_transport(transport: Any) -> bool:
    try:
        from opentelemetry.exporter.http.transport._urllib3 import Urllib3HTTPTransport
    except ImportError:
        return False
    return type(transport) is Urllib3HTTPTransport


def _django_paths() -> list[FastPath]:
    try:
        from django.utils.log import log_response
    except ImportError:
        return []
    import logging

    # A stand-in response and a silent logger: no settings, no record written.
    quiet = logging.Logger("devkit.compat.probe")
    quiet.disabled = True
    response = _ResponseStandIn()
    try:
        log_response("probe", response=response, logger=quiet, level="error")
    except Exception:
        pass
    return [
        _path(
            "django-response-logged",
            "django",
            django_response_logged(response),
            "log_response no longer marks the response",
        )
    ]


class _ResponseStandIn:
    status_code = 404
    reason_phrase = "Not Found"
