"""Starlette and FastAPI: devkit's ASGI middleware becomes the outermost layer of every app.

``Starlette.__call__`` is wrapped (FastAPI overrides ``build_middleware_stack`` but calls
``Starlette.__call__``), which puts devkit outside Starlette's ``ServerErrorMiddleware``:
the span and correlation id are active while an ``exception_handler`` runs (logs written
there carry the trace id) and unhandled exceptions are seen as 500s. One middleware object
is kept per app, built on its first request.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from devkit.middleware.asgi import ASGIMiddleware

__all__ = ["enable"]

_PATCH_FLAG = "_devkit_patched"
_INSTANCE_KEY = "_devkit_middleware"


def enable() -> Callable[[], None]:
    from starlette.applications import Starlette

    original = Starlette.__call__
    if getattr(original, _PATCH_FLAG, False):
        return lambda: None

    async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
        middleware = self.__dict__.get(_INSTANCE_KEY)
        if middleware is None:
            middleware = ASGIMiddleware(partial(original, self))
            self.__dict__[_INSTANCE_KEY] = middleware
        await middleware(scope, receive, send)

    setattr(__call__, _PATCH_FLAG, True)
    Starlette.__call__ = __call__  # type: ignore[method-assign]

    def undo() -> None:
        Starlette.__call__ = original  # type: ignore[method-assign]

    return undo
