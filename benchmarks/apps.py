"""The bare applications: one route, ``/items/{item_id}``, returning a small JSON body.

They are as small as a real endpoint can be so that what the variants add is not hidden
behind application work.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PATH", "fastapi_app", "flask_app", "starlette_app"]

#: The path every driver requests.
PATH = "/items/42"


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def item(request: Request) -> JSONResponse:
        return JSONResponse({"item_id": int(request.path_params["item_id"]), "ok": True})

    return Starlette(routes=[Route("/items/{item_id}", item)])


def fastapi_app() -> Any:
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, Any]:
        return {"item_id": item_id, "ok": True}

    return app


def flask_app() -> Any:
    from flask import Flask

    app = Flask("bench")

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, Any]:
        return {"item_id": item_id, "ok": True}

    return app
