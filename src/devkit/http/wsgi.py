"""WSGI middleware: the same single pass as the ASGI one, for Flask and other WSGI apps.

Timing and the server span end when the server closes the response iterable, not when
the app returns it, so streamed bodies are measured whole. Each request runs in a fresh
copy of the context: a field an app binds with ``structlog.contextvars`` in request A
cannot be seen by request B on the same worker thread.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, cast

from devkit import _state
from devkit.http._core import (
    ACTIVE_KEY,
    CORRELATION_HEADER,
    EXCEPTION_KEY,
    ROUTE_KEY,
    Answer,
    Exchange,
    Instruments,
    environ_getter,
    metrics_answer,
    probe_answer,
)

__all__ = ["WSGIMiddleware", "wsgi"]

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class WSGIMiddleware:
    """devkit's instrumentation for any WSGI application.

    Usable explicitly (``app.wsgi_app = devkit.WSGIMiddleware(app.wsgi_app)``) and
    installed automatically around Flask apps by ``init()``; nested layers pass through.
    """

    __slots__ = ("app", "_instruments")

    def __init__(self, app: WSGIApp, instruments: Instruments | None = None) -> None:
        self.app = app
        self._instruments = instruments

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        inst = self._instruments or _current_instruments()
        if inst is None or ACTIVE_KEY in environ:
            return self.app(environ, start_response)
        environ[ACTIVE_KEY] = True
        path: str = environ.get("PATH_INFO", "") or "/"
        if path == inst.metrics_path:
            return _send_answer(start_response, metrics_answer(inst, environ.get("HTTP_ACCEPT")))
        if path.startswith(inst.health_prefix):
            kind = inst.probes.get(path)
            if kind is not None:
                return _send_answer(start_response, probe_answer(inst, kind))
        ctx = contextvars.copy_context()
        return ctx.run(self._call, ctx, inst, environ, start_response)

    def _call(
        self,
        ctx: contextvars.Context,
        inst: Instruments,
        environ: Environ,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        inbound = environ.get("HTTP_X_CORRELATION_ID") or environ.get("HTTP_X_REQUEST_ID")
        ex = inst.begin(
            environ.get("REQUEST_METHOD", "GET"),
            environ.get("wsgi.url_scheme", "http"),
            path_of(environ),
            environ.get("QUERY_STRING", ""),
            inbound,
            environ_getter(inst, environ),
        )
        cid_header = (CORRELATION_HEADER, ex.cid)

        def start_response_wrapper(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            try:
                ex.status = int(status[:3])
            except ValueError:
                ex.status = 500
            headers.append(cid_header)
            if exc_info is not None:
                return start_response(status, headers, exc_info)
            return start_response(status, headers)

        try:
            body = self.app(environ, start_response_wrapper)
        except BaseException as exc:
            inst.finish(ex, route_of(environ), ex.status, exc)
            raise
        return _ClosingBody(body, ctx, inst, ex, environ)


_END = object()


def route_of(environ: Environ) -> str | None:
    """The route template the framework stored (Flask's integration does), if any."""
    route = environ.get(ROUTE_KEY)
    return None if route is None else str(route)


def path_of(environ: Environ) -> str:
    path = environ.get("PATH_INFO", "") or "/"
    return str(path)


class _ClosingBody:
    """Iterates the app's body in the request's context; ``close`` finishes the request."""

    __slots__ = ("_body", "_iter", "_ctx", "_inst", "_ex", "_environ", "_done", "_error")

    def __init__(
        self,
        body: Iterable[bytes],
        ctx: contextvars.Context,
        inst: Instruments,
        ex: Exchange,
        environ: Environ,
    ) -> None:
        self._body = body
        self._iter: Iterator[bytes] | None = None
        self._ctx = ctx
        self._inst = inst
        self._ex = ex
        self._environ = environ
        self._done = False
        self._error: BaseException | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._iter is None:
            self._iter = iter(self._body)
        try:
            # The default keeps StopIteration from unwinding through Context.run.
            chunk = self._ctx.run(next, self._iter, _END)
        except BaseException as exc:
            self._error = exc
            raise
        if chunk is _END:
            raise StopIteration
        return cast(bytes, chunk)

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        self._ctx.run(self._close)

    def _close(self) -> None:
        """In the request's context: the body's ``close``, then ``finish``."""
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            ex = self._ex
            self._inst.finish(
                ex,
                route_of(self._environ),
                ex.status,
                self._error or self._environ.get(EXCEPTION_KEY),
            )

    def __del__(self) -> None:
        # A server that never calls close() must not leak the in-progress gauge.
        if not self._done:
            try:
                self.close()
            except Exception:
                pass


def _current_instruments() -> Instruments | None:
    runtime = _state.current()
    return runtime.instruments if runtime is not None else None


_REASONS = {
    200: "200 OK",
    404: "404 Not Found",
    500: "500 Internal Server Error",
    503: "503 Service Unavailable",
}


def _send_answer(start_response: StartResponse, answer: Answer) -> Iterable[bytes]:
    status, content_type, body = answer
    start_response(
        _REASONS.get(status, f"{status} Unknown"),
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ],
    )
    return [body]


def wsgi(app: WSGIApp) -> WSGIMiddleware:
    """Wrap a WSGI application with devkit's middleware (the explicit alternative)."""
    return WSGIMiddleware(app)
