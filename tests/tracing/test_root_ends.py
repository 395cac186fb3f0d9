"""Request spans ended in a batch (``ServerSpanFactory.end_requests``, the tail sampler's
``on_root_ends``) decide, export and count exactly as when they end one by one."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace.propagation import set_span_in_context
from request_record import record, start_request

from devkit.tracing._span import ServerSpan, ServerSpanFactory
from devkit.tracing.sampling import ErrorBiasedSampler, TailSamplingProcessor

SLOW_NS = 50_000_000


class Setup:
    """A factory over a real tail sampler, as ``init()`` wires them."""

    def __init__(self, mode: str = "local") -> None:
        self.exported: list[ReadableSpan] = []
        self.decisions: Counter[str] = Counter()
        self.processor = TailSamplingProcessor(
            self.exported.extend,
            slow_threshold_s=SLOW_NS / 1e9,
            mode=mode,
            on_decision=lambda d, n: self.decisions.update({d: n}),
        )
        self.factory = ServerSpanFactory(
            ratio=0.25,
            resource=lambda: Resource.create({}),
            on_end=self.processor.on_end,
            on_root_end=self.processor.on_root_end,
            on_root_ends=self.processor.on_root_ends,
        )
        provider = TracerProvider(sampler=ErrorBiasedSampler(0.0))
        provider.add_span_processor(self.processor)
        self.tracer = provider.get_tracer("t")


def _requests(setup: Setup, n: int) -> list[tuple[ServerSpan, int]]:
    """``n`` request spans of every kind a batch meets, with their end times: sampled or
    not, slow, failed by the app, renamed, kept downstream, with an error child pending,
    a second root of a trace decided already, and one that ended before the batch."""
    spans: list[tuple[ServerSpan, int]] = []
    for i in range(n):
        parent = spans[i - 1][0].context if i % 11 == 10 else None  # a call back in
        span = start_request(setup.factory, path=f"/p/{i % 5}", parent=parent)
        req = record(span)
        req.route, req.status, req.error_type = f"/p/{i % 5}", 200, None
        end = span.start_time + (SLOW_NS * 2 if i % 7 == 3 else 1_000)
        if i % 9 == 4:
            span.set_status(Status(StatusCode.ERROR, "recovered"))
        if i % 13 == 6:
            span.update_name("renamed")
        if i % 8 == 5:
            setup.processor.mark_downstream_keep(req.trace_id)
        if i % 10 == 7:  # a child that failed, ended before its request
            child = setup.tracer.start_span("child", context=set_span_in_context(span))
            child.set_status(Status(StatusCode.ERROR))
            child.end()
        if i % 12 == 9:
            setup.factory.end_request(span, end)
        spans.append((span, end))
    return spans


def _outcome(setup: Setup, kept: Sequence[bool]) -> tuple[Any, ...]:
    exported = sorted((s.name, s.context.span_id % 1000) for s in setup.exported)
    return list(kept), exported, dict(setup.decisions)


@pytest.mark.parametrize("mode", ["local", "collector"])
def test_a_batch_decides_as_requests_one_by_one(mode: str) -> None:
    import random

    state = random.getstate()
    one, batch = Setup(mode), Setup(mode)
    random.seed(7)
    singles = _requests(one, 60)
    random.seed(7)
    together = _requests(batch, 60)
    random.setstate(state)

    kept_one = [one.factory.end_request(span, end) for span, end in singles]
    kept_batch = batch.factory.end_requests(together)
    for setup in (one, batch):
        setup.processor.flush_counts()

    assert _outcome(batch, kept_batch) == _outcome(one, kept_one)
    if mode == "local":
        assert set(one.decisions) >= {
            "kept_error",
            "kept_slow",
            "kept_sampled",
            "kept_downstream",
            "dropped",
        }
        assert [span.name for span, _ in together] == [span.name for span, _ in singles]
        assert all(span.kept is keep for (span, _), keep in zip(together, kept_batch, strict=True))


def test_a_processor_without_a_batch_method_gets_each_span() -> None:
    ended: list[Any] = []
    factory = ServerSpanFactory(
        ratio=1.0, resource=lambda: Resource.create({}), on_end=ended.append
    )
    spans = [(start_request(factory), 0) for _ in range(3)]
    for span, _ in spans:
        record(span).route = "/"
    spans = [(span, span.start_time + 5) for span, _ in spans]

    assert factory.end_requests(spans) == [False, False, False]
    assert ended == [span for span, _ in spans]
    assert all(span.end_time == end for span, end in spans)
