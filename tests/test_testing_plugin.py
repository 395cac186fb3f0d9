"""The pytest plugin devkit ships to its users, used as a user would."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import devkit
from devkit.testing import CapturedLogs, CapturedSpans, MetricSamples


async def fail(request: Request) -> Response:
    raise RuntimeError("checkout failed")


async def ok(request: Request) -> Response:
    return PlainTextResponse("ok")


def serve_once(*paths: str) -> None:
    app = Starlette(routes=[Route("/fail", fail), Route("/ok", ok)])

    async def run() -> None:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for path in paths:
                await asyncio.create_task(client.get(path))

    asyncio.run(run())


def test_spans_fixture_sees_tail_sampled_export(devkit_spans: CapturedSpans) -> None:
    devkit.init(sample_success_ratio=0.0)
    serve_once("/ok", "/fail")
    names = [s.name for s in devkit_spans.spans]
    assert names == ["GET /fail"]  # the successful trace was sampled out


def test_metrics_fixture_reads_samples(devkit_metrics: MetricSamples) -> None:
    devkit.init()
    serve_once("/ok", "/ok")
    labels = {"method": "GET", "route": "/ok", "status_code": "200"}
    assert devkit_metrics.sample_value("http_requests_total", labels) == 2
    assert devkit_metrics.sample_value("http_requests_total", {"method": "PUT"}) is None


def test_logs_fixture_records_are_redacted(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    devkit.get_logger("t").info("signup", email="ada@example.com")
    (record,) = devkit_logs.find(message="signup")
    assert record["email"] == "[REDACTED:email]"
