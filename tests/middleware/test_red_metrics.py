"""RedMetrics writes through the label children's value objects: same samples as the API."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from devkit import metrics as metrics_module
from devkit.metrics import DEFAULT_BUCKETS, RedMetrics

DURATIONS = [0.0, 0.001, 0.005, 0.0050001, 0.3, 0.29999, 10.0, 10.5, 1e9, *DEFAULT_BUCKETS]


def samples(registry: CollectorRegistry, metric: str) -> dict[tuple[str, tuple[Any, ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for m in registry.collect()
        if m.name == metric
        for s in m.samples
        if not s.name.endswith("_created")
    }


def test_observe_matches_the_public_api() -> None:
    registry = CollectorRegistry()
    red = RedMetrics(registry, buckets=DEFAULT_BUCKETS)
    reference = CollectorRegistry()
    labels = ("method", "route", "status_code")
    requests = Counter("http_requests_total", "r", labels, registry=reference)
    duration = Histogram(
        "http_request_duration_seconds", "d", labels, buckets=DEFAULT_BUCKETS, registry=reference
    )
    for d in DURATIONS:
        red.observe("GET", "/x", 200, d, False, None)
        requests.labels("GET", "/x", "200").inc()
        duration.labels("GET", "/x", "200").observe(d)
    assert samples(registry, "http_request_duration_seconds") == samples(
        reference, "http_request_duration_seconds"
    )
    assert samples(registry, "http_requests") == samples(reference, "http_requests")


def test_in_progress_adder_moves_the_gauge() -> None:
    registry = CollectorRegistry()
    red = RedMetrics(registry)
    add = red.in_progress_child("GET")
    add(1.0)
    add(1.0)
    assert registry.get_sample_value("http_requests_in_progress", {"method": "GET"}) == 2.0
    add(-1.0)
    assert registry.get_sample_value("http_requests_in_progress", {"method": "GET"}) == 1.0


def test_without_prometheus_internals_the_public_api_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Opaque:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def inc(self, amount: float = 1) -> None:
            self.inner.inc(amount)

        def observe(self, amount: float) -> None:
            self.inner.observe(amount)

    real_adder = metrics_module._adder
    real_hist = metrics_module._histogram_adders
    monkeypatch.setattr(metrics_module, "_adder", lambda child: real_adder(Opaque(child)))
    monkeypatch.setattr(metrics_module, "_histogram_adders", lambda c: real_hist(Opaque(c)))
    registry = CollectorRegistry()
    red = RedMetrics(registry)
    red.observe("GET", "/x", 200, 0.2, False, None)
    red.in_progress_child("GET")(1.0)
    assert (
        registry.get_sample_value(
            "http_request_duration_seconds_bucket",
            {"method": "GET", "route": "/x", "status_code": "200", "le": "0.25"},
        )
        == 1.0
    )
    assert (
        registry.get_sample_value(
            "http_requests_total", {"method": "GET", "route": "/x", "status_code": "200"}
        )
        == 1.0
    )
    assert registry.get_sample_value("http_requests_in_progress", {"method": "GET"}) == 1.0
