"""Requests that end on a busy event loop have their books closed at the end of its iteration.

The ASGI middleware restores the request's context at once and, when the loop has more
to run in the iteration (under load: other requests), leaves the span, the RED metrics
and the access record to one callback at its end (``finish_soon``). These tests pin what
that must not change: every record is written once, with the request's own end time and
ids, within a bound, and before anything reads the results.
"""

from __future__ import annotations

import asyncio
import io
import sys
import threading
from datetime import datetime
from typing import Any

import orjson
import pytest
from opentelemetry import trace
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import devkit
from devkit import _context, _setup, _state
from devkit.http import _core as core_module
from devkit.http._core import MAX_PENDING, Core
from devkit.testing import CapturedLogs, MetricSamples
from streams import piped_writes

_ACCESS = b'"message":"request completed"'


async def ok(request: Request) -> Response:
    return PlainTextResponse("ok")


async def failed(request: Request) -> Response:
    return PlainTextResponse("failed", status_code=500)


def _app() -> Any:
    return devkit.asgi(Starlette(routes=[Route("/ok/{n}", ok), Route("/ok/{n}/failed", failed)]))


def _core() -> Core:
    core = _state.core()
    assert core is not None
    return core


def _begin(core: Core, path: str, status: int = 200) -> core_module.Request:
    """A request opened by hand (as the WSGI adapter does), its status already known."""
    req = core.begin_environ({"REQUEST_METHOD": "GET", "PATH_INFO": path})
    req.status = status
    return req


async def _request(app: Any, path: str = "/ok/1", busy: bool = True) -> dict[str, Any]:
    """One request through ``app`` in the calling task (no loop iteration in between);
    ``busy``: with another callback queued in the loop's iteration, as under load."""
    if busy:
        asyncio.get_running_loop().call_soon(_other_work)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    sent: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            sent["status"] = message["status"]
            sent["headers"] = dict(message["headers"])

    await app(scope, receive, send)
    return sent


def _other_work() -> None:
    pass


def _access_lines(logs: CapturedLogs) -> list[bytes]:
    """The access records of the ``/ok`` requests written so far (no flush)."""
    return [line for line in list(logs.lines) if _ACCESS in line and b'"/ok/' in line]


def test_books_close_at_the_end_of_the_loop_iteration(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    app = _app()

    async def run() -> None:
        sent = await _request(app)
        # The context is the caller's again at once; the record waits for the iteration.
        assert _context.correlation_id.get() is None
        assert not trace.get_current_span().get_span_context().is_valid
        assert _access_lines(devkit_logs) == []
        await asyncio.sleep(0)
        (line,) = _access_lines(devkit_logs)
        record = orjson.loads(line)
        assert record["correlation_id"] == sent["headers"][b"x-correlation-id"].decode()
        assert record["status_code"] == 200

    asyncio.run(run())


def test_an_idle_server_closes_the_books_at_once(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    app = _app()

    async def run() -> None:
        await _request(app, busy=False)
        # Nothing to batch with: no callback, no loop iteration of its own.
        assert len(_core()._pending) == 0
        (line,) = _access_lines(devkit_logs)
        assert orjson.loads(line)["status_code"] == 200

    asyncio.run(run())


def test_a_deferred_record_keeps_its_own_end_time(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    app = _app()

    async def run() -> tuple[float, float]:
        await _request(app, busy=False)  # first request: caches warm, not measured
        devkit_logs.clear()
        before = datetime.now().timestamp()
        await _request(app)
        ended = datetime.now().timestamp()
        assert _access_lines(devkit_logs) == []
        # The loop is busy for a while before the iteration ends.
        threading.Event().wait(0.3)
        await asyncio.sleep(0)
        return before, ended

    before, ended = asyncio.run(run())
    (record,) = devkit_logs.find(message="request completed", path="/ok/1")
    stamp = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()
    # Millisecond time stamps: the record says when the request ended, not when it was written.
    assert before - 0.001 <= stamp <= ended + 0.001
    assert record["duration_ms"] < (ended - before) * 1000 + 1


def test_deferred_records_carry_their_own_request_ids(devkit_logs: CapturedLogs) -> None:
    devkit.init(log_format="console")  # the generic renderer, which reads ids from context
    app = _app()

    async def run() -> list[dict[str, Any]]:
        sent = [await _request(app), await _request(app)]
        assert _access_lines(devkit_logs) == []
        await asyncio.sleep(0)
        return sent

    sent = asyncio.run(run())
    cids = [s["headers"][b"x-correlation-id"].decode().encode() for s in sent]
    lines = [line for line in devkit_logs.lines if b"request completed" in line and b"/ok/" in line]
    # Written outside the requests' contexts: each record has its own request's ids.
    assert len(lines) == 2
    for line, cid, other in zip(lines, cids, reversed(cids), strict=True):
        assert cid in line and other not in line
        assert b"trace_id" in line and b"span_id" in line


def test_an_iterations_records_go_out_together_and_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with piped_writes() as stdout:
        monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(stdout))
        devkit.init()
        app = _app()
        paths = [f"/ok/{n}" for n in range(12)]
        paths[6] += "/failed"  # an error's record is written at once, after those before it

        async def run() -> None:
            for path in paths:
                await _request(app, path)
            before = len(stdout.sizes)
            await asyncio.sleep(0)
            # Those before the error, the error's, those after it: each under PIPE_BUF.
            assert len(stdout.sizes) - before == 3

        asyncio.run(run())
        records = [orjson.loads(line) for line in stdout.lines_with(_ACCESS)]
    assert [r["path"] for r in records] == paths
    assert [r["level"] for r in records] == ["info"] * 6 + ["error"] + ["info"] * 5


def test_pending_requests_are_bounded_and_none_is_lost(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    app = _app()
    core = _core()
    count = MAX_PENDING * 2 + 10

    async def run() -> list[str]:
        cids = []
        for n in range(count):
            sent = await _request(app, f"/ok/{n}")
            cids.append(sent["headers"][b"x-correlation-id"].decode())
            assert 0 < len(core._pending) <= MAX_PENDING
        await asyncio.sleep(0)
        return cids

    cids = asyncio.run(run())
    records = [orjson.loads(line) for line in _access_lines(devkit_logs)]
    assert [r["correlation_id"] for r in records] == cids


def test_without_a_running_loop_books_close_at_once(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    core = _core()
    core.finish_soon(_begin(core, "/ok/sync", 204), "/ok/{n}")
    assert len(core._pending) == 0
    (line,) = _access_lines(devkit_logs)
    assert orjson.loads(line)["status_code"] == 204


def test_readers_close_the_books_first(
    devkit_logs: CapturedLogs, devkit_metrics: MetricSamples
) -> None:
    devkit.init()
    app = _app()
    core = _core()
    labels = {"method": "GET", "route": "/ok/{n}", "status_code": "200"}

    async def run() -> None:
        await _request(app)
        assert len(core._pending) == 1
        # /metrics reflects every request that ended before the scrape.
        status, _, body = core.endpoints.answer("/metrics")
        assert status == 200
        sample = b'http_requests_total{method="GET",route="/ok/{n}",status_code="200"} 1.0'
        assert sample in body
        await _request(app)
        assert devkit_metrics.sample_value("http_requests_total", labels) == 2.0
        await _request(app)
        assert _setup.flush(5.0)  # what the ASGI lifespan shutdown calls
        assert len(_access_lines(devkit_logs)) == 3
        await _request(app)
        assert len(devkit_logs.find(message="request completed", route="/ok/{n}")) == 4

    asyncio.run(run())


def test_shutdown_closes_the_books(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    core = _core()

    async def run() -> None:
        busy = _begin(core, "/ok/busy")
        last = _begin(core, "/ok/last")
        asyncio.get_running_loop().call_soon(_other_work)
        core.finish_soon(last, "/ok/{n}")
        core.finish(busy, "/ok/{n}")
        assert len(core._pending) == 1
        devkit.shutdown()  # before the loop's iteration ends
        paths = [orjson.loads(line)["path"] for line in _access_lines(devkit_logs)]
        assert paths == ["/ok/busy", "/ok/last"]

    asyncio.run(run())


def test_books_closed_from_another_thread_are_closed_once(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    app = _app()
    core = _core()
    stop = threading.Event()

    def reader() -> None:  # a scrape on the metrics port, a test reading records
        while not stop.is_set():
            core.flush_pending()

    thread = threading.Thread(target=reader)
    thread.start()

    async def run() -> list[str]:
        cids = []
        for batch in range(40):
            sent = await asyncio.gather(*(_request(app, f"/ok/{batch}") for _ in range(25)))
            cids += [s["headers"][b"x-correlation-id"].decode() for s in sent]
            await asyncio.sleep(0)
        return cids

    try:
        cids = asyncio.run(run())
    finally:
        stop.set()
        thread.join()
    records = devkit_logs.find(message="request completed")
    assert sorted(r["correlation_id"] for r in records) == sorted(cids)
