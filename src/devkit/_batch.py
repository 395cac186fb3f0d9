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

A batch whose export failed transiently (the collector refused, reset or did not answer
the connection, or answered 429, 502, 503 or 504) is kept and tried again, first after
the collector's ``Retry-After`` (capped at ``devkit._keepalive.RETRY_AFTER_CAP_S``) or an
exponential backoff, while newer items queue behind it. It counts against the same bound:
while the collector is away the queue fills and what overflows is dropped and counted
(``export_queue_full``), so memory stays bounded. A final failure (any other status, an
exporter that raised) drops the batch and counts it (``export_failed``); so does the
shutdown for what is still held when its budget runs out (``shutdown_timeout``).
See docs/reliability.md#retries.
"""

from __future__ import annotations

import collections
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from opentelemetry.context import attach, detach, set_value

from devkit import _compat, _errors, _keepalive
from devkit._keepalive import Answer, watch_answers
from devkit._threads import start_daemon
from devkit.config import ExportOptions

__all__ = ["BUSY", "RETRY_BACKOFF_S", "BatchQueue", "Count", "Exporter", "add_idle_listener"]

#: The wait before a batch that failed transiently without a ``Retry-After`` is tried
#: again, in seconds; it doubles with each further failure in a row (with a fifth of
#: jitter either way, so a fleet does not retry in step), up to ``RETRY_AFTER_CAP_S``.
RETRY_BACKOFF_S = 1.0

Count = Callable[[str, int], None]

_instances: weakref.WeakSet[BatchQueue] = weakref.WeakSet()
_fork_hook_registered = False

#: The queues whose export thread has a batch to do. While one has, devkit's log lines
#: wait instead of being written (:meth:`devkit.logs.LogPipeline.write`): a write releases
#: the GIL for a moment, which wakes a thread waiting for it without letting it in, so a
#: busy request thread that writes once per request would wake the export thread once
#: per request for as long as it waits (docs/benchmarks.md#export-and-the-gil).
#: Membership changes are single set operations, atomic under the GIL.
BUSY: set[BatchQueue] = set()


class IdleListener(Protocol):
    def release_held(self) -> None: ...

    def drop_held_after_fork(self) -> None: ...


#: Told when an export thread finished its batch (the log pipelines holding lines).
_idle_listeners: weakref.WeakSet[Any] = weakref.WeakSet()


def add_idle_listener(listener: IdleListener) -> None:
    """Have ``listener.release_held()`` called each time an export thread is done."""
    _idle_listeners.add(listener)


def _now_idle() -> None:
    for listener in list(_idle_listeners):
        try:
            listener.release_held()
        except Exception as exc:  # the export thread must go on
            _errors.report("logs", "write_failed", exc)


def _after_fork_in_child() -> None:
    # The parent's export threads do not exist here.
    BUSY.clear()
    for listener in list(_idle_listeners):
        listener.drop_held_after_fork()
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
        #: What the collector answered a failed post (OTLP/HTTP exporters only).
        self._answers = watch_answers(exporter)
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
        #: Callers in ``force_flush``: meanwhile the thread does not wait for a full batch
        #: when items are queued (a wake-up sent while it was busy would be lost).
        self._flushers = 0
        #: A batch (already prepared) whose export failed transiently, and when it is
        #: tried again (a flush brings that forward).
        self._held: list[Any] | None = None
        self._retry_at = 0.0
        self._failures = 0
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
            # Held and in-flight items count against the bound: they are in memory too.
            room = self._max_queue - len(self._queue) - self._exporting
            if self._held is not None:
                room -= len(self._held)
            if room < len(items):
                self._on_drop("export_queue_full", len(items) - max(room, 0))
                items = items[: max(room, 0)]
            if items and type(items[0]) is bytes:
                # An encoded record may sit in a buffer much larger than itself (orjson's
                # output keeps its whole initial allocation), and a queued one may wait as
                # long as the collector is away: keep its bytes only.
                items = [memoryview(item).tobytes() for item in items]
            queued = len(self._queue)
            self._queue.extend(items)
            if self._thread is None:
                self._start_locked()
            # Wake the export thread only when a batch has just become ready: not for each
            # item offered to a full queue, nor while it waits to retry a held batch. A
            # woken thread takes the GIL from the request that woke it.
            if queued < self._max_batch <= len(self._queue) and self._held is None:
                BUSY.add(self)  # before the thread wakes: it then gets the GIL at once
                self._cond.notify()

    def in_worker(self) -> bool:
        """Whether the caller runs on this queue's export thread."""
        return threading.current_thread() is self._thread

    def _start_locked(self) -> None:
        self._thread = start_daemon(self._run, self.thread_name)

    # -- consumer side ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                batch, prepared = self._next_locked()
                if batch is None:
                    BUSY.discard(self)
                    self._cond.notify_all()
                    return
                self._exporting += len(batch)
            kept: list[Any] | None = None
            BUSY.add(self)  # woken by the timer or a flush rather than a full batch
            try:
                if batch:
                    kept = self._export(batch, prepared)
            finally:
                with self._cond:
                    self._exporting -= len(batch)
                    if kept is not None:
                        if self._closed:  # the shutdown's budget ran out meanwhile
                            self._on_drop("shutdown_timeout", len(kept))
                        else:
                            self._held = kept
                    self._cond.notify_all()
                    more = len(self._queue) >= self._max_batch and self._held is None
                if not more:
                    BUSY.discard(self)
                    _now_idle()

    def _next_locked(self) -> tuple[list[Any] | None, bool]:
        """The next batch and whether it is prepared already (a held one), once its time
        has come; None when the queue is closed and empty."""
        while self._held is not None and not self._closed:
            wait = self._retry_at - time.monotonic()
            if wait <= 0:
                batch, self._held = self._held, None
                return batch, True
            self._cond.wait(wait)
        queued = len(self._queue)
        if queued < self._max_batch and not self._closed and not (self._flushers and queued):
            self._cond.wait(self._delay)
        if self._closed and not self._queue:
            return None, False
        size = min(self._max_batch, len(self._queue))
        return [self._queue.popleft() for _ in range(size)], False

    def _export(self, batch: list[Any], prepared: bool) -> list[Any] | None:
        """Export ``batch``; the prepared items to hold for another attempt when the
        failure was transient, else None (exported, or dropped and counted)."""
        items = batch if prepared else [p for p in map(self._prepared, batch) if p is not None]
        if not items:
            return None
        answers = self._answers
        if answers is not None:
            answers.last = None
        token = attach(set_value(_compat.suppress_instrumentation_key(), True))
        try:
            result = self._exporter.export(items)
        except Exception as exc:
            # Not re-raised even under devkit's tests: this is the export thread.
            _errors.report("exporter", "export_raised", detail=f"{type(exc).__name__}: {exc}")
            self._on_drop("export_failed", len(items))
            return None
        finally:
            detach(token)
        if getattr(result, "name", None) == "SUCCESS":
            self.exported += len(items)
            self._failures = 0
            return None
        answer = answers.last if answers is not None else None
        if answer is None or not answer.retryable or self._closed:
            _errors.report("exporter", "export_failed")
            self._on_drop("export_failed", len(items))
            return None
        _errors.report("exporter", "export_retried")
        self._failures += 1
        self._retry_at = time.monotonic() + self._retry_delay(answer)
        return items

    def _retry_delay(self, answer: Answer) -> float:
        if answer.retry_after_s is not None:
            return answer.retry_after_s
        backoff = RETRY_BACKOFF_S * 2.0 ** min(self._failures - 1, 16)
        return min(backoff * random.uniform(0.8, 1.2), _keepalive.RETRY_AFTER_CAP_S)

    def _prepared(self, item: Any) -> Any | None:
        """``item`` as the exporter takes it, on the export thread; None drops it (the
        override counts why)."""
        return item

    # -- lifecycle --------------------------------------------------------------------------

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + self._exporting + len(self._held or ())

    def force_flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued before the call was exported (or the timeout).
        A held batch is tried again at once, not after its backoff."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            if self._thread is None and self._queue:
                self._start_locked()
            self._retry_at = time.monotonic()  # a held batch: try it now, once
            self._flushers += 1
            try:
                self._cond.notify_all()
                while self._queue or self._exporting or self._held is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.notify_all()
                    self._cond.wait(min(remaining, 0.05))
            finally:
                self._flushers -= 1
        return True

    def shutdown(self, timeout_s: float = 10.0) -> bool:
        flushed = self.force_flush(timeout_s)
        with self._cond:
            self._closed = True
            lost = len(self._queue) + len(self._held or ())
            self._queue.clear()
            self._held = None
            self._cond.notify_all()
        if lost:
            self._on_drop("shutdown_timeout", lost)
        try:
            self._exporter.shutdown()
        except Exception as exc:
            _errors.report("exporter", "shutdown_failed", exc)
        return flushed
