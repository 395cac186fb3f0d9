"""Span export: the bounded batch queue (``devkit._batch``), with redaction for spans.

Span attributes are redacted on the export thread — only for the spans actually
exported — and devkit's OTLP encoder takes the plain :class:`ExportSpan` directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter

from devkit import _errors
from devkit._batch import BatchQueue, Count
from devkit.config import ExportOptions

__all__ = ["BatchExporter", "ExportSpan"]

Redact = Callable[[Mapping[str, Any]], dict[str, Any]]


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

    def __init__(self, span: Any, attributes: dict[str, Any], events: list[Event]) -> None:
        """``span``'s fields (an SDK span or devkit's server span) with these attributes."""
        self.name = span.name
        self.context = span.context
        self.parent = span.parent
        self.kind = span.kind
        self.status = span.status
        self.start_time = span.start_time
        self.end_time = span.end_time
        self.attributes = attributes
        self.events = events
        self.links = list(span.links)
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
        on_drop: Count | None = None,
    ) -> None:
        super().__init__(
            exporter,
            max_queue_size=max_queue_size,
            max_batch_size=max_batch_size,
            schedule_delay_s=schedule_delay_s,
            on_drop=on_drop,
        )
        self._redact = redact
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
                attributes, events = dict(span.attributes or {}), list(span.events)
            else:
                attributes = own(redact) if own is not None else redact(span.attributes or {})
                events = [
                    Event(e.name, redact(e.attributes or {}), e.timestamp) for e in span.events
                ]
            exported = ExportSpan(span, attributes, events)
        except Exception as exc:
            _errors.report("exporter", "redaction_failed", detail=str(exc))
            self._on_drop("redaction_failed", 1)
            return None
        return exported if self._plain_spans else exported.to_readable()
