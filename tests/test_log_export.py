"""Logs over OTLP: what the pipeline hands over, the log records built from it, and every
loss counted. The real exporter and server are in tests/integration/test_logs_otlp.py."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import pytest
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.resources import Resource

import devkit
from devkit import _compat, _setup
from devkit._log_export import SEVERITY, build_log_export
from devkit.config import Settings
from devkit.logs import LogPipeline
from devkit.testing import CapturedLogs, MetricSamples

RESOURCE = Resource.create({"service.name": "svc"})


class Recording(LogRecordExporter):
    def __init__(self, *, fails: bool = False, logs: bool = False) -> None:
        self.fails = fails
        self.logs = logs
        self.got: list[ReadableLogRecord] = []
        self.done = threading.Event()

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        if self.logs:  # as the OTLP exporter does when the collector refuses a batch
            logging.getLogger("opentelemetry.exporter").warning("export refused")
        self.got.extend(batch)
        self.done.set()
        return LogRecordExportResult.FAILURE if self.fails else LogRecordExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


@pytest.fixture
def recording() -> Iterator[Recording]:
    exporter = Recording()
    _setup.components["log_exporter"] = exporter
    try:
        yield exporter
    finally:
        _setup.components.pop("log_exporter", None)


def _export(**options: Any) -> tuple[Any, Recording, list[tuple[str, int]]]:
    target = Recording(**options)
    drops: list[tuple[str, int]] = []
    settings = Settings.from_env({"DEVKIT_LOGS_EXPORTER": "otlp"})
    export = build_log_export(
        settings, RESOURCE, on_drop=lambda r, n: drops.append((r, n)), exporter=target
    )
    return export, target, drops


def _line(**fields: Any) -> bytes:
    record = {
        "timestamp": "2026-12-04T10:20:30.456Z",
        "level": "warn",
        "service": "svc",
        "logger": "app.orders",
        "message": "order held",
        **fields,
    }
    return orjson.dumps(record)


def test_a_line_becomes_a_log_record_of_the_data_model() -> None:
    export, _target, _ = _export()
    line = _line(
        order_id="A-1",
        amount=3.5,
        ok=True,
        big=2**64 - 1,  # orjson writes unsigned 64-bit integers; OTLP has signed ones
        tags=["a", "b"],
        nested={"k": [1, {"x": None}]},
        trace_id="%032x" % 0xABC,
        span_id="%016x" % 0xDEF,
        correlation_id="cid-1",
        error={"type": "ValueError", "message": "bad [REDACTED:email]", "stack": "Traceback"},
    )
    readable = export.queue.to_log_record(line)
    record = readable.log_record
    assert record.body == "order held"
    assert (record.severity_text, record.severity_number.value) == ("WARN", 13)
    assert record.timestamp == 1796379630456 * 1_000_000
    assert (record.trace_id, record.span_id) == (0xABC, 0xDEF)
    assert readable.resource is RESOURCE
    assert readable.instrumentation_scope.name == "app.orders"
    assert dict(record.attributes) == {
        "order_id": "A-1",
        "amount": 3.5,
        "ok": True,
        "big": str(2**64 - 1),
        "tags": ["a", "b"],
        "nested": {"k": [1, {"x": None}]},
        "correlation_id": "cid-1",
        "exception.type": "ValueError",
        "exception.message": "bad [REDACTED:email]",
        "exception.stacktrace": "Traceback",
    }
    # The SDK's OTLP encoder takes it as it takes its own records.
    (resource_logs,) = encode_logs([readable]).resource_logs
    (pb,) = resource_logs.scope_logs[0].log_records
    assert pb.trace_id == (0xABC).to_bytes(16, "big") and pb.severity_number == 13


@pytest.mark.parametrize("level", list(SEVERITY))
def test_every_level_has_its_severity(level: str) -> None:
    export, _, _ = _export()
    model = _compat.log_model()
    assert model is not None
    record = export.queue.to_log_record(_line(level=level)).log_record
    text, number = SEVERITY[level]
    assert record.severity_text == text
    assert record.severity_number == model.SeverityNumber(number)
    assert model.SeverityNumber(number).name.startswith(text[:4])


def test_a_record_without_a_trace_has_no_ids() -> None:
    export, _, _ = _export()
    record = export.queue.to_log_record(_line()).log_record
    assert not record.trace_id and not record.span_id


def test_a_broken_line_is_dropped_and_counted_not_exported() -> None:
    export, target, drops = _export()
    export(b"{not json")
    export(_line())
    assert export.force_flush(5)
    assert len(target.got) == 1 and drops == [("conversion_failed", 1)]
    export.shutdown(1)


def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    target = Recording()
    release = threading.Event()
    original = target.export

    def slow(batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        release.wait(5)
        return original(batch)

    target.export = slow  # type: ignore[method-assign]
    drops: list[tuple[str, int]] = []
    settings = Settings.from_env({"DEVKIT_LOGS_EXPORTER": "otlp", "OTEL_BLRP_MAX_QUEUE_SIZE": "10"})
    export = build_log_export(
        settings, RESOURCE, on_drop=lambda r, n: drops.append((r, n)), exporter=target
    )
    for _ in range(200):
        export(_line())
    assert sum(n for reason, n in drops if reason == "export_queue_full") >= 200 - 10 - 64
    release.set()
    export.shutdown(5)


def test_a_failed_export_is_counted() -> None:
    export, target, drops = _export(fails=True)
    export(_line())
    assert target.done.wait(5)
    assert export.force_flush(5)
    assert drops == [("export_failed", 1)]
    export.shutdown(1)


def _pipeline(**env: str) -> tuple[LogPipeline, io.BytesIO, list[bytes]]:
    stream = io.BytesIO()
    pipeline = LogPipeline(Settings.from_env(env), None, stream)
    lines: list[bytes] = []
    pipeline.export = lines.append
    return pipeline, stream, lines


def test_the_pipeline_hands_over_each_record_as_its_json_line() -> None:
    pipeline, stream, lines = _pipeline()
    pipeline.emit("info", {"event": "hello", "logger": "x", "n": 1})
    assert lines == [stream.getvalue()]
    assert orjson.loads(lines[0])["message"] == "hello"


def test_the_console_format_hands_over_json() -> None:
    pipeline, stream, lines = _pipeline(DEVKIT_LOG_FORMAT="console")
    pipeline.emit("warn", {"event": "hello", "logger": "x"})
    assert not stream.getvalue().startswith(b"{")
    assert orjson.loads(lines[0])["level"] == "warn"


def test_stdout_off_writes_nothing_but_still_exports() -> None:
    pipeline, stream, lines = _pipeline(DEVKIT_LOGS_STDOUT="false")
    pipeline.emit("info", {"event": "hello", "logger": "x"})
    assert stream.getvalue() == b"" and len(lines) == 1


def test_structlog_stdlib_and_access_records_are_all_exported(
    recording: Recording, devkit_logs: CapturedLogs
) -> None:
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    devkit.init(logs_exporter="otlp", service_name="svc")

    def view(request: Any) -> PlainTextResponse:
        devkit.get_logger("app").info("in view", email="ada@example.com")
        logging.getLogger("lib").warning("stdlib %s", "record")
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/x", view)])

    async def call() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return (await client.get("/x?token=abc")).status_code

    assert asyncio.run(call()) == 200
    devkit.shutdown()
    messages = {r.log_record.body: r for r in recording.got}
    assert {"in view", "stdlib record", "request completed"} <= set(messages)
    assert len(recording.got) == len(devkit_logs.records)
    view_record = messages["in view"].log_record
    assert view_record.attributes["email"] == "[REDACTED:email]"
    access = messages["request completed"].log_record
    assert access.attributes["path"] == "/x?token=[REDACTED]"
    assert access.trace_id == view_record.trace_id != 0
    assert messages["stdlib record"].log_record.severity_text == "WARN"


def test_the_exporters_own_logs_are_not_exported_again(
    devkit_logs: CapturedLogs, devkit_metrics: MetricSamples
) -> None:
    target = Recording(fails=True, logs=True)
    _setup.components["log_exporter"] = target
    try:
        devkit.init(logs_exporter="otlp")
        devkit.get_logger("app").info("one")
        assert target.done.wait(5)
        runtime_state = _setup._state.current()
        assert runtime_state is not None and runtime_state.log_export is not None
        assert runtime_state.log_export.force_flush(5)
        # The refusal is on stdout, and not queued behind the record it refused.
        assert devkit_logs.find(message="export refused")
        assert [r.log_record.body for r in target.got] == ["one"]
        dropped = devkit_metrics.sample_value(
            "devkit_log_records_dropped_total", {"reason": "export_failed"}
        )
        assert dropped == 1
    finally:
        _setup.components.pop("log_exporter", None)


def test_without_the_exporter_installed_init_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = _compat.log_model()
    assert model is not None
    monkeypatch.setattr(
        _compat,
        "log_model",
        lambda: _compat.LogModel(
            model.LogRecord, model.SeverityNumber, model.ReadableLogRecord, {}
        ),
    )
    with pytest.raises(devkit.ConfigError, match=r"DEVKIT_LOGS_EXPORTER.*devkit-observability"):
        devkit.init(logs_exporter="otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(devkit.ConfigError, match=r"OTEL_EXPORTER_OTLP_PROTOCOL.*grpc"):
        devkit.init(logs_exporter="otlp")
