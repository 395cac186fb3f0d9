"""Flask: every app's ``wsgi_app`` runs inside devkit's WSGI middleware.

The route label is Flask's URL rule (``/items/<int:item_id>``), stored in the WSGI environ
by ``RequestContext.match_request`` — the hook Flask documents for this — when Flask
matches the URL (cheaper than a per-request signal, and before any ``before_request``).
``errorhandler`` functions run inside the middleware, so their logs carry the trace id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from types import ModuleType
from typing import Any

from devkit.http._core import ACTIVE_KEY, EXCEPTION_KEY, ROUTE_KEY
from devkit.http.wsgi import WSGIMiddleware

__all__ = ["PATCHES", "record_exception"]

_PATCH_FLAG = "_devkit_patched"
_INSTANCE_KEY = "_devkit_middleware"


def record_exception(sender: Any, exception: BaseException, **_: Any) -> None:
    """``got_request_exception`` receiver: Flask turns the exception into a 500 response
    inside ``wsgi_app``, so the middleware would only see the status."""
    from flask import request

    request.environ[EXCEPTION_KEY] = exception


def _patch_flask(flask: ModuleType) -> Callable[[], None]:
    original = flask.Flask.wsgi_app
    if getattr(original, _PATCH_FLAG, False):
        return lambda: None

    def wsgi_app(self: Any, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if ACTIVE_KEY in environ:  # an outer devkit layer (explicit wrapping) does the work
            return original(self, environ, start_response)  # type: ignore[no-any-return]
        middleware = self.__dict__.get(_INSTANCE_KEY)
        if middleware is None:
            middleware = WSGIMiddleware(partial(original, self))
            self.__dict__[_INSTANCE_KEY] = middleware
        return middleware(environ, start_response)  # type: ignore[no-any-return]

    setattr(wsgi_app, _PATCH_FLAG, True)
    flask.Flask.wsgi_app = wsgi_app
    flask.got_request_exception.connect(record_exception)

    from flask.ctx import RequestContext

    original_match = RequestContext.match_request

    def match_request(self: Any) -> None:
        original_match(self)
        rule = self.request.url_rule
        if rule is not None:
            self.request.environ[ROUTE_KEY] = rule.rule

    RequestContext.match_request = match_request  # type: ignore[method-assign]

    def undo() -> None:
        flask.Flask.wsgi_app = original
        RequestContext.match_request = original_match  # type: ignore[method-assign]
        flask.got_request_exception.disconnect(record_exception)

    return undo


#: (module, patch): Flask is patched once the ``flask`` package is imported.
PATCHES: list[tuple[str, Callable[[ModuleType], Callable[[], None]]]] = [
    ("flask", _patch_flask),
]
