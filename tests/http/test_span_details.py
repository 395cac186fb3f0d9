"""The server span's recommended HTTP attributes, read from the raw scope or environ only
for kept traces, redacted like the access log."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterable
from typing import Any

import pytest

import devkit
from devkit.http._core import MAX_HEADER_ATTRIBUTE, _split_host
from devkit.http.asgi import ASGIMiddleware
from devkit.http.wsgi import WSGIMiddleware
from devkit.testing import CapturedSpans


async def _ok_app(scope: Any, receive: Any, send: Any) -> None:
    body = b"hello"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _streaming_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"a", "more_body": True})
    await send({"type": "http.response.body", "body": b"b"})


def _asgi(app: Any, headers: list[tuple[bytes, bytes]], **scope: Any) -> None:
    base = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/orders",
        "raw_path": b"/orders",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("10.1.2.3", 51234),
        "server": ("127.0.0.1", 8000),
        **scope,
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    async def run() -> None:
        await ASGIMiddleware(app)(base, receive, send)

    asyncio.run(run())


def _attributes(spans: CapturedSpans) -> dict[str, Any]:
    devkit.shutdown()  # decides and exports what is pending
    (span,) = spans.spans
    return dict(span.attributes or {})


def test_a_kept_asgi_span_has_the_recommended_attributes(devkit_spans: CapturedSpans) -> None:
    devkit.init(sample_success_ratio=1.0)
    _asgi(
        _ok_app,
        [
            (b"host", b"shop.example:8443"),
            (b"user-agent", b"curl/8.5.0"),
            (b"content-length", b"12"),
        ],
        query_string=b"page=2&token=s3cr3t",
    )
    attributes = _attributes(devkit_spans)
    assert {k: attributes[k] for k in attributes if k not in ("correlation.id",)} == {
        "http.request.method": "POST",
        "url.scheme": "http",
        "url.path": "/orders",
        "url.query": "page=[REDACTED]&token=[REDACTED]",
        "http.response.status_code": 200,
        "server.address": "shop.example",
        "server.port": 8443,
        "client.address": "10.1.2.3",
        "network.peer.address": "10.1.2.3",
        "network.peer.port": 51234,
        "user_agent.original": "curl/8.5.0",
        "network.protocol.version": "1.1",
        "http.request.body.size": 12,
        "http.response.body.size": 5,
    }


def test_proxies_headers_name_the_client_and_the_host(devkit_spans: CapturedSpans) -> None:
    devkit.init(sample_success_ratio=1.0)
    _asgi(
        _streaming_app,
        [
            (b"host", b"10.0.0.7:8000"),
            (b"x-forwarded-host", b"api.example"),
            (b"x-forwarded-for", b"203.0.113.9, 10.0.0.1"),
        ],
        scheme="https",
        http_version="2",
    )
    attributes = _attributes(devkit_spans)
    assert attributes["server.address"] == "api.example"
    assert attributes["server.port"] == 443  # the scheme's, as the Host had none
    assert attributes["client.address"] == "203.0.113.9"
    assert attributes["network.peer.address"] == "10.1.2.3"
    assert attributes["network.protocol.version"] == "2"
    assert "http.response.body.size" not in attributes  # streamed: not known
    assert "url.query" not in attributes and "user_agent.original" not in attributes


def test_the_forwarded_header_wins(devkit_spans: CapturedSpans) -> None:
    devkit.init(sample_success_ratio=1.0)
    _asgi(
        _ok_app,
        [
            (b"host", b"internal"),
            (
                b"forwarded",
                b'for="[2001:db8::17]:4711";host=shop.example;proto=https, for=10.0.0.1',
            ),
            (b"x-forwarded-for", b"198.51.100.1"),
        ],
        client=None,
    )
    attributes = _attributes(devkit_spans)
    assert attributes["client.address"] == "2001:db8::17"
    assert attributes["server.address"] == "shop.example"
    assert "network.peer.address" not in attributes and "network.peer.port" not in attributes


def test_what_the_client_sent_is_redacted_and_bounded(devkit_spans: CapturedSpans) -> None:
    devkit.init(sample_success_ratio=1.0, redact_ip=True)
    _asgi(
        _ok_app,
        [
            (b"host", b"shop.example"),
            (b"user-agent", b"bot (contact ada@example.com) " + b"x" * 5000),
            (b"content-length", b"not a number"),
        ],
    )
    attributes = _attributes(devkit_spans)
    agent = attributes["user_agent.original"]
    assert "ada@example.com" not in agent and "[REDACTED:email]" in agent
    assert len(agent) <= MAX_HEADER_ATTRIBUTE + len("[REDACTED:email]")
    assert "10.1.2.3" not in str(attributes)  # DEVKIT_REDACT_IP covers the addresses
    assert "http.request.body.size" not in attributes


def test_a_kept_wsgi_span_reads_the_environ(devkit_spans: CapturedSpans) -> None:
    devkit.init(sample_success_ratio=1.0)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("201 Created", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/items",
        "QUERY_STRING": "q=secret",
        "SERVER_PROTOCOL": "HTTP/1.0",
        "SERVER_NAME": "0.0.0.0",
        "SERVER_PORT": "8000",
        "REMOTE_ADDR": "192.0.2.44",
        "REMOTE_PORT": "40000",
        "HTTP_HOST": "[::1]:8000",
        "HTTP_USER_AGENT": "python-requests/2.32",
        "CONTENT_LENGTH": "",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
    }
    body = WSGIMiddleware(app)(environ, lambda status, headers, exc_info=None: None)
    assert list(body) == [b"ok"]
    body.close()  # type: ignore[attr-defined]
    attributes = _attributes(devkit_spans)
    assert attributes["server.address"] == "::1" and attributes["server.port"] == 8000
    assert attributes["client.address"] == "192.0.2.44"
    assert attributes["network.peer.port"] == 40000
    assert attributes["network.protocol.version"] == "1.0"
    assert attributes["user_agent.original"] == "python-requests/2.32"
    assert attributes["url.query"] == "q=[REDACTED]"
    assert attributes["http.response.body.size"] == 2
    assert attributes["http.response.status_code"] == 201
    assert "http.request.body.size" not in attributes


def test_application_values_still_win(devkit_spans: CapturedSpans) -> None:
    devkit.init(sample_success_ratio=1.0)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        from opentelemetry import trace

        trace.get_current_span().set_attribute("client.address", "from-the-app")
        await _ok_app(scope, receive, send)

    _asgi(app, [(b"host", b"a")])
    assert _attributes(devkit_spans)["client.address"] == "from-the-app"


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("shop.example", ("shop.example", None)),
        ("shop.example:80", ("shop.example", 80)),
        ("[2001:db8::1]:443", ("2001:db8::1", 443)),
        ("[2001:db8::1]", ("2001:db8::1", None)),
        ("2001:db8::1", ("2001:db8::1", None)),
        ("shop.example:99999", ("shop.example", None)),
        ("shop.example:x", ("shop.example", None)),
    ],
)
def test_host_and_port(authority: str, expected: tuple[str, int | None]) -> None:
    assert _split_host(authority) == expected


def test_the_response_length_from_each_adapters_headers() -> None:
    from django.http.response import ResponseHeaders

    from devkit.http._core import _response_length

    assert _response_length([(b"content-type", b"x"), (b"content-length", b"5")]) == 5
    assert _response_length([("Content-Length", "7")]) == 7
    assert _response_length(ResponseHeaders({"content-length": "9"})) == 9
    assert _response_length([("Content-Length", "-1")]) is None
    assert _response_length(ResponseHeaders({})) is None
    assert _response_length(None) is None


async def _renaming_app(scope: Any, receive: Any, send: Any) -> None:
    from opentelemetry import trace

    trace.get_current_span().update_name("login")
    await _ok_app(scope, receive, send)


def test_a_name_the_app_gives_the_server_span_is_kept(devkit_spans: CapturedSpans) -> None:
    devkit.init(sample_success_ratio=1.0)
    _asgi(_renaming_app, [])
    _asgi(_ok_app, [])
    devkit.shutdown()
    assert sorted(span.name for span in devkit_spans.spans) == ["POST <unmatched>", "login"]


class _AppState:
    """Stands for what frameworks put in the scope (routers, exit stacks, responses)."""


def test_a_kept_span_does_not_keep_the_scope(devkit_spans: CapturedSpans) -> None:
    import gc
    import weakref

    devkit.init(sample_success_ratio=1.0)
    state = _AppState()
    alive = weakref.ref(state)
    _asgi(_ok_app, [(b"user-agent", b"curl/8.5.0")], state=state)
    del state
    gc.collect()
    # The span waits for export (here: until shutdown) with the request's record...
    assert alive() is None, "the kept span holds the whole scope"
    attributes = _attributes(devkit_spans)
    # ...and its attributes are still read from what it kept.
    assert attributes["user_agent.original"] == "curl/8.5.0"
    assert attributes["client.address"] == "10.1.2.3"
