"""The benchmark harness's pure helpers: summaries, ratios, the gate, the receiver count.

No timing here: the machine is shared and noisy, so only the arithmetic and decisions the
harness makes from numbers are tested, with numbers chosen by the test.
"""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

# benchmarks/ is a top-level package of the repository, not part of the installed wheel.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from benchmarks import report, stats  # noqa: E402
from benchmarks.drivers import batch_sizes  # noqa: E402
from benchmarks.receiver import Receiver  # noqa: E402

BUDGET = {"asgi-starlette": 0.5, "wsgi-flask": 0.5, "logging_min_ratio": 1.0}


def test_summarize_gives_median_min_max_and_count() -> None:
    summary = stats.summarize([30.0, 10.0, 20.0, 1000.0, 25.0])
    assert summary == stats.Summary(median=25.0, minimum=10.0, maximum=1000.0, rounds=5)


def test_summarize_even_count_averages_the_middle_pair() -> None:
    assert stats.summarize([4.0, 1.0, 3.0, 2.0]).median == 2.5


def test_summarize_rejects_no_samples() -> None:
    with pytest.raises(ValueError, match="no samples"):
        stats.summarize([])


def test_overhead_is_difference_of_medians() -> None:
    bare = stats.summarize([10.0, 12.0, 11.0])
    variant = stats.summarize([100.0, 500.0, 111.0])
    assert stats.overhead(variant, bare) == pytest.approx(100.0)


def test_overhead_ratio_against_reference() -> None:
    assert stats.overhead_ratio(50.0, 200.0) == pytest.approx(0.25)
    assert stats.overhead_ratio(300.0, 200.0) == pytest.approx(1.5)


@pytest.mark.parametrize("reference", [0.0, -3.0])
def test_overhead_ratio_is_none_when_reference_adds_nothing(reference: float) -> None:
    assert stats.overhead_ratio(50.0, reference) is None


def test_per_second() -> None:
    assert stats.per_second(4.0) == pytest.approx(250_000.0)
    with pytest.raises(ValueError, match="positive"):
        stats.per_second(0.0)


def test_gate_passes_within_budget() -> None:
    report_ = stats.check_gate(BUDGET, {"asgi-starlette": 0.3, "wsgi-flask": 0.5, "logging": 1.2})
    assert report_.passed
    assert not any(line.startswith("FAIL") for line in report_.lines)


def test_gate_fails_when_overhead_ratio_exceeds_budget() -> None:
    report_ = stats.check_gate(BUDGET, {"asgi-starlette": 0.51, "wsgi-flask": 0.1})
    assert not report_.passed
    assert any("asgi-starlette" in line and "0.51 > budget 0.50" in line for line in report_.lines)


def test_gate_fails_when_logging_throughput_below_minimum() -> None:
    report_ = stats.check_gate(BUDGET, {"logging": 0.9})
    assert not report_.passed
    assert any(line.startswith("FAIL logging") for line in report_.lines)


def test_gate_fails_when_devkit_is_unavailable() -> None:
    reason = "the devkit variant is unavailable: devkit has no attribute 'asgi'"
    report_ = stats.check_gate(BUDGET, {"asgi-starlette": reason, "wsgi-flask": 0.1})
    assert not report_.passed
    assert any("cannot be measured" in line and "asgi" in line for line in report_.lines)


def test_gate_skips_suites_not_run_but_fails_when_nothing_checked() -> None:
    partial = stats.check_gate(BUDGET, {"wsgi-flask": 0.2})
    assert partial.passed
    assert "skip asgi-starlette: not run" in partial.lines

    nothing = stats.check_gate(BUDGET, {"some-other-suite": 0.1})
    assert not nothing.passed


def _doc(devkit: dict[str, Any]) -> dict[str, Any]:
    return {
        "suites": {
            "asgi-starlette": {
                "unit": "us/request",
                "variants": {"bare": {"status": "ok"}, "devkit": devkit},
            },
            "logging": {
                "unit": "records/s",
                "cases": ["plain", "pii"],
                "variants": {
                    "devkit": {
                        "status": "ok",
                        "plain": {"ratio_to_baseline": 2.0},
                        "pii": {"ratio_to_baseline": 0.8},
                    }
                },
            },
        }
    }


def test_gate_outcomes_read_devkit_ratio_and_worst_logging_case() -> None:
    outcomes = report.gate_outcomes(_doc({"status": "ok", "overhead_ratio_to_stack": 0.4}))
    assert outcomes == {"asgi-starlette": 0.4, "logging": 0.8}


def test_gate_outcomes_explain_unavailable_devkit() -> None:
    outcome = report.gate_outcomes(_doc({"status": "unavailable", "reason": "not written"}))
    assert outcome["asgi-starlette"] == "the devkit variant is unavailable: not written"


def test_gate_outcomes_refuse_ratio_without_stack_overhead() -> None:
    outcome = report.gate_outcomes(_doc({"status": "ok", "overhead_ratio_to_stack": None}))
    assert isinstance(outcome["asgi-starlette"], str)


@pytest.mark.parametrize(
    ("total", "expected"), [(10, [1] * 10), (25, [3] * 5 + [2] * 5), (3, [1, 1, 1])]
)
def test_batch_sizes_cover_total(total: int, expected: list[int]) -> None:
    assert batch_sizes(total) == expected
    assert sum(batch_sizes(total)) == total


def test_receiver_counts_bytes_and_spans() -> None:
    pb = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
    request = pb.ExportTraceServiceRequest()
    scope_spans = request.resource_spans.add().scope_spans.add()
    for name in ("a", "b"):
        scope_spans.spans.add().name = name
    body = request.SerializeToString()

    receiver = Receiver().start()
    try:
        post = urllib.request.Request(
            receiver.endpoint + "/v1/traces",
            data=body,
            headers={"Content-Type": "application/x-protobuf"},
        )
        with urllib.request.urlopen(post, timeout=10) as response:
            assert response.status == 200
            assert response.read() == b""
        traffic = receiver.take()
    finally:
        receiver.stop()
    assert (traffic.requests, traffic.bytes, traffic.spans) == (1, len(body), 2)
    assert receiver.take().requests == 0
