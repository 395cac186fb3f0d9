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
from typing import Any, cast

from opentelemetry import baggage, context
from opentelemetry.context import Context
from opentelemetry.trace import SpanContext, StatusCode

from devkit import _compat, _context, _errors
from devkit.config import UNMATCHED_ROUTE, Settings
from devkit.health import HealthRegistry
from devkit.http._endpoints import Endpoints
from devkit.http._timer import FlushTimer
from devkit.logs import MAX_LOGGED_PATH, LogPipeline, redact_query
from devkit.metrics import STANDARD_METHODS, RedMetrics
from devkit.tracing._span import ServerSpan, ServerSpanFactory
from devkit.tracing.propagation import extract
from devkit.tracing.provider import Tracing
from devkit.tracing.sampling import UNSET_STATUS

__all__ = [
    "ACTIVE_KEY",
    "CORRELATION_HEADER",
    "EXCEPTION_KEY",
    "MAX_HEADER_ATTRIBUTE",
    "MAX_PENDING",
    "RECORD_BATCH",
    "RECORD_DELAY_S",
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
#: WSGI requests whose span end, metrics and access record wait (``Core.finish_copied``)
#: before the request that ends next does them all, and how long the oldest waits, at
#: least, for a next request before the timer's thread does them (it looks once per this
#: interval).
RECORD_BATCH = 32
RECORD_DELAY_S = 0.05
#: Without a record waiting for this long, the thread that writes them ends.
_RECORD_TIMER_IDLE_S = 1.0

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
#: What a request's span attributes are read from: the scope or environ, or once the
#: request finished, the part of it they need (``_detail_source``).
Source = Mapping[str, Any] | tuple[Any, ...]


def valid_correlation_id(value: str | None) -> bool:
    """1-128 characters of ``[A-Za-z0-9._:-]`` (anything else is replaced, never echoed)."""
    return value is not None and 0 < len(value) <= 128 and _CID_CHARS.issuperset(value)


def new_correlation_id() -> str:
    """128 random bits as 32 hex characters (``getrandbits``, not ``uuid4``: as unique
    for this purpose and cheaper, docs/benchmarks.md#correlation-ids)."""
    return _getrandbits(128).to_bytes(16, "big").hex()


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
        "source",
        "response_headers",
        "counted",
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
    #: Whether the RED metrics counted it (set when its books wait, see ``finish_copied``).
    counted: bool
    # -- raw, read only for kept traces (:meth:`http_details`) ----------------------------------
    #: The ASGI scope, or the WSGI environ (Django's ``META``); once the request
    #: finished, only what the span reads of it (``_detail_source``).
    source: Source | None
    #: The response's headers as the adapter saw them: ASGI ``(bytes, bytes)`` pairs,
    #: WSGI ``(str, str)`` pairs, or Django's header mapping.
    response_headers: Any

    def http_details(
        self, key: tuple[Any, ...] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The HTTP semantic conventions' recommended server span attributes, read from
        the raw request when a kept trace is exported: ``(devkit's own values, values
        the client sent)``, without the numbers of :meth:`http_details_key`, computed
        from its ``key`` (read here unless the caller has it). The span redacts the
        second."""
        if key is None:
            key, _ = self.http_details_key()
        if not key:
            return {}, {}
        return _details(self.scheme, *key)

    def http_details_key(self) -> tuple[tuple[Any, ...], dict[str, int]]:
        """What :meth:`http_details` is made of, as a key (it is a function of the key
        and the scheme: equal keys, equal details), and the numbers that differ from
        request to request as attributes: the peer's port and the bodies' sizes. The
        span remembers its attributes by the key."""
        source = self.source
        numbers: dict[str, int] = {}
        if source is None:
            return (), numbers
        if type(source) is not tuple and "REQUEST_METHOD" in source:
            source = _environ_details(cast(Environ, source))
        if type(source) is tuple:
            (
                _,
                protocol,
                peer,
                port,
                server_name,
                server_port,
                forwarded,
                forwarded_host,
                host,
                forwarded_for,
                user_agent,
                length,
            ) = source
            key: tuple[Any, ...] = (
                self.query,
                forwarded,
                forwarded_host,
                host,
                forwarded_for,
                user_agent,
                protocol.partition("/")[2] if isinstance(protocol, str) else None,
                str(peer) if peer else None,
                (str(server_name), server_port) if server_name and server_port else None,
            )
        else:
            scope = cast(Mapping[str, Any], source)
            found = _scope_headers(scope)
            client = scope.get("client")
            server = scope.get("server")
            peer, port = (client[0], client[1]) if client else (None, None)
            length = found.get(b"content-length")
            key = (
                self.query,
                found.get(b"forwarded"),
                found.get(b"x-forwarded-host"),
                found.get(b"host"),
                found.get(b"x-forwarded-for"),
                found.get(b"user-agent"),
                scope.get("http_version"),
                str(peer) if peer else None,
                (str(server[0]), server[1]) if server and server[1] is not None else None,
            )
        if peer:
            port = _port(port)
            if port is not None:
                numbers["network.peer.port"] = port
        size = _number(length)
        if size is not None:
            numbers["http.request.body.size"] = size
        size = _response_length(self.response_headers)
        if size is not None:
            numbers["http.response.body.size"] = size
        return key, numbers


#: The longest value a header gives a span attribute (user agent, addresses); cut beyond.
MAX_HEADER_ATTRIBUTE = 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: devkit.tracing.propagation.format_trace_metric, with the ids written by ``to_bytes``
#: and ``hex``, which is cheaper than ``%032x`` (docs/benchmarks.md#where-the-time-goes).
_TRACE_METRIC = "trace;desc=00-%s-%s-%s"
_FLAGS_HEX = ("00", "01", "02", "03")


def _scope_headers(scope: Mapping[str, Any]) -> dict[bytes, str]:
    """The first value of each header the span's attributes are read from."""
    found: dict[bytes, str] = {}
    for name, value in scope.get("headers", ()):
        if name in _DETAIL_HEADERS and name not in found:
            found[name] = value.decode("latin-1")
    return found


#: What :meth:`Request.http_details_key` reads (``REQUEST_METHOD`` tells an environ from a
#: scope).
_SCOPE_DETAIL_KEYS = ("headers", "client", "server", "http_version")
_ENVIRON_DETAIL_KEYS = (
    "REQUEST_METHOD",
    "SERVER_PROTOCOL",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "SERVER_NAME",
    "SERVER_PORT",
    "HTTP_FORWARDED",
    "HTTP_X_FORWARDED_HOST",
    "HTTP_HOST",
    "HTTP_X_FORWARDED_FOR",
    "HTTP_USER_AGENT",
    "CONTENT_LENGTH",
)


def _detail_source(source: Source | None) -> Source | None:
    """The part of a scope or environ the span's attributes are read from."""
    if source is None or type(source) is tuple:
        return source
    mapping = cast(Mapping[str, Any], source)
    if "REQUEST_METHOD" in mapping:
        return _environ_details(mapping)
    return {key: mapping[key] for key in _SCOPE_DETAIL_KEYS if key in mapping}


def _environ_details(environ: Mapping[str, Any]) -> tuple[Any, ...]:
    """:func:`_detail_source` of an environ: the values of ``_ENVIRON_DETAIL_KEYS`` (None
    when absent), in their order. A tuple of strings, not a dict: it is built for every
    WSGI request whose books wait (see ``finish_copied``), a tuple is the cheaper of the
    two to build, and the garbage collector stops tracking it at its first look."""
    return tuple(map(environ.get, _ENVIRON_DETAIL_KEYS))


def _detail_headers(headers: Any) -> tuple[tuple[str, int], ...] | None:
    """The part of the response's headers the span's attributes are read from: its
    length (a kept span waits for export; the headers list and its pairs need not)."""
    size = _response_length(headers)
    return None if size is None else (("content-length", size),)


_DETAIL_HEADERS = frozenset(
    {b"forwarded", b"x-forwarded-host", b"host", b"x-forwarded-for", b"user-agent"}
    | {b"content-length"}
)


def _details(
    scheme: str,
    query: str,
    forwarded: str | None,
    forwarded_host: str | None,
    host: str | None,
    forwarded_for: str | None,
    user_agent: str | None,
    version: str | None,
    peer: str | None,
    server: tuple[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The semantic conventions' order: ``Forwarded``, ``X-Forwarded-*``, then the
    request's own ``Host`` and the socket."""
    own: dict[str, Any] = {}
    sent: dict[str, Any] = {}
    forwarded_for_host = forwarded_by_host = None
    if forwarded:
        forwarded_for_host, forwarded_by_host = _forwarded(forwarded)
    authority = forwarded_by_host or _first(forwarded_host) or host
    if authority:
        address, port = _split_host(authority)
        if address:
            sent["server.address"] = address[:MAX_HEADER_ATTRIBUTE]
            own["server.port"] = port if port is not None else _DEFAULT_PORTS.get(scheme)
    elif server is not None:
        sent["server.address"] = server[0][:MAX_HEADER_ATTRIBUTE]
        own["server.port"] = _port(server[1])
    client = forwarded_for_host or _split_host(_first(forwarded_for) or "")[0]
    if client:
        sent["client.address"] = client[:MAX_HEADER_ATTRIBUTE]
    if peer is not None:
        sent["network.peer.address"] = peer[:MAX_HEADER_ATTRIBUTE]
        sent.setdefault("client.address", sent["network.peer.address"])
    if user_agent:
        sent["user_agent.original"] = user_agent[:MAX_HEADER_ATTRIBUTE]
    if version:
        own["network.protocol.version"] = str(version)[:16]
    if query:
        sent["url.query"] = redact_query(query[:MAX_LOGGED_PATH])
    return {k: v for k, v in own.items() if v is not None}, sent


def _first(header: str | None) -> str | None:
    """The first of a comma-separated header's values (the client's, for proxies that
    append)."""
    if not header:
        return None
    return header.partition(",")[0].strip() or None


def _forwarded(header: str) -> tuple[str | None, str | None]:
    """``for`` (its address without a port) and ``host`` of the first element of an RFC
    7239 ``Forwarded`` header."""
    client = host = None
    for pair in header.partition(",")[0].split(";"):
        key, _, value = pair.strip().partition("=")
        value = value.strip().strip('"')
        key = key.strip().lower()
        if key == "for" and value:
            client = _split_host(value)[0]
        elif key == "host" and value:
            host = value
    return client, host


def _split_host(authority: str) -> tuple[str, int | None]:
    """``host[:port]`` (``[v6]:port`` too) as (host, port or None)."""
    authority = authority.strip()
    if authority.startswith("["):
        address, _, rest = authority[1:].partition("]")
        return address, _port(rest[1:]) if rest.startswith(":") else None
    if authority.count(":") == 1:
        address, _, port = authority.partition(":")
        return address, _port(port)
    return authority, None  # a name, an IPv4 address, or a bare IPv6 one


def _port(value: Any) -> int | None:
    return _number(value, 65535)


def _number(value: Any, limit: int = 1 << 62) -> int | None:
    """A non-negative integer up to ``limit`` from an int or decimal text, else None."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isdigit() and len(value) < 20:
        number = int(value)
    else:
        return None
    return number if 0 <= number <= limit else None


def _response_length(headers: Any) -> int | None:
    """``Content-Length`` of the response: absent for a streamed body (not known)."""
    if headers is None:
        return None
    if isinstance(headers, list | tuple):
        for name, value in headers:
            if isinstance(name, bytes):
                name = name.decode("latin-1")
            if isinstance(name, str) and name.lower() == "content-length":
                return _number(value)
        return None
    try:
        return _number(headers.get("Content-Length"))
    except Exception:
        return None


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
        # The trace context server-timing metric (DEVKIT_TRACE_RESPONSE): the sampled flag
        # says whether this service will export the trace (see server_timing).
        self.trace_response = settings.trace_response and tracing is not None
        self._records_traces = tracing is not None and tracing.exports
        self._keeps_so_far: Callable[[int], bool] = (
            tracing.processor.keeps_so_far if tracing is not None else lambda trace_id: False
        )
        # What finish_copied reads to tell a trace the tail sampler will drop.
        self._knows_trace: Callable[[int], bool] = (
            tracing.processor.knows_trace if tracing is not None else lambda trace_id: False
        )
        self._trace_tables = tracing.processor.trace_tables if tracing is not None else ()
        self._slow_ns = tracing.processor.slow_ns if tracing is not None else 0
        #: Collector mode: every span is exported, kept here or not, with its details.
        self._exports_every_span = tracing is not None and tracing.processor.exports_every_span
        self._slow_s = settings.slow_threshold_ms / 1000.0
        #: The last loop ``finish_soon`` ran on and its queue of callbacks (one pair, so
        #: that threads with loops of their own never read one's loop with another's).
        self._loop_queue: tuple[object, Sized] = (None, ())
        #: Requests finished on an event loop whose books are still to be done
        #: (``finish_soon``); appended by loops, emptied under ``_pending_lock``.
        self._pending: deque[Request] = deque()
        self._pending_lock = threading.RLock()
        #: WSGI requests whose access record waits (``finish_copied``); appended by
        #: request threads, emptied under ``_pending_lock``.
        self._records: deque[Request] = deque()
        self._record_timer = self._new_record_timer()
        #: WSGI requests that wait are counted with their batch, or by the first read of
        #: the registry before it (RedMetrics.counts_later).
        self._count_later = metrics is not None and metrics.counts_later
        if self._count_later:
            assert metrics is not None
            metrics.count_waiting_with(self.count_waiting)

    def _new_record_timer(self) -> FlushTimer:
        return FlushTimer(
            self._flush_old_records,
            self._records_waiting,
            delay_s=RECORD_DELAY_S,
            idle_after_s=_RECORD_TIMER_IDLE_S,
        )

    def _records_waiting(self) -> int:
        return len(self._records)

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

    def after_fork_in_child(self) -> None:
        """Start a child forked after ``init()`` with no request of its own: the parent's
        requests in flight and their unfinished books stay the parent's (counted here they
        would never end), and a lock a parent's thread held at the fork is replaced."""
        self._in_flight = 0
        self._loop_queue = (None, ())
        self._pending = deque()
        self._pending_lock = threading.RLock()
        # The parent's waiting records are the parent's to write; its thread is not here.
        self._records = deque()
        self._record_timer = self._new_record_timer()
        if self.metrics is not None:
            self.metrics.after_fork_in_child()

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
        req.source = scope
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
        req.source = environ
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
        req.response_headers = None
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
        # new_correlation_id(), inlined
        cid = inbound_cid or _getrandbits(128).to_bytes(16, "big").hex()
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

    # -- the response ------------------------------------------------------------------------

    def server_timing(self, req: Request) -> str | None:
        """The ``trace`` server-timing metric for the response ``req`` is starting, or None
        (no header: DEVKIT_TRACE_RESPONSE off, or no span).

        The sampled flag is set when the tail sampler will keep the trace, which is known
        at this point for all but what happens after the headers: the trace was sampled
        (ratio or parent), the status is a 5xx, the app marked its span as failed, an error
        span of the trace already ended, a downstream service keeps it, or the request is
        already as slow as the threshold. Every one of them still holds when the request
        ends, so a flag sent is a promise kept. The random-trace-id flag is the trace's.
        """
        span = req.span
        if span is None or not self.trace_response:
            return None
        flags = span.context[3] & 0x02  # SpanContext.trace_flags, without the property
        if self._records_traces and (
            span.sampled
            or req.status >= 500
            or (span.status is not UNSET_STATUS and span.status.status_code is StatusCode.ERROR)
            or _perf_counter() - req.start >= self._slow_s
            or self._keeps_so_far(req.trace_id)
        ):
            flags |= 0x01
        return _TRACE_METRIC % (
            req.trace_id.to_bytes(16, "big").hex(),
            req.span_id.to_bytes(8, "big").hex(),
            _FLAGS_HEX[flags],
        )

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

    def finish_copied(self, req: Request, route: str | None) -> None:
        """:meth:`finish` for a request that ran in a copy of the context which nothing
        runs in afterwards (the WSGI adapter's): the copy is dropped with the variables
        the request set, so there is nothing to restore. Never raises.

        The span's end (its tail decision), the RED metrics and the access record of a
        request that ended without an error wait to be done with those of the next
        requests, up to ``RECORD_BATCH`` in a row, or one to two ``RECORD_DELAY_S`` when no
        request follows (docs/logs.md#when-records-are-written). Any read of the registry
        counts the waiting requests first (:meth:`count_waiting`); in multiprocess mode
        they are counted now. Doing them in a row keeps their code and data in the CPU's
        caches, as the ASGI adapter's batched books do.
        """
        try:
            req.end = end = _perf_counter()
            req.route = route if route is not None else UNMATCHED_ROUTE
            span = req.span
            if (
                req.exc is None
                and 100 <= req.status < 500
                and (span is not None or self.logs is not None or self._count_later)
            ):
                # The outcome _books derives, for a request without an error; what
                # waits of it is only what the span reads, and only when the span may
                # be exported: the environ holds the server's objects for the request
                # (its socket, parser, body), which, kept alive until the batch, would
                # survive young collections, be promoted, and bring on full ones.
                req.duration = duration = end - req.start
                req.error = False
                req.error_type = None
                source = req.source
                if source is not None:  # an environ: only WSGI requests come here
                    # The tail sampler's decision when the span ends, unless another
                    # span of its trace ends with an error before that: kept if
                    # sampled, slow, failed, or known to the sampler (a child, a
                    # downstream keep), and in collector mode.
                    if span is not None and (
                        span.sampled
                        or int(duration * 1e9) >= self._slow_ns
                        or span.status is not UNSET_STATUS
                        or self._exports_every_span
                        or (any(self._trace_tables) and self._knows_trace(req.trace_id))
                    ):
                        environ: Environ = source  # type: ignore[assignment]
                        req.source = _environ_details(environ)
                    else:  # (if it does, the span is exported without these details)
                        req.source = req.response_headers = None
                counted = req.counted = not self._count_later
                if counted and self.metrics is not None:
                    self.metrics.observe(req)
                records = self._records
                records.append(req)
                if len(records) >= RECORD_BATCH:
                    self.flush_records()
                elif not self._record_timer.running:
                    self._record_timer.start()
            else:
                self._books(req)
        except Exception as error:
            _errors.report("middleware", "finish_failed", error)
        finally:
            self._in_flight -= 1
            # A token refers to its context, which holds the span, which holds the
            # record: dropped here, the copy is freed at once, not by the cycle collector.
            req.token = None
            req.cid_token = None  # type: ignore[assignment]

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
        """Do the books of every request :meth:`finish_soon` left open, and write the
        access records :meth:`finish_copied` left waiting. Never raises."""
        if self._records:
            self.flush_records()
        if self._pending:
            self._drain(self._pending, self._books_reported)
            if self._records:  # the batch's records, written together
                self.flush_records()

    def flush_records(self) -> None:
        """Do the books that wait (``finish_copied``): spans, metrics and access records,
        in their order, the records written together. Never raises."""
        # In an empty context: the records are written outside any request's context.
        _VarContext().run(self._write_records)

    def _write_records(self) -> None:
        with self._pending_lock:
            records: list[Request] = []
            self._drain(self._records, records.append)
            try:
                if self.server_spans is not None:
                    self._end_waiting_spans(records, self.server_spans)
            except Exception as error:
                _errors.report("middleware", "finish_failed", error)
            # Then each request is counted, with the exemplar of a kept trace, or, when a
            # read of the registry counted it already, linked to the kept trace.
            metrics = self.metrics
            uncounted: list[Request] = []
            for req in records:
                span = req.span
                if span is not None:  # left open by a failure above
                    self._end_waiting_span(req, span)
                if metrics is None:
                    continue
                if not req.counted:
                    req.counted = True
                    uncounted.append(req)
                elif req.exemplar is not None:  # counted before its trace was kept
                    try:
                        metrics.add_exemplar(req)
                    except Exception as error:
                        _errors.report("middleware", "finish_failed", error)
            if metrics is not None and uncounted:
                try:
                    metrics.observe_many(uncounted)
                except Exception as error:
                    _errors.report("middleware", "finish_failed", error)
            if self.logs is not None:  # else the access log is off (or was switched off)
                self.logs.access_many(records)

    def _drain(self, queue: deque[Request], handle: Callable[[Request], None]) -> None:
        """Hand each request of ``queue`` to ``handle``, in order, with the wall clock of
        its end."""
        with self._pending_lock:
            # The wall clock of each request's end, from the monotonic one: one clock read.
            offset = _time() - _perf_counter()
            while queue:  # only drains take items out, one at a time under the lock
                req = queue.popleft()
                req.created = req.end + offset
                handle(req)

    def _books_reported(self, req: Request) -> None:
        try:
            self._books(req, in_batch=True)
        except Exception as error:
            _errors.report("middleware", "finish_failed", error)

    def _flush_old_records(self) -> None:
        """The timer's round: write the records when the oldest waited its time (while
        requests fill batches, none waits that long)."""
        try:
            oldest = self._records[0]
        except IndexError:  # none, or a request thread just wrote them
            return
        if _perf_counter() - oldest.end >= RECORD_DELAY_S:
            self.flush_records()

    def close(self) -> None:
        """Write what waits and stop the thread that writes waiting records (shutdown)."""
        self._record_timer.stop()
        self.flush_pending()

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

    def _books(self, req: Request, *, in_batch: bool = False) -> None:
        """Derive the record's outcome, then hand it to the span, the metrics, the log
        (``in_batch``: the access record waits for the end of the batch of books
        :meth:`flush_pending` does, whose records are written together)."""
        req.duration = req.end - req.start
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
        if error:
            req.error_type = _errors.type_name(exc) if exc is not None else str(status)
        else:
            req.error_type = None
        if span is not None:
            req.span = None  # the span keeps the record, not the other way round
            if exc is not None and error:
                span.record_exception(exc)
            self._end_span(req, span)

        records = self._records
        if self.metrics is not None:
            self.metrics.observe(req)
        if self.logs is not None:
            if in_batch and not error and exc is None:
                req.counted = True
                records.append(req)
            else:
                if records:  # the records that wait go first: the log stays in order
                    self.flush_records()
                self.logs.access(req)
        if exc is not None:  # a kept span holds the record until export: not the traceback
            req.exc = None

    def _end_span(self, req: Request, span: ServerSpan, *, waited: bool = False) -> bool:
        """End the request's span (its tail decision); True when the trace is kept.
        ``waited``: its books waited, and its source is what the span reads already."""
        end = span.start_time + int(req.duration * 1e9)
        kept = self.server_spans.end_request(span, end)  # type: ignore[union-attr]
        self._ended(req, kept, waited)
        return kept

    def _ended(self, req: Request, kept: bool, waited: bool) -> None:
        """After the span's end: a span that is exported (kept, or every span in
        collector mode) waits in the export queue, for as long as a collector is away,
        and keeps only what its attributes are read from, not the scope with the app's
        objects in it, nor the response's headers list (``waited``: the source is that
        already). The span of a dropped trace may outlive the request (late children):
        it keeps neither. A kept trace's id becomes the request's exemplar."""
        if kept or self._exports_every_span:
            if not waited:
                req.source = _detail_source(req.source)
            req.response_headers = _detail_headers(req.response_headers)
            if kept and self.exemplars:
                req.exemplar = req.trace_id.to_bytes(16, "big").hex()
        else:
            req.source = req.response_headers = None

    def _end_waiting_spans(self, records: list[Request], factory: ServerSpanFactory) -> None:
        """End the spans of requests whose books waited, their tail decisions taken
        together (``_end_span`` for a batch)."""
        ended: list[Request] = []
        spans: list[tuple[ServerSpan, int]] = []
        for req in records:
            span = req.span
            if span is not None:
                ended.append(req)
                spans.append((span, span.start_time + int(req.duration * 1e9)))
        if not spans:
            return
        for req, kept in zip(ended, factory.end_requests(spans), strict=True):
            req.span = None
            if kept or self._exports_every_span:
                self._ended(req, kept, True)
            else:  # as _ended does, without the call
                req.source = req.response_headers = None

    def _end_waiting_span(self, req: Request, span: ServerSpan) -> None:
        """End the span of one request whose books waited. Never raises."""
        try:
            req.span = None
            self._end_span(req, span, waited=True)
        except Exception as error:
            _errors.report("middleware", "finish_failed", error)

    def count_waiting(self) -> None:
        """Count the requests whose books wait (``finish_copied``) and are not counted
        yet: every read of the registry calls this first, so counts are never late. A
        kept trace's exemplars are added when its span ends. Never raises."""
        if not self._records or self.metrics is None:
            return
        try:
            with self._pending_lock:
                observe = self.metrics.observe
                for req in list(self._records):  # a copy: request threads append
                    if not req.counted:
                        req.counted = True
                        observe(req)
        except Exception as error:
            _errors.report("metrics", "count_failed", error)
