from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    Status,
    StatusCode,
    TraceFlags,
)

from devkit.tracing.sampling import (
    ErrorBiasedSampler,
    SamplingLimits,
    TailSamplingProcessor,
    ratio_keeps,
)


class Sink:
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def __call__(self, spans: Sequence[ReadableSpan]) -> None:
        self.spans.extend(spans)

    def trace_ids(self) -> set[int]:
        return {s.context.trace_id for s in self.spans if s.context is not None}


def make(
    ratio: float = 0.0,
    slow_s: float = 10.0,
    limits: SamplingLimits | None = None,
    mode: str = "local",
    clock: list[float] | None = None,
) -> tuple[trace.Tracer, TailSamplingProcessor, Sink, Counter[str], Counter[str]]:
    sink = Sink()
    drops: Counter[str] = Counter()
    decisions: Counter[str] = Counter()
    t = clock if clock is not None else [0.0]
    processor = TailSamplingProcessor(
        sink,
        slow_threshold_s=slow_s,
        limits=limits,
        mode=mode,
        on_drop=lambda r, n: drops.update({r: n}),
        on_decision=lambda d, n: decisions.update({d: n}),
        clock=lambda: t[0],
    )
    provider = TracerProvider(sampler=ErrorBiasedSampler(ratio))
    provider.add_span_processor(processor)
    return provider.get_tracer("t"), processor, sink, drops, decisions


def remote_parent(trace_id: int, sampled: bool) -> trace.Context:  # type: ignore[name-defined]
    ctx = SpanContext(
        trace_id,
        0x1234,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else 0),
    )
    return trace.set_span_in_context(NonRecordingSpan(ctx))


def test_ratio_rule_matches_opentelemetry_trace_id_ratio_based() -> None:
    rng = random.Random(7)
    for ratio in (0.0, 0.1, 0.5, 0.999, 1.0):
        stock = ParentBased(TraceIdRatioBased(ratio))
        ours = ErrorBiasedSampler(ratio)
        for _ in range(2000):
            tid = rng.getrandbits(128) or 1
            expected = stock.should_sample(None, tid, "x").decision.is_sampled()
            assert ratio_keeps(tid, ratio) is expected
            assert ours.should_sample(None, tid, "x").decision.is_sampled() is expected
            # every span is recorded, sampled or not
            assert ours.should_sample(None, tid, "x").decision.is_recording()


def test_sampler_honours_parent_flags() -> None:
    sampler = ErrorBiasedSampler(0.0)
    assert sampler.should_sample(remote_parent(5, True), 5, "x").decision.is_sampled()
    unsampled = sampler.should_sample(remote_parent(5, False), 5, "x")
    assert unsampled.decision.is_recording() and not unsampled.decision.is_sampled()
    # an unsampled remote parent still gets the ratio rule
    assert (
        ErrorBiasedSampler(1.0).should_sample(remote_parent(5, False), 5, "x").decision.is_sampled()
    )


def test_successful_trace_dropped_error_kept() -> None:
    tracer, processor, sink, _drops, decisions = make(ratio=0.0)
    with tracer.start_as_current_span("ok-root"), tracer.start_as_current_span("child"):
        pass
    assert sink.spans == []
    with tracer.start_as_current_span("err-root"):
        with tracer.start_as_current_span("child") as child:
            child.set_status(Status(StatusCode.ERROR))
        with tracer.start_as_current_span("sibling"):
            pass
    assert [s.name for s in sink.spans] == ["child", "sibling", "err-root"]
    assert decisions == {"dropped": 1, "kept_error": 1}
    assert processor.pending_traces() == 0


def test_http_5xx_attribute_counts_as_error() -> None:
    tracer, _p, sink, _d, decisions = make()
    with tracer.start_as_current_span("root") as root:
        root.set_attribute("http.response.status_code", 503)
    assert len(sink.spans) == 1 and decisions["kept_error"] == 1


def test_slow_root_kept() -> None:
    tracer, _p, sink, _d, decisions = make(slow_s=0.2)
    span = tracer.start_span("slow", start_time=1_000_000_000)
    span.end(end_time=1_000_000_000 + 250_000_000)
    fast = tracer.start_span("fast", start_time=1_000_000_000)
    fast.end(end_time=1_000_000_000 + 150_000_000)
    assert [s.name for s in sink.spans] == ["slow"]
    assert decisions == {"kept_slow": 1, "dropped": 1}


def test_sampled_parent_kept_and_ratio_decides_the_rest() -> None:
    tracer, _p, sink, _d, decisions = make(ratio=0.25)
    rng = random.Random(3)
    ids = [rng.getrandbits(128) for _ in range(400)]
    for tid in ids:
        with tracer.start_as_current_span("root", context=remote_parent(tid, False)):
            pass
    assert sink.trace_ids() == {t for t in ids if ratio_keeps(t, 0.25)}
    before = len(sink.spans)
    with tracer.start_as_current_span("root", context=remote_parent(ids[0] ^ 1, True)):
        pass
    assert len(sink.spans) == before + 1
    assert decisions["kept_sampled"] == len(sink.spans)


def test_late_spans_follow_the_decision() -> None:
    tracer, _p, sink, _d, _dec = make(ratio=0.0)
    # kept trace: a child that ends after its root is still exported
    root = tracer.start_span("root")
    ctx = trace.set_span_in_context(root)
    late_child = tracer.start_span("late", context=ctx)
    root.set_status(Status(StatusCode.ERROR))
    root.end()
    late_child.end()
    assert [s.name for s in sink.spans] == ["root", "late"]
    # dropped trace: a late child is not exported
    root2 = tracer.start_span("root2")
    late2 = tracer.start_span("late2", context=trace.set_span_in_context(root2))
    root2.end()
    late2.end()
    assert "late2" not in [s.name for s in sink.spans]


def test_buffer_is_bounded_with_100k_unfinished_traces() -> None:
    limits = SamplingLimits(max_traces=1000, max_spans_per_trace=5, max_age_s=60)
    tracer, processor, _sink, drops, _dec = make(limits=limits)
    roots = [tracer.start_span("root") for _ in range(100_000)]
    for root in roots:
        tracer.start_span("child", context=trace.set_span_in_context(root)).end()
    assert processor.pending_traces() == 1000
    assert drops["buffer_full"] == 99_000
    for root in roots[:10]:
        root.end()


def test_spans_per_trace_bounded() -> None:
    limits = SamplingLimits(max_spans_per_trace=3)
    tracer, _p, sink, drops, _dec = make(limits=limits)
    with tracer.start_as_current_span("root") as root:
        for _ in range(10):
            with tracer.start_as_current_span("child"):
                pass
        root.set_status(Status(StatusCode.ERROR))
    assert len(sink.spans) == 3
    assert drops["trace_too_large"] == 8


def test_expired_traces_evicted_errors_kept() -> None:
    clock = [0.0]
    tracer, processor, sink, drops, _dec = make(limits=SamplingLimits(max_age_s=10), clock=clock)
    orphan_root = tracer.start_span("never-ends")
    tracer.start_span("child", context=trace.set_span_in_context(orphan_root)).end()
    failing_root = tracer.start_span("never-ends-2")
    failed = tracer.start_span("failed", context=trace.set_span_in_context(failing_root))
    failed.set_status(Status(StatusCode.ERROR))
    failed.end()
    assert processor.pending_traces() == 2
    clock[0] = 11.0
    with tracer.start_as_current_span("new-root"):
        tracer.start_span("trigger").end()
    assert processor.pending_traces() == 0
    assert "failed" in [s.name for s in sink.spans]
    assert drops["expired"] == 1


def test_force_flush_keeps_pending_errors() -> None:
    tracer, processor, sink, _d, _dec = make()
    root = tracer.start_span("root")
    child = tracer.start_span("c", context=trace.set_span_in_context(root))
    child.set_status(Status(StatusCode.ERROR))
    child.end()
    assert sink.spans == []
    processor.force_flush()
    assert [s.name for s in sink.spans] == ["c"]


def test_collector_mode_exports_everything() -> None:
    tracer, _p, sink, _d, _dec = make(mode="collector")
    with tracer.start_as_current_span("root"), tracer.start_as_current_span("child"):
        pass
    assert [s.name for s in sink.spans] == ["child", "root"]


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_kept_exposes_decision(ratio: float) -> None:
    tracer, processor, _sink, _d, _dec = make(ratio=ratio)
    with tracer.start_as_current_span("root") as root:
        tid = root.get_span_context().trace_id
        assert processor.kept(tid) is None
    assert processor.kept(tid) is (ratio == 1.0)


@pytest.mark.parametrize("sampled", [False, True])
@pytest.mark.parametrize("slow", [False, True])
@pytest.mark.parametrize("known", ["nothing", "downstream", "error_child", "other_trace_open"])
def test_a_trace_not_known_here_is_decided_by_its_request_span_alone(
    sampled: bool, slow: bool, known: str
) -> None:
    """What the WSGI adapter reads when a request's books wait (``knows_trace``, the
    slow threshold, the sampled flag) says what the decision taken when its span ends
    will be, for every reason to keep a trace."""
    tracer, processor, _, _, _ = make(slow_s=0.5)
    trace_id = 0xABC
    assert not any(processor.trace_tables)
    if known == "downstream":
        processor.mark_downstream_keep(trace_id)
    elif known in ("error_child", "other_trace_open"):
        parent = SpanContext(
            trace_id if known == "error_child" else trace_id + 1, 7, is_remote=False
        )
        ctx = trace.set_span_in_context(NonRecordingSpan(parent))
        with tracer.start_as_current_span("child", context=ctx) as child:
            child.set_status(Status(StatusCode.ERROR))
    assert any(processor.trace_tables) is (known != "nothing")
    duration_ns = 600_000_000 if slow else 100_000_000
    predicted_drop = not (
        sampled or duration_ns >= processor.slow_ns or processor.knows_trace(trace_id)
    )
    root = ReadableSpan(
        name="GET /",
        context=SpanContext(
            trace_id, 9, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED * sampled)
        ),
        start_time=1_000,
        end_time=1_000 + duration_ns,
    )
    (kept,) = processor.on_root_ends([(root, trace_id, sampled)])
    assert predicted_drop is (not kept)
    assert predicted_drop is (not sampled and not slow and known in ("nothing", "other_trace_open"))


def test_collector_mode_says_it_exports_every_span() -> None:
    _, processor, _, _, _ = make(mode="collector")
    assert processor.exports_every_span
    _, processor, _, _, _ = make()
    assert not processor.exports_every_span
