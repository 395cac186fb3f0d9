"""WSGI middleware: the same single pass as the ASGI one, for Flask and other WSGI apps.

Timing and the server span end when the server closes the response iterable, not when
the app returns it, so streamed bodies are measured whole. Each request runs in a fresh
copy of the context: a field an app binds with ``structlog.contextvars`` in request A
cannot be seen by request B on the same worker thread.

One object per request, :class:`_Exchange`, is everything the middleware adds: its
bound ``start_response`` reads the status, and it is the body the server iterates and
closes. The request's context is entered for the app call, for each step of the body and
for the close; the copy is not restored afterwards, only dropped.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

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

_copy_context = contextvars.copy_context
_END = object()


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
        core = self._core
        if core is None:
            state = _state._current  # _state.core(), inlined on the request path
            core = state.core if state is not None else None
        if core is None or ACTIVE_KEY in environ:
            return self.app(environ, start_response)
        environ[ACTIVE_KEY] = True
        path: str = environ.get("PATH_INFO") or "/"
        endpoints = core.endpoints
        if path.startswith(endpoints.prefixes) and endpoints.owns(path):
            accept, authorization = environ.get("HTTP_ACCEPT"), environ.get("HTTP_AUTHORIZATION")
            return _send_answer(start_response, endpoints.answer(path, accept, authorization))
        ctx = _copy_context()
        return ctx.run(_begin, ctx, core, environ, start_response, self.app)


def _route_of(environ: Environ) -> str | None:
    """The route template the framework stored (Flask's integration does), if any."""
    route = environ.get(ROUTE_KEY)
    return None if route is None else str(route)


class _Exchange:
    """One request: the app call, the status from ``start_response``, and the body the
    server gets, iterated in the request's context; ``close`` finishes the request."""

    __slots__ = (
        "_ctx",
        "_core",
        "_environ",
        "_start_response",
        "_req",
        "_body",
        "_iter",
        "_done",
        "_error",
    )

    _ctx: contextvars.Context
    _core: Core
    _environ: Environ
    _start_response: StartResponse
    _req: Request
    _body: Iterable[bytes]
    _iter: Iterator[bytes] | None
    _done: bool
    _error: BaseException | None

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], object]:
        req = self._req
        try:
            req.status = int(status[:3])
        except ValueError:
            req.status = 500
        headers.append((CORRELATION_HEADER, req.cid))
        core = self._core
        if core.trace_response:
            timing = core.server_timing(req)
            if timing is not None:
                # A field of its own: the app's server-timing metrics stay as they are.
                headers.append(("Server-Timing", timing))
        req.response_headers = headers
        if exc_info is not None:
            return self._start_response(status, headers, exc_info)
        return self._start_response(status, headers)

    def _steps(self) -> Iterator[bytes]:
        chunks = self._iter
        if chunks is None:
            chunks = self._iter = iter(self._body)
        run = self._ctx.run
        try:
            while True:
                # The default keeps StopIteration from unwinding through Context.run.
                chunk = run(next, chunks, _END)
                if chunk is _END:
                    return
                yield chunk  # type: ignore[misc]
        except GeneratorExit:  # the server let go of the body before its end
            raise
        except BaseException as exc:
            self._error = exc
            raise

    # A generator, not self: a server's loop resumes it in C, where a __next__ method is
    # a call into Python per chunk and raises StopIteration at the end. The generator
    # function itself, not a method that returns one: a call fewer per request.
    __iter__ = _steps

    def __next__(self) -> bytes:
        """One chunk, for callers that step the body without ``iter``."""
        return next(self._steps())

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        # Closed: no finaliser to run when it is freed (a call into Python per request).
        self.__class__ = _Exchange
        self._ctx.run(self._close)

    def _close(self) -> None:
        """In the request's context: the body's ``close``, then ``finish``."""
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            req = self._req
            environ = self._environ
            req.exc = self._error or environ.get(EXCEPTION_KEY)
            route = environ.get(ROUTE_KEY)  # _route_of, inlined
            self._core.finish_copied(req, None if route is None else str(route))


class _Unclosed(_Exchange):
    """An exchange until it is closed."""

    __slots__ = ()

    def __del__(self) -> None:
        # A server that never calls close() must not leak the in-progress gauge.
        if not self._done:
            try:
                self.close()
            except Exception:
                pass


_new_exchange = object.__new__


def _begin(
    ctx: contextvars.Context,
    core: Core,
    environ: Environ,
    start_response: StartResponse,
    app: WSGIApp,
) -> _Exchange:
    """In the request's context: open the record and call the app.

    The exchange is filled here rather than by an ``__init__``: a class's ``__init__``
    is a call from C into Python on every request.
    """
    exchange: _Exchange = _new_exchange(_Unclosed)
    exchange._ctx = ctx
    exchange._core = core
    exchange._environ = environ
    exchange._start_response = start_response
    exchange._iter = None
    exchange._error = None
    exchange._done = True  # nothing to finish until the app handed over a body
    req = exchange._req = core.begin_environ(environ)
    try:
        exchange._body = app(environ, exchange.start_response)
    except BaseException as exc:
        req.exc = exc
        core.finish_copied(req, _route_of(environ))
        raise
    exchange._done = False
    return exchange


def _send_answer(start_response: StartResponse, answer: Answer) -> Iterable[bytes]:
    start_response(answer.status_line, answer.headers)
    return [answer.body]


def wsgi(app: WSGIApp) -> WSGIMiddleware:
    """Wrap a WSGI application with devkit's middleware (the explicit alternative)."""
    return WSGIMiddleware(app)
