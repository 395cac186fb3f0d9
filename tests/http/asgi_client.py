"""Drive an ASGI app in-process the way ASGI servers do (shared by the middleware tests)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx


def call(app: Any, *paths: str, **kw: Any) -> list[httpx.Response]:
    """GET each path, each request in its own task, as ASGI servers run them."""

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await asyncio.create_task(client.get(p, **kw)) for p in paths]

    return asyncio.run(run())
