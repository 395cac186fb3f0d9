"""``init()`` and ``shutdown()``: build every component from Settings, idempotently."""

from __future__ import annotations

import atexit
import sys
import time
from collections.abc import Callable
from typing import Any

from devkit import _errors, _state, logs
from devkit._state import Runtime
from devkit.config import Settings
from devkit.redaction import Redactor

__all__ = ["init", "shutdown"]

_atexit_registered = False
#: Components injected by ``devkit.testing`` (e.g. an in-memory span exporter).
components: dict[str, Any] = {}


def init(**overrides: Any) -> Runtime:
    """Configure logs, metrics, tracing and health from the environment.

    Keyword arguments are the variables of the configuration reference in lower case
    without the ``DEVKIT_`` prefix (``service_name=``, ``log_level=`` ...) and win over
    the environment. Raises :class:`devkit.ConfigError` for invalid configuration, before
    anything is installed. A second call returns the same runtime and logs one warning.
    """
    global _atexit_registered
    with _state.lock():
        runtime = _state.current()
        if runtime is not None:
            if not runtime.warned_reinit:
                runtime.warned_reinit = True
                logs.get_logger("devkit").warning(
                    "devkit.init() called again; keeping the existing runtime",
                    ignored_overrides=sorted(overrides) or None,
                )
            return runtime

        settings = Settings.from_env(None, **overrides)
        if settings.disabled:
            runtime = Runtime(settings=settings, enabled=False)
            _state.set_current(runtime)
            return runtime

        redactor = Redactor(
            mode=settings.redact_mode,
            salt=settings.redact_salt.encode() if settings.redact_salt else None,
            extra_keys=settings.redact_keys,
            redact_ip=settings.redact_ip,
        )
        runtime = Runtime(settings=settings, redactor=redactor)
        runtime.extra.update(components)
        try:
            _build(runtime)
        except BaseException:
            _run_closers(runtime, settings.shutdown_timeout_s)
            raise
        _state.set_current(runtime)
        if not _atexit_registered:
            atexit.register(shutdown)
            _atexit_registered = True
        return runtime


def _build(runtime: Runtime) -> None:
    """Build and install every component; each registers its undo in ``runtime.closers``."""
    from prometheus_client import REGISTRY

    from devkit import health
    from devkit.http._core import Instruments
    from devkit.metrics import RedMetrics, buckets_for
    from devkit.tracing.propagation import W3CPropagator
    from devkit.tracing.provider import build_tracing, install_instrumentors, install_propagator

    settings = runtime.settings
    closers = runtime.closers

    pipeline = logs.LogPipeline(settings, runtime.redactor, sys.stdout)
    installation = logs.install(pipeline)
    runtime.logs = pipeline
    closers.append(("logs", lambda _t: installation.undo()))

    metrics = RedMetrics(
        REGISTRY,
        buckets=buckets_for(settings.slow_threshold_ms / 1000.0),
        multiprocess_dir=settings.multiprocess_dir,
    )
    runtime.metrics = metrics
    closers.append(("metrics", lambda _t: metrics.unregister()))

    from devkit import _loop

    closers.append(("metrics", lambda _t: _loop.detach_all()))
    for (component, reason), n in _errors.counts().items():
        metrics.internal_errors.labels(component, reason).inc(n)
    _errors.add_listener(metrics.count_internal_error)
    closers.append(("metrics", lambda _t: _errors.remove_listener(metrics.count_internal_error)))

    redactor = runtime.redactor
    tracing = build_tracing(
        settings,
        redact=redactor.redact_attributes if redactor is not None else None,
        on_drop=metrics.count_dropped_spans,
        on_decision=metrics.count_trace_decision,
        exporter=runtime.extra.get("span_exporter"),
    )
    runtime.tracing = tracing
    closers.append(("tracing", tracing.shutdown))
    metrics.before_scrape.append(tracing.processor.flush_counts)
    undo_propagator = install_propagator(W3CPropagator(), settings)
    closers.append(("tracing", lambda _t: undo_propagator()))

    registry = health.configure(
        liveness_timeout_s=settings.liveness_timeout_s,
        redact=redactor.redact_str if redactor is not None else None,
    )
    runtime.health = registry
    closers.append(("health", lambda _t: registry.stop()))

    from devkit._signals import chain_sigterm

    undo_signal = chain_sigterm(registry.begin_shutdown)
    if undo_signal is not None:
        closers.append(("health", _ignore_timeout(undo_signal)))

    runtime.instruments = Instruments(
        settings,
        metrics=metrics,
        tracing=tracing,
        logs=pipeline,
        health=registry,
        redactor=redactor,
    )

    if settings.metrics_port is not None:
        from devkit.http._metrics_server import MetricsServer

        try:
            server = MetricsServer(runtime.instruments, settings.metrics_port).start()
        except OSError as exc:
            # e.g. several gunicorn workers: the first one serves the merged metrics.
            _errors.report("metrics_server", "port_unavailable", detail=str(exc))
        else:
            runtime.extra["metrics_server"] = server
            closers.append(("metrics_server", server.stop))

    from devkit import integrations

    names, undos = integrations.enable_installed()
    runtime.integrations = names
    for undo in undos:
        closers.append(("integrations", _ignore_timeout(undo)))
    instrumentors, undo_instrumentors = install_instrumentors(settings)
    runtime.instrumentors = instrumentors
    closers.append(("tracing", lambda _t: undo_instrumentors()))


def _ignore_timeout(action: Callable[[], None]) -> Callable[[float], None]:
    return lambda _timeout: action()


def _drain(runtime: Runtime, deadline: float) -> int:
    """Wait (bounded) for in-flight requests of other threads; the number left unfinished."""
    inst = runtime.instruments
    if inst is None:
        return 0
    while inst.in_flight > 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    return inst.in_flight


def finish_pending(runtime: Runtime | None = None) -> None:
    """Do the books (span, metrics, access record) of requests that ended on an event loop
    and wait for the end of its iteration; what reads those results calls this first."""
    runtime = runtime if runtime is not None else _state.current()
    if runtime is not None and runtime.instruments is not None:
        runtime.instruments.flush_pending()


def _flush_runtime(runtime: Runtime, timeout_s: float) -> bool:
    finish_pending(runtime)
    if runtime.tracing is None:
        return True
    try:
        runtime.tracing.processor.force_flush()
        exporter = runtime.tracing.exporter
        return exporter.force_flush(timeout_s) if exporter is not None else True
    except Exception as exc:
        _errors.report("tracing", "flush_failed", exc)
        return False


def flush(timeout_s: float | None = None) -> bool:
    """Write what finished requests still owe (access records, metrics, spans) and export
    every kept span now (pending traces are decided), within ``timeout_s``.

    Called when the server stops (ASGI lifespan shutdown) because a server that re-raises
    SIGTERM after its shutdown never runs ``atexit`` handlers.
    """
    runtime = _state.current()
    if runtime is None:
        return True
    timeout = timeout_s if timeout_s is not None else runtime.settings.shutdown_timeout_s
    return _flush_runtime(runtime, timeout)


def stop_serving(timeout_s: float | None = None) -> None:
    """The end of serving: fail readiness, drain in-flight requests, flush kept spans, and
    write one ``shutdown complete`` record — once, leaving logging installed.

    Run by the ASGI lifespan shutdown (a server that re-raises SIGTERM never reaches
    ``atexit``) and by :func:`shutdown`.
    """
    runtime = _state.current()
    if runtime is None or runtime.extra.get("stopped"):
        return
    runtime.extra["stopped"] = True
    _stop_serving(runtime, timeout_s)


def _stop_serving(runtime: Runtime, timeout_s: float | None) -> None:
    timeout = timeout_s if timeout_s is not None else runtime.settings.shutdown_timeout_s
    deadline = time.monotonic() + timeout
    if runtime.health is not None:
        runtime.health.begin_shutdown()
    unfinished = _drain(runtime, deadline)
    flushed = _flush_runtime(runtime, max(0.0, deadline - time.monotonic()))
    if runtime.logs is None:
        return
    exporter = runtime.tracing.exporter if runtime.tracing is not None else None
    inst = runtime.instruments
    runtime.logs.emit(
        "info" if flushed and unfinished == 0 else "warn",
        {
            "event": "shutdown complete",
            "logger": "devkit",
            "requests_served": inst.started_requests if inst is not None else 0,
            "requests_unfinished": unfinished,
            "spans_exported": exporter.exported if exporter is not None else 0,
            "spans_unexported": exporter.pending() if exporter is not None else 0,
        },
    )


def shutdown(timeout_s: float | None = None) -> None:
    """Flush and uninstall everything ``init()`` installed. Idempotent; never raises.

    Readiness fails first, in-flight requests get to finish, kept spans are exported and
    a ``shutdown complete`` record is written; ``timeout_s`` (default
    ``DEVKIT_SHUTDOWN_TIMEOUT_S``) bounds the whole shutdown.
    """
    with _state.lock():
        runtime = _state.current()
        if runtime is None:
            return
        timeout = timeout_s if timeout_s is not None else runtime.settings.shutdown_timeout_s
        deadline = time.monotonic() + timeout
        try:
            if not runtime.extra.get("stopped"):
                runtime.extra["stopped"] = True
                try:
                    _stop_serving(runtime, timeout)
                except Exception as exc:
                    _errors.report("devkit", "stop_serving_failed", exc)
        finally:
            # Whatever failed above, the runtime is gone and every closer runs.
            _state.reset()
            _run_closers(runtime, max(0.0, deadline - time.monotonic()))


def _run_closers(runtime: Runtime, timeout_s: float) -> None:
    """Run every undo action, newest first; a failing one never stops the others."""
    deadline = time.monotonic() + timeout_s
    first: BaseException | None = None
    while runtime.closers:
        name, close = runtime.closers.pop()
        try:
            close(max(0.0, deadline - time.monotonic()))
        except Exception as exc:
            try:
                _errors.report(name, "shutdown_failed", exc)
            except Exception as strict:  # devkit's own tests: re-raise after the rest ran
                first = first or strict
    if first is not None:
        raise first
