from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import threading
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider

import devkit
from devkit import _context, _errors
from devkit.config import Settings
from devkit.logs import LogPipeline
from devkit.redaction import Redactor
from devkit.testing import CapturedLogs

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SPEC_FIELDS = ("timestamp", "level", "service", "logger", "message")


def _tracer() -> Any:
    return TracerProvider().get_tracer("test")


def test_structlog_record_has_spec_fields_in_order(devkit_logs: CapturedLogs) -> None:
    devkit.init(service_name="svc")
    devkit.get_logger("app.orders").info("order placed", order_id="A-1", amount=3.5)
    (record,) = devkit_logs.records
    assert list(record)[:5] == list(SPEC_FIELDS)
    assert TIMESTAMP.match(record["timestamp"])
    assert record["level"] == "info"
    assert record["service"] == "svc"
    assert record["logger"] == "app.orders"
    assert record["message"] == "order placed"
    assert record["order_id"] == "A-1" and record["amount"] == 3.5
    assert "trace_id" not in record and "span_id" not in record
    assert "correlation_id" not in record


@pytest.mark.parametrize(
    ("method", "level"),
    [
        ("debug", "debug"),
        ("info", "info"),
        ("warning", "warn"),
        ("warn", "warn"),
        ("error", "error"),
        ("critical", "fatal"),
        ("fatal", "fatal"),
    ],
)
def test_structlog_levels(devkit_logs: CapturedLogs, method: str, level: str) -> None:
    devkit.init(log_level="debug")
    getattr(devkit.get_logger("x"), method)("hello")
    assert [r["level"] for r in devkit_logs.records] == [level]


@pytest.mark.parametrize(
    ("levelno", "level"),
    [
        (logging.DEBUG, "debug"),
        (logging.INFO, "info"),
        (logging.WARNING, "warn"),
        (logging.ERROR, "error"),
        (logging.CRITICAL, "fatal"),
        (25, "info"),
        (5, "debug"),
    ],
)
def test_stdlib_levels(devkit_logs: CapturedLogs, levelno: int, level: str) -> None:
    devkit.init(log_level="debug")
    logging.getLogger("lib").log(levelno, "hello")
    recs = devkit_logs.records
    if levelno < logging.DEBUG:
        assert recs == []
    else:
        assert [(r["level"], r["logger"]) for r in recs] == [(level, "lib")]


def test_log_level_filters_structlog_and_stdlib(devkit_logs: CapturedLogs) -> None:
    devkit.init(log_level="warn")
    devkit.get_logger("a").info("dropped")
    logging.getLogger("b").info("dropped too")
    devkit.get_logger("a").warning("kept")
    logging.getLogger("b").error("kept too")
    assert [r["message"] for r in devkit_logs.records] == ["kept", "kept too"]


def test_stdlib_extra_fields_and_args(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    logging.getLogger("lib").info("user %s logged in", "ada", extra={"attempt": 2})
    (record,) = devkit_logs.records
    assert record["message"] == "user ada logged in"
    assert record["attempt"] == 2
    assert record["logger"] == "lib"


def test_trace_and_span_ids_inside_a_span(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    with _tracer().start_as_current_span("work") as span:
        devkit.get_logger("a").info("structlog inside")
        logging.getLogger("b").info("stdlib inside")
    ctx = span.get_span_context()
    records = devkit_logs.records
    assert len(records) == 2
    for r in records:
        assert r["trace_id"] == format(ctx.trace_id, "032x")
        assert r["span_id"] == format(ctx.span_id, "016x")
        assert r["trace_id"] != "0" * 32


def test_exception_is_rendered_as_error_object(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    try:
        raise KeyError("missing")
    except KeyError:
        devkit.get_logger("a").exception("boom")
    try:
        raise RuntimeError("stdlib boom")
    except RuntimeError:
        logging.getLogger("b").exception("failed")
    first, second = devkit_logs.records
    assert first["level"] == "error" and first["error"]["type"] == "KeyError"
    assert first["error"]["message"] == "'missing'"
    assert "Traceback" in first["error"]["stack"] and "raise KeyError" in first["error"]["stack"]
    assert second["error"]["type"] == "RuntimeError"
    assert second["error"]["message"] == "stdlib boom"


def test_custom_exception_type_is_qualified(devkit_logs: CapturedLogs) -> None:
    class PaymentError(Exception):
        pass

    devkit.init()
    devkit.get_logger("a").error("declined", exc_info=PaymentError("nope"))
    (record,) = devkit_logs.records
    assert record["error"]["type"].endswith("PaymentError")
    assert record["error"]["type"] == f"{PaymentError.__module__}.{PaymentError.__qualname__}"


def test_correlation_id_and_bound_context(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    token = _context.correlation_id.set("req-123")
    structlog.contextvars.bind_contextvars(tenant="acme")
    try:
        devkit.get_logger("a").info("in request")
        logging.getLogger("b").info("stdlib in request")
    finally:
        _context.correlation_id.reset(token)
        structlog.contextvars.clear_contextvars()
    devkit.get_logger("a").info("after request")
    first, second, third = devkit_logs.records
    assert first["correlation_id"] == "req-123" and first["tenant"] == "acme"
    assert second["correlation_id"] == "req-123" and second["tenant"] == "acme"
    assert "correlation_id" not in third and "tenant" not in third


def test_context_survives_threads_and_tasks(devkit_logs: CapturedLogs) -> None:
    """Context variables follow asyncio tasks and to_thread (run_in_threadpool copies them)."""
    devkit.init()
    log = devkit.get_logger("a")

    async def child() -> None:
        log.info("in task")

    async def main() -> None:
        _context.correlation_id.set("cid-async")
        with _tracer().start_as_current_span("request"):
            await asyncio.create_task(child())
            await asyncio.to_thread(log.info, "in thread")

    asyncio.run(main())
    records = devkit_logs.records
    assert [r["message"] for r in records] == ["in task", "in thread"]
    assert {r["correlation_id"] for r in records} == {"cid-async"}
    assert len({r["trace_id"] for r in records}) == 1


def test_context_does_not_leak_between_threads(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    log = devkit.get_logger("a")
    _context.correlation_id.set("main-only")
    t = threading.Thread(target=lambda: log.info("other thread"))
    t.start()
    t.join()
    _context.correlation_id.set(None)
    (record,) = devkit_logs.records
    assert "correlation_id" not in record


def test_reserved_fields_are_not_overwritten(devkit_logs: CapturedLogs) -> None:
    devkit.init(service_name="svc")
    devkit.get_logger("a").info("hello", level="custom", service="other", timestamp=1)
    (record,) = devkit_logs.records
    assert record["level"] == "info" and record["service"] == "svc"
    assert record["extra_level"] == "custom" and record["extra_service"] == "other"
    assert record["extra_timestamp"] == 1


def test_unserialisable_arguments_never_raise(devkit_logs: CapturedLogs) -> None:
    _errors.set_strict(False)

    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no str")

        __repr__ = __str__

    class Plain:
        def __str__(self) -> str:
            return "plain-object"

    devkit.init()
    devkit.get_logger("a").info(
        "odd values",
        a=Broken(),
        b=Plain(),
        c=2**70,
        d={1: "x"},
        e=b"bytes",
        f={"nested": [Plain()]},
    )
    logging.getLogger("b").info("bad %d format", "not-a-number")
    first, second = devkit_logs.records
    assert first["b"] == "plain-object"
    assert "Broken" in first["a"]
    assert first["f"] == {"nested": ["plain-object"]}
    assert "not-a-number" in second["message"]
    assert ("logs", "bad_format_args") in _errors.counts()


def test_console_format(capsys: pytest.CaptureFixture[str]) -> None:
    devkit.init(log_format="console")
    devkit.get_logger("app").info("hello console", user="ada")
    out = capsys.readouterr().out
    assert "INFO" in out and "[app] hello console" in out and "user=ada" in out
    assert not out.lstrip().startswith("{")


def test_json_lines_on_stdout_only(capsys: pytest.CaptureFixture[str]) -> None:
    devkit.init(service_name="svc")
    devkit.get_logger("a").info("one")
    logging.getLogger("b").warning("two")
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["message"] for line in out] == ["one", "two"]


def test_server_loggers_are_routed_and_restored(devkit_logs: CapturedLogs) -> None:
    uv = logging.getLogger("uvicorn.error")
    own = logging.StreamHandler(io.StringIO())
    uv.addHandler(own)
    uv.propagate = False
    try:
        devkit.init()
        uv.info("Started server process")
        assert devkit_logs.find(logger="uvicorn.error", message="Started server process")
        devkit.shutdown()
        assert uv.handlers == [own] and uv.propagate is False
    finally:
        uv.removeHandler(own)
        uv.propagate = True


def test_server_access_loggers_report_no_handlers() -> None:
    """uvicorn builds its access line only when ``uvicorn.access`` has handlers: with
    devkit's own access record in place, it must see none (and skip the work)."""
    before = logging.getLogger("uvicorn.access").propagate
    devkit.init()
    for name in ("uvicorn.access", "gunicorn.access"):
        assert not logging.getLogger(name).hasHandlers(), name
    assert logging.getLogger("uvicorn.error").hasHandlers()
    devkit.shutdown()
    assert logging.getLogger("uvicorn.access").propagate is before


def test_pipeline_writes_to_injected_binary_and_text_streams() -> None:
    settings = Settings.from_env({}, service_name="s")
    for stream in (io.BytesIO(), io.StringIO()):
        pipeline = LogPipeline(settings, Redactor(), stream)
        pipeline.emit("info", {"event": "hi", "logger": "x"})
        raw = stream.getvalue()
        text = raw.decode() if isinstance(raw, bytes) else raw
        assert json.loads(text)["message"] == "hi"


def test_closed_stream_is_counted_not_raised() -> None:
    _errors.set_strict(False)
    stream = io.BytesIO()
    pipeline = LogPipeline(Settings(), Redactor(), stream)
    stream.close()
    pipeline.emit("info", {"event": "lost", "logger": "x"})
    assert _errors.counts()[("logs", "write_failed")] == 1


def test_redaction_runs_before_rendering(capsys: pytest.CaptureFixture[str]) -> None:
    devkit.init()
    log = devkit.get_logger("a")
    log.info(
        "contact ada@example.com",
        password="hunter2",
        nested={"client_secret": "abc", "items": ["4111 1111 1111 1111"]},
    )
    try:
        raise ValueError("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl leaked")
    except ValueError:
        logging.getLogger("b").exception("failed for ada@example.com")
    out = capsys.readouterr().out
    for secret in (
        "ada@example.com",
        "hunter2",
        "abc",
        "4111 1111 1111 1111",
        "eyJhbGciOiJIUzI1NiJ9",
    ):
        assert secret not in out
    first, second = (json.loads(line) for line in out.splitlines())
    assert first["password"] == "[REDACTED:secret]"
    assert first["nested"]["client_secret"] == "[REDACTED:secret]"
    assert first["nested"]["items"] == ["[REDACTED:card]"]
    assert "[REDACTED:jwt]" in second["error"]["message"]
    assert "[REDACTED:jwt]" in second["error"]["stack"]


def test_ordinary_values_survive_byte_for_byte(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    values = {
        "order_id": "ORD-2024-000123",
        "uuid": "123e4567-e89b-12d3-a456-426614174000",
        "trace": "4bf92f3577b34da6a3ce929d0e0e4736",
        "version": "1.2.3",
        "digits": "1234567812345678",
        "ts_ms": "1764160000000",
        "count": 1234567812345670,
        "tokens_used": 512,
        "author": "Ada Lovelace",
    }
    devkit.get_logger("a").info("ordinary", **values)
    (record,) = devkit_logs.records
    for key, value in values.items():
        assert record[key] == value


def test_hash_mode_is_stable_and_hides_value(devkit_logs: CapturedLogs) -> None:
    devkit.init(redact_mode="hash", redact_salt="pepper-123456")
    log = devkit.get_logger("a")
    log.info("one", email="ada@example.com")
    log.info("two", email="ada@example.com")
    first, second = devkit_logs.records
    assert first["email"] == second["email"]
    assert re.fullmatch(r"email:[0-9a-f]{12}", first["email"])


# -- the access record's kinds ---------------------------------------------------------------


def _finished(path: str, **fields: Any) -> Any:
    """A finished request as the access record reads it (``logs.AccessRequest``)."""
    from types import SimpleNamespace

    values: dict[str, Any] = {
        "method_label": "GET", "route": "/items/{id}", "path": path, "query": "",
        "status": 200, "duration": 0.0012345, "error": False, "exc": None,
        "trace_id": 0x0AF7651916CD43DD8448EB211C80319C, "span_id": 0xB7AD6B7169203331,
        "cid": "c" * 32, "created": 1_700_000_000.25,
    }  # fmt: skip
    values.update(fields)
    return SimpleNamespace(**values)


_KINDS = [
    _finished("/items/1"),
    _finished("/items/1", duration=0.5, trace_id=7, span_id=9, cid="other", created=1.5e9),
    _finished("/items/1", query="token=abc&x=y"),
    _finished("/items/jane@example.com", status=404),
    _finished("/items/1", status=503, error=True),
    _finished("/items/1", method_label="_OTHER", route="<unmatched>", trace_id=0, span_id=0),
    _finished("/" + "a" * 300, query="q=" + "b" * 50),
    _finished('/items/"\\\n\u00e9'),
]


def test_access_records_of_a_kind_render_as_the_generic_record() -> None:
    """Rendered from the remembered part of their kind (the second time), or afresh, the
    records read as the generic renderer writes them."""
    fast, generic = io.BytesIO(), io.BytesIO()
    pipeline = LogPipeline(Settings(), Redactor(), fast)
    reference = LogPipeline(Settings(), Redactor(), generic)
    for request in _KINDS * 2:
        pipeline.access(request)
        reference._access_slow(request, None)
    ours = [json.loads(line) for line in fast.getvalue().splitlines()]
    theirs = [json.loads(line) for line in generic.getvalue().splitlines()]
    assert len(ours) == len(theirs) == 2 * len(_KINDS)
    for mine, expected in zip(ours, theirs, strict=True):
        assert mine == expected
        assert list(mine) == list(expected)  # the same field order
    # The second round came from the remembered kinds, but not the long path's.
    assert len(pipeline._access_kinds) == len(_KINDS) - 2  # one repeats, one is long
    lines = fast.getvalue().splitlines()
    assert lines[: len(_KINDS)] == lines[len(_KINDS) :]


def test_remembered_access_kinds_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from devkit import logs

    monkeypatch.setattr(logs, "_MAX_CACHED_ACCESS_KINDS", 5)
    out = io.BytesIO()
    pipeline = LogPipeline(Settings(), Redactor(), out)
    for n in range(12):
        pipeline.access(_finished(f"/items/{n}"))
        assert len(pipeline._access_kinds) <= 5
    paths = [json.loads(line)["path"] for line in out.getvalue().splitlines()]
    assert paths == [f"/items/{n}" for n in range(12)]


def test_a_kind_whose_level_is_off_writes_nothing_even_remembered() -> None:
    out = io.BytesIO()
    pipeline = LogPipeline(Settings.from_env({"DEVKIT_LOG_LEVEL": "warn"}), Redactor(), out)
    for request in (_finished("/a"), _finished("/a"), _finished("/a", status=404)) * 2:
        pipeline.access(request)
    assert [json.loads(line)["status_code"] for line in out.getvalue().splitlines()] == [404, 404]
