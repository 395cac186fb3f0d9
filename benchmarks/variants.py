"""What is measured: the bare app and each way of instrumenting it.

A variant does its global setup (tracer provider, structlog, ``devkit.init()``), builds the
app from the factory it is given (some tools must be set up before the app exists, as their
docs say) and returns the instrumented app. Each variant runs in its own worker process, so
global state set here never leaks into another variant.

``stack`` is the hand-assembled stack users build today, wired as each project documents
it: the OpenTelemetry middleware wrapping the app, the Prometheus middleware and
correlation id middleware added to the framework, and a structlog JSON access log that
carries trace, span and correlation ids. Everything that logs writes to the same sink.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Collection
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson
import structlog

from benchmarks.drivers import ASGIApp, Flush, Message, Receive, Send, StartResponse, WSGIApp

__all__ = [
    "ASGI_VARIANTS",
    "DEVKIT_PARTS",
    "OPTIONAL",
    "WSGI_VARIANTS",
    "Context",
    "Unavailable",
    "configure_structlog",
    "switch_off_devkit",
]

AppFactory = Callable[[], Any]
Variant = Callable[[AppFactory, "Context"], Any]


class Unavailable(Exception):
    """The variant cannot run here (tool not installed, devkit feature not written yet)."""


@dataclass
class Context:
    """What a variant may use: the receiver, the log sink, and a place for flushers."""

    otlp_endpoint: str
    sink: BinaryIO
    flushers: list[Flush] = field(default_factory=list)


# -- shared pieces ------------------------------------------------------------------------


def configure_structlog(sink: BinaryIO) -> None:
    """structlog as its docs recommend for production JSON: orjson, bytes, cached loggers."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.BytesLoggerFactory(sink),
        cache_logger_on_first_use=True,
    )


def _otel_provider(ctx: Context, export: bool = True) -> None:
    """ALWAYS_ON sampling, batch export over OTLP/HTTP to the local receiver.

    With ``export=False`` spans are still sampled, recorded and ended, but no processor
    takes them: the cost of tracing without the cost of exporting.
    """
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    resource = Resource.create({"service.name": "bench"})
    provider = TracerProvider(sampler=ALWAYS_ON, resource=resource)
    trace.set_tracer_provider(provider)
    if export:
        exporter = OTLPSpanExporter(endpoint=ctx.otlp_endpoint + "/v1/traces")
        provider.add_span_processor(BatchSpanProcessor(exporter))
        ctx.flushers.append(lambda: _require_flush(provider.force_flush()))


def _require_flush(done: bool) -> None:
    if not done:
        raise RuntimeError("tracer provider force_flush timed out; spans were not exported")


def _current_ids() -> dict[str, str]:
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return {}
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}


class ASGIAccessLog:
    """A pure ASGI middleware writing one structlog record per request."""

    __slots__ = ("app", "correlation_id", "log", "with_ids")

    def __init__(
        self,
        app: ASGIApp,
        with_ids: bool = False,
        correlation_id: Callable[[], str | None] | None = None,
    ) -> None:
        self.app = app
        self.with_ids = with_ids
        self.correlation_id = correlation_id
        self.log = structlog.get_logger("access")

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            fields: dict[str, Any] = {
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": round((time.perf_counter() - start) * 1000, 3),
            }
            if self.with_ids:
                fields.update(_current_ids())
            if self.correlation_id is not None:
                fields["correlation_id"] = self.correlation_id()
            self.log.info("request", **fields)


class WSGIAccessLog:
    """A WSGI middleware writing one structlog record per request."""

    __slots__ = ("app", "correlation_id", "log", "with_ids")

    def __init__(
        self,
        app: WSGIApp,
        with_ids: bool = False,
        correlation_id: Callable[[], str | None] | None = None,
    ) -> None:
        self.app = app
        self.with_ids = with_ids
        self.correlation_id = correlation_id
        self.log = structlog.get_logger("access")

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Any:
        start = time.perf_counter()
        status = "500"

        def start_status(status_line: str, headers: list[Any], exc_info: Any = None) -> Any:
            nonlocal status
            status = status_line
            return start_response(status_line, headers, exc_info)

        try:
            return self.app(environ, start_status)
        finally:
            fields: dict[str, Any] = {
                "method": environ["REQUEST_METHOD"],
                "path": environ["PATH_INFO"],
                "status": int(status[:3]),
                "duration_ms": round((time.perf_counter() - start) * 1000, 3),
            }
            if self.with_ids:
                fields.update(_current_ids())
            if self.correlation_id is not None:
                fields["correlation_id"] = self.correlation_id()
            self.log.info("request", **fields)


_wsgi_correlation_id: ContextVar[str | None] = ContextVar("bench_correlation_id", default=None)


class WSGICorrelationId:
    """The correlation id wrapper Flask users write by hand: header in, header out."""

    __slots__ = ("app",)

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Any:
        cid = environ.get("HTTP_X_REQUEST_ID") or uuid.uuid4().hex
        token = _wsgi_correlation_id.set(cid)

        def start_with_id(status: str, headers: list[Any], exc_info: Any = None) -> Any:
            headers.append(("X-Request-ID", cid))
            return start_response(status, headers, exc_info)

        try:
            return self.app(environ, start_with_id)
        finally:
            _wsgi_correlation_id.reset(token)


def _optional(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Unavailable(f"{module} is not installed ({exc})") from None


def _devkit(attribute: str, ctx: Context) -> Any:
    """``devkit.init()`` with OTLP export to the receiver; fails early if not written yet."""
    import devkit

    if not hasattr(devkit, attribute):
        raise Unavailable(f"devkit has no attribute {attribute!r} (middleware not written yet)")
    os.environ["DEVKIT_SERVICE_NAME"] = "bench"
    os.environ["DEVKIT_TRACES_EXPORTER"] = "otlp"
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = ctx.otlp_endpoint
    runtime = devkit.init()
    ctx.flushers.append(lambda: _flush_devkit(runtime))
    return getattr(devkit, attribute)


def _flush_devkit(runtime: Any) -> None:
    """Push devkit's kept spans through its export queue to the receiver.

    devkit's global tracer provider is a proxy without ``force_flush``; the real provider,
    tail sampler and export queue hang off the runtime ``init()`` returns. If that layout
    changes, fail loudly: a flush that silently does nothing would leave devkit's export
    cost outside the timed region.
    """
    from devkit import _setup

    # Requests whose books wait for the end of a loop iteration are done now: inside
    # the timed flush, never outside the measurement.
    _setup.finish_pending()
    tracing = getattr(runtime, "tracing", None)
    if tracing is None:
        return
    flushed = False
    for part in ("processor", "exporter"):
        flush = getattr(getattr(tracing, part, None), "force_flush", None)
        if flush is not None:
            if flush() is False:
                raise RuntimeError(f"devkit {part} force_flush timed out")
            flushed = True
    if not flushed:
        raise RuntimeError("cannot find devkit's span export queue to flush (runtime.tracing)")


#: The parts of devkit's per-request work that :func:`switch_off_devkit` can remove.
DEVKIT_PARTS = ("logs", "span", "metrics")


def switch_off_devkit(parts: Collection[str]) -> None:
    """Remove ``parts`` of the initialised devkit's per-request work, to see what each costs.

    For measurement only: the access record (``logs``), the server span with its tail
    sampling and export (``span``), the RED metrics (``metrics``). Call it after the
    devkit variant was built; requests served afterwards skip those parts.
    """
    unknown = set(parts) - set(DEVKIT_PARTS)
    if unknown:
        raise ValueError(
            f"devkit parts are {','.join(DEVKIT_PARTS)}, not {','.join(sorted(unknown))}"
        )
    from devkit import _state

    core = _state.core()
    if core is None:
        raise ValueError("switching devkit parts off needs a devkit variant (no devkit runtime)")
    if "logs" in parts:
        core.logs = None
    if "span" in parts:
        core.server_spans = None
    if "metrics" in parts:
        core.metrics = None


# -- ASGI variants ------------------------------------------------------------------------


def asgi_bare(make_app: AppFactory, ctx: Context) -> Any:
    return make_app()


def asgi_otel(make_app: AppFactory, ctx: Context) -> Any:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    _otel_provider(ctx)
    return OpenTelemetryMiddleware(make_app())


def asgi_prometheus(make_app: AppFactory, ctx: Context) -> Any:
    from starlette_exporter import PrometheusMiddleware

    app = make_app()
    app.add_middleware(PrometheusMiddleware)
    return app


def asgi_structlog_access(make_app: AppFactory, ctx: Context) -> Any:
    configure_structlog(ctx.sink)
    app = make_app()
    app.add_middleware(ASGIAccessLog)
    return app


def asgi_stack(make_app: AppFactory, ctx: Context, export: bool = True) -> Any:
    from asgi_correlation_id import CorrelationIdMiddleware, correlation_id
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from starlette_exporter import PrometheusMiddleware

    _otel_provider(ctx, export)
    configure_structlog(ctx.sink)
    app = make_app()
    # add_middleware: the last added is the outermost.
    app.add_middleware(ASGIAccessLog, with_ids=True, correlation_id=correlation_id.get)
    app.add_middleware(PrometheusMiddleware)
    app.add_middleware(CorrelationIdMiddleware)
    return OpenTelemetryMiddleware(app)


def asgi_stack_noexport(make_app: AppFactory, ctx: Context) -> Any:
    return asgi_stack(make_app, ctx, export=False)


def asgi_devkit(make_app: AppFactory, ctx: Context) -> Any:
    wrap = _devkit("asgi", ctx)
    return wrap(make_app())


def _ddtrace(ctx: Context) -> Any:
    """ddtrace pointed at the local receiver, with its telemetry and remote config off."""
    os.environ["DD_TRACE_AGENT_URL"] = ctx.otlp_endpoint
    os.environ["DD_INSTRUMENTATION_TELEMETRY_ENABLED"] = "false"
    os.environ["DD_REMOTE_CONFIGURATION_ENABLED"] = "false"
    return _optional("ddtrace")


def asgi_ddtrace(make_app: AppFactory, ctx: Context) -> Any:
    ddtrace = _ddtrace(ctx)
    middleware = _optional("ddtrace.contrib.asgi").TraceMiddleware
    ctx.flushers.append(ddtrace.tracer.flush)
    return middleware(make_app())


def asgi_sentry(make_app: AppFactory, ctx: Context) -> Any:
    sentry_sdk = _optional("sentry_sdk")
    asgi = _optional("sentry_sdk.integrations.asgi")
    sentry_sdk.init(dsn=_sentry_dsn(ctx), traces_sample_rate=1.0)
    ctx.flushers.append(lambda: sentry_sdk.flush())
    return asgi.SentryAsgiMiddleware(make_app())


def asgi_logfire(make_app: AppFactory, ctx: Context) -> Any:
    logfire = _optional("logfire")
    _configure_logfire(logfire, ctx)
    return logfire.instrument_asgi(make_app())


def _sentry_dsn(ctx: Context) -> str:
    return ctx.otlp_endpoint.replace("http://", "http://public@") + "/1"


def _configure_logfire(logfire: Any, ctx: Context) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = OTLPSpanExporter(endpoint=ctx.otlp_endpoint + "/v1/traces")
    logfire.configure(
        send_to_logfire=False,
        console=False,
        service_name="bench",
        additional_span_processors=[BatchSpanProcessor(exporter)],
    )
    ctx.flushers.append(logfire.force_flush)


# -- WSGI variants ------------------------------------------------------------------------


def wsgi_bare(make_app: AppFactory, ctx: Context) -> Any:
    return make_app()


def wsgi_otel(make_app: AppFactory, ctx: Context) -> Any:
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

    _otel_provider(ctx)
    app = make_app()
    app.wsgi_app = OpenTelemetryMiddleware(app.wsgi_app)
    return app


def wsgi_prometheus(make_app: AppFactory, ctx: Context) -> Any:
    from prometheus_flask_exporter import PrometheusMetrics  # type: ignore[import-untyped]

    app = make_app()
    PrometheusMetrics(app)
    return app


def wsgi_structlog_access(make_app: AppFactory, ctx: Context) -> Any:
    configure_structlog(ctx.sink)
    app = make_app()
    app.wsgi_app = WSGIAccessLog(app.wsgi_app)
    return app


def wsgi_stack(make_app: AppFactory, ctx: Context, export: bool = True) -> Any:
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
    from prometheus_flask_exporter import PrometheusMetrics

    _otel_provider(ctx, export)
    configure_structlog(ctx.sink)
    app = make_app()
    PrometheusMetrics(app)
    inner = WSGIAccessLog(app.wsgi_app, with_ids=True, correlation_id=_wsgi_correlation_id.get)
    app.wsgi_app = OpenTelemetryMiddleware(WSGICorrelationId(inner))
    return app


def wsgi_stack_noexport(make_app: AppFactory, ctx: Context) -> Any:
    return wsgi_stack(make_app, ctx, export=False)


def wsgi_devkit(make_app: AppFactory, ctx: Context) -> Any:
    wrap = _devkit("wsgi", ctx)
    return wrap(make_app())


def wsgi_ddtrace(make_app: AppFactory, ctx: Context) -> Any:
    ddtrace = _ddtrace(ctx)
    middleware = _optional("ddtrace.contrib.wsgi").DDWSGIMiddleware
    ctx.flushers.append(ddtrace.tracer.flush)
    app = make_app()
    app.wsgi_app = middleware(app.wsgi_app)
    return app


def wsgi_sentry(make_app: AppFactory, ctx: Context) -> Any:
    sentry_sdk = _optional("sentry_sdk")
    wsgi = _optional("sentry_sdk.integrations.wsgi")
    sentry_sdk.init(dsn=_sentry_dsn(ctx), traces_sample_rate=1.0)
    ctx.flushers.append(lambda: sentry_sdk.flush())
    app = make_app()
    app.wsgi_app = wsgi.SentryWsgiMiddleware(app.wsgi_app)
    return app


def wsgi_logfire(make_app: AppFactory, ctx: Context) -> Any:
    logfire = _optional("logfire")
    _configure_logfire(logfire, ctx)
    app = make_app()
    app.wsgi_app = logfire.instrument_wsgi(app.wsgi_app)
    return app


#: Variants in report order; ``stack`` is the reference for overhead ratios. ``stack_noexport``
#: shows how much of the stack's cost is exporting (devkit exports only the traces it keeps).
ASGI_VARIANTS: dict[str, Variant] = {
    "bare": asgi_bare,
    "otel": asgi_otel,
    "prometheus": asgi_prometheus,
    "structlog_access": asgi_structlog_access,
    "stack": asgi_stack,
    "stack_noexport": asgi_stack_noexport,
    "devkit": asgi_devkit,
    "ddtrace": asgi_ddtrace,
    "sentry": asgi_sentry,
    "logfire": asgi_logfire,
}
WSGI_VARIANTS: dict[str, Variant] = {
    "bare": wsgi_bare,
    "otel": wsgi_otel,
    "prometheus": wsgi_prometheus,
    "structlog_access": wsgi_structlog_access,
    "stack": wsgi_stack,
    "stack_noexport": wsgi_stack_noexport,
    "devkit": wsgi_devkit,
    "ddtrace": wsgi_ddtrace,
    "sentry": wsgi_sentry,
    "logfire": wsgi_logfire,
}
#: Third-party tools measured only when installed; the top-level module decides.
OPTIONAL = {"ddtrace": "ddtrace", "sentry": "sentry_sdk", "logfire": "logfire"}
