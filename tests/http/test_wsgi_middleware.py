"""In-process tests of the WSGI middleware and the Flask integration."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from typing import Any

import flask
import pytest
import structlog
from prometheus_client import REGISTRY

import devkit
from devkit import _context
from devkit.testing import CapturedLogs


def count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def make_app() -> flask.Flask:
    app = flask.Flask("t")

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, int]:
        devkit.get_logger("app").info("in handler")
        return {"id": item_id}

    @app.get("/bind")
    def bind() -> str:
        structlog.contextvars.bind_contextvars(user="alice")
        return "bound"

    @app.get("/plain")
    def plain() -> str:
        devkit.get_logger("app").info("plain")
        return "ok"

    @app.get("/missing")
    def missing() -> str:
        raise KeyError("nope")

    @app.errorhandler(KeyError)
    def handle(exc: KeyError) -> tuple[str, int]:
        devkit.get_logger("app").warning("handled in errorhandler")
        return "gone", 410

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("bad")

    @app.get("/stream")
    def stream() -> flask.Response:
        def chunks() -> Iterator[str]:
            yield "a"
            devkit.get_logger("app").info("while streaming")
            yield "b"

        return flask.Response(chunks())

    return app


def test_flask_app_created_after_init_is_instrumented(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    client = make_app().test_client()
    response = client.get("/items/4", buffered=True)
    assert response.status_code == 200
    assert len(response.headers["X-Correlation-ID"]) == 32
    assert (
        count("http_requests_total", method="GET", route="/items/<int:item_id>", status_code="200")
        == 1
    )
    handler, access = [r for r in devkit_logs.records if r["logger"] in ("app", "devkit.access")]
    assert handler["trace_id"] == access["trace_id"]
    assert handler["correlation_id"] == access["correlation_id"]


def test_explicit_wrapping_does_not_double_count(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    app = make_app()
    app.wsgi_app = devkit.wsgi(app.wsgi_app)  # type: ignore[method-assign]
    app.test_client().get("/items/1", buffered=True)
    assert (
        count("http_requests_total", method="GET", route="/items/<int:item_id>", status_code="200")
        == 1
    )
    assert len(devkit_logs.find(message="request completed")) == 1


def test_unmatched_and_errors(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    client = make_app().test_client()
    assert client.get("/no/such/9", buffered=True).status_code == 404
    assert client.get("/boom", buffered=True).status_code == 500
    assert count("http_requests_total", method="GET", route="<unmatched>", status_code="404") == 1
    assert count("http_requests_errors_total", method="GET", route="/boom", status_code="500") == 1


def test_errorhandler_logs_carry_the_trace(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    assert make_app().test_client().get("/missing", buffered=True).status_code == 410
    (handled,) = devkit_logs.find(message="handled in errorhandler")
    (access,) = devkit_logs.find(message="request completed")
    assert handled["trace_id"] == access["trace_id"] != "0" * 32
    assert access["status_code"] == 410 and access["level"] == "warn"


def test_bound_context_does_not_leak_to_the_next_request(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    client = make_app().test_client()
    client.get("/bind", buffered=True)
    client.get("/plain", buffered=True)
    (plain,) = devkit_logs.find(message="plain")
    assert "user" not in plain


def test_streamed_body_is_timed_until_close(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    response = make_app().test_client().get("/stream", buffered=True)
    assert response.data == b"ab"
    (streaming,) = devkit_logs.find(message="while streaming")
    (access,) = devkit_logs.find(message="request completed")
    assert streaming["trace_id"] == access["trace_id"]
    assert count("http_requests_in_progress", method="GET") == 0


def test_probes_and_metrics_served_and_not_logged(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    devkit.health.mark_started()
    client = make_app().test_client()
    for path in ("/healthz/live", "/healthz/ready", "/healthz/startup", "/metrics"):
        assert client.get(path, buffered=True).status_code == 200
    assert devkit_logs.find(message="request completed") == []


def test_plain_wsgi_app(devkit_logs: CapturedLogs) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
        return [b"down"]

    devkit.init()
    from werkzeug.test import Client

    response = Client(devkit.wsgi(app)).get(
        "/anything", buffered=True, headers={"X-Request-ID": "rid-1"}
    )
    assert response.status_code == 503
    assert response.headers["X-Correlation-ID"] == "rid-1"
    assert (
        count("http_requests_errors_total", method="GET", route="<unmatched>", status_code="503")
        == 1
    )


_REQUEST_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("t_request_var", default="-")


def test_each_request_runs_in_its_own_context(devkit_logs: CapturedLogs) -> None:
    """A variable the app sets while answering, or while its body is iterated and closed,
    is seen by the rest of that request only: never by the next request on the thread, nor
    by the server around it; devkit's own ids do not stay behind either."""
    seen: list[tuple[str, str, str | None]] = []

    class Body:
        def __init__(self, name: str) -> None:
            self.name = name

        def __iter__(self) -> Iterator[bytes]:
            seen.append(("iterate", _REQUEST_VAR.get(), _context.correlation_id.get()))
            _REQUEST_VAR.set(self.name + "-body")
            yield b"ok"

        def close(self) -> None:
            seen.append(("close", _REQUEST_VAR.get(), _context.correlation_id.get()))

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        name = environ["PATH_INFO"].strip("/")
        seen.append(("call", _REQUEST_VAR.get(), _context.correlation_id.get()))
        _REQUEST_VAR.set(name)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Body(name)

    devkit.init()
    wrapped = devkit.wsgi(app)
    for name, cid in (("a", "cid-a"), ("b", "cid-b")):
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": f"/{name}",
            "HTTP_X_CORRELATION_ID": cid,
            "wsgi.url_scheme": "http",
        }
        body = wrapped(environ, lambda status, headers, exc_info=None: None)
        assert b"".join(body) == b"ok"
        body.close()  # type: ignore[attr-defined]
        # The server's context is untouched by the request.
        assert _REQUEST_VAR.get() == "-" and _context.correlation_id.get() is None
    assert seen == [
        ("call", "-", "cid-a"),
        ("iterate", "a", "cid-a"),
        ("close", "a-body", "cid-a"),
        ("call", "-", "cid-b"),
        ("iterate", "b", "cid-b"),
        ("close", "b-body", "cid-b"),
    ]
    assert [r["correlation_id"] for r in devkit_logs.find(message="request completed")] == [
        "cid-a",
        "cid-b",
    ]


def test_a_body_the_server_never_closes_finishes_when_it_is_freed(
    devkit_logs: CapturedLogs,
) -> None:
    import gc

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    devkit.init()
    wrapped = devkit.wsgi(app)

    def environ() -> dict[str, Any]:
        return {"REQUEST_METHOD": "GET", "PATH_INFO": "/unclosed", "wsgi.url_scheme": "http"}

    body = wrapped(environ(), lambda status, headers, exc_info=None: None)
    assert b"".join(body) == b"ok"
    assert count("http_requests_in_progress", method="GET") == 1
    del body  # no close(): a server that breaks PEP 3333
    gc.collect()
    assert count("http_requests_in_progress", method="GET") == 0
    (record,) = devkit_logs.find(message="request completed", path="/unclosed")
    assert record["status_code"] == 200
    closed = wrapped(environ(), lambda status, headers, exc_info=None: None)
    list(closed)
    closed.close()  # type: ignore[attr-defined]
    assert count("http_requests_in_progress", method="GET") == 0
    assert len(devkit_logs.find(message="request completed", path="/unclosed")) == 2


def test_a_body_stepped_in_every_way_a_server_steps_it(devkit_logs: CapturedLogs) -> None:
    """Iterated to its end, let go of early (the client went away), stepped with next()
    without iter(), or failing half-way: each chunk is produced in the request's
    context, and only the failure is recorded as one (under the status already sent)."""
    seen: list[str | None] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        for i in range(3):
            seen.append(_context.correlation_id.get())
            if environ["PATH_INFO"] == "/fails" and i == 1:
                raise RuntimeError("half-way")
            yield b"x"

    devkit.init()
    wrapped = devkit.wsgi(app)

    def call(path: str) -> Any:
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": path,
            "HTTP_X_CORRELATION_ID": "cid" + path.replace("/", "-"),
            "wsgi.url_scheme": "http",
        }
        return wrapped(environ, lambda status, headers, exc_info=None: None)

    body = call("/whole")
    assert b"".join(body) == b"xxx"
    body.close()
    body = call("/early")
    steps = iter(body)
    assert next(steps) == b"x"
    del steps  # the server let go of its loop
    body.close()
    body = call("/next")
    assert [next(body), next(body), next(body)] == [b"x"] * 3
    with pytest.raises(StopIteration):
        next(body)
    body.close()
    body = call("/fails")
    with pytest.raises(RuntimeError):
        list(body)
    body.close()

    assert seen == ["cid-whole"] * 3 + ["cid-early"] + ["cid-next"] * 3 + ["cid-fails"] * 2
    records = {r["path"]: r for r in devkit_logs.find(message="request completed")}
    assert {path: r["status_code"] for path, r in records.items()} == dict.fromkeys(
        ("/whole", "/early", "/next", "/fails"), 200
    )
    assert {path: r["level"] for path, r in records.items()} == {
        "/whole": "info",
        "/early": "info",
        "/next": "info",
        "/fails": "error",
    }
    assert records["/fails"]["error"]["type"] == "RuntimeError"
