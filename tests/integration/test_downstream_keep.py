"""Acceptance of whole traces under local tail sampling: a service keeps its part of a
trace when a service it called keeps its own, over real HTTP between real uvicorn
processes (the W3C trace context server-timing metric)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from servers import OTLPReceiver, attributes, clean_env, free_port, serve, uvicorn_argv

from devkit.tracing.propagation import parse_trace_metric

pytestmark = pytest.mark.integration

#: (mode, depth, kept): what the leaf does and how far it is; kept for a reason only the
#: leaf sees, or not at all.
CASES = [
    ("internal_error", 1, True),  # B recovers from an error: a 200 to A
    ("slow", 1, True),  # B's 150 ms are slow for B (100 ms), not for A (300 ms)
    ("internal_error", 2, True),  # C's error travels two hops: C -> B -> A
    ("ok", 1, False),
    ("ok", 2, False),
]
REPEAT = 3


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    r = OTLPReceiver().start()
    yield r
    r.stop()


def test_a_keep_only_the_callee_can_see_brings_the_whole_trace(
    receiver: OTLPReceiver, tmp_path: Path
) -> None:
    ports = {name: free_port() for name in "abc"}
    common = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "DEVKIT_SAMPLE_SUCCESS_RATIO": "0",
        "DEVKIT_TAIL_SAMPLING": "local",
    }
    envs = {
        "a": clean_env(
            DEVKIT_SERVICE_NAME="a",
            DEVKIT_SLOW_THRESHOLD_MS="300",
            DOWNSTREAM_URL=f"http://127.0.0.1:{ports['b']}",
            **common,
        ),
        "b": clean_env(
            DEVKIT_SERVICE_NAME="b",
            DEVKIT_SLOW_THRESHOLD_MS="100",
            DOWNSTREAM_URL=f"http://127.0.0.1:{ports['c']}",
            **common,
        ),
        "c": clean_env(DEVKIT_SERVICE_NAME="c", **common),
    }
    answers: list[tuple[str, int, bool, httpx.Response]] = []
    with ExitStack() as stack:
        servers = {
            name: stack.enter_context(
                serve(
                    uvicorn_argv("tests.integration.chain_app:app", ports[name]),
                    envs[name],
                    tmp_path,
                    ports[name],
                )
            )
            for name in "cba"
        }
        with httpx.Client(base_url=servers["a"].url, timeout=10) as client:
            for _ in range(REPEAT):
                for mode, depth, kept in CASES:
                    response = client.get("/work", params={"mode": mode, "depth": depth})
                    assert response.status_code == 200
                    answers.append((mode, depth, kept, response))
        for name in "abc":
            assert servers[name].stop(signal.SIGTERM) in (0, -signal.SIGTERM)

    spans = [(attributes(resource)["service.name"], span) for resource, span in receiver.spans()]
    by_trace: dict[str, list[tuple[str, object]]] = {}
    for service, span in spans:
        by_trace.setdefault(span.trace_id.hex(), []).append((service, span))

    expected_kept = set()
    for mode, depth, kept, response in answers:
        metric = parse_trace_metric(response.headers.get_list("server-timing"))
        assert metric is not None
        trace_id, span_id, flags = metric
        trace_hex = "%032x" % trace_id
        # A's answer to its own caller promises what A exports.
        assert bool(flags & 0x01) is kept, (mode, depth)
        if not kept:
            continue
        expected_kept.add(trace_hex)
        trace_spans = by_trace.get(trace_hex, [])
        services = sorted({service for service, _ in trace_spans})
        assert services == sorted("abc"[: depth + 1]), (mode, depth, services)
        # Complete: every parent is in the trace, one root (A's server span, the
        # span the metric names).
        ids = {span.span_id for _, span in trace_spans}  # type: ignore[attr-defined]
        roots = [s for _, s in trace_spans if not s.parent_span_id]  # type: ignore[attr-defined]
        assert len(roots) == 1 and roots[0].span_id.hex() == "%016x" % span_id
        for _, span in trace_spans:
            parent = span.parent_span_id  # type: ignore[attr-defined]
            assert not parent or parent in ids, (mode, depth, span.name)  # type: ignore[attr-defined]
        # A: server and client span; each callee: server (+ client), the leaf's own span.
        per_service = {name: sum(1 for s, _ in trace_spans if s == name) for name in services}
        assert per_service["a"] == 2
        if mode == "internal_error":
            leaf = "abc"[depth]
            assert any(
                span.name == "cache lookup"  # type: ignore[attr-defined]
                for s, span in trace_spans
                if s == leaf
            )
    # Nothing else: the traces without a reason to keep are not exported at all.
    assert set(by_trace) == expected_kept
    assert len(expected_kept) == REPEAT * sum(1 for _, _, kept in CASES if kept)
