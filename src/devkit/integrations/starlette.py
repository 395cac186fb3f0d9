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
from types import ModuleType
from typing import Any

from devkit.http._core import ACTIVE_KEY
from devkit.http.asgi import ASGIMiddleware

__all__ = ["PATCHES"]

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


def _patch_starlette(module: ModuleType) -> Callable[[], None]:
    return _patch(module.Starlette, "_devkit_middleware")


def _patch_fastapi(module: ModuleType) -> Callable[[], None]:
    app_class = module.FastAPI
    if "__call__" not in app_class.__dict__:
        return lambda: None  # inherits Starlette.__call__, patched already
    return _patch(app_class, "_devkit_fastapi_middleware")


#: (module, patch): each class is patched once the module that defines it is imported.
PATCHES: list[tuple[str, Callable[[ModuleType], Callable[[], None]]]] = [
    ("starlette.applications", _patch_starlette),
    ("fastapi.applications", _patch_fastapi),
]
