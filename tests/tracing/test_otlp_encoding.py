"""devkit's OTLP encoder writes what the OpenTelemetry encoder writes, for every span shape."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as stock_encode
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from request_record import end_request, start_request

from devkit.config import UNMATCHED_ROUTE
from devkit.tracing._export import ExportSpan
from devkit.tracing._otlp import FastOTLPExporter, _Encoder, encode_spans
from devkit.tracing._span import ServerSpanFactory

RESOURCE = Resource.create({"service.name": "svc", "service.version": "1.2", "pid": 42})
SCOPE = InstrumentationScope("devkit", "0.1", "https://schema", {"scope.attr": True})


def parsed(data: bytes) -> ExportTraceServiceRequest:
    message = ExportTraceServiceRequest()
    message.ParseFromString(data)
    return message


def assert_same(spans: list[Any]) -> None:
    ours = parsed(encode_spans(spans))
    stock = stock_encode([s.to_readable() if hasattr(s, "to_readable") else s for s in spans])
    assert ours == stock
    # the cached encoder gives the same bytes on a second batch
    encoder = _Encoder()
    assert encoder.request(spans) == encoder.request(spans)


def readable(**overrides: Any) -> ReadableSpan:
    fields: dict[str, Any] = {
        "name": "GET /items/{id}",
        "context": SpanContext(
            0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, False, TraceFlags(1)
        ),
        "parent": None,
        "resource": RESOURCE,
        "attributes": {"http.request.method": "GET", "http.response.status_code": 200},
        "events": (),
        "links": (),
        "kind": SpanKind.SERVER,
        "status": Status(StatusCode.UNSET),
        "start_time": 1_700_000_000_000_000_000,
        "end_time": 1_700_000_000_002_000_000,
        "instrumentation_scope": SCOPE,
    }
    fields.update(overrides)
    return ReadableSpan(**fields)


def test_server_span_from_the_request_path() -> None:
    factory = ServerSpanFactory(ratio=1.0, resource=lambda: RESOURCE, on_end=lambda s: None)
    remote = SpanContext(5, 6, True, TraceFlags(1), TraceState([("vendor", "x1"), ("other", "y")]))
    span = start_request(factory, "GET", "/items/1", "cid", remote)
    span.set_attribute("user.id", 7)
    span.add_event("cache miss", {"key": "k", "hit": False})
    end_request(factory, span, "/items/{id}", 503, "503")
    span.add_link(SpanContext(8, 9, True, TraceFlags(1)), {"l": 1})  # ended: ignored
    assert_same(
        [
            span,
            span.to_readable(),
            ExportSpan(span, span.attributes, list(span.events)),
            ExportSpan(span, span.redacted_attributes(redact), list(span.events)),
        ]
    )


def redact(attributes: Any) -> dict[str, Any]:
    return {key: "[REDACTED]" if key == "url.path" else value for key, value in attributes.items()}


def test_plain_export_spans_go_to_a_wrapped_exporter_as_sdk_spans() -> None:
    class Recording(OTLPSpanExporter):
        def __init__(self) -> None:
            self.got: list[Any] = []

        def export(self, spans: Any) -> SpanExportResult:
            self.got.extend(spans)
            return SpanExportResult.SUCCESS

    factory = ServerSpanFactory(ratio=1.0, resource=lambda: RESOURCE, on_end=lambda s: None)
    span = start_request(factory, "GET", "/items/1", "cid")
    end_request(factory, span, "/items/{id}", 200)
    wrapped = Recording()
    exporter = FastOTLPExporter(wrapped)
    assert not exporter.fast  # not the stock class: every batch falls back
    exported = ExportSpan(span, span.redacted_attributes(redact), [])
    assert exporter.export([exported]) is SpanExportResult.SUCCESS  # type: ignore[list-item]
    assert [type(s) for s in wrapped.got] == [ReadableSpan]
    assert dict(wrapped.got[0].attributes)["url.path"] == "[REDACTED]"


def test_every_field_and_value_type() -> None:
    link = Link(SpanContext(9, 10, True, TraceFlags(0)), {"link.attr": 1.5})
    spans = [
        readable(),
        readable(
            name="",
            parent=SpanContext(1, 2, True, TraceFlags(1)),
            kind=SpanKind.CLIENT,
            status=Status(StatusCode.ERROR, "boom ü"),
            attributes={
                "s": "ü\u2603",
                "empty": "",
                "t": True,
                "f": False,
                "zero": 0,
                "neg": -5,
                "big": 2**63 - 1,
                "min": -(2**63),
                "pi": math.pi,
                "nan": math.nan,
                "b": b"\x00\xff",
                "list": ["a", "b"],
                "ints": [1, 2, 3],
                "mixed": [1, "x", 2.5, True],
                "emptylist": [],
                "none": None,
            },
            events=[Event("e1", {"k": "v"}, 123), Event("e2", None, 456)],
            links=[link],
        ),
        readable(parent=SpanContext(1, 3, False, TraceFlags(0)), kind=SpanKind.INTERNAL),
        readable(resource=Resource.create({"service.name": "other"})),
        readable(instrumentation_scope=None, status=Status(StatusCode.OK)),
    ]
    ours = parsed(encode_spans(spans))
    stock = stock_encode(spans)
    # NaN != NaN: compare the serialisations of the parsed messages instead
    assert ours.SerializeToString(deterministic=True) == stock.SerializeToString(deterministic=True)


def test_true_one_and_one_point_zero_do_not_share_a_cached_encoding() -> None:
    spans = [
        readable(attributes={"v": True}),
        readable(attributes={"v": 1}),
        readable(attributes={"v": 1.0}),
    ]
    encoder = _Encoder()
    assert parsed(encoder.request(spans)) == stock_encode(spans)
    assert parsed(encoder.request(spans)) == stock_encode(spans)


scalars = st.one_of(
    st.text(max_size=80),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=20), st.one_of(scalars, st.lists(scalars, max_size=4)), max_size=8
    )
)
def test_random_attributes(attributes: dict[str, Any]) -> None:
    try:
        "".join(attributes).encode("utf-8")
        for value in attributes.values():
            if isinstance(value, str):
                value.encode("utf-8")
    except UnicodeEncodeError:
        return  # lone surrogates: the fast path falls back (covered below)
    assert_same([readable(attributes=attributes)])


def test_unencodable_values_fall_back_to_the_wrapped_exporter() -> None:
    class Recorder(OTLPSpanExporter):
        def __init__(self) -> None:
            super().__init__(endpoint="http://127.0.0.1:9/v1/traces")
            self.batches: list[Any] = []

        def export(self, spans: Any) -> SpanExportResult:
            self.batches.append(spans)
            return SpanExportResult.SUCCESS

    inner = Recorder()
    fast = FastOTLPExporter(inner)
    assert not fast.fast  # a subclass may encode differently: never bypassed
    assert fast.export([readable()]) is SpanExportResult.SUCCESS
    assert fast.fallback_batches == 1 and len(inner.batches) == 1


@pytest.mark.parametrize("value", [2**64, "\ud800", object()])
def test_values_the_encoder_refuses(value: Any) -> None:
    exporter = OTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")
    sent: list[bytes] = []
    fast = FastOTLPExporter(exporter)
    assert fast.fast
    fast._send = lambda data: sent.append(data) or True  # type: ignore[assignment]
    fallback: list[Any] = []
    exporter.export = lambda spans: fallback.append(spans) or SpanExportResult.SUCCESS  # type: ignore[method-assign]
    assert fast.export([readable(attributes={"bad": value})]) is SpanExportResult.SUCCESS
    assert sent == [] and len(fallback) == 1
    assert fast.export([readable()]) is SpanExportResult.SUCCESS
    assert len(sent) == 1


def test_the_pair_cache_is_bounded_and_gives_the_same_bytes_after_a_reset() -> None:
    from devkit.tracing._otlp import _MAX_CACHED_PAIRS

    spans = [readable(attributes={"k": f"v{i}", "n": i}) for i in range(_MAX_CACHED_PAIRS)]
    encoder = _Encoder()
    first = encoder.request(spans)
    assert encoder.request(spans) == first == encode_spans(spans)
    cached = sum(map(len, encoder._strs.values())) + sum(map(len, encoder._ints.values()))
    assert 0 < cached <= _MAX_CACHED_PAIRS


def test_request_spans_of_one_kind_share_their_encoded_part() -> None:
    """Kept request spans of the same kind carry ``SharedAttributes``: the encoder writes
    the shared part from its cache, and what it writes is what the stock encoder writes
    for each span, with each span's own correlation id, port and sizes."""
    from devkit.redaction import Redactor
    from devkit.tracing._export import SharedAttributes

    factory = ServerSpanFactory(ratio=1.0, resource=lambda: RESOURCE, on_end=lambda s: None)
    redact = Redactor().redact_attributes
    spans = []
    for i in range(12):
        span = start_request(factory, "GET", ("/a", "/b")[i % 2], f"cid-{i}")
        req = span._request
        req.source = {"REQUEST_METHOD": "GET", "REMOTE_ADDR": "10.0.0.1", "REMOTE_PORT": i + 1}  # type: ignore[union-attr]
        end_request(factory, span, ("/a", "/b")[i % 2], 200)
        spans.append(ExportSpan(span, span.redacted_attributes(redact), []))
    assert all(type(s.attributes) is SharedAttributes for s in spans)
    assert spans[0].attributes.shared is spans[2].attributes.shared
    encoder = _Encoder()
    for _ in range(2):  # the second time from the cache
        got = parsed(encoder.request(spans))
        assert got == stock_encode([s.to_readable() for s in spans])
        values = [
            {a.key: a.value for a in span.attributes}
            for span in got.resource_spans[0].scope_spans[0].spans
        ]
        assert [v["correlation.id"].string_value for v in values] == [f"cid-{i}" for i in range(12)]
        assert [v["network.peer.port"].int_value for v in values] == list(range(1, 13))


def _request_spans() -> list[Any]:
    """Finished request spans of several kinds, parents, trace states and ids."""
    factory = ServerSpanFactory(ratio=1.0, resource=lambda: RESOURCE, on_end=lambda s: None)
    remote = SpanContext(5, 6, True, TraceFlags(1), TraceState([("vendor", "x1")]))
    local = SpanContext(7, 8, False, TraceFlags(1))
    cases = [
        ("GET", "/a", "cid-1", None, "/a", 200, None),
        ("GET", "/a", "4111111111111111", None, "/a", 200, None),  # redacted as a card
        ("POST", "/b", "c" * 100, remote, "/b", 201, None),
        ("PATCHY", "/c", "c" * 101, local, UNMATCHED_ROUTE, 404, None),
        ("GET", "/d", "é-not-ascii", None, "/d", 500, "500"),
        ("GET", "/a", "", None, "/a", 200, None),
        ("GET", "/a", "cid-2", remote, "/a", 200, None),
    ]
    spans = []
    for i, (method, path, cid, parent, route, status, error) in enumerate(cases * 2):
        span = start_request(factory, method, path, cid, parent)
        req = span._request
        req.query = "q=1" if i % 3 == 0 else ""  # type: ignore[union-attr]
        req.source = {  # type: ignore[union-attr]
            "REQUEST_METHOD": method,
            "REMOTE_ADDR": "10.0.0.1",
            "REMOTE_PORT": str(1000 + i),
            "HTTP_USER_AGENT": "ua mail me@example.com" if i % 2 else "ua",
            "CONTENT_LENGTH": str(i) if i % 4 else None,
        }
        req.response_headers = (("content-length", 10 + i),) if i % 5 else None  # type: ignore[union-attr]
        end_request(factory, span, route, status, error)
        spans.append(span)
    return spans


def test_request_spans_in_two_parts_encode_as_the_generic_path() -> None:
    """A kept request span goes out as a ``RequestExportSpan`` (shared and own parts, the
    kind's name, attributes and status encoded once): the bytes are the ones the
    ``ExportSpan`` of the same span gives, and what the stock encoder writes."""
    from devkit.redaction import Redactor
    from devkit.tracing._export import RequestExportSpan

    redact = Redactor().redact_attributes
    spans = _request_spans()
    fused = []
    for span in spans:
        parts = span.request_parts(redact)
        assert parts is not None
        out = RequestExportSpan.__new__(RequestExportSpan)
        for field in ("name", "context", "parent", "kind", "status", "start_time", "end_time"):
            setattr(out, field, getattr(span, field))
        out.shared, out.own = parts
        out.events, out.links = [], []
        out.resource, out.instrumentation_scope = span.resource, span.instrumentation_scope
        fused.append(out)
    generic = [ExportSpan(s, s.redacted_attributes(redact), []) for s in spans]
    assert fused[0].shared is fused[6].shared  # one kind, one shared dict
    encoder = _Encoder()
    for _ in range(2):  # the second time from the caches
        assert encoder.request(fused) == _Encoder().request(generic)
    assert parsed(encoder.request(fused)) == stock_encode([s.to_readable() for s in fused])
    # What reads the attributes gets both parts, in order (and a fallback its SDK span).
    assert list(fused[1].attributes) == list(generic[1].attributes)
    assert fused[1].attributes["correlation.id"] != "4111111111111111"


def test_the_batch_exporter_hands_plain_request_spans_over_in_two_parts() -> None:
    from devkit.redaction import Redactor
    from devkit.tracing._export import BatchExporter, RequestExportSpan

    spans = _request_spans()
    spans[1].set_status(Status(StatusCode.ERROR, "mail me@example.com"))  # ended: ignored
    factory = spans[0]._factory
    extra = start_request(factory, "GET", "/e", "cid-e")
    extra.set_attribute("user.id", 7)
    end_request(factory, extra, "/e", 200)
    exporter = BatchExporter(
        FastOTLPExporter(OTLPSpanExporter()), redact=Redactor().redact_attributes
    )
    prepared = [exporter._prepared(s) for s in [*spans, extra]]
    assert [type(p) for p in prepared] == [RequestExportSpan] * len(spans) + [ExportSpan]
    assert prepared[-1].attributes["user.id"] == 7  # type: ignore[union-attr]
