"""The request core shared by the ASGI, WSGI and Django adapters.

A request is one :class:`Request` record. An adapter opens it with
:meth:`Core.begin_scope` (ASGI) or :meth:`Core.begin_environ` (WSGI, Django), which read
what devkit records of a request from the raw scope or environ; the adapter sets the
status when the response starts and hands the record back with :meth:`Core.finish` (or
:meth:`Core.finish_soon`) and the route the framework matched. The record's consumers
read it whole: the server span (``devkit.tracing``), the RED metrics
(:meth:`devkit.metrics.RedMetrics.observe`) and the access record
(:meth:`devkit.logs.LogPipeline.access`). A new request attribute is a field here, read
where the record is filled, and used by the consumers that need it; the adapters do not
change.

Everything that can be computed once (header names, the context variable, the span key)
is computed when the core is built, at ``init()``.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, MutableMapping, Sequence, Sized
from contextvars import Context as _VarContext
from contextvars import Token
from typing import Any

from opentelemetry import baggage, context
from opentelemetry.context import Context
from opentelemetry.trace import SpanContext

from devkit import _compat, _context, _errors
from devkit.config import UNMATCHED_ROUTE, Settings
from devkit.health import HealthRegistry
from devkit.http._endpoints import Endpoints
from devkit.logs import LogPipeline
from devkit.metrics import STANDARD_METHODS, RedMetrics
from devkit.tracing._span import ServerSpan
from devkit.tracing.propagation import extract
from devkit.tracing.provider import Tracing

__all__ = [
    "ACTIVE_KEY",
    "CORRELATION_HEADER",
    "EXCEPTION_KEY",
    "MAX_PENDING",
    "ROUTE_KEY",
    "Core",
    "Request",
    "new_correlation_id",
    "valid_correlation_id",
]

#: Set in the ASGI scope / WSGI environ by the outermost devkit layer: inner ones pass through.
ACTIVE_KEY = "devkit.active"
#: Frameworks without a router in the scope can name the route template here.
ROUTE_KEY = "devkit.route"
#: Frameworks that turn an exception into a 500 response themselves (Flask) leave it here.
EXCEPTION_KEY = "devkit.exception"
CORRELATION_HEADER = "X-Correlation-ID"
#: Requests whose books are still open (see ``Core.finish_soon``) before the next one
#: closes them all on the spot.
MAX_PENDING = 256

_CID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")
_CID_HEADER = b"x-correlation-id"
_REQUEST_ID_HEADER = b"x-request-id"
_NO_VALUES: Sequence[str] = ()
_getrandbits = random.getrandbits
_perf_counter = time.perf_counter
_time = time.time

Scope = MutableMapping[str, Any]
Environ = Mapping[str, Any]
GetHeader = Callable[[str], Sequence[str]]


def valid_correlation_id(value: str | None) -> bool:
    """1-128 characters of ``[A-Za-z0-9._:-]`` (anything else is replaced, never echoed)."""
    return value is not None and 0 < len(value) <= 128 and _CID_CHARS.issuperset(value)


def new_correlation_id() -> str:
    """128 random bits as 32 hex characters (``getrandbits``, not ``uuid4``: as unique
    for this purpose and cheaper, docs/benchmarks.md#correlation-ids)."""
    return "%032x" % _getrandbits(128)


class Request:
    """One request, from ``begin`` to its books: what devkit records of it.

    Filled in three steps: from the request (``begin_scope`` / ``begin_environ``), by
    the adapter from the response (``status``, and ``exc`` when the app raised), and by
    the core when the request finishes (the derived fields). Consumers read it only
    after it finished; nothing writes it afterwards.
    """

    __slots__ = (
        "method",
        "method_label",
        "scheme",
        "path",
        "query",
        "cid",
        "start",
        "end",
        "created",
        "status",
        "route",
        "exc",
        "duration",
        "error",
        "error_type",
        "span",
        "trace_id",
        "span_id",
        "exemplar",
        "in_progress",
        "token",
        "cid_token",
    )

    # -- from the request (begin) -----------------------------------------------------------
    #: The method as sent, and the label the metrics and the span name use (a standard
    #: method or ``_OTHER``).
    method: str
    method_label: str
    scheme: str
    #: The path without the query, and the raw query string ("" without one).
    path: str
    query: str
    #: The correlation id: the caller's when valid, else a new one.
    cid: str
    #: ``perf_counter()`` when the request began and when the application returned.
    start: float
    end: float
    #: The wall clock of the end when the books close later than that (else None: now).
    created: float | None
    # -- from the response (the adapter) ------------------------------------------------------
    status: int
    #: The exception that escaped the application, if any.
    exc: BaseException | None
    # -- derived at finish (the core) -----------------------------------------------------------
    #: The route template the framework matched, or ``<unmatched>``.
    route: str
    duration: float
    #: A 5xx answer or an unhandled exception (not a client that went away).
    error: bool
    #: ``error.type``: the exception's type or the status code, when ``error``.
    error_type: str | None
    # -- the trace ------------------------------------------------------------------------------
    span: ServerSpan | None
    #: The ids the access record carries (the span's, or a remote parent's); 0 for none.
    trace_id: int
    span_id: int
    #: The trace id (32 hex) for the metrics' exemplars when the trace was kept.
    exemplar: str | None
    # -- bookkeeping ----------------------------------------------------------------------------
    in_progress: Any
    token: Token[Context] | None
    cid_token: Token[str | None]


class Core:
    """Everything a request touches, resolved once at ``init()``."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: RedMetrics | None,
        tracing: Tracing | None,
        logs: LogPipeline | None,
        health: HealthRegistry | None,
    ) -> None:
        self.metrics = metrics
        self.tracing = tracing
        self.server_spans = tracing.server_spans if tracing is not None else None
        self.exemplars = tracing is not None and tracing.exports
        self.logs = logs
        self.health = health
        #: /metrics (unless it has a port of its own) and the probes, for the adapters.
        self.endpoints = self.endpoints_for(settings, serve_metrics=settings.metrics_port is None)
        self._custom_propagators = settings.custom_propagators
        fields = {"traceparent", "tracestate", "baggage"}
        if settings.custom_propagators:
            from opentelemetry import propagate

            fields |= {name.lower() for name in propagate.get_global_textmap().fields}
        #: What the ASGI adapter collects from the raw headers: the propagation headers
        #: and the correlation id.
        self._asgi_headers = frozenset(
            {name.encode("latin-1") for name in fields} | {_CID_HEADER, _REQUEST_ID_HEADER}
        )
        #: WSGI environ keys of the propagation headers.
        self._environ_headers = frozenset("HTTP_" + n.upper().replace("-", "_") for n in fields)
        self._span_key = _compat.span_key()
        var = _compat.runtime_context_var()
        self._context_set = var.set if var is not None else context.attach
        self._context_reset = var.reset if var is not None else context.detach
        self._in_flight = 0
        self.started_requests = 0
        #: The last loop ``finish_soon`` ran on and its queue of callbacks (one pair, so
        #: that threads with loops of their own never read one's loop with another's).
        self._loop_queue: tuple[object, Sized] = (None, ())
        #: Requests finished on an event loop whose books are still to be done
        #: (``finish_soon``); appended by loops, emptied under ``_pending_lock``.
        self._pending: deque[Request] = deque()
        self._pending_lock = threading.RLock()

    def endpoints_for(self, settings: Settings, *, serve_metrics: bool) -> Endpoints:
        """devkit's own answers over this core's metrics and health."""
        return Endpoints(
            settings,
            metrics=self.metrics,
            health=self.health,
            flush=self.flush_pending,
            serve_metrics=serve_metrics,
        )

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # -- begin ------------------------------------------------------------------------------

    def begin_scope(self, scope: Scope) -> Request:
        """Open the record of an ASGI HTTP request."""
        wanted = self._asgi_headers
        headers: dict[bytes, list[str]] | None = None
        for name, value in scope.get("headers", ()):
            if name in wanted:
                if headers is None:
                    headers = {}
                headers.setdefault(name, []).append(value.decode("latin-1"))
        inbound_cid: str | None = None
        get_header: GetHeader | None = None
        if headers is not None:
            cid_values = headers.pop(_CID_HEADER, None) or headers.pop(_REQUEST_ID_HEADER, None)
            headers.pop(_REQUEST_ID_HEADER, None)
            inbound_cid = cid_values[0] if cid_values and len(cid_values) == 1 else None
            if headers:
                found = headers

                def get_header(name: str) -> Sequence[str]:
                    return found.get(name.encode("latin-1"), _NO_VALUES)

        req = Request()
        req.method = method = scope["method"]
        req.scheme = scope.get("scheme", "http")
        req.path = scope["path"]
        query = scope.get("query_string", b"")
        req.query = query.decode("latin-1") if query else ""
        self._open(req, method, inbound_cid, get_header)
        return req

    def begin_environ(
        self, environ: Environ, *, path: str | None = None, scheme: str | None = None
    ) -> Request:
        """Open the record of a WSGI request (or a Django request, whose ``META`` is an
        environ; Django passes the path and scheme it decoded itself)."""
        req = Request()
        req.method = method = environ.get("REQUEST_METHOD", "GET")
        req.scheme = scheme or environ.get("wsgi.url_scheme", "http")
        req.path = path or environ.get("PATH_INFO") or "/"
        req.query = environ.get("QUERY_STRING", "")
        inbound = environ.get("HTTP_X_CORRELATION_ID") or environ.get("HTTP_X_REQUEST_ID")
        get_header: GetHeader | None = None
        for key in self._environ_headers:
            if key in environ:

                def get_header(name: str) -> Sequence[str]:
                    value = environ.get("HTTP_" + name.upper().replace("-", "_"))
                    return (value,) if value else ()

                break
        self._open(req, method, inbound, get_header)
        return req

    def _open(
        self, req: Request, method: str, inbound_cid: str | None, get_header: GetHeader | None
    ) -> None:
        """The rest of ``begin``: ids, the server span, the context, the in-progress gauge.

        The response fields (route, error type) are set when the request finishes.
        """
        req.start = _perf_counter()
        req.status = 0
        req.exc = None
        req.created = None
        req.exemplar = None
        method_label = method if method in STANDARD_METHODS else "_OTHER"
        req.method_label = method_label
        self._in_flight += 1
        self.started_requests += 1

        if inbound_cid is not None and not valid_correlation_id(inbound_cid):
            inbound_cid = None
        parent: Context | None = None
        parent_span: SpanContext | None = None
        if get_header is not None:
            parent = self._extract(get_header)
            remote = parent.get(self._span_key)
            if remote is not None:
                parent_span = remote.get_span_context()  # type: ignore[attr-defined]
            if inbound_cid is None:
                from_baggage = baggage.get_baggage(_context.BAGGAGE_KEY, parent)
                if isinstance(from_baggage, str) and valid_correlation_id(from_baggage):
                    inbound_cid = from_baggage
        cid = inbound_cid or new_correlation_id()
        req.cid = cid

        # The W3C propagator adds the correlation id to outbound baggage itself.
        factory = self.server_spans
        if factory is not None:
            span = factory.start_request(req, parent_span)  # also sets the trace's ids
            req.span = span
            key = self._span_key
            ctx = Context({**parent, key: span}) if parent else Context({key: span})
            req.token = self._context_set(ctx)
        else:
            req.span = None
            if parent_span is not None and parent_span.is_valid:
                req.trace_id, req.span_id = parent_span.trace_id, parent_span.span_id
            else:
                req.trace_id = req.span_id = 0
            req.token = self._context_set(parent) if parent is not None else None
        req.cid_token = _context.correlation_id.set(cid)
        metrics = self.metrics
        req.in_progress = metrics.request_started(method_label) if metrics is not None else None

    def _extract(self, get_header: GetHeader) -> Context:
        if self._custom_propagators:
            from opentelemetry import propagate

            carrier = {
                name: ",".join(get_header(name))
                for name in propagate.get_global_textmap().fields
                if get_header(name)
            }
            return propagate.extract(carrier)
        return extract(get_header)

    # -- finish -----------------------------------------------------------------------------

    def finish(self, req: Request, route: str | None) -> None:
        """Do the request's books now and restore its context. Never raises: telemetry
        must not break the response."""
        try:
            req.end = _perf_counter()
            req.route = route if route is not None else UNMATCHED_ROUTE
            self._books(req)
        except Exception as error:
            _errors.report("middleware", "finish_failed", error)
        finally:
            self._release(req)

    def finish_soon(self, req: Request, route: str | None) -> None:
        """:meth:`finish` for a request that ended without an exception, on an event loop.

        The request's context is restored now. When the loop has more to run in this
        iteration (under load: other requests), the span, RED metrics and access record
        wait for the end of the iteration and are done there with those of every request
        that ended in it, in a row, which keeps their code and data in the CPU's caches
        (docs/benchmarks.md#batched-books). Duration and time stamp are taken now. What
        reads the results (``/metrics``, shutdown, the ``devkit.testing`` fixtures) calls
        :meth:`flush_pending` first; at most ``MAX_PENDING`` requests wait. Never raises.
        """
        pending = self._pending
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop to wait for: do it now
            self.finish(req, route)
            return
        if not pending:
            known = self._loop_queue
            if known[0] is not loop:
                known = self._loop_queue = (loop, _compat.ready_queue(loop))
            if not known[1]:
                # Nothing to batch with: a callback would cost more than it saves.
                self.finish(req, route)
                return
            try:
                # In an empty context: the books are done outside any request's context.
                loop.call_soon(self.flush_pending, context=_VarContext())
            except Exception:  # the loop is closing
                self.finish(req, route)
                return
        elif len(pending) >= MAX_PENDING:
            # A loop closed with its call still queued would leave these waiting.
            self.flush_pending()
        req.end = _perf_counter()
        req.route = route if route is not None else UNMATCHED_ROUTE
        pending.append(req)
        self._release(req)

    def flush_pending(self) -> None:
        """Do the books of every request :meth:`finish_soon` left open. Never raises."""
        pending = self._pending
        if not pending:
            return
        with self._pending_lock:
            # The wall clock of each request's end, from the monotonic one: one clock read.
            offset = _time() - _perf_counter()
            while pending:  # only flushers take items out, one at a time under the lock
                req = pending.popleft()
                req.created = req.end + offset
                try:
                    self._books(req)
                except Exception as error:
                    _errors.report("middleware", "finish_failed", error)

    def _release(self, req: Request) -> None:
        """Restore the context the request ran in (always, at once)."""
        self._in_flight -= 1
        if req.token is not None:
            try:
                self._context_reset(req.token)
            except Exception:  # detached from another context: nothing left to undo
                pass
        try:
            _context.correlation_id.reset(req.cid_token)
        except ValueError:
            pass

    def _books(self, req: Request) -> None:
        """Derive the record's outcome, then hand it to the span, the metrics, the log."""
        duration = req.duration = req.end - req.start
        exc = req.exc
        status = req.status
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
        req.status = status
        req.error = error

        span = req.span
        if span is not None:
            req.span = None  # the span keeps the record, not the other way round
            if error:
                req.error_type = _errors.type_name(exc) if exc is not None else str(status)
                if exc is not None:
                    span.record_exception(exc)
            else:
                req.error_type = None
            assert self.server_spans is not None
            kept = self.server_spans.end_request(span, span.start_time + int(duration * 1e9))
            if kept and self.exemplars:
                req.exemplar = "%032x" % req.trace_id

        if self.metrics is not None:
            self.metrics.observe(req)
        if self.logs is not None:
            self.logs.access(req)
        if exc is not None:  # a kept span holds the record until export: not the traceback
            req.exc = None
