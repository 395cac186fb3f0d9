"""Off-request-path span export: a bounded queue drained by one background thread.

devkit owns this instead of the SDK's ``BatchSpanProcessor`` because the tail sampler
keeps traces whose *sampled* flag is unset (errors, slow requests), which that processor
would discard. The queue is bounded (a dead collector drops and counts, never grows
memory, never blocks a request), export runs with instrumentation suppressed (exporting
is never traced), span attributes are redacted here — only for the spans actually
exported — and the worker thread is re-created lazily in a forked child (gunicorn
workers forked after ``init()`` export too, and ``--preload`` cannot deadlock on a lock
inherited from the parent).
"""

from __future__ import annotations

import collections
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry.context import attach, detach, set_value
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from devkit import _compat, _errors
from devkit.config import ExportOptions

__all__ = ["BatchExporter", "ExportSpan"]

Count = Callable[[str, int], None]
Redact = Callable[[Mapping[str, Any]], dict[str, Any]]

_instances: weakref.WeakSet[BatchExporter] = weakref.WeakSet()
_fork_hook_registered = False


def _after_fork_in_child() -> None:
    for exporter in list(_instances):
        exporter._reinit_after_fork()


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


class BatchExporter:
    """Queues spans and exports them in batches from a daemon thread.

    Batches are small (``ExportOptions.max_batch_size``, not the SDK's 512): encoding a
    batch holds the GIL, and a large batch stalls a busy event loop long enough to show
    in the p99 latency (docs/benchmarks.md#export-batches).
    """

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
        global _fork_hook_registered
        self._exporter = exporter
        self._max_queue = max_queue_size
        self._max_batch = max_batch_size
        self._delay = schedule_delay_s
        self._redact = redact
        self._on_drop = on_drop or (lambda reason, n: None)
        #: The exporter encodes devkit's plain export spans itself (devkit's OTLP encoder).
        self._plain_spans = bool(getattr(exporter, "takes_export_spans", False))
        self._init_state()
        _instances.add(self)
        if not _fork_hook_registered:
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _fork_hook_registered = True

    def _init_state(self) -> None:
        self._queue: collections.deque[ReadableSpan] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False
        self._exporting = 0
        #: Spans handed to the exporter successfully since start (or since the fork).
        self.exported = 0

    def _reinit_after_fork(self) -> None:
        # The parent's thread does not exist here and its lock may be held: start over.
        # Spans queued in the parent belong to the parent, which exports them itself.
        self._init_state()

    # -- producer side (request path) ----------------------------------------------------

    def __call__(self, spans: Sequence[ReadableSpan]) -> None:
        """Queue ``spans`` for export; never blocks, drops and counts when full."""
        if self._closed:
            self._on_drop("exporter_closed", len(spans))
            return
        with self._cond:
            room = self._max_queue - len(self._queue)
            if room < len(spans):
                self._on_drop("export_queue_full", len(spans) - max(room, 0))
                spans = spans[: max(room, 0)]
            self._queue.extend(spans)
            if self._thread is None:
                self._start_locked()
            if len(self._queue) >= self._max_batch:
                self._cond.notify()

    def _start_locked(self) -> None:
        self._thread = threading.Thread(target=self._run, name="devkit-span-export", daemon=True)
        self._thread.start()

    # -- consumer side ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                if len(self._queue) < self._max_batch and not self._closed:
                    self._cond.wait(self._delay)
                if self._closed and not self._queue:
                    self._cond.notify_all()
                    return
                size = min(self._max_batch, len(self._queue))
                batch = [self._queue.popleft() for _ in range(size)]
                self._exporting += len(batch)
            try:
                if batch:
                    self._export(batch)
            finally:
                with self._cond:
                    self._exporting -= len(batch)
                    self._cond.notify_all()

    def _export(self, batch: list[ReadableSpan]) -> None:
        prepared = [p for p in map(self._prepared, batch) if p is not None]
        token = attach(set_value(_compat.suppress_instrumentation_key(), True))
        try:
            # ExportSpans only reach an exporter that declared it takes them.
            result = self._exporter.export(prepared)  # type: ignore[arg-type]
        except Exception as exc:
            # Not re-raised even under devkit's tests: this is the export thread.
            _errors.report("exporter", "export_raised", detail=f"{type(exc).__name__}: {exc}")
            self._on_drop("export_failed", len(prepared))
        else:
            if result is SpanExportResult.SUCCESS:
                self.exported += len(prepared)
            else:
                _errors.report("exporter", "export_failed")
                self._on_drop("export_failed", len(prepared))
        finally:
            detach(token)

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

    # -- lifecycle --------------------------------------------------------------------------

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + self._exporting

    def force_flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued before the call was exported (or the timeout)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            if self._thread is None and self._queue:
                self._start_locked()
            self._cond.notify_all()
            while self._queue or self._exporting:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.notify_all()
                self._cond.wait(min(remaining, 0.05))
        return True

    def shutdown(self, timeout_s: float = 10.0) -> bool:
        flushed = self.force_flush(timeout_s)
        with self._cond:
            self._closed = True
            lost = len(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        if lost:
            self._on_drop("shutdown_timeout", lost)
        try:
            self._exporter.shutdown()
        except Exception as exc:
            _errors.report("exporter", "shutdown_failed", exc)
        return flushed
