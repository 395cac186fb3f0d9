"""Acceptance under gunicorn: a Flask app with two sync workers, with and without --preload.

One module-scoped run per mode starts gunicorn on a fresh ``PROMETHEUS_MULTIPROC_DIR``,
sends all the traffic, scrapes, stops gunicorn with SIGTERM and keeps what it saw; the
tests only read that record, so the exact counts do not depend on test order.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import OTLPReceiver, attributes, clean_env, free_port, samples, serve, value

pytestmark = pytest.mark.integration

GUNICORN = Path(sys.executable).parent / "gunicorn"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
ITEMS_ROUTE = "/items/<int:item_id>"
ITEMS = 60
BOOMS = 3
UNAVAILABLE = 2
UNKNOWN = 4
STOCK = 2
TRACED = ITEMS + BOOMS + UNAVAILABLE + UNKNOWN + STOCK
SCRAPES = 10
HEX32 = re.compile(r"[0-9a-f]{32}")
BOOTED = re.compile(r"Booting worker with pid: (\d+)")


def _control_socket_off() -> list[str]:
    # gunicorn >= 25 opens a control socket at a fixed path in $HOME; parallel servers clash.
    from gunicorn.config import KNOWN_SETTINGS

    names = {setting.name for setting in KNOWN_SETTINGS}
    return ["--no-control-socket"] if "control_socket_disable" in names else []


@dataclass
class Sent:
    path: str
    cid: str
    status: int
    echoed: str | None
    pid: int | None


@dataclass
class Run:
    mode: str
    master_pid: int
    sent: list[Sent]
    scrapes: list[str]
    openmetrics: httpx.Response
    spans_before_stop: int
    killed_pid: int
    replacement_booted: bool
    scrapes_after_kill: list[str]
    files_after_kill: list[str]
    stop_seconds: float | None
    returncode: int | None
    output: str
    records: list[dict[str, Any]]
    receiver: OTLPReceiver
    by_cid: dict[str, Sent] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_cid = {s.cid: s for s in self.sent}

    def records_for(self, cid: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("correlation_id") == cid]

    def access(self, cid: str) -> dict[str, Any]:
        (record,) = [r for r in self.records_for(cid) if r["message"] == "request completed"]
        return record


def _send(base: str, path: str, cid: str) -> Sent:
    # A new connection per request (httpx.get): gunicorn's workers take turns accepting.
    response = httpx.get(base + path, headers={"X-Correlation-ID": cid}, timeout=10)
    pid = None
    if path.startswith("/items/"):
        pid = int(response.json()["pid"])
    return Sent(path, cid, response.status_code, response.headers.get("x-correlation-id"), pid)


def _traffic() -> list[tuple[str, str]]:
    plan = [(f"/items/{i % 5}", f"item-{i}") for i in range(ITEMS)]
    plan += [("/boom", f"boom-{i}") for i in range(BOOMS)]
    plan += [("/unavailable", f"unavailable-{i}") for i in range(UNAVAILABLE)]
    plan += [(f"/no/such/path/{i}", f"unknown-{i}") for i in range(UNKNOWN)]
    plan += [(f"/stock/{900 + i}", f"stock-{i}") for i in range(STOCK)]
    return plan


def _server_spans(receiver: OTLPReceiver) -> list[tuple[Any, Any]]:
    return [(res, span) for res, span in receiver.spans() if span.kind == span.SPAN_KIND_SERVER]


@pytest.fixture(scope="module", params=["workers", "preload"])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    mode = request.param
    tmp = tmp_path_factory.mktemp(f"gunicorn-{mode}")
    multiproc = tmp / "prometheus"
    multiproc.mkdir()
    receiver = OTLPReceiver().start()
    port = free_port()
    env = clean_env(
        PORT=str(port),
        WEB_CONCURRENCY="2",
        PROMETHEUS_MULTIPROC_DIR=str(multiproc),
        DEVKIT_SERVICE_NAME="shop",
        DEVKIT_SAMPLE_SUCCESS_RATIO="1.0",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
    )
    argv = [str(GUNICORN), "-c", "examples/gunicorn_conf.py", *_control_socket_off()]
    if mode == "preload":
        argv.append("--preload")
    argv.append("examples.flask_app:app")
    try:
        # Ready once the startup probe passes: that needs devkit.health.mark_started().
        with serve(argv, env, tmp, port, ready_path="/healthz/startup") as server:
            base = server.url
            with ThreadPoolExecutor(max_workers=6) as pool:
                sent = list(pool.map(lambda item: _send(base, *item), _traffic()))
            scrapes = [httpx.get(base + "/metrics", timeout=10).text for _ in range(SCRAPES)]
            openmetrics = httpx.get(base + "/metrics", headers={"Accept": OPENMETRICS}, timeout=10)
            # The export thread of each worker ships spans while gunicorn runs.
            receiver.wait_for(lambda r: len(_server_spans(r)) >= TRACED, timeout=20)
            spans_before_stop = len(_server_spans(receiver))

            # A worker dies: gunicorn's child_exit hook (mark_process_dead) cleans up after it.
            killed_pid = next(s.pid for s in sent if s.pid is not None)
            booted = len(BOOTED.findall(server.output()))
            os.kill(killed_pid, signal.SIGKILL)
            deadline = time.monotonic() + 20
            while len(BOOTED.findall(server.output())) <= booted and time.monotonic() < deadline:
                time.sleep(0.05)
            replacement_booted = len(BOOTED.findall(server.output())) > booted
            scrapes_after_kill = [httpx.get(base + "/metrics", timeout=10).text for _ in range(4)]
            files_after_kill = sorted(path.name for path in multiproc.iterdir())

            start = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            try:
                server.proc.wait(30)
                stop_seconds: float | None = time.monotonic() - start
            except subprocess.TimeoutExpired:
                stop_seconds = None
            returncode = server.proc.returncode
            receiver.wait_for(lambda r: len(_server_spans(r)) >= TRACED, timeout=5)
            yield Run(
                mode=mode,
                master_pid=server.proc.pid,
                sent=sent,
                scrapes=scrapes,
                openmetrics=openmetrics,
                spans_before_stop=spans_before_stop,
                killed_pid=killed_pid,
                replacement_booted=replacement_booted,
                scrapes_after_kill=scrapes_after_kill,
                files_after_kill=files_after_kill,
                stop_seconds=stop_seconds,
                returncode=returncode,
                output=server.output(),
                records=server.json_lines(),
                receiver=receiver,
            )
    finally:
        receiver.stop()


def test_every_request_answered_with_its_correlation_id(run: Run) -> None:
    statuses = Counter((s.path.split("/")[1], s.status) for s in run.sent)
    assert statuses == {
        ("items", 200): ITEMS,
        ("boom", 500): BOOMS,
        ("unavailable", 503): UNAVAILABLE,
        ("no", 404): UNKNOWN,
        ("stock", 404): STOCK,
    }
    assert all(s.echoed == s.cid for s in run.sent)


def test_both_workers_served(run: Run) -> None:
    pids = {s.pid for s in run.sent if s.pid is not None}
    assert len(pids) == 2, pids
    assert run.master_pid not in pids


def test_every_scrape_sums_all_workers(run: Run) -> None:
    allowed_routes = {ITEMS_ROUTE, "/boom", "/unavailable", "/stock/<int:item_id>", "<unmatched>"}
    for text in run.scrapes:
        assert (
            value(text, "http_requests_total", method="GET", route=ITEMS_ROUTE, status_code="200")
            == ITEMS
        )
        assert (
            value(
                text,
                "http_request_duration_seconds_count",
                method="GET",
                route=ITEMS_ROUTE,
                status_code="200",
            )
            == ITEMS
        )
        assert (
            value(
                text,
                "http_requests_errors_total",
                method="GET",
                route=ITEMS_ROUTE,
                status_code="200",
            )
            == 0
        )
        assert (
            value(
                text, "http_requests_errors_total", method="GET", route="/boom", status_code="500"
            )
            == BOOMS
        )
        assert (
            value(
                text,
                "http_requests_errors_total",
                method="GET",
                route="/unavailable",
                status_code="503",
            )
            == UNAVAILABLE
        )
        assert (
            value(text, "http_requests_total", method="GET", route="<unmatched>", status_code="404")
            == UNKNOWN
        )
        assert (
            value(
                text,
                "http_requests_total",
                method="GET",
                route="/stock/<int:item_id>",
                status_code="404",
            )
            == STOCK
        )
        # Nothing is in flight between requests, whichever worker answers.
        assert value(text, "http_requests_in_progress", method="GET") == 0
        routes = {dict(labels).get("route") for (_, labels) in samples(text)} - {None}
        assert routes == allowed_routes, routes
        assert "/no/such/path/0" not in text and "/items/3" not in text
        assert 'le="0.3"' in text


def test_openmetrics_scrape_carries_exemplars_of_exported_traces(run: Run) -> None:
    om = run.openmetrics
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.text.rstrip().endswith("# EOF")
    assert all("# {trace_id=" not in text for text in run.scrapes)
    exemplars = re.findall(
        r"^http_request_duration_seconds_bucket\{.*\} \d+(?:\.\d+)? "
        r'# \{trace_id="([0-9a-f]{32})"\}',
        om.text,
        re.MULTILINE,
    )
    assert exemplars, om.text
    # An exemplar links to a trace that exists.
    assert set(exemplars) <= run.receiver.trace_ids()


def test_wsgi_server_spans_carry_the_recommended_http_attributes(run: Run) -> None:
    items = [
        attributes(span)
        for _, span in _server_spans(run.receiver)
        if attributes(span).get("http.route", "").startswith("/items/")
    ]
    assert items
    for got in items:
        assert got["server.address"] == "127.0.0.1" and isinstance(got["server.port"], int)
        assert got["client.address"] == got["network.peer.address"] == "127.0.0.1"
        assert got["network.protocol.version"] == "1.1"
        assert got["user_agent.original"].startswith("python-httpx/")
        assert got["http.response.body.size"] > 0
        assert "url.query" not in got


def test_access_log_carries_correlation_and_trace(run: Run) -> None:
    for s in run.sent:
        access = run.access(s.cid)
        assert access["logger"] == "devkit.access"
        assert access["status_code"] == s.status
        assert access["path"] == s.path
        assert HEX32.fullmatch(access["trace_id"]) and access["trace_id"] != "0" * 32
        assert re.fullmatch(r"[0-9a-f]{16}", access["span_id"])
    item = run.access("item-7")
    assert item["route"] == ITEMS_ROUTE and item["method"] == "GET" and item["level"] == "info"
    assert isinstance(item["duration_ms"], float | int)
    (app_log,) = [r for r in run.records_for("item-7") if r["message"] == "item fetched"]
    assert app_log["item_id"] == 7 % 5
    assert app_log["trace_id"] == item["trace_id"] and app_log["span_id"] == item["span_id"]
    unknown = run.access("unknown-0")
    assert unknown["route"] == "<unmatched>" and unknown["level"] == "warn"
    assert run.access("unavailable-0")["level"] == "error"


def test_errorhandler_log_carries_the_request_trace(run: Run) -> None:
    for i in range(STOCK):
        cid = f"stock-{i}"
        access = run.access(cid)
        (handled,) = [r for r in run.records_for(cid) if r["message"] == "unknown item handled"]
        assert handled["trace_id"] == access["trace_id"] != "0" * 32
        assert handled["span_id"] == access["span_id"]
        assert access["route"] == "/stock/<int:item_id>" and access["status_code"] == 404


def test_unhandled_exception_is_counted_and_logged_with_its_trace(run: Run) -> None:
    access = run.access("boom-0")
    assert access["level"] == "error" and access["status_code"] == 500
    assert access["route"] == "/boom"
    assert "ada@example.com" not in run.output
    # Flask turns the exception into a 500 and logs it, inside devkit's middleware.
    (flask_log,) = [
        r for r in run.records_for("boom-0") if r["message"] == "Exception on /boom [GET]"
    ]
    assert flask_log["trace_id"] == access["trace_id"] != "0" * 32
    assert flask_log["error"]["type"] == "RuntimeError"
    (span,) = [
        span
        for _, span in _server_spans(run.receiver)
        if attributes(span).get("correlation.id") == "boom-0"
    ]
    assert span.status.code == span.status.STATUS_CODE_ERROR


def test_unhandled_exception_reaches_access_log_and_span(run: Run) -> None:
    """SPEC 3 and 5: the access record has ``error``, the span an exception event.

    Flask converts the view's exception into a 500 inside ``wsgi_app``; the Django
    integration keeps it (``process_exception``), the FastAPI one sees it raised.
    """
    access = run.access("boom-1")
    (span,) = [
        span
        for _, span in _server_spans(run.receiver)
        if attributes(span).get("correlation.id") == "boom-1"
    ]
    assert [e.name for e in span.events] == ["exception"], span.events
    assert attributes(span).get("error.type") == "RuntimeError"
    assert access.get("error", {}).get("type") == "RuntimeError", access


def test_spans_exported_from_both_workers_while_running(run: Run) -> None:
    assert run.spans_before_stop == TRACED
    spans = _server_spans(run.receiver)
    cids = Counter(attributes(span).get("correlation.id") for _, span in spans)
    # Exactly one server span per request, none for probes or scrapes, none twice.
    assert cids == Counter(s.cid for s in run.sent)
    pids_with_spans = {run.by_cid[cid].pid for cid in cids} - {None}
    assert len(pids_with_spans) == 2
    # Each worker is its own service instance in the resource, also when forked (--preload).
    instances: dict[int, set[str]] = {}
    for resource, span in spans:
        pid = run.by_cid[attributes(span)["correlation.id"]].pid
        if pid is not None:
            instances.setdefault(pid, set()).add(attributes(resource)["service.instance.id"])
    assert all(len(ids) == 1 for ids in instances.values()), instances
    assert len(set().union(*instances.values())) == 2, instances
    by_cid = {attributes(span)["correlation.id"]: span for _, span in spans}
    item = by_cid["item-3"]
    assert item.name == f"GET {ITEMS_ROUTE}"
    assert attributes(item)["http.route"] == ITEMS_ROUTE
    assert item.trace_id.hex() == run.access("item-3")["trace_id"]
    assert {attributes(res)["service.name"] for res, _ in spans} == {"shop"}


def test_dead_worker_counts_kept_and_its_live_files_removed(run: Run) -> None:
    assert run.replacement_booted, run.output[-3000:]
    dead = str(run.killed_pid)
    # Counters of the dead worker still count; its live gauge and exemplar files are gone.
    assert f"counter_{dead}.db" in run.files_after_kill
    assert f"gauge_livesum_{dead}.db" not in run.files_after_kill
    assert f"devkit-exemplars-{dead}.json" not in run.files_after_kill
    for text in run.scrapes_after_kill:
        assert (
            value(text, "http_requests_total", method="GET", route=ITEMS_ROUTE, status_code="200")
            == ITEMS
        )
        assert value(text, "http_requests_in_progress", method="GET") == 0


def test_sigterm_stops_gunicorn_promptly(run: Run) -> None:
    assert run.stop_seconds is not None, "gunicorn did not exit within 30 s of SIGTERM"
    assert run.stop_seconds < 30
    assert run.returncode == 0, run.output[-3000:]
    assert len(_server_spans(run.receiver)) == TRACED
    # No crash outside the JSON records (the /boom tracebacks are inside them).
    assert not [line for line in run.output.splitlines() if "Traceback" in line[:20]]
