"""OTLP/protobuf encoding of spans without building protobuf objects.

The OpenTelemetry exporter builds a protobuf message object per span, attribute and
value before serialising, on the export thread but under the GIL the request path needs.
:func:`encode_spans` writes the same wire format directly, several times faster
(docs/benchmarks.md#otlp-encoding), and caches what repeats: the resource and scope
messages and attribute key/value pairs such as ``http.request.method=GET``.

:class:`FastOTLPExporter` wraps the OTLP/HTTP span exporter: it encodes with
:func:`encode_spans` and sends through the exporter's own HTTP client, so endpoint,
headers, compression, TLS, timeout and retries stay the exporter's. When that client is
not there (another exporter version, the gRPC or console exporter), or a span holds a
value the encoder does not know, it hands the batch to the wrapped exporter unchanged.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from itertools import islice
from typing import Any, TypeVar

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

from devkit import _compat
from devkit.tracing._export import ExportSpan, RequestExportSpan, SharedAttributes

__all__ = ["FastOTLPExporter", "encode_spans"]

_KIND = {
    SpanKind.INTERNAL: 1,
    SpanKind.SERVER: 2,
    SpanKind.CLIENT: 3,
    SpanKind.PRODUCER: 4,
    SpanKind.CONSUMER: 5,
}
_KIND_FIELD = {kind: b"\x30" + bytes((number,)) for kind, number in _KIND.items()}
_FLAGS_HAS_IS_REMOTE = 0x100
_FLAGS_IS_REMOTE = 0x200
_LOCAL_PARENT = b"\x85\x01" + struct.pack("<I", _FLAGS_HAS_IS_REMOTE)
_REMOTE_PARENT = b"\x85\x01" + struct.pack("<I", _FLAGS_HAS_IS_REMOTE | _FLAGS_IS_REMOTE)
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
_MAX_CACHED_PAIRS = 4096
_MAX_CACHED_NAMES = 1024
_MAX_CACHED_SHARED = 1024
#: Kinds of request span whose name, shared attributes and status are kept encoded.
_MAX_CACHED_KINDS = 1024
#: The ``KeyValue`` attribute field of ``correlation.id`` up to its value's length.
_CID_KEY = b"\x0a\x0ecorrelation.id\x12"
_pack_double = struct.Struct("<d").pack
_pack_u64 = struct.Struct("<Q").pack
_pack_u32 = struct.Struct("<I").pack
_VARINT_1 = [bytes((n,)) for n in range(128)]


class Unsupported(ValueError):
    """A value the encoder does not write (the batch goes to the stock encoder)."""


def _varint(n: int) -> bytes:
    if n < 128:
        return _VARINT_1[n]
    out = bytearray()
    while n > 127:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: ``tag`` (already encoded), length, payload."""
    return tag + _varint(len(payload)) + payload


def _any_value(value: object) -> bytes:
    """An ``AnyValue`` message, as the OpenTelemetry encoder's ``_encode_value``."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(b"\x0a", value.encode("utf-8"))
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise Unsupported("integer beyond int64")
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(v)) for v in value))
    if isinstance(value, Mapping):
        pairs = b"".join(_field(b"\x0a", _key_value(str(k), v)) for k, v in value.items())
        return _field(b"\x32", pairs)
    raise Unsupported(f"attribute value of type {type(value).__name__}")


def _key_value(key: str, value: object) -> bytes:
    return _field(b"\x0a", key.encode("utf-8")) + _field(b"\x12", _any_value(value))


#: A ``Status`` without a description, by code.
_STATUS_FIELD = {
    code.value: _field(b"\x7a", b"\x18" + _varint(code.value) if code.value else b"")
    for code in StatusCode
}


def _ids(ctx: Any, parent: Any) -> list[bytes]:
    """A span's first fields: trace id, span id, trace state, parent span id."""
    out = [
        b"\x0a\x10",
        ctx.trace_id.to_bytes(16, "big"),
        b"\x12\x08",
        ctx.span_id.to_bytes(8, "big"),
    ]
    state = ctx.trace_state
    if state:
        out.append(_field(b"\x1a", ",".join(f"{k}={v}" for k, v in state.items()).encode()))
    if parent:
        out.append(b"\x22\x08")
        out.append(parent.span_id.to_bytes(8, "big"))
    return out


class _Encoder:
    """Keeps the caches; one per exporter (used by its export thread only)."""

    def __init__(self) -> None:
        #: Encoded pairs by field tag, then by ``(key, value)``: one dict for short
        #: strings and one for ints, so that True, 1 and 1.0 never share an encoding
        #: (they are equal as dict keys).
        self._strs: dict[bytes, dict[tuple[str, object], bytes]] = {}
        self._ints: dict[bytes, dict[tuple[str, object], bytes]] = {}
        self._cached = 0
        self._names: dict[str, bytes] = {}
        self._resources: dict[Any, bytes] = {}
        self._scopes: dict[Any, bytes] = {}
        #: The encoded shared part of :class:`SharedAttributes`, by the shared dict's
        #: identity (the entry keeps the dict, so its id is not reused meanwhile).
        self._shared: dict[int, tuple[dict[str, Any], bytes, bytes]] = {}
        #: Request spans' parts that a kind shares, encoded (see :meth:`_request_span`).
        self._kinds: dict[tuple[Any, ...], tuple[dict[str, Any], bytes, bytes, bytes]] = {}

    def attributes(self, tag: bytes, attributes: Mapping[str, object] | None) -> bytes:
        """Each pair as a repeated ``KeyValue`` field ``tag``."""
        if not attributes:
            return b""
        if type(attributes) is SharedAttributes:
            return self._shared_attributes(tag, attributes)
        return self._pairs(tag, attributes.items())

    def _shared_attributes(self, tag: bytes, attributes: SharedAttributes) -> bytes:
        """The shared part from the cache, then the span's own pairs."""
        shared = attributes.shared
        entry = self._shared.get(id(shared))
        if entry is None or entry[0] is not shared or entry[1] != tag:
            if len(self._shared) >= _MAX_CACHED_SHARED:
                self._shared.clear()
            entry = self._shared[id(shared)] = (shared, tag, self._pairs(tag, shared.items()))
        return entry[2] + self._pairs(tag, islice(attributes.items(), len(shared), None))

    def _pairs(self, tag: bytes, items: Iterable[tuple[str, object]]) -> bytes:
        """Each of ``items`` as a ``KeyValue`` field ``tag``."""
        strs = self._strs.get(tag)
        ints = self._ints.get(tag)
        if strs is None or ints is None:
            strs = self._strs[tag] = {}
            ints = self._ints[tag] = {}
        out = []
        # Short strings and ints repeat (methods, routes, addresses, status codes): the
        # item tuple the dict iterator yields is the cache key, so a hit builds nothing.
        for item in items:
            value = item[1]
            if type(value) is str:
                encoded = strs.get(item)
                if encoded is None:
                    encoded = self._pair(tag, item, strs if len(value) <= 24 else None)
            elif type(value) is int:
                encoded = ints.get(item)
                if encoded is None:
                    encoded = self._pair(tag, item, ints)
            else:
                encoded = self._pair(tag, item, None)
            out.append(encoded)
        return b"".join(out)

    def _pair(
        self, tag: bytes, item: tuple[str, object], cache: dict[tuple[str, object], bytes] | None
    ) -> bytes:
        """``item`` encoded, and remembered in ``cache`` when given."""
        try:
            encoded = _field(tag, _key_value(item[0], item[1]))
        except Unsupported:
            raise
        except Exception as exc:  # e.g. a str with lone surrogates
            raise Unsupported(str(exc)) from exc
        if cache is not None:
            if self._cached >= _MAX_CACHED_PAIRS:
                for caches in (self._strs, self._ints):
                    for entries in caches.values():
                        entries.clear()
                self._cached = 0
            cache[item] = encoded
            self._cached += 1
        return encoded

    def resource(self, resource: Any) -> bytes:
        encoded = self._resources.get(resource)
        if encoded is None:
            attributes = self.attributes(b"\x0a", getattr(resource, "attributes", None))
            encoded = self._resources[resource] = _field(b"\x0a", attributes)
        return encoded

    def scope(self, scope: Any) -> bytes:
        encoded = self._scopes.get(scope)
        if encoded is None:
            body = b""
            if scope is not None:
                if scope.name:
                    body += _field(b"\x0a", scope.name.encode("utf-8"))
                if scope.version:
                    body += _field(b"\x12", scope.version.encode("utf-8"))
                body += self.attributes(b"\x1a", scope.attributes)
            encoded = self._scopes[scope] = _field(b"\x0a", body)
        return encoded

    def _request_span(self, span: RequestExportSpan) -> bytes:
        """:meth:`span` for a request span (the same bytes): the name and kind, the
        shared attributes and the status are encoded once per kind of request; the ids,
        times, correlation id and numbers for each span."""
        ctx = span.context
        parent = span.parent
        shared = span.shared
        name = span.name
        code = span.status.status_code.value
        key = (id(shared), name, code)
        entry = self._kinds.get(key)
        if entry is None or entry[0] is not shared:
            if len(self._kinds) >= _MAX_CACHED_KINDS:
                self._kinds.clear()
            head = (_field(b"\x2a", name.encode("utf-8")) if name else b"") + _KIND_FIELD[span.kind]
            entry = self._kinds[key] = (
                shared,
                head,
                self._pairs(b"\x4a", shared.items()),
                _STATUS_FIELD[code],
            )
        own = span.own
        cid = own["correlation.id"]
        if type(cid) is not str or not cid.isascii() or len(cid) > 100:
            # Not the usual short text: encoded the general way.
            pairs = self._pairs(b"\x4a", own.items())
        else:
            size = len(cid)
            pairs = b"J%c%s%c\x0a%c%s%s" % (
                size + 20,
                _CID_KEY,
                size + 2,
                size,
                cid.encode(),
                self._pairs(b"\x4a", islice(own.items(), 1, None)),
            )
        out = _ids(ctx, parent)
        out.append(entry[1])
        if span.start_time:
            out.append(b"\x39" + _pack_u64(span.start_time))
        if span.end_time:
            out.append(b"\x41" + _pack_u64(span.end_time))
        out.append(entry[2])
        out.append(pairs)
        out.append(entry[3])
        out.append(_REMOTE_PARENT if parent and parent.is_remote else _LOCAL_PARENT)
        return b"".join(out)

    def span(self, span: Any) -> bytes:
        if type(span) is RequestExportSpan:
            return self._request_span(span)
        parent = span.parent
        out = _ids(span.context, parent)
        name = span.name
        if name:
            # Span names come from a small set (a method and a route template).
            encoded = self._names.get(name)
            if encoded is None:
                encoded = _field(b"\x2a", name.encode("utf-8"))
                if len(self._names) < _MAX_CACHED_NAMES and type(name) is str:
                    self._names[name] = encoded
            out.append(encoded)
        out.append(_KIND_FIELD[span.kind])
        if span.start_time:
            out.append(b"\x39" + _pack_u64(span.start_time))
        if span.end_time:
            out.append(b"\x41" + _pack_u64(span.end_time))
        out.append(self.attributes(b"\x4a", span.attributes))
        dropped = getattr(span, "dropped_attributes", 0)
        if dropped:
            out.append(b"\x50" + _varint(dropped))
        for event in span.events:
            body = b"\x09" + _pack_u64(event.timestamp) if event.timestamp else b""
            if event.name:
                body += _field(b"\x12", event.name.encode("utf-8"))
            body += self.attributes(b"\x1a", event.attributes)
            if getattr(event, "dropped_attributes", 0):
                body += b"\x20" + _varint(event.dropped_attributes)
            out.append(_field(b"\x5a", body))
        dropped = getattr(span, "dropped_events", 0)
        if dropped:
            out.append(b"\x60" + _varint(dropped))
        for link in span.links:
            body = (
                b"\x0a\x10"
                + link.context.trace_id.to_bytes(16, "big")
                + b"\x12\x08"
                + link.context.span_id.to_bytes(8, "big")
                + self.attributes(b"\x22", link.attributes)
            )
            if getattr(link, "dropped_attributes", 0):
                body += b"\x28" + _varint(link.dropped_attributes)
            flags = _FLAGS_HAS_IS_REMOTE | (_FLAGS_IS_REMOTE if link.context.is_remote else 0)
            out.append(_field(b"\x6a", body + b"\x35" + _pack_u32(flags)))
        dropped = getattr(span, "dropped_links", 0)
        if dropped:
            out.append(b"\x70" + _varint(dropped))
        status = span.status
        if status is not None:
            description = status.description
            code = status.status_code.value
            if description:
                body = _field(b"\x12", description.encode("utf-8"))
                if code:
                    body += b"\x18" + _varint(code)
                out.append(_field(b"\x7a", body))
            else:
                out.append(_STATUS_FIELD[code])
        out.append(_REMOTE_PARENT if parent and parent.is_remote else _LOCAL_PARENT)
        return b"".join(out)

    def request(self, spans: Sequence[Any]) -> bytes:
        """An ``ExportTraceServiceRequest``: spans grouped by resource, then by scope.

        Groups are found by identity first (a batch shares one resource object); hashing
        an SDK ``Resource`` serialises its attributes, which costs more than a span.
        """
        groups: list[tuple[Any, list[tuple[Any, list[bytes]]]]] = []
        last_resource: Any = _NOTHING
        last_scope: Any = _NOTHING
        scopes: list[tuple[Any, list[bytes]]] = []
        encoded: list[bytes] = []
        for span in spans:
            resource = span.resource
            scope = span.instrumentation_scope or None
            if resource is not last_resource:
                scopes = _group(groups, resource)
                last_resource, last_scope = resource, _NOTHING
            if scope is not last_scope:
                encoded = _group(scopes, scope)
                last_scope = scope
            encoded.append(_field(b"\x12", self.span(span)))
        out = []
        for resource, resource_scopes in groups:
            body = [self.resource(resource)]
            for scope, scope_spans in resource_scopes:
                scope_body = self.scope(scope) + b"".join(scope_spans)
                schema = getattr(scope, "schema_url", None)
                if schema:
                    scope_body += _field(b"\x1a", schema.encode("utf-8"))
                body.append(_field(b"\x12", scope_body))
            schema = getattr(resource, "schema_url", None)
            if schema:
                body.append(_field(b"\x1a", schema.encode("utf-8")))
            out.append(_field(b"\x0a", b"".join(body)))
        return b"".join(out)


_NOTHING = object()
_T = TypeVar("_T")


def _group(groups: list[tuple[Any, list[_T]]], key: Any) -> list[_T]:
    """The members of ``key``'s group (found by identity, then equality), created if new."""
    for existing, members in groups:
        if existing is key:
            return members
    for existing, members in groups:
        if existing == key:
            return members
    members = []
    groups.append((key, members))
    return members


def encode_spans(spans: Sequence[Any]) -> bytes:
    """The serialised ``ExportTraceServiceRequest`` of ``spans`` (no caches kept)."""
    return _Encoder().request(spans)


class FastOTLPExporter(SpanExporter):
    """The OTLP/HTTP exporter with devkit's encoder in front (see the module docstring)."""

    #: devkit's export thread may hand over ``ExportSpan`` objects (plain fields) as well
    #: as SDK spans; the wrapped exporter gets SDK spans only.
    takes_export_spans = True

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter
        self._encoder = _Encoder()
        self._send = _compat.otlp_sender(exporter)
        self._max_size = _compat.otlp_max_request_size(exporter)
        #: Batches sent through the fast path / handed to the wrapped exporter.
        self.fast_batches = 0
        self.fallback_batches = 0

    @property
    def fast(self) -> bool:
        """Whether batches are encoded here (the wrapped exporter's client was found)."""
        return self._send is not None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        send = self._send
        if send is None or _compat.otlp_is_shut_down(self.exporter):
            return self._fallback(spans)
        try:
            data = self._encoder.request(spans)
        except Exception:
            return self._fallback(spans)
        if self._max_size is not None and len(data) > self._max_size:
            return self._fallback(spans)  # the exporter drops and reports it its way
        self.fast_batches += 1
        return SpanExportResult.SUCCESS if send(data) else SpanExportResult.FAILURE

    def _fallback(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.fallback_batches += 1
        readable = [s.to_readable() if isinstance(s, ExportSpan) else s for s in spans]
        return self.exporter.export(readable)

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.exporter.force_flush(timeout_millis)
