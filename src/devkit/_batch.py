"""Off-request-path export: a bounded queue drained in batches by one background thread.

Spans (``devkit.tracing``) and log records (``devkit._log_export``) leave the process
through this queue. devkit owns it instead of the SDK's batch processors because it
must hold what they cannot (the tail sampler keeps traces whose *sampled* flag is unset)
and count what they drop silently. The queue is bounded (a dead collector drops and
counts, never grows memory, never blocks a request), export runs with instrumentation
suppressed (exporting is never traced, and its HTTP calls are not logged as requests
of their own), and the worker thread is re-created lazily in a forked child (gunicorn
workers forked after ``init()`` export too, and ``--preload`` cannot deadlock on a lock
inherited from the parent).
"""

from __future__ import annotations

import collections
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from opentelemetry.context import attach, detach, set_value

from devkit import _compat, _errors
from devkit.config import ExportOptions

__all__ = ["BatchQueue", "Count", "Exporter"]

Count = Callable[[str, int], None]

_instances: weakref.WeakSet[BatchQueue] = weakref.WeakSet()
_fork_hook_registered = False


def _after_fork_in_child() -> None:
    for queue in list(_instances):
        queue._reinit_after_fork()


class Exporter(Protocol):
    """An OpenTelemetry span or log record exporter: ``export`` returns an enum whose
    success member is named ``SUCCESS`` (``SpanExportResult``, ``LogRecordExportResult``)."""

    def export(self, batch: Sequence[Any], /) -> Any: ...

    def shutdown(self) -> Any: ...


class BatchQueue:
    """Queues items and hands them to ``exporter`` in batches from a daemon thread.

    Batches are small (``ExportOptions.max_batch_size``, not the SDK's 512): encoding a
    batch holds the GIL, and a large batch stalls a busy event loop long enough to show
    in the p99 latency (docs/benchmarks.md#export-batches).
    """

    #: Name of the worker thread.
    thread_name = "devkit-export"

    def __init__(
        self,
        exporter: Exporter,
        *,
        max_queue_size: int = ExportOptions.max_queue_size,
        max_batch_size: int = ExportOptions.max_batch_size,
        schedule_delay_s: float = ExportOptions.schedule_delay_s,
        on_drop: Count | None = None,
    ) -> None:
        global _fork_hook_registered
        self._exporter = exporter
        self._max_queue = max_queue_size
        self._max_batch = max_batch_size
        self._delay = schedule_delay_s
        self._on_drop = on_drop or (lambda reason, n: None)
        self._init_state()
        _instances.add(self)
        if not _fork_hook_registered:
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _fork_hook_registered = True

    def _init_state(self) -> None:
        self._queue: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False
        self._exporting = 0
        #: Items handed to the exporter successfully since start (or since the fork).
        self.exported = 0

    def _reinit_after_fork(self) -> None:
        # The parent's thread does not exist here and its lock may be held: start over.
        # Items queued in the parent belong to the parent, which exports them itself.
        self._init_state()

    # -- producer side (request path) ----------------------------------------------------

    def __call__(self, items: Sequence[Any]) -> None:
        """Queue ``items`` for export; never blocks, drops and counts when full."""
        if self._closed:
            self._on_drop("exporter_closed", len(items))
            return
        with self._cond:
            room = self._max_queue - len(self._queue)
            if room < len(items):
                self._on_drop("export_queue_full", len(items) - max(room, 0))
                items = items[: max(room, 0)]
            self._queue.extend(items)
            if self._thread is None:
                self._start_locked()
            if len(self._queue) >= self._max_batch:
                self._cond.notify()

    def in_worker(self) -> bool:
        """Whether the caller runs on this queue's export thread."""
        return threading.current_thread() is self._thread

    def _start_locked(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
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

    def _export(self, batch: list[Any]) -> None:
        prepared = [p for p in map(self._prepared, batch) if p is not None]
        token = attach(set_value(_compat.suppress_instrumentation_key(), True))
        try:
            result = self._exporter.export(prepared)
        except Exception as exc:
            # Not re-raised even under devkit's tests: this is the export thread.
            _errors.report("exporter", "export_raised", detail=f"{type(exc).__name__}: {exc}")
            self._on_drop("export_failed", len(prepared))
        else:
            if getattr(result, "name", None) == "SUCCESS":
                self.exported += len(prepared)
            else:
                _errors.report("exporter", "export_failed")
                self._on_drop("export_failed", len(prepared))
        finally:
            detach(token)

    def _prepared(self, item: Any) -> Any | None:
        """``item`` as the exporter takes it, on the export thread; None drops it (the
        override counts why)."""
        return item

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
