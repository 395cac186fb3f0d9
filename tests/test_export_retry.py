"""The export queue keeps a batch whose export failed transiently and tries it again, after
the collector's ``Retry-After`` (capped) or a backoff; final failures are dropped and
counted; everything held counts against the queue's bound.

The OTLP/HTTP exporter here is the real one, posting through a scripted transport (which
records when each post was made) or to devkit's OTLP receiver.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from opentelemetry.exporter.http.transport._base import BaseHTTPResult, BaseHTTPTransport
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult

from devkit import _batch, _keepalive
from devkit._batch import BatchQueue
from devkit._keepalive import (
    Answer,
    KeepAliveTransport,
    WatchedTransport,
    parse_retry_after,
    use_keep_alive,
    watch_answers,
)
from devkit.testing import OTLPReceiver, Reply
from devkit.tracing._otlp import FastOTLPExporter

URL = "http://collector.invalid:4318/v1/traces"


class _Result(BaseHTTPResult):
    __slots__ = ("_headers",)

    def __init__(self, status: int | None, headers: Mapping[str, str], error: Exception | None):
        super().__init__(status_code=status, reason="scripted", error=error)
        object.__setattr__(self, "_headers", {k.lower(): v for k, v in headers.items()})

    def content(self) -> bytes:
        return b""

    def headers(self) -> Mapping[str, str]:
        return self._headers  # type: ignore[no-any-return]


class Scripted(BaseHTTPTransport):
    """Answers each post with the next scripted answer (the last one repeats): a status
    with headers, or an exception as a connection failure. Records when posts came."""

    def __init__(self, *answers: tuple[int, dict[str, str]] | Exception) -> None:
        self.answers = list(answers)
        self.posts: list[float] = []
        self.lock = threading.Lock()

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        data: bytes | None = None,
    ) -> BaseHTTPResult:
        with self.lock:
            self.posts.append(time.monotonic())
            answer = self.answers[0] if len(self.answers) == 1 else self.answers.pop(0)
        if isinstance(answer, Exception):
            return _Result(None, {}, answer)
        status, extra = answer
        return _Result(status, extra, None)

    def is_connection_error(self, exception: Exception | None) -> bool:
        return isinstance(exception, OSError)

    def close(self) -> None:
        pass

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.posts, self.posts[1:], strict=False)]


OK = (200, {})


def spans(n: int) -> list[ReadableSpan]:
    tracer = TracerProvider().get_tracer("retry")
    out = []
    for i in range(n):
        span = tracer.start_span(f"span-{i}")
        span.end()
        out.append(span)  # type: ignore[arg-type]
    return out


@pytest.fixture
def queues() -> Iterator[Callable[..., tuple[BatchQueue, list[tuple[str, int]]]]]:
    made: list[BatchQueue] = []

    def make(exporter: Any, **bounds: Any) -> tuple[BatchQueue, list[tuple[str, int]]]:
        drops: list[tuple[str, int]] = []
        bounds.setdefault("schedule_delay_s", 0.01)
        queue = BatchQueue(exporter, on_drop=lambda reason, n: drops.append((reason, n)), **bounds)
        made.append(queue)
        return queue, drops

    yield make
    for queue in made:
        queue.shutdown(0.5)


@pytest.fixture(autouse=True)
def short_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoffs in tenths of seconds: the policy under test, on a shorter clock."""
    monkeypatch.setattr(_batch, "RETRY_BACKOFF_S", 0.05)


def exporter_with(transport: BaseHTTPTransport, timeout: float = 5.0) -> OTLPSpanExporter:
    return OTLPSpanExporter(endpoint=URL, timeout=timeout, _transport=transport)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# -- the answer to a post ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (OK, None),
        ((400, {}), Answer(retryable=False)),
        ((500, {}), Answer(retryable=False)),
        ((413, {"Retry-After": "1"}), Answer(retryable=False)),
        ((429, {}), Answer(retryable=True)),
        ((502, {}), Answer(retryable=True)),
        ((504, {}), Answer(retryable=True)),
        ((503, {"Retry-After": "2"}), Answer(retryable=True, retry_after_s=2.0)),
        ((429, {"retry-after": " 0.5 "}), Answer(retryable=True, retry_after_s=0.5)),
        ((503, {"Retry-After": "soon"}), Answer(retryable=True)),
        (ConnectionRefusedError("refused"), Answer(retryable=True)),
        (TimeoutError("timed out"), Answer(retryable=True)),
    ],
)
def test_the_watched_transport_notes_what_each_post_was_answered(
    answer: tuple[int, dict[str, str]] | Exception, expected: Answer | None
) -> None:
    watched = WatchedTransport(Scripted(answer))
    watched.last = Answer(retryable=True)  # a stale answer is replaced
    watched.request("POST", URL, data=b"x", timeout=1)
    assert watched.last == expected


def test_a_retry_after_beyond_the_cap_reaches_the_exporter_as_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_keepalive, "RETRY_AFTER_CAP_S", 3.0)
    watched = WatchedTransport(Scripted((429, {"Retry-After": "3600", "X-Other": "kept"})))
    result = watched.request("POST", URL, data=b"x", timeout=1)
    assert result.status_code == 429
    assert result.headers()["Retry-After"] == result.headers()["retry-after"] == "3"
    assert result.headers()["x-other"] == "kept"
    assert watched.last == Answer(retryable=True, retry_after_s=3.0)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("-5") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 < (parse_retry_after(later) or 0) <= 30


def test_the_watcher_goes_around_whatever_transport_the_exporter_has() -> None:
    keep_alive = OTLPSpanExporter(endpoint="http://collector:4318/v1/traces")
    assert use_keep_alive(keep_alive)
    fast = FastOTLPExporter(keep_alive)
    watched = watch_answers(fast)  # devkit's encoder in front: the wrapped exporter's client
    assert isinstance(watched, WatchedTransport)
    assert isinstance(watched.inner, KeepAliveTransport)
    assert watch_answers(fast) is watched  # once
    assert fast.fast  # the fast path still posts through the exporter's client
    https = OTLPSpanExporter(endpoint="https://collector:4318/v1/traces")
    https_watched = watch_answers(https)
    assert https_watched is not None and not isinstance(https_watched.inner, KeepAliveTransport)
    logs = watch_answers(OTLPLogExporter(endpoint="http://collector:4318/v1/logs"))
    assert isinstance(logs, WatchedTransport)
    assert watch_answers(object()) is None


# -- the queue's retries -----------------------------------------------------------------------


def test_a_batch_refused_for_a_while_is_kept_and_delivered_when_the_collector_is_back(
    queues: Callable[..., tuple[BatchQueue, list[tuple[str, int]]]],
) -> None:
    refused = ConnectionRefusedError("refused")
    transport = Scripted(*[refused] * 6, OK)
    # A short exporter timeout: the exporter's own retries give up quickly, the queue's go on.
    queue, drops = queues(exporter_with(transport, timeout=0.2))
    queue(spans(10))
    assert queue.force_flush(10)
    assert queue.exported == 10
    assert drops == []
    assert len(transport.posts) == 7


def test_retry_after_sets_the_wait_before_the_next_attempt(
    queues: Callable[..., tuple[BatchQueue, list[tuple[str, int]]]],
) -> None:
    asked = {"Retry-After": "0.4"}
    transport = Scripted((429, asked), (503, asked), (429, asked), (503, asked), OK)
    queue, drops = queues(exporter_with(transport, timeout=0.5))
    queue(spans(3))
    assert wait_until(lambda: queue.exported == 3)
    assert drops == []
    gaps = transport.gaps()
    assert len(gaps) == 4
    # Waited what the collector asked each time, whether the exporter's own retry loop
    # waited (within its timeout) or the queue did (after the exporter gave up).
    assert all(0.4 <= gap < 1.0 for gap in gaps), gaps


def test_retry_after_beyond_the_cap_waits_the_cap(
    queues: Callable[..., tuple[BatchQueue, list[tuple[str, int]]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_keepalive, "RETRY_AFTER_CAP_S", 0.3)
    transport = Scripted((429, {"Retry-After": "3600"}), (503, {"Retry-After": "86400"}), OK)
    queue, drops = queues(exporter_with(transport, timeout=0.2))
    queue(spans(2))
    assert wait_until(lambda: queue.exported == 2, timeout=5)
    assert drops == []
    assert all(0.3 <= gap < 1.0 for gap in transport.gaps()), transport.gaps()


def test_without_retry_after_the_wait_doubles_up_to_the_cap(
    queues: Callable[..., tuple[BatchQueue, list[tuple[str, int]]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_keepalive, "RETRY_AFTER_CAP_S", 0.25)
    monkeypatch.setattr(_batch, "RETRY_BACKOFF_S", 0.04)
    transport = Scripted(*[(502, {})] * 5, OK)
    # timeout=0: the exporter posts once per export and leaves every retry to the queue.
    queue, drops = queues(exporter_with(transport, timeout=0.0001))
    queue(spans(1))
    assert wait_until(lambda: queue.exported == 1, timeout=5)
    gaps = transport.gaps()
    assert len(gaps) == 5 and drops == []
    # 0.04, 0.08, 0.16, then the cap (0.25), each with a fifth of jitter either way.
    for gap, nominal in zip(gaps, [0.04, 0.08, 0.16, 0.25, 0.25], strict=True):
        assert nominal * 0.8 <= gap < nominal * 1.2 + 0.1, gaps


@pytest.mark.parametrize("status", [400, 401, 404, 413, 500])
def test_a_final_failure_drops_and_counts_the_batch_at_once(
    queues: Callable[..., tuple[BatchQueue, list[tuple[str, int]]]], status: int
) -> None:
    transport = Scripted((status, {"Retry-After": "1"}), OK)
    queue, drops = queues(exporter_with(transport))
    queue(spans(4))
    assert queue.force_flush(5)
    assert drops == [("export_failed", 4)]
    assert len(transport.posts) == 1
    queue(spans(1))  # the next batch goes out as usual
    assert queue.force_flush(5) and queue.exported == 1


def test_held_items_count_against_the_bound(
    queues: Callable[..., tuple[BatchQueue, list[tuple[str, int]]]],
) -> None:
    transport = Scripted(ConnectionRefusedError("refused"))
    queue, drops = queues(exporter_with(transport, timeout=0.05), max_queue_size=50)
    for _ in range(20):
        queue(spans(10))
        time.sleep(0.005)
    assert wait_until(lambda: len(transport.posts) >= 2)
    assert queue.pending() <= 50
    dropped = sum(n for reason, n in drops if reason == "export_queue_full")
    assert dropped == 200 - queue.pending()
    assert queue.exported == 0


def test_the_request_path_never_waits_for_a_held_batch(
    queues: Callable[..., tuple[BatchQueue, list[tuple[str, int]]]],
) -> None:
    transport = Scripted((503, {"Retry-After": "5"}))
    queue, _ = queues(exporter_with(transport, timeout=10), max_queue_size=100)
    queue(spans(5))
    assert wait_until(lambda: len(transport.posts) >= 1)
    batch = spans(1)
    started = time.perf_counter()
    for _ in range(1000):
        queue(batch)
    assert time.perf_counter() - started < 0.5  # appends, not waits


def test_a_flush_tries_a_held_batch_at_once(
    queues: Callable[..., tuple[BatchQueue, list[tuple[str, int]]]],
) -> None:
    transport = Scripted((503, {"Retry-After": "8"}), OK)
    queue, drops = queues(exporter_with(transport, timeout=0.1))
    queue(spans(3))
    assert wait_until(lambda: len(transport.posts) == 1)
    time.sleep(0.2)  # the exporter gave up; the queue holds the batch for 8 s
    assert queue.pending() == 3
    started = time.monotonic()
    assert queue.force_flush(5)
    assert time.monotonic() - started < 2
    assert queue.exported == 3 and drops == []


def test_shutdown_keeps_its_budget_and_counts_what_is_still_held(
    queues: Callable[..., tuple[BatchQueue, list[tuple[str, int]]]],
) -> None:
    transport = Scripted(ConnectionRefusedError("refused"))
    queue, drops = queues(exporter_with(transport, timeout=0.05))
    queue(spans(7))
    assert wait_until(lambda: len(transport.posts) >= 1)
    started = time.monotonic()
    assert not queue.shutdown(0.5)
    assert time.monotonic() - started < 1.5
    assert sum(n for _, n in drops) == 7, drops
    assert {reason for reason, _ in drops} == {"shutdown_timeout"}
    queue(spans(1))
    assert drops[-1] == ("exporter_closed", 1)


def test_other_exporters_failures_stay_final(
    queues: Callable[..., tuple[BatchQueue, list[tuple[str, int]]]],
) -> None:
    class Failing:
        calls = 0

        def export(self, batch: Any) -> SpanExportResult:
            Failing.calls += 1
            return SpanExportResult.FAILURE

        def shutdown(self) -> None:
            pass

    queue, drops = queues(Failing())
    queue(spans(2))
    assert queue.force_flush(5)
    assert drops == [("export_failed", 2)] and Failing.calls == 1


def test_a_collector_that_recovers_gets_every_held_span_once(
    queues: Callable[..., tuple[BatchQueue, list[tuple[str, int]]]],
) -> None:
    """End to end through devkit's encoder and keep-alive transport to a real receiver."""
    with OTLPReceiver(reply=Reply(status=503, headers={"Retry-After": "0.2"})) as receiver:
        exporter = OTLPSpanExporter(endpoint=receiver.traces_url, timeout=0.3)
        assert use_keep_alive(exporter)
        fast = FastOTLPExporter(exporter)
        queue, drops = queues(fast, max_batch_size=8)
        sent = spans(20)
        queue(sent)
        assert wait_until(lambda: len(receiver.received()) >= 3)
        assert queue.exported == 0
        receiver.reply = Reply()
        assert queue.force_flush(5)
        assert drops == [] and queue.exported == 20
        accepted = receiver.received()[-3:]  # what the answer 200 went to
        got = {
            span.span_id
            for post in accepted
            for rs in post.export_request().resource_spans  # type: ignore[union-attr]
            for ss in rs.scope_spans
            for span in ss.spans
        }
        assert got == {s.context.span_id.to_bytes(8, "big") for s in sent}
        assert fast.fast_batches >= 1 and fast.fallback_batches == 0
