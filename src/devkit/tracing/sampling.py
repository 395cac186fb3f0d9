"""Error-biased tail sampling: decide when the local root span ends, not when it starts.

Every span is recorded. :class:`ErrorBiasedSampler` only sets the *sampled* flag (what
downstream services see in ``traceparent``) for traces that the trace-id ratio rule or a
sampled parent keep, exactly as OpenTelemetry's ``ParentBased(TraceIdRatioBased)`` would,
so a fleet agrees on its successful traces. :class:`TailSamplingProcessor` buffers the
spans of each trace until its local root ends, then keeps the trace if any span failed,
the root was slow, or the sampled flag is set; the rest is dropped unencoded
(docs/benchmarks.md#tail-sampling says what that saves).

Spans that end *after* their root was decided follow the recorded decision (a bounded
LRU of recent decisions), so a kept trace never loses a late child and a dropped trace
never leaks one. Buffers are bounded (traces, spans per trace, age) and every drop is
counted by reason.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass, field

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import (
    Link,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    get_current_span,
)
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

__all__ = [
    "UNSET_STATUS",
    "ErrorBiasedSampler",
    "SamplingLimits",
    "TailSamplingProcessor",
    "ratio_bound",
    "ratio_keeps",
]

_TRACE_ID_LIMIT = (1 << 64) - 1
_SAMPLED = TraceFlags.SAMPLED
#: The status devkit's server span starts with: while a span still has it, one identity
#: test tells that nobody set a status, without reading ``status_code``.
UNSET_STATUS = Status(StatusCode.UNSET)
# Decisions counted per flush to the metric (a scrape and a flush count the rest).
_COUNT_BATCH = 64


def ratio_bound(ratio: float) -> int:
    """The bound of OpenTelemetry's ``TraceIdRatioBased`` for ``ratio``."""
    return round(ratio * (_TRACE_ID_LIMIT + 1))


def ratio_keeps(trace_id: int, ratio: float) -> bool:
    """Whether the trace-id ratio rule keeps ``trace_id`` (lower 64 bits < bound)."""
    return trace_id & _TRACE_ID_LIMIT < ratio_bound(ratio)


class ErrorBiasedSampler(Sampler):
    """Records every span; sets *sampled* as ``ParentBased(TraceIdRatioBased(ratio))``.

    Recording everything lets the processor keep errors and slow traces whose sampled
    flag is unset; the flag itself carries the head decision that other services share.
    """

    def __init__(self, ratio: float) -> None:
        self._ratio = ratio
        self._bound = ratio_bound(ratio)

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        parent = get_current_span(parent_context).get_span_context()
        if parent.is_valid:
            state = parent.trace_state
            if parent.trace_flags.sampled:
                return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, state)
            if not parent.is_remote:
                return SamplingResult(Decision.RECORD_ONLY, attributes, state)
        else:
            state = None
        if trace_id & _TRACE_ID_LIMIT < self._bound:
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, state)
        return SamplingResult(Decision.RECORD_ONLY, attributes, state)

    def get_description(self) -> str:
        return f"ErrorBiasedSampler{{ratio={self._ratio}}}"


@dataclass(frozen=True)
class SamplingLimits:
    """Bounds of the tail-sampling buffer; what overflows is dropped and counted."""

    max_traces: int = 10_000
    max_spans_per_trace: int = 1_000
    max_age_s: float = 60.0
    max_decisions: int = 50_000


@dataclass
class _Pending:
    spans: list[ReadableSpan] = field(default_factory=list)
    error: bool = False
    created: float = 0.0
    overflowed: int = 0


def _is_error(span: ReadableSpan) -> bool:
    if span.status.status_code is StatusCode.ERROR:
        return True
    attrs = span.attributes
    if attrs:
        status = attrs.get("http.response.status_code")
        if isinstance(status, int) and status >= 500:
            return True
    return False


Export = Callable[[Sequence[ReadableSpan]], None]
Count = Callable[[str, int], None]


class TailSamplingProcessor(SpanProcessor):
    """Buffers spans per trace and hands kept traces to ``export``.

    ``mode="collector"`` exports every span at once and leaves the decision to an
    OpenTelemetry Collector (needed when the error can happen in another service).
    """

    def __init__(
        self,
        export: Export,
        *,
        slow_threshold_s: float,
        limits: SamplingLimits | None = None,
        mode: str = "local",
        on_drop: Count | None = None,
        on_decision: Count | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._export = export
        self._slow_ns = int(slow_threshold_s * 1e9)
        self._limits = limits or SamplingLimits()
        self._collector_mode = mode == "collector"
        self._on_drop = on_drop or (lambda reason, n: None)
        self._on_decision = on_decision or (lambda decision, n: None)
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        self._decided: OrderedDict[int, bool] = OrderedDict()
        # Traces whose request span is open and has children: their decision is remembered
        # for children that end late. A request without children leaves no trace here.
        self._watched: OrderedDict[int, None] = OrderedDict()
        # Traces a downstream service said it keeps (its ``trace`` server-timing metric),
        # not decided yet here: they are kept too, so the trace arrives whole.
        self._downstream: OrderedDict[int, None] = OrderedDict()
        # Decisions are counted here under the lock and handed to ``on_decision`` in bulk.
        self._decisions: dict[str, int] = {}
        self._uncounted = 0

    # -- SpanProcessor contract -------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """A span started under a local parent: make sure its trace's decision will be known.

        A child of a request span that is still open marks the trace *watched*, so the
        decision taken when the request ends is remembered for the child. A child started
        after its request span ended takes the decision stored on that span.
        """
        parent = span.parent
        if parent is None or parent.is_remote or self._collector_mode:
            return
        trace_id = parent.trace_id
        if trace_id in self._decided or trace_id in self._watched:
            return
        parent_span = get_current_span(parent_context)
        kept = getattr(parent_span, "kept", None)
        with self._lock:
            if kept is not None:
                self._remember_locked(trace_id, kept)
            elif getattr(parent_span, "end_time", 0) is None:
                self._watched[trace_id] = None
                if len(self._watched) > self._limits.max_traces:
                    self._watched.popitem(last=False)

    def on_end(self, span: ReadableSpan) -> None:
        ctx = span.context
        if ctx is None:
            return
        if self._collector_mode:
            self._export((span,))
            return
        trace_id = ctx.trace_id
        parent = span.parent
        is_local_root = parent is None or parent.is_remote
        to_export: list[ReadableSpan] | None = None
        with self._lock:
            decided = self._decided.get(trace_id)
            if decided is not None:
                # The root was decided already: a late span follows that decision.
                if decided:
                    to_export = [span]
            else:
                pending = self._pending.get(trace_id)
                if pending is None:
                    to_export = self._expire_locked()
                    pending = _Pending(created=self._clock())
                    if not is_local_root:
                        if len(self._pending) >= self._limits.max_traces:
                            # No room to wait for the root: this span is lost, counted.
                            self._on_drop("buffer_full", 1)
                            pending = None
                        else:
                            self._pending[trace_id] = pending
                if pending is not None:
                    if not pending.error and _is_error(span):
                        pending.error = True
                    self._buffer_locked(pending, span)
                    if is_local_root:
                        self._pending.pop(trace_id, None)
                        keep = self._decide_root(span, pending.error, trace_id=trace_id)
                        self._remember_locked(trace_id, keep)
                        self._watched.pop(trace_id, None)
                        self._flush_counts_locked()
                        if keep:
                            to_export = (to_export or []) + pending.spans
        self._export_outside_lock(to_export)

    def on_root_end(
        self,
        span: ReadableSpan,
        error: bool,
        trace_id: int | None = None,
        sampled: bool | None = None,
    ) -> bool:
        """The request's server span ended (a local root): decide its trace now.

        The common case — no other span of the trace seen — takes no buffer entry and
        looks nothing else up. ``error`` is the middleware's verdict (5xx or an unhandled
        exception). The server span factory passes the trace id and the sampled flag it
        knows, which spares reading them from the span context. Returns whether the
        trace is kept (exemplars link only to kept traces).
        """
        if trace_id is None:
            ctx = span.context
            if ctx is None:
                return False
            trace_id = ctx.trace_id
        if self._collector_mode:
            self._export((span,))
            return False
        if not error:
            status = span.status
            error = status is not UNSET_STATUS and status.status_code is StatusCode.ERROR
        to_export: Sequence[ReadableSpan] | None = None
        with self._lock:
            if self._pending or trace_id in self._decided or trace_id in self._watched:
                keep, to_export = self._root_end_locked(span, trace_id, error)
            else:  # the common case: nothing else of this trace to look up or expire
                keep = self._decide_root(span, error, sampled, trace_id)
                if keep:
                    to_export = (span,)
            span.kept = keep  # type: ignore[attr-defined]  # for children started later
            if self._uncounted >= _COUNT_BATCH:
                self._flush_counts_locked()
        if to_export:
            self._export(to_export)
        return keep

    def on_root_ends(self, roots: Sequence[tuple[ReadableSpan, int, bool]]) -> list[bool]:
        """:meth:`on_root_end` for request spans that ended without an error the
        middleware saw, given as (span, trace id, sampled), in the order they ended: one
        lock and one hand-over to the exporter for them all. Returns whether each trace
        is kept."""
        if self._collector_mode:
            self._export([span for span, _, _ in roots])
            return [False] * len(roots)
        kept: list[bool] = []
        to_export: list[ReadableSpan] = []
        decided, watched = self._decided, self._watched
        with self._lock:
            for span, trace_id, sampled in roots:
                status = span.status
                error = status is not UNSET_STATUS and status.status_code is StatusCode.ERROR
                if self._pending or trace_id in decided or trace_id in watched:
                    keep, more = self._root_end_locked(span, trace_id, error)
                    if more:
                        to_export.extend(more)
                else:  # the common case, as in on_root_end
                    keep = self._decide_root(span, error, sampled, trace_id)
                    if keep:
                        to_export.append(span)
                span.kept = keep  # type: ignore[attr-defined]
                kept.append(keep)
            if self._uncounted >= _COUNT_BATCH:
                self._flush_counts_locked()
        if to_export:
            self._export(to_export)
        return kept

    def _root_end_locked(
        self, span: ReadableSpan, trace_id: int, error: bool
    ) -> tuple[bool, list[ReadableSpan] | None]:
        """on_root_end when the trace has other spans, a decision or open buffers."""
        to_export: list[ReadableSpan] | None = None
        decided = self._decided.get(trace_id)
        if decided is not None:
            # Another local root of this trace (a call back into this service) decided.
            keep = decided
            if keep:
                to_export = [span]
        else:
            pending = self._pending.pop(trace_id, None) if self._pending else None
            if pending is None:
                keep = self._decide_root(span, error, trace_id=trace_id)
                if keep:
                    to_export = [span]
            else:
                pending.error = pending.error or error
                self._buffer_locked(pending, span)
                keep = self._decide_root(span, pending.error, trace_id=trace_id)
                if keep:
                    to_export = pending.spans
            if self._watched and self._watched.pop(trace_id, False) is None:
                self._remember_locked(trace_id, keep)
        if self._pending:
            expired = self._expire_locked()
            if expired:
                to_export = (to_export or []) + expired
        return keep, to_export

    def _buffer_locked(self, pending: _Pending, span: ReadableSpan) -> None:
        if len(pending.spans) < self._limits.max_spans_per_trace:
            pending.spans.append(span)
        else:
            pending.overflowed += 1
            self._on_drop("trace_too_large", 1)

    def shutdown(self) -> None:
        self.force_flush()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Decide every pending trace now (keep errors and sampled ones) and export them."""
        with self._lock:
            self._flush_counts_locked()
            pending = list(self._pending.items())
            self._pending.clear()
            to_export: list[ReadableSpan] = []
            for trace_id, entry in pending:
                keep = entry.error or any(
                    s.context.trace_flags.sampled for s in entry.spans if s.context is not None
                )
                self._remember_locked(trace_id, keep)
                if keep:
                    to_export.extend(entry.spans)
        self._export_outside_lock(to_export)
        return True

    # -- decisions -----------------------------------------------------------------------

    def kept(self, trace_id: int) -> bool | None:
        """The decision for ``trace_id``: True kept, False dropped, None not decided yet."""
        return self._decided.get(trace_id)

    def mark_downstream_keep(self, trace_id: int) -> None:
        """A service this trace called keeps its part: keep this one's too when its root
        ends (decision ``kept_downstream``). A trace decided already is left as it is."""
        if self._collector_mode or trace_id in self._decided:
            return
        with self._lock:
            self._downstream[trace_id] = None
            if len(self._downstream) > self._limits.max_traces:
                self._downstream.popitem(last=False)

    @property
    def exports_every_span(self) -> bool:
        """Collector mode: every span is exported, whatever the decisions here say."""
        return self._collector_mode

    @property
    def slow_ns(self) -> int:
        """A request span at least this long keeps its trace (``kept_slow``)."""
        return self._slow_ns

    @property
    def trace_tables(self) -> tuple[Sized, ...]:
        """What is held here per trace: buffered spans, remembered decisions, watched
        request spans and downstream keeps. While all four are empty, no trace is known
        (:meth:`knows_trace`), which a caller can see without a call."""
        return (self._pending, self._decided, self._watched, self._downstream)

    def knows_trace(self, trace_id: int) -> bool:
        """Whether anything of the trace is held here (read without the lock: a
        snapshot). The request span of a trace not known here that ends without an
        error is kept only when it is sampled or slow: the decision of
        :meth:`on_root_ends`' common case."""
        return (
            trace_id in self._pending
            or trace_id in self._decided
            or trace_id in self._watched
            or trace_id in self._downstream
        )

    def keeps_so_far(self, trace_id: int) -> bool:
        """Whether what the trace showed so far keeps it whatever else happens: an error
        span ended, or a downstream service keeps it (read without the lock: a snapshot)."""
        if self._collector_mode:
            return True
        if self._downstream and trace_id in self._downstream:
            return True
        pending = self._pending.get(trace_id) if self._pending else None
        return pending is not None and pending.error

    def _decide_root(
        self,
        root: ReadableSpan,
        error: bool,
        sampled: bool | None = None,
        trace_id: int | None = None,
    ) -> bool:
        if error:
            decision = "kept_error"
        else:
            start, end = root.start_time, root.end_time
            if sampled is None:
                ctx = root.context
                sampled = ctx is not None and bool(ctx.trace_flags & _SAMPLED)
            if start is not None and end is not None and end - start >= self._slow_ns:
                decision = "kept_slow"
            elif sampled:
                decision = "kept_sampled"
            elif self._downstream and trace_id in self._downstream:
                decision = "kept_downstream"
            else:
                decision = "dropped"
        if self._downstream and trace_id is not None:
            self._downstream.pop(trace_id, None)
        decisions = self._decisions
        decisions[decision] = decisions.get(decision, 0) + 1
        self._uncounted += 1
        return decision != "dropped"

    def flush_counts(self) -> None:
        """Hand the decisions counted since the last call to ``on_decision`` (a scrape does)."""
        with self._lock:
            self._flush_counts_locked()

    def _flush_counts_locked(self) -> None:
        decisions, self._decisions, self._uncounted = self._decisions, {}, 0
        for decision, n in decisions.items():
            self._on_decision(decision, n)

    def _remember_locked(self, trace_id: int, keep: bool) -> None:
        self._decided[trace_id] = keep
        if len(self._decided) > self._limits.max_decisions:
            self._decided.popitem(last=False)

    def _expire_locked(self) -> list[ReadableSpan] | None:
        """Evict traces whose root never ended within ``max_age_s`` (kept if they failed)."""
        if not self._pending:
            return None
        deadline = self._clock() - self._limits.max_age_s
        out: list[ReadableSpan] | None = None
        while self._pending:
            trace_id, oldest = next(iter(self._pending.items()))
            if oldest.created > deadline:
                break
            self._pending.popitem(last=False)
            keep = oldest.error
            self._remember_locked(trace_id, keep)
            if keep:
                out = (out or []) + oldest.spans
            else:
                self._on_drop("expired", len(oldest.spans))
        return out

    def _export_outside_lock(self, spans: Sequence[ReadableSpan] | None) -> None:
        if spans:
            self._export(spans)

    # -- introspection for tests and doctor -------------------------------------------------

    def pending_traces(self) -> int:
        return len(self._pending)

    def pending_spans(self) -> int:
        with self._lock:
            return sum(len(p.spans) for p in self._pending.values())
