"""Django: a middleware class for ``MIDDLEWARE``, inserted first automatically by ``init()``.

The route label is the URL pattern Django resolved (``resolver_match.route``, e.g.
``/items/<int:item_id>``). Django turns view exceptions into 500 responses inside the
handler, so ``process_exception`` records the exception for the outer layer; the span is
active there and in every other middleware, so their logs carry the trace id.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from devkit import _compat, _errors, _state
from devkit.http._core import ACTIVE_KEY, CORRELATION_HEADER
from devkit.http._endpoints import Answer

__all__ = ["PATCHES", "DevkitMiddleware"]

MIDDLEWARE_PATH = "devkit.integrations.django.DevkitMiddleware"
_EXC_ATTR = "_devkit_exception"


def _route(request: Any) -> str | None:
    match = getattr(request, "resolver_match", None)
    route: object = getattr(match, "route", None)
    if not isinstance(route, str) or not route:
        return None
    return route if route.startswith("/") else "/" + route


class DevkitMiddleware:
    """Add ``"devkit.integrations.django.DevkitMiddleware"`` first in ``MIDDLEWARE``."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        core = _state.core()
        meta = request.META
        if core is None or ACTIVE_KEY in meta:
            return self.get_response(request)
        meta[ACTIVE_KEY] = True
        # Django's own decoding of the path (UTF-8, under WSGI and ASGI alike).
        path = request.path_info or "/"
        if path.startswith(core.endpoints.prefixes) and core.endpoints.owns(path):
            accept, authorization = meta.get("HTTP_ACCEPT"), meta.get("HTTP_AUTHORIZATION")
            return _response(core.endpoints.answer(path, accept, authorization))

        req = core.begin_environ(meta, path=path, scheme=request.scheme)
        try:
            response = self.get_response(request)
        except BaseException as exc:
            req.status, req.exc = 500, exc
            core.finish(req, _route(request))
            raise
        response[CORRELATION_HEADER] = req.cid
        req.status = response.status_code
        timing = core.server_timing(req) if core.trace_response else None
        if timing is not None:
            # Django keeps one value per header name: the metric joins the app's list.
            own = response.get("Server-Timing")
            response["Server-Timing"] = f"{own}, {timing}" if own else timing
        _log_response_in_context(request, response)
        req.status, req.exc = response.status_code, getattr(request, _EXC_ATTR, None)
        req.response_headers = getattr(response, "headers", None)
        core.finish(req, _route(request))
        return response

    def process_exception(self, request: Any, exception: Exception) -> None:
        setattr(request, _EXC_ATTR, exception)
        return None


def _log_response_in_context(request: Any, response: Any) -> None:
    """Write Django's own "Not Found: /x" record while the request context is attached.

    Django logs 4xx (and non-exception 5xx) responses after the middleware chain returned,
    when devkit has already detached the trace and correlation id; logging it here marks
    the response as logged, so Django does not log it again without context.
    """
    if response.status_code < 400 or _compat.django_response_logged(response):
        return
    try:
        from django.utils.log import log_response

        log_response(
            "%s: %s", response.reason_phrase, request.path, response=response, request=request
        )
    except Exception as exc:
        _errors.report("integrations", "django_log_response_failed", exc)


def _response(answer: Answer) -> Any:
    from django.http import HttpResponse

    response = HttpResponse(answer.body, status=answer.status, content_type=answer.content_type)
    response["Cache-Control"] = "no-store"
    for name, value in answer.extra_headers:  # the 401's WWW-Authenticate
        response[name] = value
    return response


def _patch_handler(module: ModuleType) -> Callable[[], None]:
    """Insert the middleware first whenever Django builds a handler after ``init()``."""
    BaseHandler = module.BaseHandler
    original = BaseHandler.load_middleware
    if getattr(original, "_devkit_patched", False):
        return lambda: None

    def load_middleware(self: Any, is_async: bool = False) -> None:
        from django.conf import settings

        try:
            middleware = list(settings.MIDDLEWARE)
            if MIDDLEWARE_PATH not in middleware:
                settings.MIDDLEWARE = [MIDDLEWARE_PATH, *middleware]
        except Exception as exc:  # settings not configured: leave Django as it is
            _errors.report("integrations", "django_settings_unavailable", exc)
        original(self, is_async)

    load_middleware._devkit_patched = True  # type: ignore[attr-defined]
    BaseHandler.load_middleware = load_middleware

    def undo() -> None:
        BaseHandler.load_middleware = original

    return undo


#: (module, patch): Django's handler is patched once its module is imported.
PATCHES: list[tuple[str, Callable[[ModuleType], Callable[[], None]]]] = [
    ("django.core.handlers.base", _patch_handler),
]
