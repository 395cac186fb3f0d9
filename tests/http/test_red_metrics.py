"""RedMetrics writes through the label children's value objects: same samples as the API."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from devkit import _compat
from devkit.metrics import DEFAULT_BUCKETS, RedMetrics


def finished(
    method: str,
    route: str,
    status: int,
    duration: float,
    error: bool,
    exemplar: str | None,
    in_progress: Any = None,
) -> SimpleNamespace:
    """A finished request as RedMetrics.observe reads it (the record's fields)."""
    return SimpleNamespace(
        method_label=method,
        route=route,
        status=status,
        duration=duration,
        error=error,
        exemplar=exemplar,
        in_progress=in_progress,
    )


DURATIONS = [0.0, 0.001, 0.005, 0.0050001, 0.3, 0.29999, 10.0, 10.5, 1e9, *DEFAULT_BUCKETS]


def samples(registry: CollectorRegistry, metric: str) -> dict[tuple[str, tuple[Any, ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for m in registry.collect()
        if m.name == metric
        for s in m.samples
        if not s.name.endswith("_created")
    }


def reference_metrics() -> tuple[CollectorRegistry, Counter, Histogram]:
    """The same two metrics written through prometheus-client's public API only."""
    reference = CollectorRegistry()
    labels = ("method", "route", "status_code")
    requests = Counter("http_requests_total", "r", labels, registry=reference)
    duration = Histogram(
        "http_request_duration_seconds", "d", labels, buckets=DEFAULT_BUCKETS, registry=reference
    )
    return reference, requests, duration


def test_observe_matches_the_public_api() -> None:
    registry = CollectorRegistry()
    red = RedMetrics(registry, buckets=DEFAULT_BUCKETS)
    reference, requests, duration = reference_metrics()
    for d in DURATIONS:
        red.observe(finished("GET", "/x", 200, d, False, None))
        requests.labels("GET", "/x", "200").inc()
        duration.labels("GET", "/x", "200").observe(d)
    assert samples(registry, "http_request_duration_seconds") == samples(
        reference, "http_request_duration_seconds"
    )
    assert samples(registry, "http_requests") == samples(reference, "http_requests")


def exemplars(registry: CollectorRegistry) -> dict[tuple[str, tuple[Any, ...]], Any]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): (s.exemplar.labels, s.exemplar.value)
        for m in registry.collect()
        for s in m.samples
        if s.exemplar is not None
    }


def test_kept_traces_store_the_exemplars_the_public_api_stores() -> None:
    registry = CollectorRegistry()
    red = RedMetrics(registry, buckets=DEFAULT_BUCKETS)
    reference, requests, duration = reference_metrics()
    for n, d in enumerate(DURATIONS):
        trace_id = "%032x" % (n + 1)
        red.observe(finished("GET", "/x", 200, d, False, trace_id))
        requests.labels("GET", "/x", "200").inc(1, {"trace_id": trace_id})
        duration.labels("GET", "/x", "200").observe(d, {"trace_id": trace_id})
    got = exemplars(registry)
    assert len(got) > 5  # the counter and several buckets
    assert got == exemplars(reference)
    assert samples(registry, "http_request_duration_seconds") == samples(
        reference, "http_request_duration_seconds"
    )


def test_an_exemplar_added_later_is_the_one_the_public_api_stores() -> None:
    """A request counted first and linked to its kept trace afterwards (WSGI's waiting
    span ends) ends with the samples and exemplars of a count with the exemplar."""
    registry = CollectorRegistry()
    red = RedMetrics(registry, buckets=DEFAULT_BUCKETS)
    reference, requests, duration = reference_metrics()
    for n, d in enumerate(DURATIONS):
        trace_id = "%032x" % (n + 1)
        red.observe(finished("GET", "/x", 200, d, False, None))
        red.add_exemplar(finished("GET", "/x", 200, d, False, trace_id))
        red.add_exemplar(finished("GET", "/x", 200, d, False, None))  # dropped: nothing
        requests.labels("GET", "/x", "200").inc(1, {"trace_id": trace_id})
        duration.labels("GET", "/x", "200").observe(d, {"trace_id": trace_id})
    got = exemplars(registry)
    assert len(got) > 5
    assert got == exemplars(reference)
    assert samples(registry, "http_request_duration_seconds") == samples(
        reference, "http_request_duration_seconds"
    )
    assert samples(registry, "http_requests") == samples(reference, "http_requests")


def test_request_started_moves_the_gauge_and_observe_brings_it_back() -> None:
    registry = CollectorRegistry()
    red = RedMetrics(registry)
    first = red.request_started("GET")
    red.request_started("GET")
    assert registry.get_sample_value("http_requests_in_progress", {"method": "GET"}) == 2.0
    red.observe(finished("GET", "/x", 200, 0.01, False, None, first))
    assert registry.get_sample_value("http_requests_in_progress", {"method": "GET"}) == 1.0


def test_kept_trace_path_also_brings_the_gauge_back_and_attaches_the_exemplar() -> None:
    registry = CollectorRegistry()
    red = RedMetrics(registry)
    started = red.request_started("GET")
    red.observe(finished("GET", "/x", 200, 0.01, False, "ab" * 16, started))
    assert registry.get_sample_value("http_requests_in_progress", {"method": "GET"}) == 0.0
    (requests,) = [m for m in registry.collect() if m.name == "http_requests"]
    (total,) = [s for s in requests.samples if s.name == "http_requests_total"]
    assert total.value == 1.0
    assert total.exemplar is not None and total.exemplar.labels == {"trace_id": "ab" * 16}


def test_concurrent_writers_lose_no_update() -> None:
    """Every write to the values goes through one lock: threads cannot lose an increment."""
    registry = CollectorRegistry()
    red = RedMetrics(registry)
    threads, per_thread = 8, 3000

    def work(n: int) -> None:
        for i in range(per_thread):
            started = red.request_started("GET")
            # every 100th with an exemplar: the public-API writer shares the lock
            trace = "%032x" % (i + 1) if i % 100 == 0 else None
            red.observe(finished("GET", "/x", 200, 0.001 * (n + 1), False, trace, started))

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    labels = {"method": "GET", "route": "/x", "status_code": "200"}
    assert registry.get_sample_value("http_requests_total", labels) == threads * per_thread
    assert (
        registry.get_sample_value("http_request_duration_seconds_count", labels)
        == threads * per_thread
    )
    expected_sum = sum(0.001 * (n + 1) * per_thread for n in range(threads))
    assert registry.get_sample_value("http_request_duration_seconds_sum", labels) == pytest.approx(
        expected_sum
    )
    assert registry.get_sample_value("http_requests_in_progress", {"method": "GET"}) == 0.0


def test_without_prometheus_internals_the_public_api_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_compat, "plain_value", lambda *args: None)
    monkeypatch.setattr(_compat, "plain_values", lambda *args: None)
    registry = CollectorRegistry()
    red = RedMetrics(registry)
    started = red.request_started("GET")
    red.request_started("GET")
    red.observe(finished("GET", "/x", 200, 0.2, False, None, started))
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


def test_in_progress_is_exposed_as_a_gauge_would_be() -> None:
    """devkit counts requests in progress itself; the exposition is a gauge's."""
    from prometheus_client import Gauge, generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

    registry = CollectorRegistry()
    red = RedMetrics(registry)
    reference = CollectorRegistry()
    gauge = Gauge(
        "http_requests_in_progress", "HTTP requests being served.", ("method",), registry=reference
    )
    get = red.request_started("GET")
    red.request_started("POST")
    red.request_started("GET")
    gauge.labels("GET").inc(2)
    gauge.labels("POST").inc()
    red.observe(finished("GET", "/x", 200, 0.01, False, None, get))
    gauge.labels("GET").dec()

    def family(text: bytes) -> list[bytes]:
        return [line for line in text.splitlines() if b"http_requests_in_progress" in line]

    for encode in (generate_latest, openmetrics):
        assert family(encode(registry)) == family(encode(reference))
    assert registry.get_sample_value("http_requests_in_progress", {"method": "GET"}) == 1.0


def test_build_info_names_the_service_and_its_version(tmp_path: Any) -> None:
    from devkit.metrics import scrape_registry

    labels = {"service": "shop", "version": "1.4.0", "environment": "prod", "devkit_version": "0"}
    registry = CollectorRegistry()
    RedMetrics(registry, build_info=labels)
    assert registry.get_sample_value("devkit_build_info", labels) == 1.0
    # Multiprocess servers serve it beside the merged workers' metrics.
    merged = scrape_registry(
        RedMetrics(CollectorRegistry(), multiprocess_dir=str(tmp_path), build_info=labels)
    )
    assert any(
        s.name == "devkit_build_info" and s.labels == labels
        for metric in merged.collect()
        for s in metric.samples
    )
    assert RedMetrics(CollectorRegistry()).build_info is None
