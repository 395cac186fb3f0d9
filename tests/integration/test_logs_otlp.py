"""Acceptance of logs over OTLP: a real uvicorn process exports its records and its spans
to a local OTLP receiver; every line on stdout arrives as a log record."""

from __future__ import annotations

import collections
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import OTLPReceiver, attributes, clean_env, free_port, serve, uvicorn_argv

pytestmark = pytest.mark.integration

NO_KEEPALIVE = httpx.Limits(max_keepalive_connections=0)
SEVERITY = {
    "debug": ("DEBUG", 5),
    "info": ("INFO", 9),
    "warn": ("WARN", 13),
    "error": ("ERROR", 17),
}


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    r = OTLPReceiver().start()
    yield r
    r.stop()


def _resource(resource: Any) -> dict[str, Any]:
    return attributes(resource)


def test_every_record_arrives_as_an_otlp_log_record_joined_to_its_trace(
    receiver: OTLPReceiver, tmp_path: Path
) -> None:
    port = free_port()
    env = clean_env(
        DEVKIT_SERVICE_NAME="logs-svc",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_LOGS_EXPORTER="otlp",
        DEVKIT_SAMPLE_SUCCESS_RATIO="0.2",
        OTEL_BLRP_SCHEDULE_DELAY="200",
    )
    with serve(uvicorn_argv("examples.fastapi_app:app", port), env, tmp_path, port) as server:
        # Without keep-alive: uvicorn closes the connection of a request whose app raised.
        with httpx.Client(base_url=server.url, timeout=10, limits=NO_KEEPALIVE) as client:
            for i in range(40):
                r = client.get(f"/items/{i}", params={"token": "s3cr3t-value"})
                assert r.status_code == 200
            for i in range(5):
                assert client.get(f"/sync/{i}").status_code == 200
                assert client.get("/boom").status_code == 500
                assert client.get("/stock").status_code == 409
                assert client.get("/no/such/route").status_code == 404
        assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
        lines = server.json_lines()
    # The server's own last lines come after devkit's last flush ("shutdown complete" at
    # the end of the lifespan shutdown): uvicorn re-raises SIGTERM, atexit never runs.
    last = max(i for i, r in enumerate(lines) if r["message"] == "shutdown complete")
    assert all(r["logger"] == "uvicorn.error" for r in lines[last + 1 :])
    lines = lines[: last + 1]

    received = receiver.log_records()
    assert lines and received

    # Every record on stdout arrived once, with the same level, message and ids.
    def key(level: str, message: str, trace_id: str, logger: str) -> tuple[str, ...]:
        return (level, message, trace_id, logger)

    on_stdout = collections.Counter(
        key(SEVERITY[r["level"]][0], r["message"], r.get("trace_id", ""), r["logger"])
        for r in lines
    )
    over_otlp = collections.Counter(
        key(rec.severity_text, rec.body.string_value, rec.trace_id.hex(), scope.name)
        for _resource_, scope, rec in received
    )
    over_otlp = collections.Counter(
        {
            (lv, msg, "" if set(tid) <= {"0"} else tid, lg): n
            for (lv, msg, tid, lg), n in over_otlp.items()
        }
    )
    assert over_otlp == on_stdout

    access = [
        (scope, rec) for _r, scope, rec in received if rec.body.string_value == "request completed"
    ]
    assert len(access) == 40 + 5 * 4
    by_status: dict[int, set[tuple[str, int]]] = collections.defaultdict(set)
    for scope, rec in access:
        fields = attributes(rec)
        assert scope.name == "devkit.access"
        by_status[fields["status_code"]].add((rec.severity_text, rec.severity_number))
        assert len(rec.trace_id) == 16 and len(rec.span_id) == 8 and rec.time_unix_nano > 0
        if fields["route"] == "/items/{item_id}":
            assert fields["path"].endswith("?token=[REDACTED]")
    assert by_status == {
        200: {("INFO", 9)},
        409: {("WARN", 13)},
        404: {("WARN", 13)},
        500: {("ERROR", 17)},
    }
    errors = [rec for _s, rec in access if attributes(rec)["status_code"] == 500]
    for rec in errors:
        fields = attributes(rec)
        assert fields["exception.type"] == "RuntimeError"
        assert "[REDACTED:email]" in fields["exception.message"]
        assert "kaboom" in fields["exception.stacktrace"]
    # Secrets never left the process, in any log export.
    wire = b"".join(r.body for r in receiver.received() if r.is_logs)
    assert b"s3cr3t-value" not in wire and b"ada@example.com" not in wire

    # The application's records carry their request's trace id: the kept traces' spans
    # and logs join.
    span_traces = receiver.trace_ids()
    assert span_traces, "errors at least are kept"
    app_records: dict[str, set[str]] = collections.defaultdict(set)
    for _r, _scope, rec in received:
        if rec.trace_id.strip(b"\0"):
            app_records[rec.trace_id.hex()].add(rec.body.string_value)
    for trace_id in span_traces:
        assert "request completed" in app_records[trace_id]
    fetched = {t for t, messages in app_records.items() if "item fetched" in messages}
    assert len(fetched) == 40 and span_traces & fetched
    # One resource for spans and log records: the same service instance.
    span_resources = {tuple(sorted(_resource(res).items())) for res, _span in receiver.spans()}
    log_resources = {tuple(sorted(_resource(res).items())) for res, _s, _rec in received}
    assert len(span_resources) == 1 and span_resources == log_resources
    assert dict(next(iter(log_resources)))["service.name"] == "logs-svc"


def test_only_otlp_when_stdout_is_off_and_a_dead_collector_costs_nothing(
    tmp_path: Path,
) -> None:
    """``DEVKIT_LOGS_STDOUT=false``: nothing on stdout, everything over OTLP; and with the
    collector gone, requests are served and the dropped records are counted."""
    receiver = OTLPReceiver().start()
    port = free_port()
    env = clean_env(
        DEVKIT_LOGS_EXPORTER="otlp",
        DEVKIT_LOGS_STDOUT="false",
        OTEL_EXPORTER_OTLP_LOGS_ENDPOINT=receiver.logs_url,
        OTEL_BLRP_SCHEDULE_DELAY="100",
        OTEL_BLRP_MAX_QUEUE_SIZE="64",
        OTEL_EXPORTER_OTLP_LOGS_TIMEOUT="1",
    )
    with serve(uvicorn_argv("examples.fastapi_app:app", port), env, tmp_path, port) as server:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for i in range(10):
                assert client.get(f"/items/{i}").status_code == 200
            assert receiver.wait_for(
                lambda r: (
                    sum(
                        rec.body.string_value == "request completed"
                        for _a, _b, rec in r.log_records()
                    )
                    == 10
                )
            )
            receiver.stop()  # the collector dies
            for i in range(300):
                assert client.get(f"/items/{i}").status_code == 200
            metrics = client.get("/metrics").text
        assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
        output = server.output()
    assert not [line for line in output.splitlines() if line.startswith("{")]
    dropped = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("devkit_log_records_dropped_total{")
    ]
    assert sum(dropped) >= 300 - 64
