"""Log records over OTLP (``DEVKIT_LOGS_EXPORTER=otlp``), beside the JSON lines on stdout.

The log pipeline hands over each record as its JSON line, already redacted; the request
path pays one append to a bounded queue (:class:`devkit._batch.BatchQueue`, bounded like
the span queue, ``OTEL_BLRP_*``), and a dead collector costs requests nothing. The export
thread parses the line and builds OpenTelemetry log records for the SDK's OTLP exporter:

- body: the message; severity text and number: the level (``warn`` is ``WARN``, 13);
- attributes: every other field, nested values as OTLP maps and arrays, the ``error``
  field as the semantic conventions' ``exception.type``, ``exception.message`` and
  ``exception.stacktrace``;
- trace id and span id: the record's (the span active when it was written; the access
  record carries its request's). Trace flags stay unset: devkit decides at the end of
  the trace, after the record, whether the trace is kept;
- instrumentation scope: the logger name, as the SDK's own logging handler sets it;
- resource: the one the traces carry.

Records the exporter logs itself (a refused batch) are written to stdout but not
exported: a dead collector must not feed the queue that cannot reach it.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import orjson
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, set_span_in_context

from devkit import _compat, _errors
from devkit._batch import BatchQueue, Count, Exporter
from devkit.config import Settings
from devkit.exceptions import ConfigError

__all__ = ["LogExport", "build_log_export"]

#: Level -> (severity text, severity number of the OpenTelemetry logs data model).
SEVERITY = {
    "debug": ("DEBUG", 5),
    "info": ("INFO", 9),
    "warn": ("WARN", 13),
    "error": ("ERROR", 17),
    "fatal": ("FATAL", 21),
}
# Fields that become the log record's own parts (or the resource's) instead of attributes.
_NOT_ATTRIBUTES = frozenset(
    {"timestamp", "level", "service", "logger", "message", "trace_id", "span_id", "error"}
)
_INT64 = (-(2**63), 2**63 - 1)


def _value(value: Any) -> Any:
    """A parsed JSON value as an OTLP value: integers beyond OTLP's signed 64 bits
    become text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if _INT64[0] <= value <= _INT64[1] else str(value)
    if isinstance(value, list):
        return [_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _value(v) for k, v in value.items()}
    return value


class _Records(BatchQueue):
    """The log record queue: lines in, OpenTelemetry log records out (export thread)."""

    thread_name = "devkit-log-export"

    def __init__(
        self,
        exporter: Exporter,
        model: _compat.LogModel,
        resource: Resource,
        on_drop: Count,
        **bounds: Any,
    ) -> None:
        super().__init__(exporter, on_drop=on_drop, **bounds)
        self._model = model
        self._resource = resource
        self._scopes: dict[str, InstrumentationScope] = {}
        self._severities = {
            level: (text, model.SeverityNumber(number))
            for level, (text, number) in SEVERITY.items()
        }

    def _prepared(self, item: Any) -> Any | None:
        try:
            return self.to_log_record(item)
        except Exception as exc:
            # detail=, not the exception: nothing is re-raised on the export thread.
            _errors.report(
                "logs", "export_conversion_failed", detail=f"{type(exc).__name__}: {exc}"
            )
            self._on_drop("conversion_failed", 1)
            return None

    def to_log_record(self, line: bytes) -> Any:
        record = orjson.loads(line)
        attributes = {k: _value(v) for k, v in record.items() if k not in _NOT_ATTRIBUTES}
        error = record.get("error")
        if isinstance(error, dict):
            for key, name in (("type", "type"), ("message", "message"), ("stack", "stacktrace")):
                if key in error:
                    attributes[f"exception.{name}"] = str(error[key])
        elif error is not None:
            attributes["error"] = _value(error)
        context = Context()
        trace_id = record.get("trace_id")
        if trace_id:
            span = NonRecordingSpan(
                SpanContext(int(trace_id, 16), int(record["span_id"], 16), False)
            )
            context = set_span_in_context(span)
        text, number = self._severities.get(record.get("level", "info"), self._severities["info"])
        stamp = datetime.datetime.fromisoformat(record["timestamp"])
        log_record = self._model.LogRecord(
            timestamp=round(stamp.timestamp() * 1e3) * 1_000_000,
            context=context,
            severity_text=text,
            severity_number=number,
            body=str(record.get("message", "")),
            attributes=attributes,
        )
        return self._model.ReadableLogRecord(
            log_record=log_record,
            resource=self._resource,
            instrumentation_scope=self._scope(str(record.get("logger") or "root")),
        )

    def _scope(self, name: str) -> InstrumentationScope:
        scope = self._scopes.get(name)
        if scope is None:
            scope = InstrumentationScope(name)
            if len(self._scopes) < 1024:  # logger names are the app's: bounded cache
                self._scopes[name] = scope
        return scope


class LogExport:
    """What the log pipeline calls with each rendered JSON line; never blocks."""

    def __init__(self, records: _Records) -> None:
        self._records = records

    def __call__(self, line: bytes) -> None:
        if self._records.in_worker():
            return
        self._records((line,))

    @property
    def queue(self) -> BatchQueue:
        return self._records

    def force_flush(self, timeout_s: float = 10.0) -> bool:
        return self._records.force_flush(timeout_s)

    def shutdown(self, timeout_s: float) -> None:
        self._records.shutdown(timeout_s)


def build_log_export(
    settings: Settings,
    resource: Resource,
    on_drop: Callable[[str, int], None],
    exporter: Exporter | None = None,
) -> LogExport:
    """The OTLP log export ``settings`` ask for; ``exporter`` overrides the configured one."""
    model = _compat.log_model()
    options = settings.log_export
    if exporter is None:
        exporter_class = model.exporters.get(options.protocol) if model is not None else None
        if exporter_class is None:
            if options.protocol == "grpc":
                raise ConfigError(
                    options.protocol_variable,
                    options.protocol,
                    "http/protobuf, or grpc with opentelemetry-exporter-otlp-proto-grpc installed",
                )
            raise ConfigError(
                "DEVKIT_LOGS_EXPORTER",
                "otlp",
                "otlp with the exporter installed: pip install 'devkit-observability[otlp]'",
            )
        # The exporter reads OTEL_EXPORTER_OTLP_LOGS_* and OTEL_EXPORTER_OTLP_* itself.
        exporter = exporter_class()
        from devkit._keepalive import use_keep_alive

        use_keep_alive(exporter)
    if model is None:
        raise ConfigError(
            "DEVKIT_LOGS_EXPORTER", "otlp", "otlp with opentelemetry-sdk 1.45 or newer installed"
        )
    records = _Records(
        exporter,
        model,
        resource,
        on_drop,
        max_queue_size=options.max_queue_size,
        max_batch_size=options.max_batch_size,
        schedule_delay_s=options.schedule_delay_s,
    )
    return LogExport(records)
