from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from request_record import end_request, record, start_request

from devkit.redaction import Redactor
from devkit.tracing._span import ServerSpan, ServerSpanFactory
from devkit.tracing.sampling import ratio_keeps


def factory(ratio: float = 0.1) -> tuple[ServerSpanFactory, list[Any]]:
    ended: list[Any] = []
    resource = Resource.create({"service.name": "svc"})
    return ServerSpanFactory(ratio=ratio, resource=lambda: resource, on_end=ended.append), ended


def remote(trace_id: int, sampled: bool) -> SpanContext:
    return SpanContext(trace_id, 0xABC, True, TraceFlags(1 if sampled else 0))


def test_head_flag_follows_parent_based_trace_id_ratio() -> None:
    f, _ = factory(0.25)
    for tid in range(1, 2**64, 2**58):
        span = f.start("GET", remote(tid, False), {})
        assert bool(span.context.trace_flags.sampled) is ratio_keeps(tid, 0.25)
        assert span.context.trace_id == tid and span.parent is not None
    assert f.start("GET", remote(5, True), {}).context.trace_flags.sampled
    root = f.start("GET", None, {})
    assert root.parent is None and root.context.trace_id != 0
    assert root.context.trace_flags & TraceFlags.RANDOM_TRACE_ID


def test_span_api_records_what_application_code_adds() -> None:
    f, ended = factory()
    span = f.start("GET", None, {"http.request.method": "GET"})
    span.set_attribute("user.id", 42)
    span.set_attributes({"tags": ["a", "b"], "bad": object()})  # type: ignore[dict-item]
    span.add_event("cache miss", {"key": "k"})
    span.update_name("GET /items/{id}")
    span.set_status(Status(StatusCode.ERROR, "boom"))
    try:
        raise KeyError("missing")
    except KeyError as exc:
        span.record_exception(exc)
    assert span.is_recording()
    span.end()
    span.end()  # idempotent
    span.set_attribute("late", 1)
    assert ended == [span]
    assert not span.is_recording()
    assert span.attributes == {"http.request.method": "GET", "user.id": 42, "tags": ["a", "b"]}
    assert [e.name for e in span.events] == ["cache miss", "exception"]
    assert span.events[1].attributes is not None
    assert span.events[1].attributes["exception.type"] == "KeyError"
    assert span.status.status_code is StatusCode.ERROR
    assert span.end_time is not None and span.end_time >= span.start_time


def test_ok_status_is_final() -> None:
    f, _ = factory()
    span = f.start("GET", None, {})
    span.set_status(StatusCode.OK)
    span.set_status(StatusCode.ERROR)
    assert span.status.status_code is StatusCode.OK


def test_sdk_child_spans_take_it_as_parent() -> None:
    f, _ = factory()
    server = f.start("GET", None, {})
    child_tracer = TracerProvider(sampler=ALWAYS_ON).get_tracer("child")
    with child_tracer.start_as_current_span("db", context=trace.set_span_in_context(server)) as c:
        pass
    assert c.parent is not None
    assert c.parent.span_id == server.context.span_id
    assert c.get_span_context().trace_id == server.context.trace_id


def test_to_readable_for_export() -> None:
    f, _ = factory()
    span = f.start("GET", remote(7, True), {"a": 1})
    span.end()
    readable = span.to_readable()
    assert isinstance(readable, ReadableSpan)
    assert readable.kind is SpanKind.SERVER
    assert readable.resource.attributes["service.name"] == "svc"
    assert readable.instrumentation_scope is not None
    assert readable.instrumentation_scope.name == "devkit"
    assert dict(readable.attributes or {}) == {"a": 1}


def test_current_span_is_visible_through_the_api() -> None:
    f, _ = factory()
    span = f.start("GET", None, {})
    token = trace.context_api.attach(trace.set_span_in_context(span))
    try:
        current = trace.get_current_span()
        assert isinstance(current, ServerSpan)
        assert not isinstance(current, NonRecordingSpan)
    finally:
        trace.context_api.detach(token)


def test_the_record_gets_the_span_contexts_ids() -> None:
    """The ids the access record reads without property calls are the context's own."""
    f, _ = factory(0.5)
    spans = [
        start_request(f, parent=None),
        start_request(f, parent=remote(0xFEED, True)),
        start_request(f, parent=SpanContext(0, 0, True)),
    ]
    for span in spans:
        assert span.context.is_valid
        req = record(span)
        assert (req.trace_id, req.span_id) == (span.context.trace_id, span.context.span_id)
    assert record(spans[1]).trace_id == 0xFEED and spans[1].parent is not None
    assert spans[2].parent is None  # an invalid remote parent starts a new trace
    assert f.start("GET", None, {}).context.is_valid


def test_redacted_attributes_redact_what_can_carry_pii_and_keep_devkits_own() -> None:

    redactor = Redactor()
    f, _ = factory()
    span = start_request(f, "PURGE-a@b.io", "/u/jane@example.com", "cid-1", scheme="https")
    span.set_attribute("user.email", "jane@example.com")
    span.set_attribute("api_key", "abc123")
    end_request(f, span, "/u/{email}", 500, "ValueError")
    got = span.redacted_attributes(redactor.redact_attributes)
    # The same keys in the same order, and the same values, as redacting everything.
    assert list(got.items()) == list(redactor.redact_attributes(span.attributes).items())
    assert got["url.path"] == "/u/[REDACTED:email]"
    assert got["http.request.method_original"] == "[REDACTED:email]"
    assert got["user.email"] == "[REDACTED:email]"
    assert got["api_key"] == "[REDACTED:secret]"
    assert got["http.route"] == "/u/{email}" and got["error.type"] == "ValueError"
    # devkit's own fields are not offered to the redactor at all.
    seen: list[str] = []

    def spy(attrs: Any) -> dict[str, Any]:
        seen.extend(attrs)
        return dict(attrs)

    span.redacted_attributes(spy)
    assert sorted(seen) == [
        "api_key",
        "correlation.id",
        "http.request.method_original",
        "url.path",
        "user.email",
    ]


def test_application_attributes_win_over_devkits_own_when_redacted_too() -> None:

    f, _ = factory()
    span = start_request(f, "GET", "/x", "cid-1")
    span.set_attribute("http.route", "/custom")
    end_request(f, span, "/x", 200)
    got = span.redacted_attributes(Redactor().redact_attributes)
    assert got == span.attributes and got["http.route"] == "/custom"


def _environ(i: int, kind: int) -> dict[str, Any]:
    """Requests of four kinds; the peer's port and the body's length differ each time."""
    return {
        "REQUEST_METHOD": ("GET", "POST", "PURGE", "GET")[kind],
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "0.0.0.0",
        "SERVER_PORT": "8000",
        "REMOTE_ADDR": ("10.0.0.1", "10.0.0.2")[kind % 2],
        "REMOTE_PORT": str(40000 + i),
        "HTTP_HOST": "shop.example",
        "HTTP_USER_AGENT": ("curl/8.5.0", "agent jane@example.com")[kind % 2],
        "HTTP_X_FORWARDED_FOR": "203.0.113.9" if kind == 3 else None,
        "CONTENT_LENGTH": str(i) if i % 3 else "",
    }


def _scope(i: int, kind: int) -> dict[str, Any]:
    headers = [(b"host", b"shop.example:8443"), (b"user-agent", b"curl/8.5.0")]
    if kind == 1:
        headers.append((b"forwarded", b"for=198.51.100.7;host=api.example"))
    if i % 3:
        headers.append((b"content-length", str(i).encode()))
    return {
        "headers": headers,
        "client": ("10.1.2.3", 50000 + i),
        "server": ("127.0.0.1", 8000),
        "http_version": "1.1",
    }


@pytest.mark.parametrize("source", [_environ, _scope])
def test_remembered_attributes_are_each_requests_own(source: Any) -> None:
    """Kept spans of the same kind share what repeats, redacted once; the correlation id,
    the peer's port and the sizes stay each request's, and the whole equals redacting
    every attribute afresh (the reference)."""
    redactor = Redactor()
    spans, _ = factory(1.0)
    seen: set[tuple[Any, Any]] = set()
    for i in range(60):
        kind = i % 4
        # Some correlation ids hold a card number: redacted on every request.
        cid = "4111111111111111" if i % 7 == 0 else f"cid-{i}"
        span = start_request(
            spans,
            ("GET", "POST", "PURGE", "GET")[kind],
            ("/a", "/u/jane@example.com")[kind % 2],
            cid,
        )
        req = record(span)
        req.source = {k: v for k, v in source(i, kind).items() if v is not None}
        req.query = "token=s3cret&page=2" if kind == 2 else ""
        req.response_headers = [("Content-Length", str(i))] if i % 2 else None
        end_request(spans, span, ("/a", "/u/{email}")[kind % 2], (200, 500)[kind == 3])
        got = span.redacted_attributes(redactor.redact_attributes)
        assert list(got.items()) == list(redactor.redact_attributes(span.attributes).items())
        assert got["correlation.id"] == ("[REDACTED:card]" if i % 7 == 0 else cid)
        seen.add((got.get("network.peer.port"), got.get("http.request.body.size")))
    assert len(seen) == 60  # each request's own numbers, not the first of its kind's
    assert len(spans._attributes) == 4  # one entry per kind


def test_a_source_value_that_cannot_be_a_key_is_read_afresh() -> None:
    """An unusual server's environ value (a list) cannot key the remembered attributes:
    the span's attributes are built without the memory, and nothing is remembered."""
    redactor = Redactor()
    redact = redactor.redact_attributes
    spans, _ = factory(1.0)
    span = start_request(spans, "GET", "/a", "cid-1")
    record(span).source = {"REQUEST_METHOD": "GET", "SERVER_NAME": "a", "SERVER_PORT": ["80"]}
    end_request(spans, span, "/a", 200)
    got = span.redacted_attributes(redact)
    assert list(got.items()) == list(redact(span.attributes).items())
    assert got["server.address"] == "a" and "server.port" not in got
    assert not spans._attributes


def test_an_environs_details_give_the_attributes_the_environ_gives() -> None:
    """A WSGI request whose books wait keeps only its environ's details, as a tuple
    (``_environ_details``): its span's attributes are those the whole environ gives."""
    from devkit.http._core import _environ_details

    for i in range(8):
        environ = {k: v for k, v in _environ(i, i % 4).items() if v is not None}
        environ["wsgi.input"] = object()  # a server's object: not among the details
        got = []
        for source in (environ, _environ_details(environ)):
            spans, _ = factory(1.0)
            span = start_request(spans, "GET", "/a", f"cid-{i}")
            record(span).source = source
            end_request(spans, span, "/a", 200)
            got.append(dict(span.attributes))
        assert got[0] == got[1]
        assert got[0]["user_agent.original"] == environ["HTTP_USER_AGENT"]
