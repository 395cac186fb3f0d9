"""Acceptance of the Django integration: the example project behind gunicorn, and in-process.

The project's ``wsgi.py`` only calls ``devkit.init()`` before ``get_wsgi_application()``;
devkit inserts its middleware first. The server run sends all its traffic once and keeps
what it saw, so the exact counts do not depend on test order. The Django test ``Client``
part runs in a subprocess: Django's settings are process-global.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import ROOT, OTLPReceiver, attributes, clean_env, free_port, samples, serve, value

pytestmark = pytest.mark.integration

GUNICORN = Path(sys.executable).parent / "gunicorn"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
ITEMS_ROUTE = "/items/<int:item_id>"
HEX32 = re.compile(r"[0-9a-f]{32}")
TRAFFIC = [
    *((f"/items/{i}", f"item-{n}") for n, i in enumerate((1, 2, 3, 42, 42))),
    ("/no/such/path/123", "unknown-0"),
    ("/items/not-a-number", "unknown-1"),
    ("/boom", "boom-0"),
    ("/boom", "boom-1"),
    ("/stock/7", "stock-0"),
]


def _control_socket_off() -> list[str]:
    # gunicorn >= 25 opens a control socket at a fixed path in $HOME; parallel servers clash.
    from gunicorn.config import KNOWN_SETTINGS

    names = {setting.name for setting in KNOWN_SETTINGS}
    return ["--no-control-socket"] if "control_socket_disable" in names else []


@dataclass
class Run:
    responses: dict[str, httpx.Response]
    replaced: list[httpx.Response]
    metrics: str
    openmetrics: httpx.Response
    records: list[dict[str, Any]]
    output: str
    receiver: OTLPReceiver

    def records_for(self, cid: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("correlation_id") == cid]

    def access(self, cid: str) -> dict[str, Any]:
        (record,) = [r for r in self.records_for(cid) if r["message"] == "request completed"]
        return record

    def span(self, cid: str) -> Any:
        (span,) = [
            span
            for _, span in self.receiver.spans()
            if attributes(span).get("correlation.id") == cid
        ]
        return span


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    receiver = OTLPReceiver().start()
    port = free_port()
    env = clean_env(
        DEVKIT_SERVICE_NAME="shop",
        DEVKIT_SAMPLE_SUCCESS_RATIO="1.0",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
    )
    argv = [
        str(GUNICORN),
        "--workers",
        "1",
        "--bind",
        f"127.0.0.1:{port}",
        *_control_socket_off(),
        "examples.django_app.wsgi:application",
    ]
    tmp = tmp_path_factory.mktemp("django")
    try:
        # Ready once the startup probe passes: that needs devkit.health.mark_started().
        with serve(argv, env, tmp, port, ready_path="/healthz/startup") as server:
            with httpx.Client(base_url=server.url, timeout=10) as client:
                responses = {
                    cid: client.get(path, headers={"X-Correlation-ID": cid})
                    for path, cid in TRAFFIC
                }
                replaced = [
                    client.get("/items/5", headers={"X-Correlation-ID": bad})
                    for bad in ("has space", "x" * 300)
                ]
                client.get("/healthz/live", headers={"X-Correlation-ID": "probe-live"})
                client.get("/metrics", headers={"X-Correlation-ID": "scrape"})
                metrics = client.get("/metrics").text
                openmetrics = client.get("/metrics", headers={"Accept": OPENMETRICS})
            expected = len(TRAFFIC) + len(replaced)
            receiver.wait_for(lambda r: len(r.spans()) >= expected, timeout=20)
            server.stop()
            yield Run(
                responses=responses,
                replaced=replaced,
                metrics=metrics,
                openmetrics=openmetrics,
                records=server.json_lines(),
                output=server.output(),
                receiver=receiver,
            )
    finally:
        receiver.stop()


def test_statuses_and_correlation_id_echo(run: Run) -> None:
    statuses = {cid: r.status_code for cid, r in run.responses.items()}
    assert statuses == {
        "item-0": 200,
        "item-1": 200,
        "item-2": 200,
        "item-3": 200,
        "item-4": 200,
        "unknown-0": 404,
        "unknown-1": 404,
        "boom-0": 500,
        "boom-1": 500,
        "stock-0": 409,
    }
    for cid, response in run.responses.items():
        assert response.headers["x-correlation-id"] == cid
    for response in run.replaced:
        assert HEX32.fullmatch(response.headers["x-correlation-id"])


def test_responses_carry_the_trace_metric_of_their_exported_span(run: Run) -> None:
    from devkit.tracing.propagation import parse_trace_metric

    spans = {span.span_id.hex(): span for _, span in run.receiver.spans()}
    for cid, response in run.responses.items():
        metric = parse_trace_metric(response.headers.get_list("server-timing"))
        assert metric is not None, cid
        trace_id, span_id, flags = metric
        assert flags & 0x01, cid  # the ratio is 1: every trace is kept and exported
        span = spans["%016x" % span_id]
        assert span.trace_id.hex() == "%032x" % trace_id


def test_route_labels_come_from_the_url_pattern(run: Run) -> None:
    text = run.metrics
    get = "GET"
    assert value(text, "http_requests_total", method=get, route=ITEMS_ROUTE, status_code="200") == 7
    assert (
        value(
            text,
            "http_request_duration_seconds_count",
            method=get,
            route=ITEMS_ROUTE,
            status_code="200",
        )
        == 7
    )
    assert (
        value(text, "http_requests_total", method=get, route="<unmatched>", status_code="404") == 2
    )
    assert (
        value(text, "http_requests_errors_total", method=get, route="/boom", status_code="500") == 2
    )
    assert (
        value(
            text,
            "http_requests_total",
            method=get,
            route="/stock/<int:item_id>",
            status_code="409",
        )
        == 1
    )
    assert (
        value(
            text,
            "http_requests_errors_total",
            method=get,
            route="/stock/<int:item_id>",
            status_code="409",
        )
        == 0
    )
    routes = {dict(labels).get("route") for (_, labels) in samples(text)} - {None}
    assert routes == {ITEMS_ROUTE, "/boom", "/stock/<int:item_id>", "<unmatched>"}
    assert "/items/42" not in text and "/no/such/path" not in text
    assert value(text, "http_requests_in_progress", method=get) == 0


def test_openmetrics_negotiation_carries_exemplars(run: Run) -> None:
    assert "# {trace_id=" not in run.metrics
    om = run.openmetrics
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.rstrip().endswith("# EOF")
    exemplars = re.findall(
        r"^http_request_duration_seconds_bucket\{.*\} \d+(?:\.\d+)? "
        r'# \{trace_id="([0-9a-f]{32})"\}',
        om.text,
        re.MULTILINE,
    )
    assert exemplars, om.text
    assert set(exemplars) <= run.receiver.trace_ids()


def test_access_and_app_logs_share_correlation_and_trace(run: Run) -> None:
    access = run.access("item-2")
    assert access["logger"] == "devkit.access" and access["level"] == "info"
    assert access["method"] == "GET" and access["route"] == ITEMS_ROUTE
    assert access["path"] == "/items/3" and access["status_code"] == 200
    assert isinstance(access["duration_ms"], float | int)
    assert HEX32.fullmatch(access["trace_id"]) and access["trace_id"] != "0" * 32
    (app_log,) = [r for r in run.records_for("item-2") if r["message"] == "item fetched"]
    assert app_log["item_id"] == 3
    assert app_log["trace_id"] == access["trace_id"]
    assert app_log["span_id"] == access["span_id"]
    unknown = run.access("unknown-0")
    assert unknown["route"] == "<unmatched>" and unknown["level"] == "warn"


def test_view_exception_recorded_via_process_exception(run: Run) -> None:
    access = run.access("boom-0")
    assert access["level"] == "error" and access["status_code"] == 500
    assert access["route"] == "/boom"
    assert access["error"]["type"] == "RuntimeError"
    assert "ada@example.com" not in run.output
    # Django logs the exception itself, inside devkit's middleware: same trace.
    (django_log,) = [
        r for r in run.records_for("boom-0") if r["message"] == "Internal Server Error: /boom"
    ]
    assert django_log["logger"] == "django.request"
    assert django_log["trace_id"] == access["trace_id"]
    span = run.span("boom-0")
    assert span.status.code == span.status.STATUS_CODE_ERROR
    assert [e.name for e in span.events] == ["exception"]
    assert attributes(span)["error.type"] == "RuntimeError"
    assert span.trace_id.hex() == access["trace_id"]


def test_process_exception_log_carries_the_request_trace(run: Run) -> None:
    access = run.access("stock-0")
    assert access["route"] == "/stock/<int:item_id>" and access["status_code"] == 409
    (handled,) = [r for r in run.records_for("stock-0") if r["message"] == "out of stock handled"]
    assert handled["trace_id"] == access["trace_id"] != "0" * 32
    assert handled["span_id"] == access["span_id"]
    span = run.span("stock-0")
    assert span.status.code != span.status.STATUS_CODE_ERROR


def test_server_spans_named_by_route(run: Run) -> None:
    assert len(run.receiver.spans()) == len(TRAFFIC) + len(run.replaced)
    span = run.span("item-4")
    assert span.name == f"GET {ITEMS_ROUTE}"
    assert span.kind == span.SPAN_KIND_SERVER
    assert attributes(span)["http.route"] == ITEMS_ROUTE
    assert attributes(span)["http.response.status_code"] == 200
    unknown = run.span("unknown-0")
    assert unknown.name == "GET <unmatched>" and "http.route" not in attributes(unknown)


def test_probes_and_scrapes_not_logged_nor_traced(run: Run) -> None:
    assert run.records_for("probe-live") == []
    assert run.records_for("scrape") == []
    assert not [
        r for r in run.records if str(r.get("path", "")).startswith(("/healthz", "/metrics"))
    ]
    cids = {attributes(span).get("correlation.id") for _, span in run.receiver.spans()}
    assert not {"probe-live", "scrape"} & cids


def test_django_request_log_records_carry_the_request_context(run: Run) -> None:
    """Django's own ``django.request`` records about a request carry its correlation id.

    Django writes "Not Found: /path" / "Conflict: /path" warnings (every 4xx, and 5xx
    responses that are not exceptions) in ``BaseHandler.get_response`` after the
    middleware chain returned, i.e. after devkit's middleware detached the request context.
    """
    for cid, message in (
        ("unknown-0", "Not Found: /no/such/path/123"),
        ("stock-0", "Conflict: /stock/7"),
    ):
        records = [r for r in run.records if r.get("message") == message]
        assert len(records) == 1, message
        assert records[0].get("correlation_id") == cid, records[0]
        assert records[0].get("trace_id") == run.access(cid)["trace_id"]


CLIENT_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["DJANGO_SETTINGS_MODULE"] = "examples.django_app.settings"
    import devkit, django
    devkit.init(service_name="shop-client")
    django.setup()
    from django.conf import settings
    from django.test import Client
    from prometheus_client import REGISTRY, generate_latest

    first, second = Client(raise_request_exception=False), Client(raise_request_exception=False)
    out = {}
    for client, path, cid in (
        (first, "/items/3", "client-item"),
        (second, "/items/4", "client-item-2"),
        (first, "/boom", "client-boom"),
        (first, "/nowhere", "client-404"),
        (first, "/healthz/ready", "client-ready"),
    ):
        response = client.get(path, HTTP_X_CORRELATION_ID=cid)
        out[cid] = [response.status_code, response.headers.get("X-Correlation-ID")]
    out["middleware"] = list(settings.MIDDLEWARE)
    out["metrics"] = generate_latest(REGISTRY).decode()
    devkit.shutdown()
    print("RESULT " + json.dumps(out), flush=True)
    """
)


def test_in_process_with_django_test_client() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT],
        env=clean_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    (result_line,) = [line for line in lines if line.startswith("RESULT ")]
    result = json.loads(result_line.removeprefix("RESULT "))
    records = [json.loads(line) for line in lines if line.startswith("{")]

    assert result["client-item"] == [200, "client-item"]
    assert result["client-item-2"] == [200, "client-item-2"]
    assert result["client-boom"] == [500, "client-boom"]
    assert result["client-404"] == [404, "client-404"]
    assert result["client-ready"][0] == 503  # mark_started() was never called here
    # Inserted first, once, however many handlers Django builds.
    middleware = result["middleware"]
    assert middleware[0] == "devkit.integrations.django.DevkitMiddleware"
    assert middleware.count("devkit.integrations.django.DevkitMiddleware") == 1
    assert middleware[1:] == [
        "django.middleware.common.CommonMiddleware",
        "examples.django_app.views.OutOfStockMiddleware",
    ]

    text = result["metrics"]
    assert (
        value(text, "http_requests_total", method="GET", route=ITEMS_ROUTE, status_code="200") == 2
    )
    assert (
        value(text, "http_requests_errors_total", method="GET", route="/boom", status_code="500")
        == 1
    )
    assert (
        value(text, "http_requests_total", method="GET", route="<unmatched>", status_code="404")
        == 1
    )

    def access(cid: str) -> dict[str, Any]:
        (record,) = [
            r
            for r in records
            if r.get("correlation_id") == cid and r["message"] == "request completed"
        ]
        return record

    item = access("client-item")
    assert item["service"] == "shop-client" and item["route"] == ITEMS_ROUTE
    assert HEX32.fullmatch(item["trace_id"])
    (app_log,) = [
        r
        for r in records
        if r.get("correlation_id") == "client-item" and r["message"] == "item fetched"
    ]
    assert app_log["trace_id"] == item["trace_id"]
    boom = access("client-boom")
    assert boom["level"] == "error" and boom["error"]["type"] == "RuntimeError"
    assert access("client-404")["route"] == "<unmatched>"
    assert not [r for r in records if r.get("correlation_id") == "client-ready"]
