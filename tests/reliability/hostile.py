"""Helpers of the hostile-input and exposure tests (issue #22, items 5, 6, 7 and 9).

Two halves:

- The applications real servers run: ``uvicorn --factory hostile:create_asgi_app`` and
  ``gunicorn 'hostile:create_wsgi_app()'`` (``tests/reliability`` on ``PYTHONPATH``). Both
  call ``devkit.init()`` and serve ``/echo`` (what devkit made of the request's headers:
  trace id, baggage, the headers an outbound call would carry, the correlation id) and
  ``/items/{item_id}`` (a route template, for the label-set tests). With
  ``HOSTILE_FAILING_CHECK=1`` a readiness check fails with a secret, an internal address
  and a file path in its exception text, for the exposure tests.
- In-process drivers that call devkit's ASGI and WSGI middleware directly, without a
  client library that would refuse hostile bytes: fast enough for 10,000 generated cases
  a test, where the real servers get a smaller sample over real HTTP.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# The real-server helpers of the integration tests (servers.py).
if str(ROOT / "tests" / "integration") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests" / "integration"))

#: Text of the failing readiness check (HOSTILE_FAILING_CHECK=1): what must not reach a
#: probe body as is.
CHECK_SECRET = "hunter2-probe-secret"
CHECK_URL_PASSWORD = "s3cr3t-url-password"
CHECK_ERROR = (
    f"password={CHECK_SECRET} rejected by "
    f"postgresql://app:{CHECK_URL_PASSWORD}@db.internal:5432/app"
)


# -- what the applications answer ------------------------------------------------------------


def echo_payload() -> bytes:
    """What devkit made of the current request's headers, as JSON."""
    from opentelemetry import baggage, propagate, trace

    from devkit import _context

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    ctx = trace.get_current_span().get_span_context()
    return orjson.dumps(
        {
            "trace_id": format(ctx.trace_id, "032x") if ctx.is_valid else None,
            "baggage": {k: str(v) for k, v in baggage.get_all().items()},
            "outbound": carrier,
            "cid": _context.correlation_id.get(),
        }
    )


def _failing_check() -> bool:
    raise ConnectionError(CHECK_ERROR)


def _register_checks() -> None:
    import devkit

    if os.environ.get("HOSTILE_FAILING_CHECK") == "1":
        devkit.health.add_check("db", _failing_check, kind="ready")


#: The methods the item route accepts (the rest get 405 from the framework).
ITEM_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]


def create_asgi_app() -> Any:
    """A Starlette app for uvicorn (``--factory``), instrumented by ``init()``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    import devkit

    devkit.init()
    _register_checks()

    async def echo(request: Request) -> Response:
        return Response(echo_payload(), media_type="application/json")

    async def item(request: Request) -> Response:
        return PlainTextResponse(f"item {request.path_params['item_id']}")

    return Starlette(
        routes=[
            Route("/echo", echo),
            Route("/items/{item_id:int}", item, methods=ITEM_METHODS),
        ]
    )


def create_wsgi_app() -> Any:
    """A Flask app for gunicorn (``'hostile:create_wsgi_app()'``), instrumented by
    ``init()``."""
    from flask import Flask, Response

    import devkit

    devkit.init()
    _register_checks()
    app = Flask("hostile")

    @app.route("/echo")
    def echo() -> Response:
        return Response(echo_payload(), mimetype="application/json")

    @app.route("/items/<int:item_id>", methods=ITEM_METHODS)
    def item(item_id: int) -> str:
        return f"item {item_id}"

    devkit.health.mark_started()
    return app


# -- in-process drivers ----------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k.lower() == name]

    def json(self) -> Any:
        return orjson.loads(self.body)


class Sink(io.RawIOBase):
    """A binary stream that keeps the last lines written to it (devkit's log output)."""

    def __init__(self, keep: int = 16) -> None:
        super().__init__()
        self.lines: list[bytes] = []
        self.count = 0
        self._keep = keep

    @property
    def buffer(self) -> Sink:
        """What devkit's pipeline writes its lines to, when this stands for stdout."""
        return self

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.count += 1
        self.lines.append(data.encode() if isinstance(data, str) else bytes(data))
        if len(self.lines) > self._keep:
            del self.lines[: -self._keep]
        return len(data)


@contextmanager
def devkit_logging_to(sink: Sink) -> Iterator[None]:
    """``devkit.init()`` inside picks ``sink`` as its stdout (the pipeline binds the
    stream it finds at ``init()``)."""
    saved = sys.stdout
    sys.stdout = sink  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout = saved


async def raw_echo_app(scope: Any, receive: Any, send: Any) -> None:
    """A bare ASGI app answering ``echo_payload()`` (no framework in the way)."""
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": echo_payload()})


def raw_echo_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "application/json")])
    return [echo_payload()]


class AsgiDriver:
    """Calls an ASGI app (devkit's middleware around it) on one event loop, the way an
    ASGI server does, with any header bytes."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()

    def close(self) -> None:
        self.loop.close()

    def request(
        self,
        headers: Sequence[tuple[bytes, bytes]],
        path: str = "/echo",
        method: str = "GET",
        query: bytes = b"",
    ) -> Reply:
        return self.loop.run_until_complete(self._request(headers, path, method, query))

    async def _request(
        self, headers: Sequence[tuple[bytes, bytes]], path: str, method: str, query: bytes
    ) -> Reply:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode("utf-8", "surrogateescape"),
            "query_string": query,
            "root_path": "",
            "headers": [(k.lower(), v) for k, v in headers],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        sent: list[dict[str, Any]] = []
        received = False

        async def receive() -> dict[str, Any]:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return Reply(start["status"], list(start.get("headers", [])), body)


class WsgiDriver:
    """Calls a WSGI app the way a WSGI server does: header lines folded into ``HTTP_*``
    keys, repeated headers joined by commas, bytes decoded as latin-1 (PEP 3333)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def request(
        self,
        headers: Sequence[tuple[bytes, bytes]],
        path: str = "/echo",
        method: str = "GET",
        query: bytes = b"",
    ) -> Reply:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": path,
            "QUERY_STRING": query.decode("latin-1"),
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(b""),
            "wsgi.errors": io.StringIO(),
            "wsgi.version": (1, 0),
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in headers:
            key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
            text = value.decode("latin-1")
            environ[key] = f"{environ[key]},{text}" if key in environ else text
        status: list[str] = []
        out_headers: list[tuple[str, str]] = []

        def start_response(s: str, h: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status.append(s)
            out_headers[:] = h
            return lambda data: None

        body_iter = self.app(environ, start_response)
        try:
            body = b"".join(body_iter)
        finally:
            close = getattr(body_iter, "close", None)
            if close is not None:
                close()
        return Reply(
            int(status[0][:3]),
            [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in out_headers],
            body,
        )


# -- raw HTTP to real servers ----------------------------------------------------------------


def raw_request(
    port: int,
    method: bytes,
    target: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
    timeout: float = 10.0,
) -> Reply:
    """One HTTP/1.1 request written byte for byte (no client library to refuse hostile
    bytes), ``Connection: close``; the reply as the server sent it. A server that drops
    the connection without an answer gives status 0."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    data = b"\r\n".join(lines) + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        return Reply(0, [], b"")
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.split(b"\r\n")
    out = []
    for line in header_lines:
        name, _, value = line.partition(b":")
        out.append((name.strip().lower(), value.strip()))
    if any(v.lower() == b"chunked" for k, v in out if k == b"transfer-encoding"):
        body = _unchunk(body)
    return Reply(int(status_line.split()[1]), out, body)


def _unchunk(body: bytes) -> bytes:
    out = []
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out.append(rest[:size])
        body = rest[size + 2 :]
    return b"".join(out)


def server_env(**extra: str) -> dict[str, str]:
    """The environment of a real server running this module's apps."""
    from servers import clean_env

    env = clean_env(**extra)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT)])
    return env


def internal_errors(metrics_text: str) -> float:
    """The sum of ``devkit_internal_errors_total`` in a classic exposition."""
    from servers import samples

    return sum(
        v
        for (name, _), v in samples(metrics_text).items()
        if name == "devkit_internal_errors_total"
    )
