"""A WSGI request's span end and access record wait to be done with the next requests'.

The RED metrics are counted when the response closes; the span's end and the record of
a request without an error wait until ``RECORD_BATCH`` wait, or ``RECORD_DELAY_S`` after
the oldest ended when no request follows (``Core.finish_copied``). These tests pin what
that must not change: every record is written once, in order, with the request's own end
time and ids; every span ends once, at the request's end, and a kept trace's exemplars
reach the metrics; counts are never late; errors are done at once; nothing waits past the
bound, a read or a shutdown; and the thread that does idle books does not outlive the idle.
"""

from __future__ import annotations

import io
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson
import pytest
from opentelemetry import trace
from prometheus_client import REGISTRY

import devkit
from devkit import _errors, _state, logs
from devkit.http import _timer
from devkit.http._core import RECORD_BATCH, RECORD_DELAY_S, Core
from devkit.testing import CapturedLogs, CapturedSpans
from streams import RecordedWrites, piped_writes

_ACCESS = b'"message":"request completed"'


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    status = environ["PATH_INFO"].rsplit("/", 1)[-1]
    if status == "raise":
        raise RuntimeError("bad")
    if status == "slow":
        time.sleep(0.03)
        status = "200"
    start_response(f"{status} X", [("Content-Type", "text/plain")])
    return [b"ok"]


def _call(app: Any, path: str) -> str:
    """One request through ``app`` as a WSGI server makes it; its correlation id."""
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen.update(headers)
        return lambda data: None

    body = app({"REQUEST_METHOD": "GET", "PATH_INFO": path}, start_response)
    try:
        for _ in body:
            pass
    finally:
        body.close()
    return str(seen["X-Correlation-ID"])


def _access(logs: CapturedLogs) -> list[dict[str, Any]]:
    """The access records written so far (raw lines: reading them writes nothing)."""
    return [orjson.loads(line) for line in list(logs.lines) if _ACCESS in line]


def _core() -> Core:
    core = _state.core()
    assert core is not None
    return core


def _records_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "devkit-records"]


def test_records_wait_for_a_batch_and_keep_their_order_and_ids(
    devkit_logs: CapturedLogs,
) -> None:
    devkit.init()
    app = devkit.wsgi(_app)
    cids = []
    ends = []
    for i in range(RECORD_BATCH - 1):
        cids.append(_call(app, f"/r{i}/200"))
        ends.append(time.time())
        time.sleep(0.001)
    # Nothing written yet: they wait for the request that fills the batch.
    assert _access(devkit_logs) == []
    cids.append(_call(app, "/last/200"))
    records = _access(devkit_logs)
    assert [r["correlation_id"] for r in records] == cids
    assert [r["path"] for r in records] == [f"/r{i}/200" for i in range(RECORD_BATCH - 1)] + [
        "/last/200"
    ]
    # Each record carries its own request's end, not the time it was written.
    for record, end in zip(records[:-1], ends, strict=False):
        stamp = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()
        assert end - 0.005 <= stamp <= end + 0.001, (record, end)
    assert len({r["trace_id"] for r in records}) == RECORD_BATCH


def test_counts_are_not_late(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    app = devkit.wsgi(_app)
    _call(app, "/a/200")
    labels = {"method": "GET", "route": "<unmatched>", "status_code": "200"}
    # Read without a flush: the count is there while the record still waits.
    assert REGISTRY.get_sample_value("http_requests_total", labels) == 1.0
    assert REGISTRY.get_sample_value("http_requests_in_progress", {"method": "GET"}) == 0.0
    assert _access(devkit_logs) == []
    assert [r["path"] for r in devkit_logs.records] == ["/a/200"]  # a read writes it


def _exemplar(name: str, labels: dict[str, str]) -> str | None:
    """The trace id of the exemplar on sample ``name`` (read raw: reading flushes nothing)."""
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name == name and sample.labels == labels and sample.exemplar is not None:
                return str(sample.exemplar.labels["trace_id"])
    return None


def test_spans_end_with_the_records_at_their_own_end(devkit_spans: CapturedSpans) -> None:
    devkit.init(sample_success_ratio=1.0)
    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(trace.get_current_span())
        return _app(environ, start_response)

    wrapped = devkit.wsgi(app)
    _call(wrapped, "/a/200")
    closed = time.time_ns()
    (span,) = seen
    # The span waits with the record: not ended, no decision, no exemplar yet; counted.
    assert span.end_time is None
    labels = {"method": "GET", "route": "<unmatched>", "status_code": "200"}
    assert REGISTRY.get_sample_value("http_requests_total", labels) == 1.0
    assert _exemplar("http_requests_total", labels) is None
    time.sleep(0.02)
    _core().flush_pending()
    # Ended once, at the request's end (not the batch's), kept, and linked from the metrics.
    assert span.end_time is not None and span.start_time < span.end_time <= closed
    (exported,) = devkit_spans.spans
    assert exported.context.span_id == span.context.span_id
    assert _exemplar("http_requests_total", labels) == "%032x" % span.context.trace_id
    _call(wrapped, "/b/500")  # an error: its span ends at once, with its record
    assert seen[1].end_time is not None


def test_counts_wait_with_the_batch_and_any_read_counts_them_first(
    devkit_logs: CapturedLogs,
) -> None:
    devkit.init(sample_success_ratio=0.0)
    app = devkit.wsgi(_app)
    _call(app, "/a/200")
    _call(app, "/b/200")
    waiting = list(_core()._records)
    assert [r.path for r in waiting] == ["/a/200", "/b/200"]
    assert not any(r.counted for r in waiting)  # counted with their batch...
    labels = {"method": "GET", "route": "<unmatched>", "status_code": "200"}
    # ...or by the first read of the registry, whoever reads it.
    assert [m.name for m in REGISTRY.collect()]  # a read that looks at no sample
    assert all(r.counted for r in waiting)
    assert REGISTRY.get_sample_value("http_requests_total", labels) == 2.0
    assert _access(devkit_logs) == []  # the read counted; the records still wait
    _core().flush_pending()
    assert REGISTRY.get_sample_value("http_requests_total", labels) == 2.0  # once each
    assert len(_access(devkit_logs)) == 2


def test_a_request_counted_in_its_batch_links_its_kept_trace(
    devkit_spans: CapturedSpans,
) -> None:
    devkit.init(sample_success_ratio=1.0)
    app = devkit.wsgi(_app)
    for i in range(RECORD_BATCH):  # the last one does the batch: no read before it
        _call(app, f"/r{i}/200")
    assert not _core()._records
    labels = {"method": "GET", "route": "<unmatched>", "status_code": "200"}
    trace_id = _exemplar("http_requests_total", labels)
    assert trace_id is not None
    assert REGISTRY.get_sample_value("http_requests_total", labels) == RECORD_BATCH
    spans = devkit_spans.spans
    assert trace_id == "%032x" % spans[-1].context.trace_id  # the batch's last request


def test_a_batch_whose_spans_fail_to_end_together_ends_them_one_by_one(
    devkit_spans: CapturedSpans, devkit_logs: CapturedLogs, monkeypatch: pytest.MonkeyPatch
) -> None:
    _errors.set_strict(False)  # the failure is counted, not raised
    devkit.init(sample_success_ratio=1.0)
    factory = _core().server_spans
    assert factory is not None

    def fail(spans: Any) -> list[bool]:
        raise RuntimeError("boom")

    monkeypatch.setattr(factory, "end_requests", fail)
    app = devkit.wsgi(_app)
    for i in range(3):
        _call(app, f"/f{i}/200")
    _core().flush_pending()
    # Nothing is lost: each span ended, was kept and exported, each request was counted
    # with its trace's exemplar and logged; the failure was counted.
    assert len(devkit_spans.spans) == 3
    labels = {"method": "GET", "route": "<unmatched>", "status_code": "200"}
    assert REGISTRY.get_sample_value("http_requests_total", labels) == 3.0
    assert _exemplar("http_requests_total", labels) == (
        "%032x" % devkit_spans.spans[-1].context.trace_id
    )
    assert len(_access(devkit_logs)) == 3
    assert _errors.counts().get(("middleware", "finish_failed"), 0) >= 1


def _wait_one(environ: dict[str, Any]) -> Any:
    """Serve one request whose books wait; its waiting record."""
    app = devkit.wsgi(_app)
    body = app(environ, lambda status, headers, exc_info=None: None)
    list(body)
    body.close()
    (waiting,) = _core()._records
    return waiting


def _environ(path: str = "/a/200") -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "HTTP_USER_AGENT": "ua",
        "wsgi.input": io.BytesIO(b""),
    }


def test_a_waiting_request_keeps_no_server_object_alive() -> None:
    """The environ holds the server's objects (socket, parser, body): a request whose
    books wait keeps only what its span reads, in a tuple of plain text the garbage
    collector untracks at its first look, so waiting requests are not promoted to older
    generations and do not bring on full collections."""
    import gc

    from devkit.http._core import _ENVIRON_DETAIL_KEYS

    devkit.init(sample_success_ratio=1.0)
    environ = _environ()
    waiting = _wait_one(environ)
    assert type(waiting.source) is tuple
    details = dict(zip(_ENVIRON_DETAIL_KEYS, waiting.source, strict=True))
    assert details["HTTP_USER_AGENT"] == "ua" and details["REQUEST_METHOD"] == "GET"
    assert details["HTTP_HOST"] is None and environ["wsgi.input"] not in waiting.source
    gc.collect(0)
    assert gc.is_tracked(environ) and not gc.is_tracked(waiting.source)
    _core().flush_pending()


@pytest.mark.parametrize("status", ["200 OK", "503 Unavailable"])  # waits, or not
def test_collector_mode_exports_server_spans_with_their_details(
    status: str, devkit_spans: CapturedSpans, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Collector mode exports every span: the tail sampler here keeps none, yet each
    server span keeps what its attributes are read from until it is exported."""
    monkeypatch.setenv("DEVKIT_TAIL_SAMPLING", "collector")
    devkit.init(sample_success_ratio=0.0)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response(status, [("Content-Length", "2")])
        return [b"ok"]

    body = devkit.wsgi(app)(_environ(), lambda status, headers, exc_info=None: None)
    list(body)
    body.close()
    _core().flush_pending()
    (server,) = devkit_spans.spans
    assert server.attributes["user_agent.original"] == "ua"
    assert server.attributes["http.response.body.size"] == 2


def test_a_waiting_request_whose_trace_is_dropped_keeps_nothing_for_its_span() -> None:
    """Nothing will read the environ of a trace the tail sampler drops when the span
    ends: the request that waits keeps neither its details nor the response's headers."""
    devkit.init(sample_success_ratio=0.0)
    waiting = _wait_one(_environ())
    assert waiting.source is None and waiting.response_headers is None
    span = waiting.span
    _core().flush_pending()
    assert span.kept is False


@pytest.mark.parametrize("why", ["slow", "error_child", "error_status", "collector"])
def test_a_waiting_request_that_may_be_exported_keeps_its_details(
    why: str, devkit_spans: CapturedSpans, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever may export the span when it ends keeps what its attributes are read
    from: a request as slow as the threshold, an error span of its trace ended already,
    the app's error status on the span, or collector mode (every span exported)."""
    if why == "collector":
        monkeypatch.setenv("DEVKIT_TAIL_SAMPLING", "collector")
    devkit.init(sample_success_ratio=0.0, slow_threshold_ms=20)
    tracer = trace.get_tracer("test")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if why == "error_child":
            with tracer.start_as_current_span("child") as child:
                child.set_status(trace.StatusCode.ERROR)
        elif why == "error_status":
            trace.get_current_span().set_status(trace.StatusCode.ERROR)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    environ = _environ("/a/slow" if why == "slow" else "/a/200")
    wrapped = devkit.wsgi(_app if why == "slow" else app)
    body = wrapped(environ, lambda status, headers, exc_info=None: None)
    list(body)
    body.close()
    (waiting,) = _core()._records
    assert type(waiting.source) is tuple
    _core().flush_pending()
    (server,) = [s for s in devkit_spans.spans if s.kind is trace.SpanKind.SERVER]
    assert server.attributes["user_agent.original"] == "ua"
    if why != "slow":
        assert server.attributes["http.response.body.size"] == 2


def test_multiprocess_counts_are_not_left_to_a_batch(tmp_path: Any) -> None:
    # A worker killed before its batch would lose them: the files outlive it.
    from prometheus_client import CollectorRegistry

    from devkit.metrics import RedMetrics

    assert RedMetrics(CollectorRegistry()).counts_later
    assert not RedMetrics(CollectorRegistry(), multiprocess_dir=str(tmp_path)).counts_later


def test_spans_wait_when_records_are_off(devkit_spans: CapturedSpans) -> None:
    devkit.init(sample_success_ratio=1.0, log_level="warn")
    app = devkit.wsgi(_app)
    cids = [_call(app, f"/r{i}/200") for i in range(3)]
    deadline = time.monotonic() + 5
    while len(devkit_spans.exporter.get_finished_spans()) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)  # the timer's thread ends them: no read, no flush
    spans = devkit_spans.exporter.get_finished_spans()
    assert sorted(str((s.attributes or {})["correlation.id"]) for s in spans) == sorted(cids)


def test_errors_are_written_at_once_after_the_waiting_ones(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    app = devkit.wsgi(_app)
    _call(app, "/a/200")
    _call(app, "/b/404")
    _call(app, "/c/500")
    assert [(r["path"], r["level"]) for r in _access(devkit_logs)] == [
        ("/a/200", "info"),
        ("/b/404", "warn"),
        ("/c/500", "error"),
    ]
    _call(app, "/d/200")
    with pytest.raises(RuntimeError):
        _call(app, "/e/raise")
    records = _access(devkit_logs)
    assert [r["path"] for r in records][3:] == ["/d/200", "/e/raise"]
    assert records[-1]["error"]["type"] == "RuntimeError"


def test_an_idle_process_writes_them_within_the_delay(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    app = devkit.wsgi(_app)
    _call(app, "/a/200")
    ended = time.monotonic()
    deadline = ended + 5
    while not _access(devkit_logs) and time.monotonic() < deadline:
        time.sleep(0.002)
    waited = time.monotonic() - ended
    assert [r["path"] for r in _access(devkit_logs)] == ["/a/200"]
    # Not before the delay (the timer writes only records that waited it), nor long after.
    assert RECORD_DELAY_S * 0.9 <= waited < RECORD_DELAY_S + 1.0, waited


def test_the_timer_thread_ends_when_idle_and_comes_back(
    devkit_logs: CapturedLogs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("devkit.http._core._RECORD_TIMER_IDLE_S", 0.1)
    devkit.init()
    app = devkit.wsgi(_app)
    assert _records_threads() == []  # none until a record waits
    _call(app, "/a/200")
    assert len(_records_threads()) == 1
    deadline = time.monotonic() + 5
    while _records_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _records_threads() == []
    assert [r["path"] for r in _access(devkit_logs)] == ["/a/200"]
    _call(app, "/b/200")
    assert len(_records_threads()) == 1
    deadline = time.monotonic() + 5
    while not _access(devkit_logs)[1:] and time.monotonic() < deadline:
        time.sleep(0.005)
    assert [r["path"] for r in _access(devkit_logs)] == ["/a/200", "/b/200"]


def test_shutdown_writes_what_waits_and_stops_the_thread(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    app = devkit.wsgi(_app)
    _call(app, "/a/200")
    _call(app, "/b/200")
    devkit.shutdown()
    assert [r["path"] for r in _access(devkit_logs)] == ["/a/200", "/b/200"]
    deadline = time.monotonic() + 2
    while _records_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _records_threads() == []


def test_threads_write_each_record_once(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    app = devkit.wsgi(_app)
    per_thread = 3 * RECORD_BATCH + 5

    def serve(n: int) -> None:
        for i in range(per_thread):
            _call(app, f"/t{n}-{i}/200")

    threads = [threading.Thread(target=serve, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    paths = [r["path"] for r in devkit_logs.records]
    assert sorted(paths) == sorted(f"/t{n}-{i}/200" for n in range(4) for i in range(per_thread))
    _core().flush_pending()
    assert len(_access(devkit_logs)) == 4 * per_thread


@pytest.fixture
def piped_stdout() -> Iterator[RecordedWrites]:
    with piped_writes() as stream:
        yield stream


def test_a_batch_goes_to_a_pipe_in_few_whole_writes(
    piped_stdout: RecordedWrites, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Set here: pytest puts its own capture back between a fixture's setup and the test.
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(piped_stdout))
    devkit.init()
    app = devkit.wsgi(_app)
    before = len(piped_stdout.sizes)
    paths = [f"/r{i}/200" for i in range(RECORD_BATCH)]
    for path in paths:
        _call(app, path)
    sizes = piped_stdout.sizes[before:]
    lines = piped_stdout.lines_with(_ACCESS)
    assert [orjson.loads(line)["path"] for line in lines] == paths
    # Each write whole lines, at most what a pipe writes without splitting, and together.
    assert max(sizes) <= logs.MAX_WRITE_BYTES
    assert len(sizes) <= RECORD_BATCH // 4
    assert bytes(piped_stdout.data).endswith(b"\n")


def test_a_record_the_fast_path_refuses_keeps_its_place(devkit_logs: CapturedLogs) -> None:
    _errors.set_strict(False)  # the lone surrogate is counted, and its record degraded
    devkit.init()
    app = devkit.wsgi(_app)
    # A lone surrogate (a server's undecodable byte) takes the generic path: the
    # records before it are written first.
    paths = [f"/r{i}/200" for i in range(RECORD_BATCH)]
    paths[5] = "/r5\udc80/200"
    for path in paths:
        _call(app, path)
    written = [r["path"] for r in _access(devkit_logs)]
    assert len(written) == RECORD_BATCH
    assert written[:5] == paths[:5] and written[6:] == paths[6:]
    assert written[5].startswith("/r5") and written[5].endswith("/200")


# -- the timer ---------------------------------------------------------------------------


class _Waiting:
    def __init__(self) -> None:
        self.n = 0
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        self.n = 0

    def count(self) -> int:
        return self.n


def test_timer_starts_one_thread_and_ends_after_the_idle_rounds() -> None:
    waiting = _Waiting()
    timer = _timer.FlushTimer(waiting.flush, waiting.count, delay_s=0.01, idle_after_s=0.05)
    waiting.n = 1
    timer.start()
    timer.start()
    assert timer.running and len(_records_threads()) == 1
    deadline = time.monotonic() + 5
    while timer.running and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not timer.running and waiting.n == 0 and waiting.flushes >= 5
    deadline = time.monotonic() + 5
    while _records_threads() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert _records_threads() == []


def test_timer_keeps_running_while_something_waits() -> None:
    waiting = _Waiting()
    timer = _timer.FlushTimer(lambda: None, waiting.count, delay_s=0.01, idle_after_s=0.02)
    waiting.n = 1
    timer.start()
    time.sleep(0.15)
    assert timer.running  # never idle: something waits in every round
    waiting.n = 0
    deadline = time.monotonic() + 5
    while timer.running and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not timer.running


def test_a_stopped_timer_starts_no_thread() -> None:
    waiting = _Waiting()
    timer = _timer.FlushTimer(waiting.flush, waiting.count, delay_s=0.01, idle_after_s=1)
    timer.stop()
    timer.start()
    assert not timer.running and waiting.flushes == 0


def test_a_failing_round_does_not_stop_the_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    from devkit import _errors

    monkeypatch.setattr(_errors, "_strict", False)
    reported: list[str] = []
    monkeypatch.setattr(_errors, "report", lambda *args, **kwargs: reported.append(args[1]))
    waiting = _Waiting()
    calls = []

    def flush() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("stream closed")
        waiting.flush()

    timer = _timer.FlushTimer(flush, waiting.count, delay_s=0.01, idle_after_s=1)
    waiting.n = 1
    timer.start()
    deadline = time.monotonic() + 5
    while waiting.n and time.monotonic() < deadline:
        time.sleep(0.005)
    timer.stop()
    assert reported == ["write_failed"] and len(calls) >= 2 and waiting.n == 0
