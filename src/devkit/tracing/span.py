"""A lean recording span for the per-request SERVER span.

The OpenTelemetry SDK span costs about 170,000 CPU instructions to start, annotate and
end (bounded attributes, locks, span limits, self-metrics, processor fan-out) — more than
everything else devkit does per request together. Nine requests in ten are successful,
fast and then sampled out, so devkit records the server span in a plain object and builds
the SDK's ``ReadableSpan`` only for the traces the tail sampler keeps, on the export
thread.

:class:`ServerSpan` implements the OpenTelemetry ``Span`` API, so everything that reads
the current span works unchanged: child spans from any tracer take it as parent, log
records carry its ids, and application code may add attributes and events to it.
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

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

from devkit._version import __version__
from devkit.tracing.sampling import ratio_bound

__all__ = ["ServerSpan", "ServerSpanFactory"]

_TRACE_ID_LIMIT = (1 << 64) - 1
_UNSET = Status(StatusCode.UNSET)
_SCALARS = (str, bool, int, float)
_MAX_EVENTS = 128
_getrandbits = random.getrandbits
_time_ns = time.time_ns


def _valid_value(value: object) -> bool:
    if isinstance(value, _SCALARS):
        return True
    if isinstance(value, list | tuple):
        return all(isinstance(v, _SCALARS) for v in value)
    return False


class ServerSpan(Span):
    """A recording span with the fields ``ReadableSpan`` exposes (duck-typed for the sampler)."""

    __slots__ = (
        "name",
        "context",
        "parent",
        "kind",
        "attributes",
        "events",
        "links",
        "status",
        "start_time",
        "end_time",
        "_factory",
    )

    def __init__(
        self,
        factory: ServerSpanFactory,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any],
        start_time: int,
    ) -> None:
        self._factory = factory
        self.name = name
        self.context = context
        self.parent = parent
        self.kind = kind
        self.attributes = attributes
        self.events: list[Event] = []
        self.links: list[Link] = []
        self.status = _UNSET
        self.start_time = start_time
        self.end_time: int | None = None

    # -- the Span API -----------------------------------------------------------------------

    def get_span_context(self) -> SpanContext:
        return self.context

    def is_recording(self) -> bool:
        return self.end_time is None

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        if self.end_time is None:
            for key, value in attributes.items():
                if isinstance(key, str) and _valid_value(value):
                    self.attributes[key] = value

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self.end_time is None and isinstance(key, str) and _valid_value(value):
            self.attributes[key] = value

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        if self.end_time is None and len(self.events) < _MAX_EVENTS:
            clean = {k: v for k, v in (attributes or {}).items() if _valid_value(v)}
            self.events.append(Event(name, clean, timestamp or _time_ns()))

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        if self.end_time is None and context.is_valid:
            self.links.append(Link(context, attributes))

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
            "exception.type": type(exception).__qualname__
            if type(exception).__module__ == "builtins"
            else f"{type(exception).__module__}.{type(exception).__qualname__}",
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

    def to_readable(
        self, attributes: Mapping[str, Any] | None = None, events: Sequence[Event] | None = None
    ) -> ReadableSpan:
        """The SDK span the exporters encode (built only for kept traces)."""
        return ReadableSpan(
            name=self.name,
            context=self.context,
            parent=self.parent,
            resource=self._factory.resource,
            attributes=dict(self.attributes if attributes is None else attributes),
            events=list(self.events if events is None else events),
            links=list(self.links),
            kind=self.kind,
            status=self.status,
            start_time=self.start_time,
            end_time=self.end_time,
            instrumentation_scope=self._factory.scope,
        )


class ServerSpanFactory:
    """Starts :class:`ServerSpan` objects with the sampler's head flag and hands ended ones
    to the tail sampler (``on_end``)."""

    def __init__(
        self,
        *,
        ratio: float,
        resource: Callable[[], Resource],
        on_end: Callable[[Any], None],
    ) -> None:
        self._bound = ratio_bound(ratio)
        self._resource = resource
        self.scope = InstrumentationScope("devkit", __version__)
        self.on_end = on_end

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
        if parent is not None and parent.is_valid:
            trace_id = parent.trace_id
            flags = parent.trace_flags & TraceFlags.RANDOM_TRACE_ID
            if parent.trace_flags & TraceFlags.SAMPLED or (
                parent.is_remote and trace_id & _TRACE_ID_LIMIT < self._bound
            ):
                flags |= TraceFlags.SAMPLED
            state: TraceState | None = parent.trace_state
        else:
            parent = None
            trace_id = _getrandbits(128) or 1
            flags = TraceFlags.RANDOM_TRACE_ID
            if trace_id & _TRACE_ID_LIMIT < self._bound:
                flags |= TraceFlags.SAMPLED
            state = None
        context = SpanContext(trace_id, _getrandbits(64) or 1, False, TraceFlags(flags), state)
        return ServerSpan(
            self,
            name,
            context,
            parent,
            SpanKind.SERVER,
            attributes,
            start_time if start_time is not None else _time_ns(),
        )
