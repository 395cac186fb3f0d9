"""Pure ASGI middleware: correlation, server span, RED metrics, access log, probes, /metrics.

No ``BaseHTTPMiddleware``: the request runs in the server's task, so context variables
set by the app are visible here and nothing runs in an extra task group. Per-request
state lives in locals; the status code is read by wrapping ``send``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from devkit import _state
from devkit.http._core import ACTIVE_KEY, ROUTE_KEY, Core
from devkit.http._endpoints import Answer, authorization_header

__all__ = ["ASGIMiddleware", "asgi"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_CID_HEADER = b"x-correlation-id"
_SERVER_TIMING = b"server-timing"


def _route_of(scope: Scope) -> str | None:
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

    __slots__ = ("app", "_core", "_loop_started")

    def __init__(self, app: ASGIApp, core: Core | None = None) -> None:
        self.app = app
        self._core = core
        self._loop_started = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        if scope_type != "http":
            if scope_type == "lifespan":
                await self._lifespan(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        core = self._core
        if core is None:
            state = _state._current  # _state.core(), inlined on the request path
            core = state.core if state is not None else None
        if core is None or ACTIVE_KEY in scope:
            await self.app(scope, receive, send)
            return
        scope[ACTIVE_KEY] = True
        # FastAPI's native telemetry would add a second server span; None switches it off.
        scope["fastapi.telemetry"] = None
        if not self._loop_started:
            self._start_loop_monitors(core)
        path: str = scope["path"]
        if path.startswith(core.endpoints.prefixes) and core.endpoints.owns(path):
            await _serve_endpoint(core, scope, send)
            return

        req = core.begin_scope(scope)
        cid_header = (_CID_HEADER, req.cid.encode("ascii"))

        def send_wrapper(message: Message) -> Awaitable[None]:
            # A plain function returning the server's awaitable: no extra coroutine per
            # message (the app awaits what it gets back, which is the same thing).
            if message["type"] == "http.response.start":
                req.status = message["status"]
                headers = [*message.get("headers", ()), cid_header]
                timing = core.server_timing(req) if core.trace_response else None
                if timing is not None:
                    # A field of its own: the app's server-timing metrics stay as they are.
                    headers.append((_SERVER_TIMING, timing.encode("ascii")))
                req.response_headers = message["headers"] = headers
            return send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException as exc:
            req.exc = exc
            core.finish(req, _route_of(scope))
            raise
        # Span, metrics and record at the end of this loop iteration (see finish_soon).
        core.finish_soon(req, _route_of(scope))

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass lifespan through; mark startup complete / begin the drain on its messages."""

        async def send_wrapper(message: Message) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.complete":
                core = self._core or _state.core()
                if core is not None:
                    self._start_loop_monitors(core)
                    if core.health is not None:
                        core.health.mark_started()
                        # uvicorn installed its signal handlers after init(): chain again.
                        from devkit._signals import chain_sigterm

                        chain_sigterm(core.health.begin_shutdown)
            elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                # Drain and flush before the server exits: uvicorn re-raises SIGTERM
                # afterwards, and a process killed by a signal never runs atexit handlers.
                from devkit._setup import stop_serving

                await asyncio.get_running_loop().run_in_executor(None, stop_serving)
            await send(message)

        async def receive_wrapper() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                core = self._core or _state.core()
                if core is not None and core.health is not None:
                    core.health.begin_shutdown()
            return message

        await self.app(scope, receive_wrapper, send_wrapper)

    def _start_loop_monitors(self, core: Core) -> None:
        self._loop_started = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        from devkit import _loop

        _loop.attach(loop, core.metrics, core.health)


async def _serve_endpoint(core: Core, scope: Scope, send: Send) -> None:
    accept = None
    for name, value in scope.get("headers", ()):
        if name == b"accept":
            accept = value.decode("latin-1")
    answer: Answer = await core.endpoints.answer_async(
        scope["path"], accept, authorization_header(scope.get("headers", ()))
    )
    await send(
        {
            "type": "http.response.start",
            "status": answer.status,
            "headers": [
                (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers
            ],
        }
    )
    await send({"type": "http.response.body", "body": answer.body})


def asgi(app: ASGIApp) -> ASGIMiddleware:
    """Wrap an ASGI application with devkit's middleware (the explicit alternative)."""
    return ASGIMiddleware(app)
