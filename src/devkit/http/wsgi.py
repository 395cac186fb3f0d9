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
    Core,
    Request,
)
from devkit.http._endpoints import Answer

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

    __slots__ = ("app", "_core")

    def __init__(self, app: WSGIApp, core: Core | None = None) -> None:
        self.app = app
        self._core = core

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        core = self._core or _state.core()
        if core is None or ACTIVE_KEY in environ:
            return self.app(environ, start_response)
        environ[ACTIVE_KEY] = True
        path: str = environ.get("PATH_INFO", "") or "/"
        if path.startswith(core.endpoints.prefixes) and core.endpoints.owns(path):
            accept, authorization = environ.get("HTTP_ACCEPT"), environ.get("HTTP_AUTHORIZATION")
            answer = core.endpoints.answer(path, accept, authorization)
            return _send_answer(start_response, answer)
        ctx = contextvars.copy_context()
        return ctx.run(self._call, ctx, core, environ, start_response)

    def _call(
        self,
        ctx: contextvars.Context,
        core: Core,
        environ: Environ,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        req = core.begin_environ(environ)
        cid_header = (CORRELATION_HEADER, req.cid)

        def start_response_wrapper(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            try:
                req.status = int(status[:3])
            except ValueError:
                req.status = 500
            headers.append(cid_header)
            if core.trace_response:
                timing = core.server_timing(req)
                if timing is not None:
                    # A field of its own: the app's server-timing metrics stay as they are.
                    headers.append(("Server-Timing", timing.decode("ascii")))
            req.response_headers = headers
            if exc_info is not None:
                return start_response(status, headers, exc_info)
            return start_response(status, headers)

        try:
            body = self.app(environ, start_response_wrapper)
        except BaseException as exc:
            req.exc = exc
            core.finish(req, _route_of(environ))
            raise
        return _ClosingBody(body, ctx, core, req, environ)


_END = object()


def _route_of(environ: Environ) -> str | None:
    """The route template the framework stored (Flask's integration does), if any."""
    route = environ.get(ROUTE_KEY)
    return None if route is None else str(route)


class _ClosingBody:
    """Iterates the app's body in the request's context; ``close`` finishes the request."""

    __slots__ = ("_body", "_iter", "_ctx", "_core", "_req", "_environ", "_done", "_error")

    def __init__(
        self,
        body: Iterable[bytes],
        ctx: contextvars.Context,
        core: Core,
        req: Request,
        environ: Environ,
    ) -> None:
        self._body = body
        self._iter: Iterator[bytes] | None = None
        self._ctx = ctx
        self._core = core
        self._req = req
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
            req = self._req
            req.exc = self._error or self._environ.get(EXCEPTION_KEY)
            self._core.finish(req, _route_of(self._environ))

    def __del__(self) -> None:
        # A server that never calls close() must not leak the in-progress gauge.
        if not self._done:
            try:
                self.close()
            except Exception:
                pass


def _send_answer(start_response: StartResponse, answer: Answer) -> Iterable[bytes]:
    start_response(answer.status_line, answer.headers)
    return [answer.body]


def wsgi(app: WSGIApp) -> WSGIMiddleware:
    """Wrap a WSGI application with devkit's middleware (the explicit alternative)."""
    return WSGIMiddleware(app)
