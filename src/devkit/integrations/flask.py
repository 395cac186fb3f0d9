"""Flask: every app's ``wsgi_app`` runs inside devkit's WSGI middleware.

The route label is Flask's URL rule (``/items/<int:item_id>``), recorded in the WSGI
environ by a ``request_started`` signal handler once Flask has matched the URL.
``errorhandler`` functions run inside the middleware, so their logs carry the trace id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from devkit.middleware._common import EXCEPTION_KEY, ROUTE_KEY
from devkit.middleware.wsgi import WSGIMiddleware

__all__ = ["enable", "record_exception", "record_route"]

_PATCH_FLAG = "_devkit_patched"


def record_route(sender: Any, **_: Any) -> None:
    """``request_started`` receiver: store the matched rule for the middleware."""
    from flask import request

    rule = request.url_rule
    if rule is not None:
        request.environ[ROUTE_KEY] = rule.rule


def record_exception(sender: Any, exception: BaseException, **_: Any) -> None:
    """``got_request_exception`` receiver: Flask turns the exception into a 500 response
    inside ``wsgi_app``, so the middleware would only see the status."""
    from flask import request

    request.environ[EXCEPTION_KEY] = exception


def enable() -> Callable[[], None]:
    import flask

    original = flask.Flask.wsgi_app
    if getattr(original, _PATCH_FLAG, False):
        return lambda: None

    def wsgi_app(self: Any, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        return WSGIMiddleware(lambda e, s: original(self, e, s))(environ, start_response)

    setattr(wsgi_app, _PATCH_FLAG, True)
    flask.Flask.wsgi_app = wsgi_app  # type: ignore[method-assign]
    flask.request_started.connect(record_route)
    flask.got_request_exception.connect(record_exception)

    def undo() -> None:
        flask.Flask.wsgi_app = original  # type: ignore[method-assign]
        flask.request_started.disconnect(record_route)
        flask.got_request_exception.disconnect(record_exception)

    return undo
