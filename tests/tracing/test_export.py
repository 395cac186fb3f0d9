"""The export queue: what each exporter receives, redacted, and every loss counted."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Link, Status, StatusCode
from request_record import end_request, start_request

from devkit.redaction import Redactor
from devkit.tracing import _export
from devkit.tracing._export import BatchExporter, ExportSpan, text_redactor
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


# -- the texts of a span: name, events, status, links ------------------------------------------


def test_a_server_span_renamed_by_the_app_is_exported_with_its_name_redacted() -> None:
    target = Recording(plain=True)
    exporter, drops = exporter_for(target)
    factory = ServerSpanFactory(ratio=1.0, resource=lambda: RESOURCE, on_end=lambda s: None)
    span = start_request(factory, "POST", "/login", "cid-1")
    span.update_name("login for alice@example.com password=hunter2")
    span.add_event("retry token=t0k3n", {"password": "hunter2"})
    end_request(factory, span, "/login", 200)
    exporter([span])
    assert exporter.force_flush(5)
    (exported,) = target.got
    assert "alice@example.com" not in exported.name and "hunter2" not in exported.name
    assert "login for [REDACTED:email] password=[REDACTED:secret]" in exported.name
    assert [e.name for e in exported.events] == ["retry token=[REDACTED:secret]"]
    assert "hunter2" not in repr([dict(e.attributes) for e in exported.events])
    assert drops == []
    exporter.shutdown(1)


def test_clean_texts_are_exported_as_they_are() -> None:
    target = Recording(plain=True)
    exporter, _ = exporter_for(target)
    tracer = TracerProvider().get_tracer("t")
    other = tracer.start_span("other")
    with tracer.start_as_current_span(
        "GET /items/{item_id}", links=[Link(other.get_span_context())]
    ) as span:
        span.add_event("cache miss")
        span.set_status(Status(StatusCode.ERROR, "upstream timed out"))
    exporter([span, server_span()])  # type: ignore[list-item]
    assert exporter.force_flush(5)
    sdk, server = target.got
    assert sdk.name == "GET /items/{item_id}" and server.name == "GET /users/{name}"
    assert sdk.status.description == "upstream timed out"
    assert sdk.status.status_code is StatusCode.ERROR
    assert [e.name for e in sdk.events] == ["cache miss"]
    assert [link.context for link in sdk.links] == [other.get_span_context()]
    exporter.shutdown(1)


def test_sdk_exporters_get_the_texts_redacted_too() -> None:
    target = Recording()
    exporter, _ = exporter_for(target)
    tracer = TracerProvider().get_tracer("t")
    other = tracer.start_span("other")
    link = Link(other.get_span_context(), {"note": "api_key=l1nk", "n": 3})
    with tracer.start_as_current_span("pay password=n4me", links=[link]) as span:
        span.set_status(Status(StatusCode.ERROR, "denied: token=st4tus"))
    exporter([span])  # type: ignore[list-item]
    assert exporter.force_flush(5)
    (readable,) = target.got
    assert type(readable) is ReadableSpan
    assert readable.name == "pay password=[REDACTED:secret]"
    assert readable.status.description == "denied: token=[REDACTED:secret]"
    assert dict(readable.links[0].attributes or {}) == {"note": "api_key=[REDACTED:secret]", "n": 3}
    exporter.shutdown(1)


def test_names_are_redacted_once_then_remembered_up_to_a_bound() -> None:
    calls: list[str] = []
    redactor = Redactor()

    def counting(text: str) -> str:
        calls.append(text)
        return redactor.redact_str(text)

    target = Recording(plain=True)
    exporter = BatchExporter(target, redact=redactor.redact_attributes, redact_text=counting)
    spans = [server_span() for _ in range(3)]
    exporter(spans)
    assert exporter.force_flush(5)
    assert calls.count("GET /users/{name}") == 1
    assert [s.name for s in target.got] == ["GET /users/{name}"] * 3
    for n in range(_export._NAME_CACHE_MAX + 10):  # distinct names: the cache stops growing
        exporter._name(f"job {n}")
    assert len(exporter._names) == _export._NAME_CACHE_MAX
    exporter._names.clear()
    long_name = "SELECT " + "x, " * 200 + "password=p4ss"
    assert exporter._name(long_name).endswith("password=[REDACTED:secret]")
    assert exporter._names == {}  # redacted each time, not kept
    assert exporter._name(f"job {_export._NAME_CACHE_MAX + 5} password=x1") == (
        f"job {_export._NAME_CACHE_MAX + 5} password=[REDACTED:secret]"
    )
    exporter.shutdown(1)


def test_an_attribute_redactor_of_its_own_also_redacts_the_texts() -> None:
    def upper(attributes: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v.upper() if isinstance(v, str) else v for k, v in attributes.items()}

    assert text_redactor(upper)("secret name") == "SECRET NAME"
    assert text_redactor(Redactor().redact_attributes)("token=abc") == "token=[REDACTED:secret]"


def test_a_failing_text_redaction_drops_the_span_and_counts_it() -> None:
    def failing(text: str) -> str:
        raise RuntimeError("rule broke")

    target = Recording(plain=True)
    drops: list[Any] = []
    exporter = BatchExporter(
        target,
        redact=Redactor().redact_attributes,
        redact_text=failing,
        on_drop=lambda r, n: drops.append((r, n)),
    )
    exporter([server_span()])
    assert exporter.force_flush(5)
    assert target.got == [] and drops == [("redaction_failed", 1)]
    exporter.shutdown(1)
