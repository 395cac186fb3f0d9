"""A lean recording span for the per-request SERVER span.

The OpenTelemetry SDK span costs more to start, annotate and end (bounded attributes,
locks, span limits, processor fan-out) than everything else devkit does per request
together (docs/benchmarks.md#the-server-span). Most requests are successful, fast and
then sampled out, so devkit records the server span in a plain object that reads its
attributes off the request record, and builds the SDK's ``ReadableSpan`` only for the
traces the tail sampler keeps, on the export thread.

:class:`ServerSpan` implements the OpenTelemetry ``Span`` API, so everything that reads
the current span works unchanged: child spans from any tracer take it as parent, log
records carry its ids, and application code may add attributes and events to it.
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.util.types import Attributes, AttributeValue

from devkit import _compat, _errors
from devkit._version import __version__
from devkit.config import UNMATCHED_ROUTE
from devkit.tracing._export import ExportSpan, SharedAttributes
from devkit.tracing.sampling import UNSET_STATUS, ratio_bound

__all__ = ["RequestFields", "ServerSpan", "ServerSpanFactory"]

_TRACE_ID_LIMIT = (1 << 64) - 1
_UNSET = UNSET_STATUS
_ERROR = Status(StatusCode.ERROR)
_EMPTY_STATE = TraceState()
_FLAGS = tuple(TraceFlags(flags) for flags in range(4))
_SCALARS = (str, bool, int, float)
_MAX_EVENTS = 128
#: Kinds of request whose span attributes are remembered (see
#: ``ServerSpanFactory.request_attributes``); beyond, the memory starts afresh.
_MAX_CACHED_ATTRIBUTES = 1024
_getrandbits = random.getrandbits
_time_ns = time.time_ns
_new_span = object.__new__


_RANDOM = _FLAGS[TraceFlags.RANDOM_TRACE_ID]
_RANDOM_SAMPLED = _FLAGS[TraceFlags.RANDOM_TRACE_ID | TraceFlags.SAMPLED]


class RequestFields(Protocol):
    """What the server span reads of ``devkit.http``'s request record (and the ids it
    writes there). The response fields are read once the request finished."""

    method_label: str
    method: str
    scheme: str
    path: str
    cid: str
    trace_id: int
    span_id: int
    route: str
    status: int
    error_type: str | None

    def http_details(
        self, key: tuple[Any, ...] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """More attributes, read at export: (devkit's own values, values the client sent);
        from ``key`` when the caller has read it (``http_details_key``)."""
        ...

    def http_details_key(self) -> tuple[tuple[Any, ...], dict[str, int]]:
        """A key of what ``http_details`` reads (equal keys, equal details), and the
        attributes that differ from request to request (numbers: ports, sizes)."""
        ...


def _ended_unknown(on_end: Callable[[Any], None]) -> Callable[..., bool]:
    def on_root_end(span: Any, error: bool, *_: object) -> bool:
        on_end(span)
        return False

    return on_root_end


def _one_by_one(on_root_end: Callable[..., bool]) -> Callable[[Any], list[bool]]:
    def on_root_ends(roots: Any) -> list[bool]:
        return [on_root_end(span, False, trace_id, sampled) for span, trace_id, sampled in roots]

    return on_root_ends


def _valid_value(value: object) -> bool:
    if isinstance(value, _SCALARS):
        return True
    if isinstance(value, list | tuple):
        return all(isinstance(v, _SCALARS) for v in value)
    return False


def _request_attributes(
    request: RequestFields,
    finished: bool,
    redact: Callable[[Mapping[str, Any]], dict[str, Any]] | None,
    extra: dict[str, Any] | None,
    details_key: tuple[Any, ...],
) -> tuple[dict[str, Any], str, dict[str, Any] | None]:
    """A request span's attributes but the correlation id and the numbers of
    ``http_details_key`` (whose key is ``details_key``); the correlation id; the
    application's attributes. With
    ``redact``, it is applied to what can carry PII: the path, the correlation id, an
    unknown method as sent, the values the client sent, and the application's values.

    The rest is devkit's own (a method label, the scheme, the route template, the
    status code, an exception's class name) and is written as it is, as in the access
    log; redacting it cost more than encoding the span.
    """
    method = request.method_label
    original = request.method[:64] if method == "_OTHER" else None
    path, cid = request.path, request.cid
    own, sent = request.http_details(details_key)
    if redact is not None:
        untrusted: dict[str, Any] = {"url.path": path, "correlation.id": cid, **sent}
        if original is not None:
            untrusted["http.request.method_original"] = original
        if extra:
            untrusted.update(extra)  # the application's values win, as below
        extra = redact(untrusted)
        path, cid = extra.pop("url.path"), extra.pop("correlation.id")
        sent = {key: extra.pop(key) for key in sent}
        if original is not None:
            original = extra.pop("http.request.method_original")
    out: dict[str, Any] = {"http.request.method": method}
    if original is not None:
        out["http.request.method_original"] = original
    out["url.scheme"] = request.scheme
    out["url.path"] = path
    out.update(sent)
    out.update(own)
    if finished:
        out["http.response.status_code"] = request.status
        if request.route != UNMATCHED_ROUTE:
            out["http.route"] = request.route
        if request.error_type is not None:
            out["error.type"] = request.error_type
    return out, cid, extra


class ServerSpan(Span):
    """A recording span with the fields ``ReadableSpan`` exposes (duck-typed for the sampler).

    A request's span keeps a reference to the request record and reads its attributes
    from it only when they are read, which is at export, for kept traces.
    """

    __slots__ = (
        "name",
        "context",
        "parent",
        "status",
        "start_time",
        "end_time",
        "_factory",
        "_request",
        "_finished",
        "_extra",
        "_events",
        "_links",
        "kept",
        "sampled",
    )

    kind = SpanKind.SERVER

    # Every instance comes from _server_span (no __init__: a class's __init__ is a call
    # from C into Python, on every request).
    name: str
    context: SpanContext
    parent: SpanContext | None
    status: Status
    start_time: int
    _factory: ServerSpanFactory
    _request: RequestFields | None
    _finished: bool
    _extra: dict[str, Any] | None
    _events: list[Event] | None
    _links: list[Link] | None
    end_time: int | None
    kept: bool | None
    #: The head decision (request spans: set by ``start_request``).
    sampled: bool

    # -- what ReadableSpan exposes ----------------------------------------------------------

    @property
    def attributes(self) -> dict[str, Any]:
        return self._attributes(None)

    def redacted_attributes(
        self, redact: Callable[[Mapping[str, Any]], dict[str, Any]]
    ) -> dict[str, Any]:
        """:attr:`attributes` with ``redact`` applied to what can carry PII (see
        :func:`_request_attributes`). ``redact`` must treat each attribute on its own, as
        devkit's redactor does: what repeats between requests is redacted once."""
        if self._request is None:
            return redact(self._attributes(None))
        return self._attributes(redact)

    def request_parts(
        self, redact: Callable[[Mapping[str, Any]], dict[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """:meth:`redacted_attributes` in two parts for a finished request span with
        nothing the application added (else None): the attributes requests of its kind
        share (the same dict for each, not to be changed), and its own (the correlation id
        and the numbers), in the order of ``redacted_attributes``."""
        request = self._request
        if request is None or self._extra or not self._finished or self._events or self._links:
            return None
        key, numbers = request.http_details_key()
        shared, cid = self._factory.shared_request_attributes(request, key, redact)
        own: dict[str, Any] = {"correlation.id": cid}
        own.update(numbers)
        return shared, own

    def _attributes(
        self, redact: Callable[[Mapping[str, Any]], dict[str, Any]] | None
    ) -> dict[str, Any]:
        request = self._request
        extra = self._extra
        if request is None:
            return dict(extra) if extra else {}
        key, numbers = request.http_details_key()
        if redact is not None and not extra and self._finished:
            # A kept trace's span, as exported: what repeats between requests of the same
            # kind is redacted once and remembered (docs/benchmarks.md#kept-traces).
            out, cid = self._factory.request_attributes(request, key, redact)
        else:
            out, cid, extra = _request_attributes(request, self._finished, redact, extra, key)
        out["correlation.id"] = cid
        out.update(numbers)
        if extra:
            out.update(extra)
        return out

    @property
    def events(self) -> Sequence[Event]:
        return tuple(self._events) if self._events else ()

    @property
    def links(self) -> Sequence[Link]:
        return tuple(self._links) if self._links else ()

    # -- the Span API -----------------------------------------------------------------------

    def get_span_context(self) -> SpanContext:
        return self.context

    def is_recording(self) -> bool:
        return self.end_time is None

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        if self.end_time is None:
            for key, value in attributes.items():
                self.set_attribute(key, value)

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self.end_time is None and isinstance(key, str) and _valid_value(value):
            if self._extra is None:
                self._extra = {}
            self._extra[key] = value

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        if self.end_time is not None:
            return
        if self._events is None:
            self._events = []
        if len(self._events) < _MAX_EVENTS:
            clean = {k: v for k, v in (attributes or {}).items() if _valid_value(v)}
            self._events.append(Event(name, clean, timestamp or _time_ns()))

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        if self.end_time is None and context.is_valid:
            if self._links is None:
                self._links = []
            self._links.append(Link(context, attributes))

    def update_name(self, name: str) -> None:
        if self.end_time is None:
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self.end_time is not None or self.status.status_code is StatusCode.OK:
            return  # OK is final, as in the SDK
        if isinstance(status, StatusCode):
            status = Status(status, description)
        self.status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        stack = "".join(
            traceback.format_exception(type(exception), exception, exception.__traceback__)
        )
        event_attributes: dict[str, Any] = {
            "exception.type": _errors.type_name(exception),
            "exception.message": str(exception),
            "exception.stacktrace": stack,
        }
        if attributes:
            event_attributes.update(attributes)
        self.add_event("exception", event_attributes, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self.end_time is not None:
            return
        self.end_time = end_time if end_time is not None else _time_ns()
        self._factory.on_end(self)

    # -- export --------------------------------------------------------------------------

    @property
    def resource(self) -> Resource:
        return self._factory.resource

    @property
    def instrumentation_scope(self) -> InstrumentationScope:
        return self._factory.scope

    def to_readable(self) -> ReadableSpan:
        """The SDK span, unredacted (what exporters other than devkit's encoder take)."""
        return ExportSpan(self, self.attributes, list(self.events)).to_readable()


def _server_span(
    factory: ServerSpanFactory,
    name: str,
    context: SpanContext,
    parent: SpanContext | None,
    start_time: int,
    request: RequestFields | None = None,
    attributes: dict[str, Any] | None = None,
) -> ServerSpan:
    """A new :class:`ServerSpan` (its ``sampled`` is the caller's to set)."""
    span: ServerSpan = _new_span(ServerSpan)
    span._factory = factory
    span.name = name
    span.context = context
    span.parent = parent
    span._request = request
    #: Whether the request finished (its response fields are final).
    span._finished = False
    span._extra = attributes
    span._events = span._links = None
    span.status = _UNSET
    span.start_time = start_time
    span.end_time = None
    #: The tail sampler's decision once the span ended as a local root.
    span.kept = None
    return span


class ServerSpanFactory:
    """Starts :class:`ServerSpan` objects with the sampler's head flag and hands ended ones
    to the tail sampler (``on_end``)."""

    def __init__(
        self,
        *,
        ratio: float,
        resource: Callable[[], Resource],
        on_end: Callable[[Any], None],
        on_root_end: Callable[..., bool] | None = None,
        on_root_ends: Callable[[Any], list[bool]] | None = None,
    ) -> None:
        self._bound = ratio_bound(ratio)
        self._new_context = _compat.span_context_factory()
        self._resource = resource
        self.scope = InstrumentationScope("devkit", __version__)
        self.on_end = on_end
        #: Called with (span, error, trace id, sampled) when a request's span ends;
        #: returns "kept".
        self.on_root_end = on_root_end or _ended_unknown(on_end)
        #: Called with [(span, trace id, sampled), ...] for request spans that ended
        #: without an error the middleware saw; returns "kept" for each.
        self.on_root_ends = on_root_ends or _one_by_one(self.on_root_end)
        #: Redacted request span attributes but the correlation id and the numbers, by
        #: what they are read from, for the ``redact`` they were redacted with.
        self._attributes: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._attributes_redact: Any = None

    def request_attributes(
        self,
        request: RequestFields,
        details_key: tuple[Any, ...],
        redact: Callable[[Mapping[str, Any]], dict[str, Any]],
    ) -> tuple[dict[str, Any], str]:
        """A finished request span's attributes (a new dict) but the correlation id and
        the numbers, and the correlation id, redacted (``_request_attributes``)."""
        shared, cid = self.shared_request_attributes(request, details_key, redact)
        return SharedAttributes.extending(shared), cid

    def shared_request_attributes(
        self,
        request: RequestFields,
        details_key: tuple[Any, ...],
        redact: Callable[[Mapping[str, Any]], dict[str, Any]],
    ) -> tuple[dict[str, Any], str]:
        """:meth:`request_attributes` as the dict requests of the same kind share (not
        to be changed), and the correlation id.

        Requests of the same kind (method, path, route, status, client and server
        details) have the same attributes but for those: they are redacted and built
        once, and remembered up to ``_MAX_CACHED_ATTRIBUTES`` kinds.
        """
        cache = self._attributes
        if self._attributes_redact != redact:  # a bound method is new on each access
            cache.clear()
            self._attributes_redact = redact
        method = request.method_label
        key = (
            method,
            request.method if method == "_OTHER" else None,
            request.scheme,
            request.path,
            request.route,
            request.status,
            request.error_type,
            details_key,
        )
        try:
            cached = cache.get(key)
        except TypeError:  # a value that cannot be a key (an unusual server's environ)
            out, cid, _ = _request_attributes(request, True, redact, None, details_key)
            return out, cid
        if cached is None:
            cached, cid, _ = _request_attributes(request, True, redact, None, details_key)
            if len(cache) >= _MAX_CACHED_ATTRIBUTES:
                cache.clear()
            cache[key] = cached
        else:
            cid = redact({"correlation.id": request.cid})["correlation.id"]
        return cached, cid

    @property
    def resource(self) -> Resource:
        """The provider's resource, read at export: it changes in a forked worker."""
        return self._resource()

    def start(
        self,
        name: str,
        parent: SpanContext | None,
        attributes: dict[str, Any],
        start_time: int | None = None,
    ) -> ServerSpan:
        """A server span with arbitrary attributes (frameworks without a request tuple)."""
        return _server_span(
            self,
            name,
            self._context(parent),
            parent if parent is not None and parent.is_valid else None,
            start_time if start_time is not None else _time_ns(),
            None,
            attributes,
        )

    def start_request(self, request: RequestFields, parent: SpanContext | None) -> ServerSpan:
        """The request's server span; writes the trace's ids into ``request``."""
        if parent is None:
            # A new trace (the common case), as _context(None) without the call.
            trace_id = _getrandbits(128) or 1
            span_id = _getrandbits(64) or 1
            sampled = trace_id & _TRACE_ID_LIMIT < self._bound
            flags = _RANDOM_SAMPLED if sampled else _RANDOM
            context = self._new_context(trace_id, span_id, flags, _EMPTY_STATE)
        else:
            context = self._context(parent)
            trace_id, span_id = context.trace_id, context.span_id
            sampled = bool(context.trace_flags & TraceFlags.SAMPLED)
            if not parent.is_valid:
                parent = None
        request.trace_id = trace_id
        request.span_id = span_id
        span = _server_span(self, request.method_label, context, parent, _time_ns(), request)
        span.sampled = sampled
        return span

    def end_request(self, span: ServerSpan, end_time: int | None = None) -> bool:
        """Name and end the request's span once its record has the response's fields
        (route, status, error type); True when its trace is kept."""
        if span.end_time is not None:
            return bool(span.kept)
        request = span._request
        assert request is not None, "end_request is for spans start_request began"
        if span.name is request.method_label:  # not renamed by the app (update_name)
            span.name = f"{span.name} {request.route}"
        span._finished = True
        if request.error_type is not None and span.status.status_code is not StatusCode.OK:
            span.status = _ERROR
        span.end_time = end_time if end_time is not None else _time_ns()
        return self.on_root_end(
            span, request.error_type is not None, request.trace_id, span.sampled
        )

    def end_requests(self, spans: Sequence[tuple[ServerSpan, int]]) -> list[bool]:
        """:meth:`end_request` for request spans given with their end times, whose
        requests ended without an error (their books waited, ``Core.finish_copied``):
        their tail decisions in one call. Returns whether each trace is kept."""
        roots: list[tuple[ServerSpan, int, bool]] = []
        ended: list[bool | None] | None = None  # when some had ended already
        for span, end_time in spans:
            if span.end_time is not None:
                if ended is None:
                    ended = [None] * len(roots)
                ended.append(bool(span.kept))
                continue
            request = span._request
            assert request is not None, "end_requests is for spans start_request began"
            if span.name is request.method_label:  # not renamed by the app (update_name)
                span.name = f"{span.name} {request.route}"
            span._finished = True
            span.end_time = end_time
            roots.append((span, request.trace_id, span.sampled))
            if ended is not None:
                ended.append(None)
        kept = self.on_root_ends(roots) if roots else []
        if ended is None:
            return kept
        decided = iter(kept)
        return [next(decided) if keep is None else keep for keep in ended]

    def _context(self, parent: SpanContext | None) -> SpanContext:
        if parent is not None and parent.is_valid:
            trace_id = parent.trace_id
            flags = parent.trace_flags & TraceFlags.RANDOM_TRACE_ID
            if parent.trace_flags & TraceFlags.SAMPLED or (
                parent.is_remote and trace_id & _TRACE_ID_LIMIT < self._bound
            ):
                flags |= TraceFlags.SAMPLED
            state: TraceState = parent.trace_state
        else:
            trace_id = _getrandbits(128) or 1
            flags = TraceFlags.RANDOM_TRACE_ID
            if trace_id & _TRACE_ID_LIMIT < self._bound:
                flags |= TraceFlags.SAMPLED
            state = _EMPTY_STATE
        return self._new_context(trace_id, _getrandbits(64) or 1, _FLAGS[flags], state)
