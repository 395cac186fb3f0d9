"""The lean request path: what it skips must not change what users get."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from asgi_client import call
from flask import Flask
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import devkit
from devkit import _state
from devkit.testing import CapturedLogs, MetricSamples

_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _flush() -> None:
    core = _state.core()
    assert core is not None and core.tracing is not None
    core.tracing.processor.force_flush()
    assert core.tracing.exporter is not None
    core.tracing.exporter.force_flush()


async def ok(request: Request) -> Response:
    return PlainTextResponse("ok")


async def missing(request: Request) -> Response:
    return PlainTextResponse("no", status_code=404)


def app(*routes: Route) -> Starlette:
    return Starlette(routes=[Route("/ok/{n}", ok), Route("/missing", missing), *routes])


def test_access_record_has_the_generic_fields_in_order(devkit_logs: CapturedLogs) -> None:
    devkit.init(service_name='svc "quoted"')
    call(app(), '/ok/1?token=abc&x="y"')
    (line,) = [raw for raw in devkit_logs.lines if b"request completed" in raw]
    record = orjson.loads(line)
    assert list(record) == [
        "timestamp",
        "level",
        "service",
        "logger",
        "message",
        "method",
        "route",
        "path",
        "status_code",
        "duration_ms",
        "trace_id",
        "span_id",
        "correlation_id",
    ]
    assert _TIMESTAMP.match(record["timestamp"])
    assert record["service"] == 'svc "quoted"'
    assert record["logger"] == "devkit.access"
    assert record["route"] == "/ok/{n}"
    assert record["path"] == "/ok/1?token=[REDACTED]&x=[REDACTED]"
    assert record["status_code"] == 200
    assert isinstance(record["duration_ms"], float) and record["duration_ms"] >= 0
    assert re.fullmatch("[0-9a-f]{32}", record["trace_id"])
    assert re.fullmatch("[0-9a-f]{16}", record["span_id"])
    assert re.fullmatch("[0-9a-f]{32}", record["correlation_id"])


def test_access_record_escapes_what_json_needs(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    call(app(), "/ok/%22%5C%0A\u00e9")
    (record,) = devkit_logs.find(message="request completed")
    assert record["path"] == '/ok/"\\\n\u00e9'


def test_access_record_without_tracing_has_no_trace_fields(devkit_logs: CapturedLogs) -> None:
    devkit.init(traces_exporter="none")
    core = _state.core()
    assert core is not None
    core.server_spans = None  # tracing off on the request path
    call(app(), "/ok/2")
    (record,) = devkit_logs.find(message="request completed")
    assert "trace_id" not in record and record["correlation_id"]


def test_access_record_in_console_format(devkit_logs: CapturedLogs) -> None:
    devkit.init(log_format="console")
    call(app(), "/ok/3")
    (line,) = [raw for raw in devkit_logs.lines if b"request completed" in raw]
    assert b"[devkit.access] request completed" in line and b"route=/ok/{n}" in line


def test_access_records_honour_the_log_level(devkit_logs: CapturedLogs) -> None:
    devkit.init(log_level="warn")
    call(app(), "/ok/1", "/missing")
    records = devkit_logs.find(message="request completed")
    assert [(r["level"], r["status_code"]) for r in records] == [("warn", 404)]


def test_decisions_are_counted_by_the_time_of_a_scrape(
    devkit_logs: CapturedLogs, devkit_metrics: MetricSamples
) -> None:
    devkit.init(sample_success_ratio=0.0)
    call(app(), *[f"/ok/{i}" for i in range(5)])
    assert devkit_metrics.sample_value(
        "devkit_traces_sampled_total", {"decision": "dropped"}
    ) == pytest.approx(5.0)
    (scrape,) = call(app(), "/metrics")
    assert 'devkit_traces_sampled_total{decision="dropped"} 5.0' in scrape.text


def _late_child_app(started: list[Any], release: asyncio.Event | None = None) -> Starlette:
    tracer = trace.get_tracer("late")

    async def with_late_child(request: Request) -> Response:
        child = tracer.start_span("late-child")
        started.append((child, otel_context.get_current()))

        async def finish_later() -> None:
            await asyncio.sleep(0.05)
            child.end()

        started.append(asyncio.get_running_loop().create_task(finish_later()))
        status = 500 if request.query_params.get("fail") else 200
        return PlainTextResponse("x", status_code=status)

    return app(Route("/late", with_late_child))


def _run_with_late_children(application: Starlette, *paths: str) -> None:
    async def run() -> None:
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for path in paths:
                await client.get(path)
            await asyncio.sleep(0.2)  # the late children end

    asyncio.run(run())


def test_children_ending_after_the_request_follow_its_decision(
    devkit_logs: CapturedLogs, spans: InMemorySpanExporter
) -> None:
    devkit.init(sample_success_ratio=0.0)
    started: list[Any] = []
    _run_with_late_children(_late_child_app(started), "/late", "/late?fail=1")
    _flush()
    names = [
        (s.name, s.attributes.get("http.response.status_code")) for s in spans.get_finished_spans()
    ]
    # the failed request's trace is kept with its late child; the successful one is not
    assert ("GET /late", 500) in names
    assert [n for n, _ in names].count("late-child") == 1
    kept_child = next(s for s in spans.get_finished_spans() if s.name == "late-child")
    kept_root = next(s for s in spans.get_finished_spans() if s.name == "GET /late")
    assert kept_child.context.trace_id == kept_root.context.trace_id
    runtime = _state.core()
    assert runtime is not None and runtime.tracing is not None
    assert runtime.tracing.processor.pending_traces() == 0


def test_children_started_after_the_request_follow_its_decision(
    devkit_logs: CapturedLogs, spans: InMemorySpanExporter
) -> None:
    devkit.init(sample_success_ratio=0.0)
    started: list[Any] = []
    _run_with_late_children(_late_child_app(started), "/late", "/late?fail=1")
    tracer = trace.get_tracer("after")
    contexts = [item[1] for item in started if isinstance(item, tuple)]
    for ctx in contexts:  # a background job that outlives its request, started afterwards
        tracer.start_span("after-response", context=ctx).end()
    _flush()
    after = [s for s in spans.get_finished_spans() if s.name == "after-response"]
    kept_root = next(s for s in spans.get_finished_spans() if s.name == "GET /late")
    assert [s.context.trace_id for s in after] == [kept_root.context.trace_id]
    runtime = _state.core()
    assert runtime is not None and runtime.tracing is not None
    assert runtime.tracing.processor.pending_traces() == 0


def test_request_without_children_leaves_no_decision_behind(devkit_logs: CapturedLogs) -> None:
    devkit.init(sample_success_ratio=0.0)
    call(app(), *[f"/ok/{i}" for i in range(20)])
    runtime = _state.core()
    assert runtime is not None and runtime.tracing is not None
    processor = runtime.tracing.processor
    assert processor.pending_traces() == 0
    assert len(processor._decided) == 0 and len(processor._watched) == 0


class _HeaderPropagator(TextMapPropagator):
    """A stand-in for b3 & co: the trace id arrives in ``x-custom-trace``."""

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        values = getter.get(carrier, "x-custom-trace")
        if not values:
            return context or Context()
        span_context = SpanContext(int(values[0], 16), 0x42, True, TraceFlags(1))
        return trace.set_span_in_context(NonRecordingSpan(span_context), context or Context())

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        return None

    @property
    def fields(self) -> set[str]:
        return {"x-custom-trace"}


@pytest.fixture
def custom_propagator(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    # Installed as a propagator package is: an entry point that init() can check.
    dist = tmp_path / "custom_propagator-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Name: custom-propagator\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[opentelemetry_propagator]\ncustom = custom_propagator:Propagator\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("OTEL_PROPAGATORS", "custom")
    previous = propagate.get_global_textmap()
    propagate.set_global_textmap(_HeaderPropagator())
    yield
    propagate.set_global_textmap(previous)


def test_env_propagators_read_their_own_headers_asgi(
    custom_propagator: None, devkit_logs: CapturedLogs
) -> None:
    devkit.init()
    call(app(), "/ok/1", headers={"x-custom-trace": "abc123"})
    (record,) = devkit_logs.find(message="request completed")
    assert record["trace_id"] == "%032x" % 0xABC123


def test_env_propagators_read_their_own_headers_wsgi(
    custom_propagator: None, devkit_logs: CapturedLogs
) -> None:
    devkit.init()
    flask_app = Flask("hot")

    @flask_app.get("/ok")
    def ok_view() -> str:
        return "ok"

    flask_app.test_client().get("/ok", headers={"X-Custom-Trace": "def456"})
    (record,) = devkit_logs.find(message="request completed")
    assert record["trace_id"] == "%032x" % 0xDEF456


def test_scope_without_headers_is_served(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    sent: list[dict[str, Any]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "GET", "path": "/raw", "query_string": b""}
    asyncio.run(devkit.asgi(inner)(scope, receive, send))
    assert sent[0]["status"] == 204
    assert (b"x-correlation-id", sent[0]["headers"][0][1]) == sent[0]["headers"][0]
    (record,) = devkit_logs.find(message="request completed")
    assert record["status_code"] == 204 and record["route"] == "<unmatched>"
