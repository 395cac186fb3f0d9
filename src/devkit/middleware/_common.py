"""The per-request work shared by the ASGI, WSGI and Django adapters.

One :class:`Instruments` is built by ``init()``; adapters call :meth:`Instruments.begin`
when a request arrives and :meth:`Instruments.finish` when its response is complete.
Everything that can be computed once (label tuples, header names, the access-log level
table) is computed at construction, so the request path is a handful of dict look-ups,
one span, two counter increments, one histogram observation and one log record.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from contextvars import Token
from typing import Any

from opentelemetry import baggage, context, trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, Status, StatusCode

from devkit import _context, _errors
from devkit.config import Settings
from devkit.health import HealthRegistry
from devkit.logs import LogPipeline
from devkit.metrics import STANDARD_METHODS, UNMATCHED, RedMetrics
from devkit.redaction import Redactor
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
_getrandbits = random.getrandbits


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
        "token",
        "cid",
        "cid_token",
        "status",
        "in_progress",
    )

    start: float
    method: str
    method_label: str
    path: str
    query: str
    span: Span | None
    token: object
    cid: str
    cid_token: Token[str | None]
    status: int
    in_progress: Any

    def __init__(self) -> None:
        self.status = 0


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
        propagators_from_env: bool = False,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.tracing = tracing
        self.server_spans = tracing.server_spans if tracing is not None else None
        self.processor = tracing.processor if tracing is not None else None
        self.exemplars = tracing is not None and tracing.exports
        self.logs = logs
        self.health = health
        self.redactor = redactor
        self.metrics_path = settings.metrics_path if settings.metrics_port is None else None
        self.health_prefix = settings.health_path + "/"
        self.probes = {self.health_prefix + kind: kind for kind in ("startup", "ready", "live")}
        self._propagators_from_env = propagators_from_env
        self._in_flight = 0
        self.started_requests = 0

    # -- request life-cycle -----------------------------------------------------------------

    def begin(
        self,
        method: str,
        scheme: str,
        path: str,
        query: str,
        inbound_cid: str | None,
        get_header: Callable[[str], Sequence[str]],
    ) -> Exchange:
        ex = Exchange()
        ex.start = time.perf_counter()
        ex.method = method
        method_label = method if method in STANDARD_METHODS else "_OTHER"
        ex.method_label = method_label
        ex.path = path
        ex.query = query
        self._in_flight += 1
        self.started_requests += 1

        parent = self._extract(get_header)
        if not valid_correlation_id(inbound_cid):
            inbound_cid = None
            from_baggage = baggage.get_baggage(BAGGAGE_CORRELATION_KEY, parent)
            if isinstance(from_baggage, str) and valid_correlation_id(from_baggage):
                inbound_cid = from_baggage
        cid = inbound_cid or new_correlation_id()
        ex.cid = cid
        ctx = parent  # the W3C propagator adds the correlation id to outbound baggage

        if self.server_spans is not None:
            attributes: dict[str, Any] = {
                "http.request.method": method_label,
                "url.scheme": scheme,
                "url.path": path,
                "correlation.id": cid,
            }
            if method_label == "_OTHER":
                attributes["http.request.method_original"] = method[:64]
            parent_span = trace.get_current_span(ctx).get_span_context()
            span = self.server_spans.start(method_label, parent_span, attributes)
            ctx = trace.set_span_in_context(span, ctx)
            ex.span = span
        else:
            ex.span = None
        ex.token = context.attach(ctx)
        ex.cid_token = _context.correlation_id.set(cid)
        if self.metrics is not None:
            child = self.metrics.in_progress_child(method_label)
            child.inc()
            ex.in_progress = child
        else:
            ex.in_progress = None
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
            self._finish(ex, route, status, exc)
        except Exception as error:
            _errors.report("middleware", "finish_failed", error)
        finally:
            self._in_flight -= 1
            try:
                context.detach(ex.token)  # type: ignore[arg-type]
            except Exception:  # detached from another context: nothing left to undo
                pass
            _context.correlation_id.reset(ex.cid_token)

    def _finish(
        self, ex: Exchange, route: str | None, status: int, exc: BaseException | None
    ) -> None:
        duration = time.perf_counter() - ex.start
        route = route or UNMATCHED
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
            span.update_name(f"{ex.method_label} {route}")
            attributes: dict[str, Any] = {"http.response.status_code": status}
            if route != UNMATCHED:
                attributes["http.route"] = route
            if error:
                attributes["error.type"] = _qualified(exc) if exc is not None else str(status)
                if exc is not None:
                    span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR))
            span.set_attributes(attributes)
            span.end()
            if self.exemplars and self.processor is not None:
                tid = span.get_span_context().trace_id
                if self.processor.kept(tid):
                    trace_id = "%032x" % tid

        if self.metrics is not None:
            self.metrics.observe(ex.method_label, route, status, duration, error, trace_id)
            if ex.in_progress is not None:
                ex.in_progress.dec()

        if self.logs is not None:
            if error:
                level = "error"
            elif status >= 400:
                level = "warn"
            else:
                level = "info"
            path = ex.path if len(ex.path) <= _MAX_LOGGED_PATH else ex.path[:_MAX_LOGGED_PATH]
            if ex.query:
                path = f"{path}?{redact_query(ex.query)}"
            if self.redactor is not None:
                path = self.redactor.redact_str(path)
            event: dict[str, Any] = {
                "event": "request completed",
                "logger": "devkit.access",
                "method": ex.method_label,
                "route": route,
                "path": path,
                "status_code": status,
                "duration_ms": round(duration * 1000.0, 3),
            }
            if exc is not None and error:
                event["exc_info"] = exc
            # Every other field is devkit's own (a method label, a route template, numbers).
            self.logs.emit(level, event, redact=False)

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


def _qualified(exc: BaseException) -> str:
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def metrics_answer(inst: Instruments, accept: str | None) -> Answer:
    """The ``/metrics`` response, in the format ``accept`` asks for. Never raises."""
    from devkit.metrics import exposition, scrape_registry

    if inst.metrics is None:
        return 404, "text/plain", b"metrics disabled\n"
    try:
        registry = scrape_registry(inst.metrics.registry, inst.metrics.exemplars)
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
