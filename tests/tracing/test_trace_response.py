"""The trace context server-timing metric: devkit answers with it, and keeps its part of a
trace when a service it called says it keeps its own (decision ``kept_downstream``)."""

from __future__ import annotations

import asyncio
import http.server
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import StatusCode

import devkit
from devkit.testing import CapturedSpans, MetricSamples
from devkit.tracing.propagation import format_trace_metric, parse_trace_metric
from devkit.tracing.sampling import UNSET_STATUS, TailSamplingProcessor

# -- the metric's grammar ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["trace;desc=00-%032x-%016x-01" % (5, 6)], (5, 6, 1)),
        (['cache;dur=2.1, TRACE;desc="00-%032x-%016x-03";dur=0' % (5, 6)], (5, 6, 3)),
        (["db;dur=1", "trace;desc=00-%032x-%016x-00" % (7, 8)], (7, 8, 0)),
        (['x;desc="a, trace;desc=00-%032x-%016x-01"' % (5, 6)], None),  # inside a quote
        (["trace;desc=01-%032x-%016x-01-future" % (5, 6)], (5, 6, 1)),
        (["trace;desc=00-%032x-%016x-01-extra" % (5, 6)], None),
        (["trace;desc=ff-%032x-%016x-01" % (5, 6)], None),
        (["trace;desc=00-%032x-%016x-01" % (0, 6)], None),
        (["trace;desc=00-%032x-%016x-01" % (5, 0)], None),
        (["trace;desc=00-%032X-%016x-01" % (0xABC, 6)], None),
        (["trace;dur=1"], None),
        (["trace"], None),
        ([""], None),
        (["trace;desc=00-%032x-%016x-ff" % (5, 6)], (5, 6, 3)),  # unknown flags masked
    ],
)
def test_the_trace_metric_is_parsed_as_the_spec_writes_it(
    values: list[str], expected: tuple[int, int, int] | None
) -> None:
    assert parse_trace_metric(values) == expected


def test_format_and_parse_round_trip() -> None:
    value = format_trace_metric(0xABC, 0xDEF, 0x03)
    assert value == "trace;desc=00-%032x-%016x-03" % (0xABC, 0xDEF)
    assert parse_trace_metric([value]) == (0xABC, 0xDEF, 3)
    assert format_trace_metric(1, 2, 0xFF).endswith("-03")  # reserved bits never sent


def test_a_huge_header_is_read_only_up_to_its_bound() -> None:
    padding = "x;dur=1, " * 2000
    assert parse_trace_metric([padding + "trace;desc=00-%032x-%016x-01" % (5, 6)]) is None


# -- the processor ---------------------------------------------------------------------------


def _processor() -> tuple[TailSamplingProcessor, list[Any], dict[str, int], Any]:
    from opentelemetry.sdk.trace import TracerProvider

    from devkit.tracing.sampling import ErrorBiasedSampler

    exported: list[Any] = []
    decisions: dict[str, int] = {}
    processor = TailSamplingProcessor(
        exported.extend,
        slow_threshold_s=10,
        on_decision=lambda d, n: decisions.__setitem__(d, decisions.get(d, 0) + n),
    )
    # Every span recorded, none sampled at the head (ratio 0): only the tail keeps.
    provider = TracerProvider(sampler=ErrorBiasedSampler(0.0), resource=Resource.create({}))
    provider.add_span_processor(processor)
    return processor, exported, decisions, provider.get_tracer("t")


def test_a_downstream_keep_keeps_a_trace_the_rules_drop() -> None:
    processor, exported, decisions, tracer = _processor()
    with tracer.start_as_current_span("dropped"):
        pass
    with tracer.start_as_current_span("kept") as kept:
        trace_id = kept.get_span_context().trace_id
        with tracer.start_as_current_span("client call"):
            assert not processor.keeps_so_far(trace_id)
            processor.mark_downstream_keep(trace_id)
            assert processor.keeps_so_far(trace_id)
    processor.flush_counts()
    assert sorted(s.name for s in exported) == ["client call", "kept"]
    assert decisions == {"dropped": 1, "kept_downstream": 1}
    assert not processor.keeps_so_far(trace_id)  # decided: nothing left behind
    processor.mark_downstream_keep(trace_id)  # too late for a decided trace: ignored
    assert not processor.keeps_so_far(trace_id)


def test_the_downstream_marks_are_bounded() -> None:
    processor, _, _, _ = _processor()
    limit = processor._limits.max_traces
    for trace_id in range(1, limit + 50):
        processor.mark_downstream_keep(trace_id)
    assert len(processor._downstream) == limit
    assert not processor.keeps_so_far(1) and processor.keeps_so_far(limit + 49)


def test_keeps_so_far_sees_an_error_span_that_ended() -> None:
    processor = TailSamplingProcessor(lambda spans: None, slow_threshold_s=10)
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider(resource=Resource.create({}))
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("root") as root:
        trace_id = root.get_span_context().trace_id
        with tracer.start_as_current_span("child") as child:
            child.set_status(StatusCode.ERROR)
        assert processor.keeps_so_far(trace_id)
        assert not processor.keeps_so_far(trace_id + 1)


# -- the server side ---------------------------------------------------------------------------


def _starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def ok(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok", headers={"Server-Timing": "db;dur=12.5"})

    async def fail(request: Any) -> PlainTextResponse:
        return PlainTextResponse("no", status_code=502)

    async def marked(request: Any) -> PlainTextResponse:
        trace.get_current_span().set_status(StatusCode.ERROR)
        return PlainTextResponse("ok")

    async def recovered(request: Any) -> PlainTextResponse:
        with trace.get_tracer("app").start_as_current_span("cache") as span:
            span.set_status(StatusCode.ERROR, "recovered")
        return PlainTextResponse("ok")

    async def slow(request: Any) -> PlainTextResponse:
        await asyncio.sleep(0.02)
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/ok", ok),
            Route("/fail", fail),
            Route("/marked", marked),
            Route("/recovered", recovered),
            Route("/slow", slow),
        ]
    )


def _get(app: Any, path: str, **kw: Any) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get(path, **kw)

    return asyncio.run(run())


def _metric(response: httpx.Response) -> tuple[int, int, int]:
    (own,) = [v for v in response.headers.get_list("server-timing") if v.startswith("trace;")]
    parsed = parse_trace_metric([own])
    assert parsed is not None
    return parsed


@pytest.mark.parametrize(
    ("path", "kept"),
    [("/ok", False), ("/fail", True), ("/marked", True), ("/recovered", True), ("/slow", True)],
)
def test_the_sampled_flag_is_the_tail_samplers_decision(
    devkit_spans: CapturedSpans, path: str, kept: bool
) -> None:
    devkit.init(sample_success_ratio=0.0, slow_threshold_ms=10)
    response = _get(_starlette_app(), path)
    trace_id, span_id, flags = _metric(response)
    assert flags == (0x03 if kept else 0x02)  # random-trace-id: devkit made the id
    devkit.shutdown()
    exported = {s.context.trace_id for s in devkit_spans.spans}
    assert (trace_id in exported) is kept  # the flag sent is the decision taken
    if kept:
        (server,) = [s for s in devkit_spans.spans if s.kind == trace.SpanKind.SERVER]
        assert server.context.span_id == span_id


def test_the_apps_server_timing_stays_and_a_sampled_parent_is_echoed(
    devkit_spans: CapturedSpans,
) -> None:
    devkit.init(sample_success_ratio=0.0)
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    response = _get(_starlette_app(), "/ok", headers={"traceparent": parent})
    values = response.headers.get_list("server-timing")
    assert values[0] == "db;dur=12.5" and len(values) == 2
    trace_id, span_id, flags = _metric(response)
    assert (trace_id, flags) == (0x0AF7651916CD43DD8448EB211C80319C, 0x01)
    assert span_id != 0xB7AD6B7169203331  # the server's own span, not the caller's


def test_no_header_when_turned_off(devkit_spans: CapturedSpans) -> None:
    devkit.init(trace_response=False)
    assert "server-timing" not in {k.lower() for k in _get(_starlette_app(), "/fail").headers}


def test_never_sampled_when_nothing_leaves_the_process(devkit_reset: None) -> None:
    devkit.init(sample_success_ratio=1.0, traces_exporter="none")
    _trace_id, _span_id, flags = _metric(_get(_starlette_app(), "/fail"))
    assert flags & 0x01 == 0  # a 5xx, but no exporter: nothing was recorded out-of-band


def test_wsgi_answers_with_the_metric_too(devkit_spans: CapturedSpans) -> None:
    from flask import Flask

    devkit.init(sample_success_ratio=0.0)
    app = Flask("st")

    @app.get("/fail")
    def fail() -> tuple[str, int, dict[str, str]]:
        return "no", 500, {"Server-Timing": "app;dur=1"}

    response = app.test_client().get("/fail")
    values = response.headers.getlist("Server-Timing")
    assert values[0] == "app;dur=1"
    parsed = parse_trace_metric(values[1:])
    assert parsed is not None and parsed[2] == 0x03


# -- the client side ---------------------------------------------------------------------------


class _Downstream(http.server.BaseHTTPRequestHandler):
    """A service that answers with the trace metric its query asks for: ``?flags=01`` (its
    part kept), ``?trace=other`` (another trace's id), ``?raw=...`` (any metric)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        parent = self.headers.get("traceparent", "")
        trace_hex = parent.split("-")[1] if parent.count("-") == 3 else "1" * 32
        if query.get("trace") == ["other"]:
            trace_hex = "%032x" % (int(trace_hex, 16) ^ 1)
        flags = query.get("flags", ["01"])[0]
        metric = query.get("raw", [f"trace;desc=00-{trace_hex}-{'ab' * 8}-{flags}"])[0]
        self.send_response(200)
        self.send_header("Server-Timing", "cache;dur=1")
        self.send_header("Server-Timing", metric)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def downstream() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Downstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _httpx_sync(url: str) -> None:
    with httpx.Client() as client:
        client.get(url)


def _httpx_async(url: str) -> None:
    async def run() -> None:
        async with httpx.AsyncClient() as client:
            await client.get(url)

    asyncio.run(run())


def _requests(url: str) -> None:
    import requests

    requests.get(url, timeout=5)


def _urllib3(url: str) -> None:
    import urllib3

    urllib3.PoolManager().request("GET", url)


def _aiohttp(url: str) -> None:
    import aiohttp

    async def run() -> None:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            await response.read()

    asyncio.run(run())


CLIENTS = {
    "httpx": _httpx_sync,
    "httpx-async": _httpx_async,
    "requests": _requests,
    "urllib3": _urllib3,
    "aiohttp": _aiohttp,
}


def _job(call: Any, url: str) -> int:
    """A local root span (as a worker's job is) that calls ``url``: its trace id."""
    with trace.get_tracer("job").start_as_current_span("job") as span:
        call(url)
        return span.get_span_context().trace_id


@pytest.mark.parametrize("client", list(CLIENTS))
def test_a_downstream_keep_keeps_the_callers_part(
    devkit_spans: CapturedSpans, devkit_metrics: MetricSamples, downstream: str, client: str
) -> None:
    devkit.init(sample_success_ratio=0.0)
    kept = _job(CLIENTS[client], downstream + "/?flags=01")
    dropped = _job(CLIENTS[client], downstream + "/?flags=00")
    counted = devkit_metrics.sample_value(
        "devkit_traces_sampled_total", {"decision": "kept_downstream"}
    )
    assert counted == 1.0
    devkit.shutdown()
    traces = {s.context.trace_id for s in devkit_spans.spans}
    assert kept in traces and dropped not in traces
    names = {s.name for s in devkit_spans.spans if s.context.trace_id == kept}
    assert "job" in names and len(names) >= 2  # the job and its client span


@pytest.mark.parametrize(
    "query",
    [
        "trace=other",  # another trace's id
        "raw=trace;desc=00-zz",  # malformed
        "raw=trace;desc=ff-" + "1" * 32 + "-" + "2" * 16 + "-01",  # forbidden version
    ],
)
def test_what_changes_nothing(devkit_spans: CapturedSpans, downstream: str, query: str) -> None:
    devkit.init(sample_success_ratio=0.0)
    trace_id = _job(_httpx_sync, f"{downstream}/?{query}")
    devkit.shutdown()
    assert trace_id not in {s.context.trace_id for s in devkit_spans.spans}


@pytest.mark.parametrize(
    ("trusted", "kept"),
    [("none", False), ("other.example", False), ("127.0.0.1", True), ("*", True)],
)
def test_only_trusted_hosts_keep(
    devkit_spans: CapturedSpans, downstream: str, trusted: str, kept: bool
) -> None:
    devkit.init(sample_success_ratio=0.0, trusted_trace_responses=trusted)
    trace_id = _job(_requests, downstream + "/?flags=01")
    devkit.shutdown()
    assert (trace_id in {s.context.trace_id for s in devkit_spans.spans}) is kept


def test_trust_matches_names_suffixes_and_addresses() -> None:
    from devkit.tracing.downstream import TraceResponses

    responses = TraceResponses(lambda t: None, ["api.example", "*.svc.local", "[::1]"])
    assert responses.trusts("API.example") and responses.trusts("a.b.svc.local")
    assert responses.trusts("::1") and responses.trusts("[::1]")
    assert not responses.trusts("svc.local") and not responses.trusts("evil-api.example")
    assert not responses.trusts(None)


@pytest.mark.parametrize(
    ("trace_id", "span_id", "sampled"),
    [(1, 2, False), (2**128 - 1, 2**64 - 1, True), (0xABC, 0xDEF, False), (2**127, 1, True)],
)
def test_the_request_paths_metric_is_the_reference_format(
    trace_id: int, span_id: int, sampled: bool, devkit_spans: CapturedSpans
) -> None:
    """The middleware writes the metric its own way; the library function is the
    reference."""
    from types import SimpleNamespace

    from devkit import _state
    from devkit.http._core import Request

    devkit.init(sample_success_ratio=0.0)
    core = _state.core()
    assert core is not None
    req = Request()
    req.trace_id, req.span_id, req.status, req.start = trace_id, span_id, 200, 1e12
    req.span = SimpleNamespace(  # type: ignore[assignment]
        context=(trace_id, span_id, False, 0x02), sampled=sampled, status=UNSET_STATUS
    )
    expected = format_trace_metric(trace_id, span_id, 0x02 | sampled)
    assert core.server_timing(req) == expected
