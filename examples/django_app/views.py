"""Views of the example project, and a middleware that handles one exception type."""

from __future__ import annotations

import os
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse

import devkit

log = devkit.get_logger("shop")


class OutOfStock(Exception):
    pass


def item(request: HttpRequest, item_id: int) -> JsonResponse:
    log.info("item fetched", item_id=item_id)
    return JsonResponse({"item_id": item_id, "pid": os.getpid()})


def stock(request: HttpRequest, item_id: int) -> JsonResponse:
    raise OutOfStock(f"item {item_id} sold out")


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("kaboom for ada@example.com")


class OutOfStockMiddleware:
    """Turns ``OutOfStock`` into a 409; its log record carries the request's trace id."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        if isinstance(exc, OutOfStock):
            log.warning("out of stock handled", reason=str(exc))
            return JsonResponse({"error": "out of stock"}, status=409)
        return None
