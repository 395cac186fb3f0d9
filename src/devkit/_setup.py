"""``init()`` and ``shutdown()``: build every component from Settings, idempotently."""

from __future__ import annotations

import atexit
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from devkit import _errors, _state, logs
from devkit._state import Runtime, State
from devkit._version import __version__
from devkit.config import Settings
from devkit.redaction import Redactor

if TYPE_CHECKING:
    from devkit.health import HealthRegistry
    from devkit.metrics import RedMetrics

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
        state = _state.current()
        if state is not None:
            if not state.warned_reinit:
                state.warned_reinit = True
                logs.get_logger("devkit").warning(
                    "devkit.init() called again; keeping the existing runtime",
                    ignored_overrides=sorted(overrides) or None,
                )
            return state.view

        settings = Settings.from_env(None, **overrides)
        if settings.disabled:
            state = State(settings=settings, enabled=False)
            _state.set_current(state)
            return state.view

        redactor = Redactor(
            mode=settings.redact_mode,
            salt=settings.redact_salt.encode() if settings.redact_salt else None,
            extra_keys=settings.redact_keys,
            redact_ip=settings.redact_ip,
        )
        state = State(settings=settings, redactor=redactor)
        try:
            _build(state)
        except BaseException:
            _run_closers(state, settings.shutdown_timeout_s)
            raise
        _state.set_current(state)
        if not _atexit_registered:
            atexit.register(shutdown)
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _atexit_registered = True
        return state.view


def _after_fork_in_child() -> None:
    """A child forked after ``init()`` (gunicorn ``--preload``, ``os.fork()`` in a serving
    process) starts with no request of its own: the parent's requests in flight, and
    their unfinished books, stay the parent's. Counted as in flight here they would never
    end: the in-progress gauge would stay up and ``shutdown()`` would wait its whole budget
    for them. Locks a parent's thread held at the fork are replaced."""
    state = _state.current()
    core = state.core if state is not None else None
    if core is None:
        return
    try:
        core.after_fork_in_child()
    except Exception as exc:
        _errors.report("devkit", "after_fork_failed", exc)
    directory = state.settings.multiprocess_dir if state is not None else None
    if directory is not None:
        from devkit import _multiprocess
        from devkit.exceptions import ConfigError

        # The child's own metrics files (gunicorn --preload: init() ran in the master).
        # Nothing can be raised into a fork: say it once, clearly, before the first
        # write to an unbacked page ends the process.
        try:
            _multiprocess.reserve(directory)
        except ConfigError as exc:
            _errors.report("metrics", "multiprocess_dir_unusable", detail=str(exc))


def _build(state: State) -> None:
    """Build and install every component; each registers its undo in ``state.closers``."""
    from prometheus_client import REGISTRY

    from devkit import health
    from devkit.http._core import Core
    from devkit.metrics import RedMetrics, buckets_for
    from devkit.tracing.propagation import W3CPropagator
    from devkit.tracing.provider import build_tracing, install_instrumentors, install_propagator

    settings = state.settings
    closers = state.closers

    pipeline = logs.LogPipeline(settings, state.redactor, sys.stdout)
    installation = logs.install(pipeline)
    closers.append(("logs", lambda _t: installation.undo()))

    if settings.multiprocess_dir is not None:
        from devkit import _multiprocess

        # Before any metric maps a file there: a missing, read-only or full directory is
        # a ConfigError now, not an OSError (or a SIGBUS) inside a request later.
        _multiprocess.reserve(settings.multiprocess_dir)
    metrics = RedMetrics(
        REGISTRY,
        buckets=buckets_for(settings.slow_threshold_ms / 1000.0),
        multiprocess_dir=settings.multiprocess_dir,
        build_info={
            "service": settings.service_name,
            "version": settings.service_version or "",
            "environment": settings.environment or "",
            "devkit_version": __version__,
        },
    )
    closers.append(("metrics", lambda _t: metrics.unregister()))

    from devkit import _loop

    closers.append(("metrics", lambda _t: _loop.detach_all()))
    for (component, reason), n in _errors.counts().items():
        metrics.internal_errors.labels(component, reason).inc(n)
    _errors.add_listener(metrics.count_internal_error)
    closers.append(("metrics", lambda _t: _errors.remove_listener(metrics.count_internal_error)))

    redactor = state.redactor
    tracing = build_tracing(
        settings,
        redact=redactor.redact_attributes if redactor is not None else None,
        on_drop=metrics.count_dropped_spans,
        on_decision=metrics.count_trace_decision,
        exporter=components.get("span_exporter"),
    )
    closers.append(("tracing", tracing.shutdown))
    metrics.before_scrape.append(tracing.processor.flush_counts)

    if settings.logs_exporter == "otlp":
        from devkit._log_export import build_log_export

        log_export = state.log_export = build_log_export(
            settings,
            tracing.provider.resource,  # the traces' own: one service.instance.id
            on_drop=metrics.count_dropped_log_records,
            exporter=components.get("log_exporter"),
        )
        pipeline.export = log_export

        def close_log_export(timeout_s: float) -> None:
            pipeline.export = None
            log_export.shutdown(timeout_s)

        closers.append(("logs", close_log_export))
    undo_propagator = install_propagator(W3CPropagator(), settings)
    closers.append(("tracing", lambda _t: undo_propagator()))

    registry = health.configure(
        liveness_timeout_s=settings.liveness_timeout_s,
        redact=redactor.redact_str if redactor is not None else None,
    )
    _process_gauges(metrics, registry)
    closers.append(("health", lambda _t: registry.stop()))

    from devkit._signals import chain_sigterm

    undo_signal = chain_sigterm(registry.begin_shutdown)
    if undo_signal is not None:
        closers.append(("health", _ignore_timeout(undo_signal)))

    core = state.core = Core(
        settings, metrics=metrics, tracing=tracing, logs=pipeline, health=registry
    )
    closers.append(("middleware", lambda _t: core.close()))

    if settings.metrics_port is not None:
        from devkit.http._metrics_server import MetricsServer

        endpoints = core.endpoints_for(settings, serve_metrics=True)
        try:
            server = MetricsServer(endpoints, settings.metrics_port).start()
        except OSError as exc:
            # e.g. several gunicorn workers: the first one serves the merged metrics.
            _errors.report("metrics_server", "port_unavailable", detail=str(exc))
        else:
            state.metrics_server = server
            closers.append(("metrics_server", server.stop))

    from devkit import integrations

    names, undos = integrations.enable_installed()
    state.integrations = tuple(names)
    for undo in undos:
        closers.append(("integrations", _ignore_timeout(undo)))
    from devkit.tracing.downstream import TraceResponses

    responses = TraceResponses(
        tracing.processor.mark_downstream_keep, settings.trusted_trace_responses
    )
    hooks = responses.hooks() if settings.trusted_trace_responses else None
    instrumentors, undo_instrumentors = install_instrumentors(settings, hooks)
    state.instrumentors = tuple(instrumentors)
    closers.append(("tracing", lambda _t: undo_instrumentors()))


def _process_gauges(metrics: RedMetrics, registry: HealthRegistry) -> None:
    """What a canary's rollback rules read of each process, at scrape time."""
    from devkit import _cgroup
    from devkit.conventions import CIRCUIT_BREAKER_OPEN, MEMORY_LIMIT, MEMORY_USAGE, READY

    metrics.add_gauge(
        READY,
        "1 while this process is ready: started, not draining, its last readiness probe passed.",
        lambda: {(): registry.ready_state()},
    )
    metrics.add_gauge(
        CIRCUIT_BREAKER_OPEN,
        "1 while the circuit breaker in front of a dependency is open.",
        lambda: {(name,): float(is_open) for name, is_open in registry.circuit_breakers().items()},
        labels=("dependency",),
    )

    metrics.add_gauge(
        MEMORY_LIMIT,
        "The memory limit of the process's cgroup (its container), when it has one.",
        lambda: {(): _cgroup.memory()[0]},
    )
    metrics.add_gauge(
        MEMORY_USAGE,
        "The memory the process's cgroup (its container) uses.",
        lambda: {(): _cgroup.memory()[1]},
    )


def _ignore_timeout(action: Callable[[], None]) -> Callable[[float], None]:
    return lambda _timeout: action()


def _drain(state: State, deadline: float) -> int:
    """Wait (bounded) for in-flight requests of other threads; the number left unfinished."""
    core = state.core
    if core is None:
        return 0
    while core.in_flight > 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    return core.in_flight


def finish_pending() -> None:
    """Do the books (span, metrics, access record) of requests that ended on an event loop
    and wait for the end of its iteration; what reads those results calls this first."""
    core = _state.core()
    if core is not None:
        core.flush_pending()


def _flush_state(state: State, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    core = state.core
    if core is None:
        return True
    core.flush_pending()
    flushed = True
    if core.tracing is not None:
        try:
            core.tracing.processor.force_flush()
            exporter = core.tracing.exporter
            flushed = exporter.force_flush(timeout_s) if exporter is not None else True
        except Exception as exc:
            _errors.report("tracing", "flush_failed", exc)
            flushed = False
    if state.log_export is not None:
        left = max(0.0, deadline - time.monotonic())
        flushed = state.log_export.force_flush(left) and flushed
    if core.logs is not None:
        core.logs.release_held()  # lines that waited for an export thread
    return flushed


def flush(timeout_s: float | None = None) -> bool:
    """Write what finished requests still owe (access records, metrics, spans) and export
    every kept span and queued log record now (pending traces are decided), within
    ``timeout_s``.

    Called when the server stops (ASGI lifespan shutdown) because a server that re-raises
    SIGTERM after its shutdown never runs ``atexit`` handlers.
    """
    state = _state.current()
    if state is None:
        return True
    timeout = timeout_s if timeout_s is not None else state.settings.shutdown_timeout_s
    return _flush_state(state, timeout)


def stop_serving(timeout_s: float | None = None) -> None:
    """The end of serving: fail readiness, drain in-flight requests, flush kept spans, and
    write one ``shutdown complete`` record — once, leaving logging installed.

    Run by the ASGI lifespan shutdown (a server that re-raises SIGTERM never reaches
    ``atexit``) and by :func:`shutdown`.
    """
    state = _state.current()
    if state is None or state.stopped:
        return
    state.stopped = True
    _stop_serving(state, timeout_s)


def _stop_serving(state: State, timeout_s: float | None) -> None:
    timeout = timeout_s if timeout_s is not None else state.settings.shutdown_timeout_s
    deadline = time.monotonic() + timeout
    core = state.core
    if core is None:
        return
    if core.health is not None:
        core.health.begin_shutdown()
    unfinished = _drain(state, deadline)
    flushed = _flush_state(state, max(0.0, deadline - time.monotonic()))
    if core.logs is None:
        return
    exporter = core.tracing.exporter if core.tracing is not None else None
    core.logs.emit(
        "info" if flushed and unfinished == 0 else "warn",
        {
            "event": "shutdown complete",
            "logger": "devkit",
            "requests_served": core.started_requests,
            "requests_unfinished": unfinished,
            "spans_exported": exporter.exported if exporter is not None else 0,
            "spans_unexported": exporter.pending() if exporter is not None else 0,
        },
    )
    core.logs.release_held()
    if state.log_export is not None:
        # A server that re-raises SIGTERM never reaches atexit: the records go now.
        state.log_export.force_flush(max(0.0, deadline - time.monotonic()))


def shutdown(timeout_s: float | None = None) -> None:
    """Flush and uninstall everything ``init()`` installed. Idempotent; never raises.

    Readiness fails first, in-flight requests get to finish, kept spans are exported and
    a ``shutdown complete`` record is written; ``timeout_s`` (default
    ``DEVKIT_SHUTDOWN_TIMEOUT_S``) bounds the whole shutdown.
    """
    with _state.lock():
        state = _state.current()
        if state is None:
            return
        timeout = timeout_s if timeout_s is not None else state.settings.shutdown_timeout_s
        deadline = time.monotonic() + timeout
        try:
            if not state.stopped:
                state.stopped = True
                try:
                    _stop_serving(state, timeout)
                except Exception as exc:
                    _errors.report("devkit", "stop_serving_failed", exc)
        finally:
            # Whatever failed above, the runtime is gone and every closer runs.
            _state.reset()
            _run_closers(state, max(0.0, deadline - time.monotonic()))


def _run_closers(state: State, timeout_s: float) -> None:
    """Run every undo action, newest first; a failing one never stops the others."""
    deadline = time.monotonic() + timeout_s
    first: BaseException | None = None
    while state.closers:
        name, close = state.closers.pop()
        try:
            close(max(0.0, deadline - time.monotonic()))
        except Exception as exc:
            try:
                _errors.report(name, "shutdown_failed", exc)
            except Exception as strict:  # devkit's own tests: re-raise after the rest ran
                first = first or strict
    if first is not None:
        raise first
