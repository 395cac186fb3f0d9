"""Server spans over devkit's real request record, opened and finished by hand."""

from __future__ import annotations

from opentelemetry.trace import SpanContext

from devkit.config import UNMATCHED_ROUTE
from devkit.http._core import Request
from devkit.metrics import STANDARD_METHODS
from devkit.tracing._span import ServerSpan, ServerSpanFactory


def start_request(
    factory: ServerSpanFactory,
    method: str = "GET",
    path: str = "/",
    cid: str = "cid",
    parent: SpanContext | None = None,
    scheme: str = "http",
) -> ServerSpan:
    """What the request core does when a request begins (the record's request fields)."""
    req = Request()
    req.method = method
    req.method_label = method if method in STANDARD_METHODS else "_OTHER"
    req.scheme = scheme
    req.path = path
    req.cid = cid
    req.route = UNMATCHED_ROUTE
    req.status = 0
    req.error_type = None
    req.query = ""
    req.source = None
    req.response_headers = None
    return factory.start_request(req, parent)


def end_request(
    factory: ServerSpanFactory,
    span: ServerSpan,
    route: str,
    status: int,
    error_type: str | None = None,
) -> bool:
    """What the request core does when the request finishes: the response fields, then
    the span's end. True when the trace is kept."""
    req = record(span)
    req.route, req.status, req.error_type = route, status, error_type
    return factory.end_request(span)


def record(span: ServerSpan) -> Request:
    req = span._request
    assert isinstance(req, Request)
    return req
