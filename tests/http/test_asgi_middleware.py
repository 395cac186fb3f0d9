"""In-process tests of the ASGI middleware (the real-server acceptance is in integration/)."""

from __future__ import annotations

from typing import Any

import structlog
from asgi_client import call
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

import devkit
from devkit.testing import CapturedLogs


def count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def item(request: Request) -> Response:
    devkit.get_logger("app").info("in handler")
    return JSONResponse({"id": request.path_params["item_id"]})


async def boom(request: Request) -> Response:
    raise ValueError("bad")


async def bind(request: Request) -> Response:
    structlog.contextvars.bind_contextvars(user="alice")
    return PlainTextResponse("bound")


async def plain(request: Request) -> Response:
    devkit.get_logger("app").info("plain")
    return PlainTextResponse("ok")


def make_app(**kwargs: Any) -> Starlette:
    return Starlette(
        routes=[
            Route("/items/{item_id:int}", item),
            Route("/boom", boom),
            Route("/bind", bind),
            Route("/plain", plain),
            Mount("/api", routes=[Route("/users/{uid}", plain)]),
        ],
        **kwargs,
    )


def test_auto_enabled_app_is_counted_once_even_when_wrapped_explicitly(
    devkit_logs: CapturedLogs,
) -> None:
    devkit.init()
    app = devkit.asgi(devkit.ASGIMiddleware(make_app()))
    call(app, "/items/1", "/items/2")
    assert (
        count("http_requests_total", method="GET", route="/items/{item_id}", status_code="200") == 2
    )
    assert len(devkit_logs.find(message="request completed")) == 2


def test_route_templates_mounts_and_unmatched(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    call(make_app(), "/api/users/7", "/nothing/here", "/items/notanint")
    assert (
        count("http_requests_total", method="GET", route="/api/users/{uid}", status_code="200") == 1
    )
    assert count("http_requests_total", method="GET", route="<unmatched>", status_code="404") == 2


def test_exception_counts_as_500_error_and_is_logged(
    devkit_logs: CapturedLogs, spans: InMemorySpanExporter
) -> None:
    devkit.init(sample_success_ratio=0.0)
    (response,) = call(make_app(), "/boom")
    assert response.status_code == 500
    assert count("http_requests_errors_total", method="GET", route="/boom", status_code="500") == 1
    (access,) = devkit_logs.find(message="request completed")
    assert access["level"] == "error" and access["error"]["type"] == "ValueError"
    devkit.shutdown()
    (span,) = spans.get_finished_spans()
    assert span.name == "GET /boom"
    assert span.status.status_code.name == "ERROR"
    assert [e.name for e in span.events] == ["exception"]


def test_in_progress_gauge_returns_to_zero(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    call(make_app(), "/items/1", "/boom", "/nothing")
    assert count("http_requests_in_progress", method="GET") == 0


def test_bound_context_does_not_leak_between_requests(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    call(make_app(), "/bind", "/plain")
    (plain_record,) = devkit_logs.find(message="plain")
    assert "user" not in plain_record


def test_base_http_middleware_layers_keep_the_trace(devkit_logs: CapturedLogs) -> None:
    class Noop(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: Any) -> Response:
            devkit.get_logger("mw").info("in user middleware")
            return await call_next(request)  # type: ignore[no-any-return]

    devkit.init()
    call(make_app(middleware=[Middleware(Noop)]), "/plain", headers={"X-Correlation-ID": "cid-bhm"})
    mw, handler, access = [r for r in devkit_logs.records if r["logger"] != "httpx"]
    assert mw["trace_id"] == handler["trace_id"] == access["trace_id"]
    assert {mw["correlation_id"], handler["correlation_id"]} == {"cid-bhm"}


def test_probes_and_metrics_are_not_counted_traced_or_logged(
    devkit_logs: CapturedLogs, spans: InMemorySpanExporter
) -> None:
    devkit.init(sample_success_ratio=1.0)
    devkit.health.mark_started()
    responses = call(make_app(), "/healthz/live", "/healthz/ready", "/healthz/startup", "/metrics")
    assert [r.status_code for r in responses] == [200, 200, 200, 200]
    assert responses[0].headers["cache-control"] == "no-store"
    assert responses[0].json()["status"] == "pass"
    assert devkit_logs.find(message="request completed") == []
    devkit.shutdown()
    assert spans.get_finished_spans() == ()


def test_metrics_content_negotiation(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    classic, om = (
        call(make_app(), "/metrics", "/metrics"),
        call(make_app(), "/metrics", headers={"Accept": "application/openmetrics-text"}),
    )
    assert classic[0].headers["content-type"].startswith("text/plain")
    assert om[0].headers["content-type"].startswith("application/openmetrics-text")
    assert om[0].text.rstrip().endswith("# EOF")


def test_custom_paths_from_settings(devkit_logs: CapturedLogs) -> None:
    devkit.init(metrics_path="/internal/m", health_path="/probe")
    responses = call(make_app(), "/internal/m", "/probe/live", "/metrics")
    assert [r.status_code for r in responses] == [200, 200, 404]


def test_garbage_headers_never_fail_the_request(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    headers = {
        "traceparent": "00-zz-yy-01",
        "tracestate": "=,,,=" * 100,
        "baggage": "%%%;;;==" * 100,
        "X-Correlation-ID": "x" * 5000,
    }
    (response,) = call(make_app(), "/plain", headers=headers)
    assert response.status_code == 200
    assert len(response.headers["x-correlation-id"]) == 32


def test_correlation_id_from_baggage(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    (response,) = call(make_app(), "/plain", headers={"baggage": "correlation_id=from-bag"})
    assert response.headers["x-correlation-id"] == "from-bag"


def test_uninitialised_middleware_passes_through() -> None:
    app = devkit.asgi(make_app())
    (response,) = call(app, "/items/3")
    assert response.status_code == 200
    assert "x-correlation-id" not in response.headers


def test_shutdown_removes_the_auto_instrumentation(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    devkit.shutdown()
    (response,) = call(make_app(), "/items/3")
    assert "x-correlation-id" not in response.headers


def test_exemplars_only_for_kept_traces(
    devkit_logs: CapturedLogs, spans: InMemorySpanExporter
) -> None:
    devkit.init(sample_success_ratio=0.0)
    app = make_app()
    call(app, "/items/1", "/boom")
    (om,) = call(app, "/metrics", headers={"Accept": "application/openmetrics-text"})
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    lines = [line for line in om.text.splitlines() if "# {trace_id=" in line]
    assert lines and all('route="/boom"' in line for line in lines)


def test_access_record_redacts_pii_in_the_path(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    call(make_app(), "/api/users/ada@example.com?card=4111111111111111")
    (access,) = devkit_logs.find(message="request completed")
    assert access["path"] == "/api/users/[REDACTED:email]?card=[REDACTED]"
    assert access["route"] == "/api/users/{uid}"
