"""TracerProvider, resource, exporters, propagators and instrumentors, built from Settings.

OpenTelemetry's global tracer provider can be set only once per process. devkit sets a
:class:`ProxyTracerProvider` once and re-points it at each ``init()``, so ``shutdown()``
followed by ``init()`` (tests, reloaders) works and tracers handed out earlier follow.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Link, NoOpTracerProvider, Span, SpanKind, Tracer
from opentelemetry.util.types import Attributes

from devkit import _compat, _errors
from devkit.config import SERVER_INSTRUMENTORS, Settings
from devkit.exceptions import ConfigError
from devkit.tracing._export import BatchExporter
from devkit.tracing._span import ServerSpanFactory
from devkit.tracing.sampling import ErrorBiasedSampler, SamplingLimits, TailSamplingProcessor

__all__ = [
    "ProxyTracerProvider",
    "Tracing",
    "build_exporter",
    "build_resource",
    "build_tracing",
    "install_instrumentors",
    "install_propagator",
    "proxy_provider",
]

Count = Callable[[str, int], None]


class _ProxyTracer(Tracer):
    """A tracer that follows the provider the proxy currently points at."""

    def __init__(self, proxy: ProxyTracerProvider, args: tuple[Any, ...], kwargs: dict[str, Any]):
        self._proxy = proxy
        self._args = args
        self._kwargs = kwargs
        self._generation = -1
        self._tracer: Tracer = trace.NoOpTracer()

    def _current(self) -> Tracer:
        if self._generation != self._proxy.generation:
            self._tracer = self._proxy.delegate.get_tracer(*self._args, **self._kwargs)
            self._generation = self._proxy.generation
        return self._tracer

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        return self._current().start_span(
            name,
            context,
            kind,
            attributes,
            links,
            start_time,
            record_exception,
            set_status_on_exception,
        )

    @contextmanager
    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[Span]:
        with self._current().start_as_current_span(
            name,
            context,
            kind,
            attributes,
            links,
            start_time,
            record_exception,
            set_status_on_exception,
            end_on_exit,
        ) as span:
            yield span


class ProxyTracerProvider(trace.TracerProvider):
    """The process-global provider devkit installs once and re-points on each init()."""

    def __init__(self) -> None:
        self.delegate: trace.TracerProvider = NoOpTracerProvider()
        self.generation = 0

    def point_at(self, provider: trace.TracerProvider | None) -> None:
        self.delegate = provider if provider is not None else NoOpTracerProvider()
        self.generation += 1

    def get_tracer(self, *args: Any, **kwargs: Any) -> Tracer:
        return _ProxyTracer(self, args, kwargs)


_proxy: ProxyTracerProvider | None = None
_proxy_lock = threading.Lock()


def proxy_provider() -> ProxyTracerProvider:
    """The devkit proxy, installed as the OpenTelemetry global on first use if possible."""
    global _proxy
    with _proxy_lock:
        if _proxy is None:
            _proxy = ProxyTracerProvider()
            if not _compat.global_tracer_provider_set():
                trace.set_tracer_provider(_proxy)
            else:
                _errors.report(
                    "tracing",
                    "global_provider_already_set",
                    detail="a TracerProvider was set before devkit.init(); devkit's spans "
                    "still export, but tracers from that provider are not tail-sampled",
                )
        return _proxy


@dataclass
class Tracing:
    """What the middleware needs from tracing, and what shutdown must undo."""

    provider: TracerProvider
    tracer: trace.Tracer
    server_spans: ServerSpanFactory
    processor: TailSamplingProcessor
    exporter: BatchExporter | None
    exports: bool
    undo: list[Callable[[], None]] = field(default_factory=list)

    def shutdown(self, timeout_s: float) -> None:
        for action in reversed(self.undo):
            try:
                action()
            except Exception as exc:
                _errors.report("tracing", "uninstall_failed", exc)
        self.processor.force_flush()
        if self.exporter is not None:
            self.exporter.shutdown(timeout_s)
        self.provider.shutdown()


def build_resource(settings: Settings) -> Resource:
    attributes: dict[str, str] = {"service.name": settings.service_name}
    if settings.service_version:
        attributes["service.version"] = settings.service_version
    if settings.environment:
        attributes["deployment.environment.name"] = settings.environment
    # Resource.create also merges OTEL_RESOURCE_ATTRIBUTES; explicit attributes win.
    return Resource.create(attributes)


def build_exporter(settings: Settings) -> SpanExporter | None:
    if settings.traces_exporter == "none":
        return None
    if settings.traces_exporter == "console":
        return ConsoleSpanExporter()
    options = settings.export
    if options.protocol == "http/protobuf":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ConfigError(
                "DEVKIT_TRACES_EXPORTER",
                "otlp",
                "otlp with the exporter installed: pip install 'devkit-observability[otlp]'",
            ) from None
        from devkit._keepalive import use_keep_alive
        from devkit.tracing._otlp import FastOTLPExporter

        exporter = OTLPSpanExporter()
        use_keep_alive(exporter)
        return FastOTLPExporter(exporter)
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
            OTLPSpanExporter as GrpcExporter,
        )
    except ImportError:
        raise ConfigError(
            options.protocol_variable,
            options.protocol,
            "http/protobuf, or grpc with opentelemetry-exporter-otlp-proto-grpc installed",
        ) from None
    grpc_exporter: SpanExporter = GrpcExporter()
    return grpc_exporter


def build_tracing(
    settings: Settings,
    *,
    redact: Callable[[Mapping[str, Any]], dict[str, Any]] | None,
    on_drop: Count,
    on_decision: Count,
    exporter: SpanExporter | None = None,
    limits: SamplingLimits | None = None,
) -> Tracing:
    """Provider + tail sampler + export queue. ``exporter`` overrides the configured one."""
    span_exporter = exporter if exporter is not None else build_exporter(settings)
    options = settings.export
    batch = (
        BatchExporter(
            span_exporter,
            max_queue_size=options.max_queue_size,
            max_batch_size=options.max_batch_size,
            schedule_delay_s=options.schedule_delay_s,
            redact=redact,
            on_drop=on_drop,
        )
        if span_exporter is not None
        else None
    )
    processor = TailSamplingProcessor(
        batch if batch is not None else (lambda spans: None),
        slow_threshold_s=settings.slow_threshold_ms / 1000.0,
        mode=settings.tail_sampling,
        limits=limits,
        on_drop=on_drop,
        on_decision=on_decision,
    )
    provider = TracerProvider(
        resource=build_resource(settings),
        sampler=ErrorBiasedSampler(settings.sample_success_ratio),
    )
    provider.add_span_processor(processor)
    tracing = Tracing(
        provider=provider,
        tracer=provider.get_tracer("devkit"),
        server_spans=ServerSpanFactory(
            ratio=settings.sample_success_ratio,
            resource=lambda: provider.resource,
            on_end=processor.on_end,
            on_root_end=processor.on_root_end,
            on_root_ends=processor.on_root_ends,
        ),
        processor=processor,
        exporter=batch,
        exports=batch is not None,
    )
    proxy = proxy_provider()
    proxy.point_at(provider)
    tracing.undo.append(lambda: proxy.point_at(None))
    return tracing


def install_propagator(propagator: Any, settings: Settings) -> Callable[[], None]:
    """Make ``propagator`` the global textmap unless OTEL_PROPAGATORS asks for others."""
    if settings.custom_propagators:
        return lambda: None
    # Imported here: importing opentelemetry.propagate loads OTEL_PROPAGATORS' propagators,
    # which init() validates first (importing devkit reads nothing).
    from opentelemetry import propagate

    previous = propagate.get_global_textmap()
    propagate.set_global_textmap(propagator)
    return lambda: propagate.set_global_textmap(previous)


def install_instrumentors(
    settings: Settings, hooks: Mapping[str, Mapping[str, Any]] | None = None
) -> tuple[list[str], Callable[[], None]]:
    """Activate installed OpenTelemetry instrumentors (requests, httpx, SQLAlchemy, ...).

    Those of ``DEVKIT_INSTRUMENTATIONS`` less ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``;
    never the server-side framework instrumentors: devkit's middleware makes the server
    span. ``hooks`` are ``instrument()`` keyword arguments by entry-point name (the
    outbound clients' response hooks, :mod:`devkit.tracing.downstream`).
    """
    from importlib.metadata import entry_points

    include = settings.instrumentations
    disabled = settings.disabled_instrumentations
    active: list[tuple[str, Any]] = []
    if "none" in include:
        return [], lambda: None
    wanted = None if "all" in include else set(include)
    for ep in entry_points(group="opentelemetry_instrumentor"):
        if ep.name in SERVER_INSTRUMENTORS or ep.name in disabled:
            continue
        if wanted is not None and ep.name not in wanted:
            continue
        try:
            from opentelemetry.instrumentation.dependencies import get_dependency_conflicts

            instrumentor = ep.load()()
            if instrumentor.is_instrumented_by_opentelemetry:
                continue
            # The instrumented library is missing or of another version: nothing to do.
            if get_dependency_conflicts(list(instrumentor.instrumentation_dependencies())):
                continue
            extra = dict(hooks.get(ep.name, {})) if hooks else {}
            instrumentor.instrument(tracer_provider=proxy_provider(), **extra)
            active.append((ep.name, instrumentor))
        except Exception as exc:
            _errors.report("tracing", "instrumentor_failed", detail=f"{ep.name}: {exc}")

    def undo() -> None:
        for _name, instrumentor in reversed(active):
            try:
                instrumentor.uninstrument()
            except Exception as exc:
                _errors.report("tracing", "uninstrument_failed", detail=str(exc))

    return [name for name, _ in active], undo
