"""The per-request work shared by the ASGI, WSGI and Django adapters.

One :class:`Instruments` is built by ``init()``; adapters call :meth:`Instruments.begin`
when a request arrives and :meth:`Instruments.finish` when its response is complete.
Everything that can be computed once (label tuples, header names, the access-log level
table) is computed at construction, so the request path is a handful of dict look-ups,
one span, two counter increments, one histogram observation and one log record.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextvars import Context as _VarContext
from contextvars import ContextVar, Token
from typing import Any

from opentelemetry import baggage, context, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanContext

from devkit import _context, _errors
from devkit.config import LEVEL_NUMBERS, PROBE_KINDS, Settings
from devkit.health import HealthRegistry
from devkit.logs import LogPipeline
from devkit.metrics import STANDARD_METHODS, UNMATCHED, RedMetrics
from devkit.redaction import Redactor
from devkit.tracing._span import ServerSpan
from devkit.tracing.propagation import extract
from devkit.tracing.provider import Tracing

#: (status, content type, body) of an answer devkit gives itself: /metrics or a probe.
Answer = tuple[int, str, bytes]
_PROBE_FAILED = b'{"status":"fail","checks":{}}'

__all__ = [
    "ACTIVE_KEY",
    "EXCEPTION_KEY",
    "ROUTE_KEY",
    "Answer",
    "Exchange",
    "Instruments",
    "environ_getter",
    "metrics_answer",
    "probe_answer",
    "probe_answer_async",
    "valid_correlation_id",
]

#: Set in the ASGI scope / WSGI environ by the outermost devkit layer: inner ones pass through.
ACTIVE_KEY = "devkit.active"
#: Frameworks without a router in the scope can name the route template here.
ROUTE_KEY = "devkit.route"
#: Frameworks that turn an exception into a 500 response themselves (Flask) leave it here.
EXCEPTION_KEY = "devkit.exception"
CORRELATION_HEADER = "X-Correlation-ID"
BAGGAGE_CORRELATION_KEY = _context.BAGGAGE_KEY
_MAX_LOGGED_PATH = 2048
_CID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")
#: Requests whose books are still open (see ``Instruments.finish_soon``) before the next
#: one closes them all on the spot.
MAX_PENDING = 256
#: What a loop without asyncio's ``_ready`` queue (uvloop) is taken to have queued.
_BUSY = (True,)
_getrandbits = random.getrandbits
_perf_counter = time.perf_counter
_time = time.time


def valid_correlation_id(value: str | None) -> bool:
    """1-128 characters of ``[A-Za-z0-9._:-]`` (anything else is replaced, never echoed)."""
    return value is not None and 0 < len(value) <= 128 and _CID_CHARS.issuperset(value)


def new_correlation_id() -> str:
    """128 random bits as 32 hex characters (no uuid4: a fifth of the cost, as unique)."""
    return "%032x" % _getrandbits(128)


def redact_query(query: str) -> str:
    """``a=1&b=2`` -> ``a=[REDACTED]&b=[REDACTED]``: names stay, values never reach logs."""
    parts = []
    for item in query.split("&"):
        if not item:
            continue
        name, sep, _value = item.partition("=")
        parts.append(f"{name}=[REDACTED]" if sep else name)
    return "&".join(parts)


class Exchange:
    """The state of one request between ``begin`` and ``finish`` (locals, not globals)."""

    __slots__ = (
        "start",
        "method",
        "method_label",
        "path",
        "query",
        "span",
        "trace_id",
        "span_id",
        "token",
        "cid",
        "cid_token",
        "status",
        "in_progress",
        "end",
    )

    start: float
    method: str
    method_label: str
    path: str
    query: str
    span: ServerSpan | None
    #: The ids the access record carries (the span's, or a remote parent's); 0 for none.
    trace_id: int
    span_id: int
    token: Token[Context] | None
    cid: str
    cid_token: Token[str | None]
    status: int
    in_progress: Any
    #: ``perf_counter()`` when the application returned (set by ``finish_soon``).
    end: float


#: The key under which the OpenTelemetry API keeps the current span in a Context.
_SPAN_KEY = next(iter(trace.set_span_in_context(trace.INVALID_SPAN, Context())))


def _runtime_context_var() -> ContextVar[Context] | None:
    """The ContextVar behind OpenTelemetry's default runtime context, when that is in use.

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


class Instruments:
    """Everything a request touches, resolved once at ``init()``."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: RedMetrics | None,
        tracing: Tracing | None,
        logs: LogPipeline | None,
        health: HealthRegistry | None,
        redactor: Redactor | None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.tracing = tracing
        self.server_spans = tracing.server_spans if tracing is not None else None
        self.exemplars = tracing is not None and tracing.exports
        self.logs = logs
        self.health = health
        self.redactor = redactor
        self.metrics_path = settings.metrics_path if settings.metrics_port is None else None
        self.health_prefix = settings.health_path + "/"
        self.probes = {self.health_prefix + kind: kind for kind in PROBE_KINDS}
        propagators_from_env = settings.custom_propagators
        self._propagators_from_env = propagators_from_env
        #: Lower-case names of the headers the propagators read (what adapters collect).
        self.propagation_headers = frozenset(_propagation_fields(propagators_from_env))
        #: What the ASGI adapter collects from the raw headers: those and the correlation id.
        self.asgi_headers = frozenset(
            {name.encode("latin-1") for name in self.propagation_headers}
            | {b"x-correlation-id", b"x-request-id"}
        )
        #: WSGI environ keys of the propagation headers.
        self.environ_headers = {
            "HTTP_" + name.upper().replace("-", "_"): name for name in self.propagation_headers
        }
        # Access records below DEVKIT_LOG_LEVEL are not even built.
        self._access_levels = {
            level: logs is not None and number >= logs.level_number
            for level, number in LEVEL_NUMBERS.items()
        }
        var = _runtime_context_var()
        self._context_set = var.set if var is not None else context.attach
        self._context_reset = var.reset if var is not None else context.detach
        self._in_flight = 0
        self.started_requests = 0
        #: Requests finished on an event loop whose span, metrics and record are still to
        #: be done (``finish_soon``); appended by loops, emptied under ``_pending_lock``.
        self._pending: deque[tuple[Exchange, str | None, int]] = deque()
        self._pending_lock = threading.RLock()

    # -- request life-cycle -----------------------------------------------------------------

    def begin(
        self,
        method: str,
        scheme: str,
        path: str,
        query: str,
        inbound_cid: str | None,
        get_header: Callable[[str], Sequence[str]] | None,
    ) -> Exchange:
        """Start a request. ``get_header`` is None when no propagation header arrived."""
        ex = Exchange()
        ex.start = _perf_counter()
        ex.status = 0
        ex.method = method
        method_label = method if method in STANDARD_METHODS else "_OTHER"
        ex.method_label = method_label
        ex.path = path
        ex.query = query
        self._in_flight += 1
        self.started_requests += 1

        if inbound_cid is not None and not valid_correlation_id(inbound_cid):
            inbound_cid = None
        parent: Context | None = None
        parent_span: SpanContext | None = None
        if get_header is not None:
            parent = self._extract(get_header)
            remote = parent.get(_SPAN_KEY)
            if remote is not None:
                parent_span = remote.get_span_context()  # type: ignore[attr-defined]
            if inbound_cid is None:
                from_baggage = baggage.get_baggage(BAGGAGE_CORRELATION_KEY, parent)
                if isinstance(from_baggage, str) and valid_correlation_id(from_baggage):
                    inbound_cid = from_baggage
        cid = inbound_cid or new_correlation_id()
        ex.cid = cid

        # The W3C propagator adds the correlation id to outbound baggage itself.
        factory = self.server_spans
        if factory is not None:
            span = factory.start_request(method_label, method, scheme, path, cid, parent_span)
            ex.span = span
            ex.trace_id = span.trace_id
            ex.span_id = span.span_id
            ctx = Context({**parent, _SPAN_KEY: span}) if parent else Context({_SPAN_KEY: span})
            ex.token = self._context_set(ctx)
        else:
            ex.span = None
            if parent_span is not None and parent_span.is_valid:
                ex.trace_id, ex.span_id = parent_span.trace_id, parent_span.span_id
            else:
                ex.trace_id = ex.span_id = 0
            ex.token = self._context_set(parent) if parent is not None else None
        ex.cid_token = _context.correlation_id.set(cid)
        metrics = self.metrics
        ex.in_progress = metrics.request_started(method_label) if metrics is not None else None
        return ex

    def finish(
        self,
        ex: Exchange,
        route: str | None,
        status: int,
        exc: BaseException | None,
    ) -> None:
        """Record the request. Never raises: telemetry must not break the response."""
        try:
            self._finish(ex, route, status, exc, _perf_counter(), None)
        except Exception as error:
            _errors.report("middleware", "finish_failed", error)
        finally:
            self._release(ex)

    def finish_soon(self, ex: Exchange, route: str | None, status: int) -> None:
        """:meth:`finish` for a request that ended without an exception, on an event loop.

        The request's context is restored now. When the loop has more to run in this
        iteration (under load: other requests), the span, RED metrics and access record
        wait for the end of the iteration and are done there with those of every request
        that ended in it, in a row: that keeps their code and data in the CPU's caches
        instead of reloading them between the server's and the application's work for
        each request (docs/benchmarks.md). Duration and time stamp are taken now. What
        reads the results (``/metrics``, shutdown, the ``devkit.testing`` fixtures) calls
        :meth:`flush_pending` first; at most ``MAX_PENDING`` requests wait. Never raises.
        """
        pending = self._pending
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop to wait for: do it now
            self.finish(ex, route, status, None)
            return
        if not pending:
            # asyncio's queue of what else runs in this iteration (under load, other
            # requests); other loops (uvloop) do not show theirs and count as busy.
            if not getattr(loop, "_ready", _BUSY):
                # Nothing to batch with: a callback would cost more than it saves.
                self.finish(ex, route, status, None)
                return
            try:
                # In an empty context: the books are done outside any request's context.
                loop.call_soon(self.flush_pending, context=_VarContext())
            except Exception:  # the loop is closing
                self.finish(ex, route, status, None)
                return
        elif len(pending) >= MAX_PENDING:
            # A loop closed with its call still queued would leave these waiting.
            self.flush_pending()
        ex.end = _perf_counter()
        pending.append((ex, route, status))
        self._release(ex)

    def flush_pending(self) -> None:
        """Do the books of every request :meth:`finish_soon` left open. Never raises."""
        pending = self._pending
        if not pending:
            return
        with self._pending_lock:
            # The wall clock of each request's end, from the monotonic one: one clock read.
            offset = _time() - _perf_counter()
            while pending:  # only flushers take items out, one at a time under the lock
                ex, route, status = pending.popleft()
                try:
                    self._finish(ex, route, status, None, ex.end, ex.end + offset)
                except Exception as error:
                    _errors.report("middleware", "finish_failed", error)

    def _release(self, ex: Exchange) -> None:
        """Restore the context the request ran in (always, at once)."""
        self._in_flight -= 1
        if ex.token is not None:
            try:
                self._context_reset(ex.token)
            except Exception:  # detached from another context: nothing left to undo
                pass
        try:
            _context.correlation_id.reset(ex.cid_token)
        except ValueError:
            pass

    def _finish(
        self,
        ex: Exchange,
        route: str | None,
        status: int,
        exc: BaseException | None,
        end: float,
        created: float | None,
    ) -> None:
        duration = end - ex.start
        if exc is not None and not isinstance(exc, Exception):
            # Cancelled (client went away) or interpreter exit: not a server error.
            error = False
            status = status or 499
        else:
            error = exc is not None or status >= 500
            if exc is not None and not status:
                status = 500
        if not 100 <= status <= 599:
            status = 500 if error else 499

        trace_id: str | None = None
        span = ex.span
        if span is not None:
            error_type = None
            if error:
                error_type = _errors.type_name(exc) if exc is not None else str(status)
                if exc is not None:
                    span.record_exception(exc)
            assert self.server_spans is not None
            kept = self.server_spans.end_request(
                span, route, status, error_type, span.start_time + int(duration * 1e9)
            )
            if kept and self.exemplars:
                trace_id = "%032x" % span.trace_id

        if route is None:
            route = UNMATCHED
        if self.metrics is not None:
            self.metrics.observe(
                ex.method_label, route, status, duration, error, trace_id, ex.in_progress
            )

        logs = self.logs
        if logs is not None:
            if error:
                level = "error"
            elif status >= 400:
                level = "warn"
            else:
                level = "info"
            if not self._access_levels[level]:
                return
            path = ex.path if len(ex.path) <= _MAX_LOGGED_PATH else ex.path[:_MAX_LOGGED_PATH]
            if ex.query:
                path = f"{path}?{redact_query(ex.query)}"
            if self.redactor is not None:
                path = self.redactor.redact_str(path)
            # Every field is devkit's own (a method label, a route template, numbers) or
            # redacted above (the path).
            logs.access(
                level,
                ex.method_label,
                route,
                path,
                status,
                duration,
                ex.trace_id,
                ex.span_id,
                ex.cid,
                exc if error else None,
                created,
            )

    def _extract(self, get_header: Callable[[str], Sequence[str]]) -> Context:
        if self._propagators_from_env:
            from opentelemetry import propagate

            carrier = {
                name: ",".join(get_header(name))
                for name in propagate.get_global_textmap().fields
                if get_header(name)
            }
            return propagate.extract(carrier)
        return extract(get_header)

    @property
    def in_flight(self) -> int:
        return self._in_flight


def environ_getter(
    inst: Instruments, environ: dict[str, Any]
) -> Callable[[str], Sequence[str]] | None:
    """``get_header`` over a WSGI environ / Django ``META``; None without propagation headers."""
    for key in inst.environ_headers:
        if key in environ:

            def get_header(name: str) -> Sequence[str]:
                value = environ.get("HTTP_" + name.upper().replace("-", "_"))
                return (value,) if value else ()

            return get_header
    return None


def _propagation_fields(from_env: bool) -> set[str]:
    fields = {"traceparent", "tracestate", "baggage"}
    if from_env:
        from opentelemetry import propagate

        fields |= {name.lower() for name in propagate.get_global_textmap().fields}
    return fields


def metrics_answer(inst: Instruments, accept: str | None) -> Answer:
    """The ``/metrics`` response, in the format ``accept`` asks for. Never raises."""
    from devkit.metrics import exposition, scrape_registry

    if inst.metrics is None:
        return 404, "text/plain", b"metrics disabled\n"
    inst.flush_pending()
    try:
        inst.metrics.prepare_scrape()
        registry = scrape_registry(inst.metrics)
        body, content_type = exposition(registry, accept)
    except Exception as exc:
        _errors.report("metrics", "exposition_failed", exc)
        return 500, "text/plain", b"exposition failed\n"
    return 200, content_type, body


def probe_answer(inst: Instruments, kind: str) -> Answer:
    """A probe's response from a worker thread (WSGI, Django, the metrics port)."""
    if inst.health is None:
        return 503, "application/json", _PROBE_FAILED
    try:
        result = inst.health.evaluate(kind)
    except Exception as exc:
        _errors.report("health", "probe_failed", exc)
        return 503, "application/json", _PROBE_FAILED
    return result.http_status, "application/json", result.body()


async def probe_answer_async(inst: Instruments, kind: str) -> Answer:
    """A probe's response on the server's event loop (ASGI)."""
    if inst.health is None:
        return 503, "application/json", _PROBE_FAILED
    try:
        result = await inst.health.evaluate_async(kind)
    except Exception as exc:
        _errors.report("health", "probe_failed", exc)
        return 503, "application/json", _PROBE_FAILED
    return result.http_status, "application/json", result.body()
