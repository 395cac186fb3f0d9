"""Pure ASGI middleware: correlation, server span, RED metrics, access log, probes, /metrics.

No ``BaseHTTPMiddleware``: the request runs in the server's task, so context variables
set by the app are visible here and nothing runs in an extra task group. Per-request
state lives in locals; the status code is read by wrapping ``send``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from devkit import _state
from devkit.http._core import (
    ACTIVE_KEY,
    ROUTE_KEY,
    Answer,
    Instruments,
    metrics_answer,
    probe_answer_async,
)

__all__ = ["ASGIMiddleware", "asgi"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_CID_HEADER = b"x-correlation-id"
_REQUEST_ID_HEADER = b"x-request-id"
_NO_VALUES: Sequence[str] = ()


def route_of(scope: Scope) -> str | None:
    """The route template the framework matched, or None (-> ``<unmatched>``)."""
    explicit = scope.get(ROUTE_KEY)
    if explicit is not None:
        return str(explicit)
    route = scope.get("route")
    if route is None:
        return None
    template: object = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(template, str):
        return None
    # A Mount whose app has no router of its own (static files) keeps the Mount's
    # template, "/static/{path}"; a routed mount was replaced by the inner route.
    # Starlette mounts extend root_path with the mount prefix; keep it in the template.
    root: str = scope.get("root_path", "")
    app_root: str = scope.get("app_root_path", root)
    if root != app_root and root.startswith(app_root):
        return root[len(app_root) :] + template
    return template


class ASGIMiddleware:
    """devkit's instrumentation for any ASGI 3 application.

    Usable explicitly (``app = devkit.ASGIMiddleware(app)``) and installed automatically
    around Starlette and FastAPI apps by ``init()``. When both are present, the outer
    layer does the work and inner layers pass through: a request is counted once.
    """

    __slots__ = ("app", "_instruments", "_loop_started")

    def __init__(self, app: ASGIApp, instruments: Instruments | None = None) -> None:
        self.app = app
        self._instruments = instruments
        self._loop_started = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        if scope_type != "http":
            if scope_type == "lifespan":
                await self._lifespan(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        inst = self._instruments
        if inst is None:
            runtime = _state._current  # _current_instruments(), inlined on the request path
            inst = runtime.instruments if runtime is not None else None
        if inst is None or ACTIVE_KEY in scope:
            await self.app(scope, receive, send)
            return
        scope[ACTIVE_KEY] = True
        # FastAPI's native telemetry would add a second server span; None switches it off.
        scope["fastapi.telemetry"] = None
        if not self._loop_started:
            self._start_loop_monitors(inst)

        path: str = scope["path"]
        if path == inst.metrics_path:
            await _serve_metrics(inst, scope, send)
            return
        if path.startswith(inst.health_prefix):
            kind = inst.probes.get(path)
            if kind is not None:
                await _serve_probe(inst, kind, send)
                return

        wanted = inst.asgi_headers
        headers: dict[bytes, list[str]] | None = None
        for name, value in scope.get("headers", ()):
            if name in wanted:
                if headers is None:
                    headers = {}
                headers.setdefault(name, []).append(value.decode("latin-1"))
        inbound_cid: str | None = None
        get_header: Callable[[str], Sequence[str]] | None = None
        if headers is not None:
            cid_values = headers.pop(_CID_HEADER, None) or headers.pop(_REQUEST_ID_HEADER, None)
            headers.pop(_REQUEST_ID_HEADER, None)
            inbound_cid = cid_values[0] if cid_values and len(cid_values) == 1 else None
            if headers:
                found = headers

                def get_header(name: str) -> Sequence[str]:
                    return found.get(name.encode("latin-1"), _NO_VALUES)

        query = scope.get("query_string", b"")
        ex = inst.begin(
            scope["method"],
            scope.get("scheme", "http"),
            path,
            query.decode("latin-1") if query else "",
            inbound_cid,
            get_header,
        )
        cid_header = (_CID_HEADER, ex.cid.encode("ascii"))
        status = 0

        def send_wrapper(message: Message) -> Awaitable[None]:
            # A plain function returning the server's awaitable: no extra coroutine per
            # message (the app awaits what it gets back, which is the same thing).
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), cid_header]
            return send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException as exc:
            inst.finish(ex, route_of(scope), status, exc)
            raise
        # Span, metrics and record at the end of this loop iteration (see finish_soon).
        inst.finish_soon(ex, route_of(scope), status)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass lifespan through; mark startup complete / begin the drain on its messages."""

        async def send_wrapper(message: Message) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.complete":
                inst = self._instruments or _current_instruments()
                if inst is not None:
                    self._start_loop_monitors(inst)
                    if inst.health is not None:
                        inst.health.mark_started()
                        # uvicorn installed its signal handlers after init(): chain again.
                        from devkit._signals import chain_sigterm

                        chain_sigterm(inst.health.begin_shutdown)
            elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                # Drain and flush before the server exits: uvicorn re-raises SIGTERM
                # afterwards, and a process killed by a signal never runs atexit handlers.
                from devkit._setup import stop_serving

                await asyncio.get_running_loop().run_in_executor(None, stop_serving)
            await send(message)

        async def receive_wrapper() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                inst = self._instruments or _current_instruments()
                if inst is not None and inst.health is not None:
                    inst.health.begin_shutdown()
            return message

        await self.app(scope, receive_wrapper, send_wrapper)

    def _start_loop_monitors(self, inst: Instruments) -> None:
        self._loop_started = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        from devkit import _loop

        _loop.attach(loop, inst)


def _current_instruments() -> Instruments | None:
    runtime = _state.current()
    return runtime.instruments if runtime is not None else None


async def _serve_metrics(inst: Instruments, scope: Scope, send: Send) -> None:
    accept = None
    for name, value in scope.get("headers", ()):
        if name == b"accept":
            accept = value.decode("latin-1")
    await _send_answer(send, metrics_answer(inst, accept))


async def _serve_probe(inst: Instruments, kind: str, send: Send) -> None:
    await _send_answer(send, await probe_answer_async(inst, kind))


async def _send_answer(send: Send, answer: Answer) -> None:
    status, content_type, body = answer
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode("latin-1")),
                (b"content-length", str(len(body)).encode("ascii")),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def asgi(app: ASGIApp) -> ASGIMiddleware:
    """Wrap an ASGI application with devkit's middleware (the explicit alternative)."""
    return ASGIMiddleware(app)
