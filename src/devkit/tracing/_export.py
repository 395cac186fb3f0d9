"""Span export: the bounded batch queue (``devkit._batch``), with redaction for spans.

Everything of a span that can carry text is redacted on the export thread — only for
the spans actually exported: its attributes, its name, its events' names and attributes,
its status description and its links' attributes. devkit's OTLP encoder takes the plain
:class:`ExportSpan` directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import Link, Status

from devkit import _errors
from devkit._batch import BatchQueue, Count
from devkit.config import ExportOptions

__all__ = [
    "BatchExporter",
    "ExportSpan",
    "RequestExportSpan",
    "SharedAttributes",
    "text_redactor",
]

Redact = Callable[[Mapping[str, Any]], dict[str, Any]]
RedactText = Callable[[str], str]

#: Span and event names come from a small set (devkit's server spans are ``"<method>
#: <route template>"``): their redacted forms are remembered, up to this many, so a kept
#: span pays a dict lookup for each name rather than a scan.
_NAME_CACHE_MAX = 2048
#: Longer names (an SQL statement for a name) are redacted each time, not kept.
_NAME_CACHE_CHARS = 256
_new_export_span = object.__new__


def text_redactor(redact: Redact) -> RedactText:
    """The text redaction that goes with the attribute redaction ``redact``: the
    :class:`~devkit.redaction.Redactor`'s own ``redact_str`` when ``redact`` is its
    ``redact_attributes``, else ``redact`` applied to the text under a neutral key."""
    own = getattr(getattr(redact, "__self__", None), "redact_str", None)
    if callable(own):
        return own  # type: ignore[no-any-return]

    def redact_text(text: str) -> str:
        return str(redact({"text": text})["text"])

    return redact_text


class SharedAttributes(dict):  # type: ignore[type-arg]
    """A span's attributes that begin with all the items of :attr:`shared`, a dict other
    spans' attributes begin with too (request spans of the same kind), in its order.

    devkit's OTLP encoder encodes the shared part once. Built by devkit for the export
    and not changed afterwards.
    """

    __slots__ = ("shared",)

    shared: dict[str, Any]

    @classmethod
    def extending(cls, shared: dict[str, Any]) -> SharedAttributes:
        """A new mapping with the items of ``shared``, to which more may be added."""
        out = cls(shared)
        out.shared = shared
        return out


class ExportSpan:
    """A span as the export thread hands it on: plain fields, attributes redacted.

    devkit's OTLP encoder reads these fields directly: no SDK ``ReadableSpan`` to build
    and none of its per-read property calls, ``MappingProxyType`` and tuple copies
    (docs/benchmarks.md#export-batches). Exporters that take SDK spans get
    :meth:`to_readable`.
    """

    __slots__ = (
        "name",
        "context",
        "parent",
        "kind",
        "status",
        "start_time",
        "end_time",
        "attributes",
        "events",
        "links",
        "resource",
        "instrumentation_scope",
    )

    # What the SDK span reports for a span built from plain collections.
    dropped_attributes = 0
    dropped_events = 0
    dropped_links = 0

    def __init__(
        self,
        span: Any,
        attributes: dict[str, Any],
        events: list[Event],
        *,
        name: str | None = None,
        status: Status | None = None,
        links: list[Link] | None = None,
    ) -> None:
        """``span``'s fields (an SDK span or devkit's server span) with these attributes
        and events, and with ``name``, ``status`` and ``links`` when given (redacted)."""
        self.name = span.name if name is None else name
        self.context = span.context
        self.parent = span.parent
        self.kind = span.kind
        self.status = span.status if status is None else status
        self.start_time = span.start_time
        self.end_time = span.end_time
        self.attributes = attributes
        self.events = events
        self.links = list(span.links) if links is None else links
        self.resource = span.resource
        self.instrumentation_scope = span.instrumentation_scope

    def to_readable(self) -> ReadableSpan:
        return ReadableSpan(
            name=self.name,
            context=self.context,
            parent=self.parent,
            resource=self.resource,
            attributes=self.attributes,
            events=self.events,
            links=self.links,
            kind=self.kind,
            status=self.status,
            start_time=self.start_time,
            end_time=self.end_time,
            instrumentation_scope=self.instrumentation_scope,
        )


class RequestExportSpan(ExportSpan):
    """An :class:`ExportSpan` of a devkit request span with nothing the application
    added: its attributes as the part requests of its kind share (:attr:`shared`, the
    same dict for each) and its own (:attr:`own`: the correlation id and the numbers).

    devkit's OTLP encoder encodes the shared part, the name and the status once per kind;
    :attr:`attributes` (both, in that order) is built only when something reads it.
    """

    __slots__ = ("shared", "own")

    shared: dict[str, Any]
    own: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        # Only for slots not set: the attributes, built on the first read.
        if name == "attributes":
            self.attributes = attributes = {**self.shared, **self.own}
            return attributes
        raise AttributeError(name)


_Export = TypeVar("_Export", bound=ExportSpan)


def _filled(out: _Export, span: Any, name: str, status: Status) -> _Export:
    """``out`` with ``span``'s fields but the attributes, events and links; filled here
    rather than through ExportSpan's __init__ (a class call with keywords): this runs for
    every exported span."""
    out.name = name
    out.context = span.context
    out.parent = span.parent
    out.kind = span.kind
    out.status = status
    out.start_time = span.start_time
    out.end_time = span.end_time
    out.resource = span.resource
    out.instrumentation_scope = span.instrumentation_scope
    return out


class BatchExporter(BatchQueue):
    """The span queue: ``BatchQueue`` plus redaction of what it exports."""

    thread_name = "devkit-span-export"

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        max_queue_size: int = ExportOptions.max_queue_size,
        max_batch_size: int = ExportOptions.max_batch_size,
        schedule_delay_s: float = ExportOptions.schedule_delay_s,
        redact: Redact | None = None,
        redact_text: RedactText | None = None,
        on_drop: Count | None = None,
    ) -> None:
        """``redact`` filters attributes, ``redact_text`` the span's texts (name, event
        names, status description); it defaults to the text redaction of ``redact``."""
        super().__init__(
            exporter,
            max_queue_size=max_queue_size,
            max_batch_size=max_batch_size,
            schedule_delay_s=schedule_delay_s,
            on_drop=on_drop,
        )
        self._redact = redact
        if redact_text is None and redact is not None:
            redact_text = text_redactor(redact)
        self._redact_text = redact_text
        self._names: dict[str, str] = {}
        #: The exporter encodes devkit's plain export spans itself (devkit's OTLP encoder).
        self._plain_spans = bool(getattr(exporter, "takes_export_spans", False))

    def _prepared(self, span: ReadableSpan) -> ReadableSpan | ExportSpan | None:
        """``span`` redacted, as the exporter takes it; None (dropped and counted) when
        redaction fails: never export an unredacted span."""
        redact = self._redact
        # devkit's lean server span: ``attributes`` builds a dict on each read, and it
        # becomes an SDK span only here, for a kept trace.
        own = getattr(span, "redacted_attributes", None)
        if redact is None and own is None:
            return span
        try:
            if redact is None:
                exported = ExportSpan(span, dict(span.attributes or {}), list(span.events))
            else:
                parts = None
                if self._plain_spans and own is not None and not span.status.description:
                    parts = span.request_parts(redact)  # type: ignore[attr-defined]
                if parts is not None:
                    return self._request_span(span, *parts)
                exported = self._redacted(span, redact, own)
        except Exception as exc:
            _errors.report("exporter", "redaction_failed", detail=str(exc))
            self._on_drop("redaction_failed", 1)
            return None
        return exported if self._plain_spans else exported.to_readable()

    def _redacted(self, span: ReadableSpan, redact: Redact, own: Any) -> ExportSpan:
        attributes = own(redact) if own is not None else redact(span.attributes or {})
        # The name is looked up in the cache inline: this runs for every exported span.
        name = span.name
        clean_name = self._names.get(name)
        if clean_name is None:
            clean_name = self._name(name)
        events: list[Event] = []
        for e in span.events:  # most spans have none
            attrs = e.attributes
            events.append(Event(self._name(e.name), redact(attrs) if attrs else {}, e.timestamp))
        status = span.status
        description = status.description
        if description:
            assert self._redact_text is not None
            clean = self._redact_text(description)
            if clean is not description:
                status = Status(status.status_code, clean)
        links = span.links
        if links:
            links = [Link(k.context, redact(k.attributes)) if k.attributes else k for k in links]
        out: ExportSpan = _filled(_new_export_span(ExportSpan), span, clean_name, status)
        out.attributes = attributes
        out.events = events
        out.links = list(links) if links else []
        return out

    def _request_span(
        self, span: Any, shared: dict[str, Any], own: dict[str, Any]
    ) -> RequestExportSpan:
        """A request span's export with its attributes in two parts (redacted by
        ``request_parts``; its status has no description to redact)."""
        name = span.name
        clean_name = self._names.get(name)
        if clean_name is None:
            clean_name = self._name(name)
        out: RequestExportSpan = _filled(
            _new_export_span(RequestExportSpan), span, clean_name, span.status
        )
        out.shared = shared
        out.own = own
        out.events = []
        out.links = []
        return out

    def _name(self, name: str) -> str:
        """``name`` (a span's or an event's) redacted, remembered while the cache has room."""
        names = self._names
        clean = names.get(name)
        if clean is None:
            assert self._redact_text is not None
            clean = self._redact_text(name)
            if len(names) < _NAME_CACHE_MAX and len(name) <= _NAME_CACHE_CHARS:
                names[name] = clean
        return clean
