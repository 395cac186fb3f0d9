"""Starlette and FastAPI: devkit's ASGI middleware becomes the outermost layer of every app.

``Starlette.__call__`` (and ``FastAPI.__call__``, which overrides it) is wrapped, which
puts devkit outside Starlette's ``ServerErrorMiddleware``: the span and correlation id
are active while an ``exception_handler`` runs (logs written there carry the trace id)
and unhandled exceptions are seen as 500s. One middleware object is kept per app.

FastAPI >= 0.160 ships native OpenTelemetry spans that switch on as soon as a global
tracer provider exists; devkit's middleware marks the requests it instruments so
FastAPI does not add a second server span.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from devkit.middleware._common import ACTIVE_KEY
from devkit.middleware.asgi import ASGIMiddleware

__all__ = ["enable"]

_PATCH_FLAG = "_devkit_patched"


def _patch(cls: type, key: str) -> Callable[[], None]:
    original = cls.__dict__["__call__"]
    if getattr(original, _PATCH_FLAG, False):
        return lambda: None

    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if ACTIVE_KEY in scope:
            # An outer devkit layer (an explicit ``devkit.asgi(app)``) instruments it.
            await original(self, scope, receive, send)
            return
        middleware = self.__dict__.get(key)
        if middleware is None:
            middleware = ASGIMiddleware(partial(original, self))
            self.__dict__[key] = middleware
        await middleware(scope, receive, send)

    setattr(__call__, _PATCH_FLAG, True)
    type.__setattr__(cls, "__call__", __call__)
    return lambda: type.__setattr__(cls, "__call__", original)


def _fastapi_class() -> type | None:
    try:
        from fastapi import FastAPI
    except ImportError:
        return None
    return FastAPI


def enable() -> Callable[[], None]:
    from starlette.applications import Starlette

    undos = [_patch(Starlette, "_devkit_middleware")]
    fastapi_app = _fastapi_class()
    if fastapi_app is not None and "__call__" in fastapi_app.__dict__:
        undos.append(_patch(fastapi_app, "_devkit_fastapi_middleware"))

    def undo() -> None:
        for action in reversed(undos):
            action()

    return undo
