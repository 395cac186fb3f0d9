"""The export queue: what each exporter receives, redacted, and every loss counted."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from request_record import end_request, start_request

from devkit.redaction import Redactor
from devkit.tracing._export import BatchExporter, ExportSpan
from devkit.tracing._span import ServerSpan, ServerSpanFactory

RESOURCE = Resource.create({"service.name": "svc"})


class Recording(SpanExporter):
    def __init__(self, *, plain: bool = False, raises: bool = False) -> None:
        self.takes_export_spans = plain
        self.raises = raises
        self.got: list[Any] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.raises:
            raise ConnectionError("collector gone")
        self.got.extend(spans)
        return SpanExportResult.SUCCESS


def server_span(path: str = "/users/alice@example.com") -> ServerSpan:
    factory = ServerSpanFactory(ratio=1.0, resource=lambda: RESOURCE, on_end=lambda s: None)
    span = start_request(factory, "GET", path, "cid-1")
    span.set_attribute("user.email", "alice@example.com")
    span.add_event("login", {"password": "hunter2"})
    end_request(factory, span, "/users/{name}", 200)
    return span


def exporter_for(target: SpanExporter, **options: Any) -> tuple[BatchExporter, list[Any]]:
    drops: list[Any] = []
    exporter = BatchExporter(
        target,
        redact=Redactor().redact_attributes,
        on_drop=lambda reason, n: drops.append((reason, n)),
        **options,
    )
    return exporter, drops


def assert_redacted(span: Any) -> None:
    attributes: Mapping[str, Any] = span.attributes
    assert "alice@example.com" not in str(dict(attributes))
    assert attributes["http.route"] == "/users/{name}"  # devkit's own, as it is
    assert "hunter2" not in str(dict(span.events[0].attributes))


def test_devkits_encoder_gets_plain_export_spans_redacted() -> None:
    target = Recording(plain=True)
    exporter, drops = exporter_for(target)
    exporter([server_span()])
    assert exporter.force_flush(5)
    assert [type(s) for s in target.got] == [ExportSpan]
    assert_redacted(target.got[0])
    assert exporter.exported == 1 and drops == []
    exporter.shutdown(1)


def test_other_exporters_get_sdk_spans_redacted() -> None:
    target = Recording()
    exporter, _ = exporter_for(target)
    with TracerProvider().get_tracer("t").start_as_current_span("child") as child:
        child.set_attribute("user.email", "alice@example.com")
        child.set_attribute("http.route", "/users/{name}")
        child.add_event("login", {"password": "hunter2"})
    exporter([server_span(), child])  # type: ignore[list-item]
    assert exporter.force_flush(5)
    assert [type(s) for s in target.got] == [ReadableSpan, ReadableSpan]
    for span in target.got:
        assert_redacted(span)
    exporter.shutdown(1)


def test_a_span_that_cannot_be_redacted_is_dropped_and_counted_not_exported() -> None:
    def failing(attributes: Mapping[str, Any]) -> dict[str, Any]:
        raise RuntimeError("rule broke")

    target = Recording(plain=True)
    drops: list[Any] = []
    exporter = BatchExporter(target, redact=failing, on_drop=lambda r, n: drops.append((r, n)))
    exporter([server_span(), server_span()])
    assert exporter.force_flush(5)
    assert target.got == []
    assert drops == [("redaction_failed", 1), ("redaction_failed", 1)]
    exporter.shutdown(1)


def test_a_full_queue_and_a_raising_exporter_are_counted() -> None:
    exporter, drops = exporter_for(Recording(plain=True, raises=True), max_queue_size=2)
    exporter([server_span(), server_span(), server_span()])
    assert ("export_queue_full", 1) in drops
    assert exporter.force_flush(5)
    assert ("export_failed", 2) in drops
    exporter([server_span()])  # the export thread survived the exception
    assert exporter.force_flush(5)
    assert drops.count(("export_failed", 1)) == 1
    exporter.shutdown(1)


_FIELDS = (
    "name", "context", "parent", "kind", "status", "start_time", "end_time", "resource",
    "instrumentation_scope", "dropped_attributes", "dropped_events", "dropped_links",
)  # fmt: skip


def test_export_spans_carry_what_the_sdk_span_built_from_them_says() -> None:
    """For devkit's server span and for an SDK span: every field the encoder reads."""
    with TracerProvider().get_tracer("t").start_as_current_span("child") as child:
        child.add_event("e", {"k": 1})
    sources: list[Any] = [server_span(), child]
    for span in sources:
        exported = ExportSpan(span, {"a": "redacted"}, list(span.events))
        readable = exported.to_readable()
        for name in _FIELDS:
            assert getattr(exported, name) == getattr(readable, name) == getattr(span, name, 0)
        assert exported.attributes == dict(readable.attributes or {}) == {"a": "redacted"}
        assert list(exported.events) == list(readable.events) == list(span.events)
        assert list(exported.links) == list(readable.links) == list(span.links)


def test_without_redaction_sdk_spans_pass_through_and_server_spans_become_export_spans() -> None:
    target = Recording(plain=True)
    exporter = BatchExporter(target)
    with TracerProvider().get_tracer("t").start_as_current_span("child") as child:
        pass
    server = server_span()
    exporter([server, child])  # type: ignore[list-item]
    assert exporter.force_flush(5)
    assert target.got[1] is child
    assert type(target.got[0]) is ExportSpan
    assert target.got[0].attributes == server.attributes  # unredacted, as configured
    exporter.shutdown(1)
