"""Acceptance of the HTTP middleware: uvicorn serving a FastAPI app that only calls init()."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from servers import OTLPReceiver, Server, attributes, samples, value

pytestmark = pytest.mark.integration

# uvicorn closes a connection after an unhandled exception: no reuse across requests.
NO_KEEPALIVE = httpx.Limits(max_keepalive_connections=0)
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def test_red_metrics_are_exact_and_bounded(server: Server) -> None:
    with httpx.Client(base_url=server.url, limits=NO_KEEPALIVE) as client:
        for item in (1, 2, 3, 42, 42):
            assert client.get(f"/items/{item}").status_code == 200
        assert client.get("/no/such/path/123").status_code == 404
        assert client.get("/boom").status_code == 500
        assert client.get("/unavailable").status_code == 503
        assert client.request("BREW", "/items/1").status_code in (405, 501)
        text = client.get("/metrics").text

    assert (
        value(
            text, "http_requests_total", method="GET", route="/items/{item_id}", status_code="200"
        )
        == 5
    )
    assert (
        value(text, "http_requests_total", method="GET", route="<unmatched>", status_code="404")
        == 1
    )
    assert (
        value(text, "http_requests_errors_total", method="GET", route="/boom", status_code="500")
        == 1
    )
    assert (
        value(
            text,
            "http_requests_errors_total",
            method="GET",
            route="/unavailable",
            status_code="503",
        )
        == 1
    )
    assert (
        value(
            text,
            "http_requests_errors_total",
            method="GET",
            route="/items/{item_id}",
            status_code="200",
        )
        == 0
    )
    assert (
        value(
            text,
            "http_request_duration_seconds_count",
            method="GET",
            route="/items/{item_id}",
            status_code="200",
        )
        == 5
    )
    routes = {dict(labels).get("route") for (_, labels) in samples(text)}
    assert "/no/such/path/123" not in routes and "/items/42" not in routes
    methods = {dict(labels).get("method") for (_, labels) in samples(text)} - {None}
    assert "BREW" not in methods and "_OTHER" in methods
    # The probes and /metrics itself are not counted.
    assert "/metrics" not in routes and "<unmatched>" in routes
    assert 'le="0.3"' in text


def test_openmetrics_negotiation_carries_exemplars(server: Server) -> None:
    with httpx.Client(base_url=server.url, limits=NO_KEEPALIVE) as client:
        client.get("/items/7")
        classic = client.get("/metrics")
        om = client.get("/metrics", headers={"Accept": OPENMETRICS})
    assert classic.headers["content-type"].startswith("text/plain")
    assert "# {trace_id=" not in classic.text
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert re.search(
        r"http_request_duration_seconds_bucket\{.*\} \d+(\.\d+)? # "
        r'\{trace_id="[0-9a-f]{32}"\}',
        om.text,
    )
    assert om.text.rstrip().endswith("# EOF")


def test_correlation_id_echo_and_replacement(server: Server) -> None:
    with httpx.Client(base_url=server.url, limits=NO_KEEPALIVE) as client:
        ok = client.get("/items/5", headers={"X-Correlation-ID": "abc-123.DEF:9_z"})
        assert ok.headers["x-correlation-id"] == "abc-123.DEF:9_z"
        rid = client.get("/items/5", headers={"X-Request-ID": "req-77"})
        assert rid.headers["x-correlation-id"] == "req-77"
        for bad in (b"has space", b"x" * 300, "caf\u00e9".encode(), b"", b"a\tb"):
            r = client.get("/items/5", headers={"X-Correlation-ID": bad})
            new = r.headers["x-correlation-id"]
            assert re.fullmatch(r"[0-9a-f]{32}", new)


def _records_for(server: Server, cid: str) -> list[dict[str, Any]]:
    return [r for r in server.json_lines() if r.get("correlation_id") == cid]


def _wait_records(server: Server, cid: str, n: int) -> list[dict[str, Any]]:
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = _records_for(server, cid)
        if len(records) >= n:
            return records
        time.sleep(0.05)
    return _records_for(server, cid)


def test_access_and_app_logs_share_correlation_and_trace(server: Server) -> None:
    httpx.get(server.url + "/items/9", headers={"X-Correlation-ID": "corr-items-9"})
    app_log, access = _wait_records(server, "corr-items-9", 2)
    assert app_log["message"] == "item fetched" and app_log["item_id"] == 9
    assert access["message"] == "request completed"
    assert access["logger"] == "devkit.access" and access["level"] == "info"
    assert access["method"] == "GET" and access["route"] == "/items/{item_id}"
    assert access["path"] == "/items/9" and access["status_code"] == 200
    assert isinstance(access["duration_ms"], float | int)
    assert re.fullmatch(r"[0-9a-f]{32}", access["trace_id"])
    assert app_log["trace_id"] == access["trace_id"]


@pytest.mark.parametrize(
    ("path", "cid", "message"),
    [
        ("/sync/3", "corr-sync", "sync endpoint in the thread pool"),
        ("/task", "corr-task", "inside a child task"),
        ("/stock", "corr-handler", "out of stock handled"),
    ],
)
def test_context_survives_threadpool_tasks_and_exception_handlers(
    server: Server, path: str, cid: str, message: str
) -> None:
    httpx.get(server.url + path, headers={"X-Correlation-ID": cid})
    records = _wait_records(server, cid, 2)
    app_record = next(r for r in records if r["message"] == message)
    access = next(r for r in records if r["message"] == "request completed")
    assert app_record["trace_id"] == access["trace_id"] != "0" * 32
    assert app_record["span_id"] == access["span_id"]


def test_levels_by_status_and_exception_logged(server: Server) -> None:
    httpx.get(server.url + "/boom", headers={"X-Correlation-ID": "corr-boom"})
    httpx.get(server.url + "/nope", headers={"X-Correlation-ID": "corr-404"})
    (boom,) = [
        r for r in _wait_records(server, "corr-boom", 1) if r["message"] == "request completed"
    ]
    assert boom["level"] == "error" and boom["status_code"] == 500
    assert boom["error"]["type"] == "RuntimeError"
    assert "ada@example.com" not in server.output()
    (missing,) = [
        r for r in _wait_records(server, "corr-404", 1) if r["message"] == "request completed"
    ]
    assert missing["level"] == "warn" and missing["route"] == "<unmatched>"


def test_query_values_are_redacted_in_access_log(server: Server) -> None:
    httpx.get(server.url + "/items/1?token=s3cr3t&q=ada", headers={"X-Correlation-ID": "corr-q"})
    access = next(
        r for r in _wait_records(server, "corr-q", 2) if r["message"] == "request completed"
    )
    assert access["path"] == "/items/1?token=[REDACTED]&q=[REDACTED]"
    assert "s3cr3t" not in server.output()


def test_probes_and_metrics_are_not_logged(server: Server) -> None:
    httpx.get(server.url + "/metrics", headers={"X-Correlation-ID": "corr-metrics"})
    httpx.get(server.url + "/healthz/live", headers={"X-Correlation-ID": "corr-live"})
    httpx.get(server.url + "/items/1", headers={"X-Correlation-ID": "corr-after"})
    _wait_records(server, "corr-after", 2)
    assert _records_for(server, "corr-metrics") == []
    assert _records_for(server, "corr-live") == []
    assert not [r for r in server.json_lines() if r.get("path", "").startswith("/healthz")]


def test_scanner_does_not_add_series(server: Server) -> None:
    with httpx.Client(base_url=server.url, limits=NO_KEEPALIVE) as client:
        before = len(samples(client.get("/metrics").text))
        for i in range(300):
            client.get(f"/wp-admin/{i}/x.php")
        after = len(samples(client.get("/metrics").text))
    # One new <unmatched>/404 series family at most, not 300.
    assert after - before <= 20


def test_concurrent_requests_are_each_counted_logged_and_traced_once(
    server: Server, receiver: OTLPReceiver
) -> None:
    """Under concurrent load devkit does the books of the requests that ended in one loop
    iteration together at its end: none may be lost, doubled or given another's ids."""
    import time
    from collections import Counter
    from concurrent.futures import ThreadPoolExecutor

    route = {"method": "GET", "route": "/items/{item_id}", "status_code": "200"}
    with httpx.Client(base_url=server.url) as client:
        before = samples(client.get("/metrics").text)
    n, clients = 320, 16
    cids = [f"corr-load-{i}" for i in range(n)]

    def load(first: int) -> list[int]:
        with httpx.Client(base_url=server.url) as client:  # one kept-alive connection each
            return [
                client.get(f"/items/{i}", headers={"X-Correlation-ID": cids[i]}).status_code
                for i in range(first, n, clients)
            ]

    with ThreadPoolExecutor(clients) as pool:
        statuses = [s for chunk in pool.map(load, range(clients)) for s in chunk]
    assert statuses == [200] * n
    with httpx.Client(base_url=server.url) as client:
        after = samples(client.get("/metrics").text)

    # The scrape right after the last response counts every request, exactly.
    for name in ("http_requests_total", "http_request_duration_seconds_count"):
        key = (name, frozenset(route.items()))
        assert after[key] - before.get(key, 0.0) == n

    def access_records() -> list[dict[str, Any]]:
        return [
            r
            for r in server.json_lines()
            if r.get("message") == "request completed"
            and str(r.get("correlation_id")).startswith("corr-load-")
        ]

    deadline = time.monotonic() + 10
    while len(access_records()) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    access = access_records()
    assert Counter(r["correlation_id"] for r in access) == Counter(cids)
    app_logs = {
        r["correlation_id"]: r
        for r in server.json_lines()
        if r.get("message") == "item fetched"
        and str(r.get("correlation_id")).startswith("corr-load-")
    }
    for record in access:
        i = int(record["correlation_id"].removeprefix("corr-load-"))
        assert record["path"] == f"/items/{i}" and record["status_code"] == 200
        # Written after the request's context was left: still the request's own trace.
        assert record["trace_id"] == app_logs[record["correlation_id"]]["trace_id"]

    def server_spans(r: OTLPReceiver) -> list[tuple[str, str]]:
        out = []
        for _, span in r.spans():
            cid = attributes(span).get("correlation.id")
            if isinstance(cid, str) and cid.startswith("corr-load-"):
                out.append((cid, span.trace_id.hex()))
        return out

    assert receiver.wait_for(lambda r: len(server_spans(r)) >= n)
    spans = server_spans(receiver)
    assert sorted(spans) == sorted((r["correlation_id"], r["trace_id"]) for r in access)
