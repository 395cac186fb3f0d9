"""Plain Starlette (no FastAPI) service instrumented by one call.

Run (from the repository root):

    uvicorn examples.starlette_app:app

Then: curl -i localhost:8000/items/42     # 200, X-Correlation-ID echoed
      curl -i localhost:8000/boom         # 500: an unhandled exception, trace kept
      curl localhost:8000/metrics         # route="/items/{item_id}", not the raw path
      curl localhost:8000/healthz/ready
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import devkit

devkit.init()  # Starlette apps created from here on are instrumented: no middleware to add

log = devkit.get_logger("shop")


async def get_item(request: Request) -> JSONResponse:
    item_id: int = request.path_params["item_id"]
    log.info("item fetched", item_id=item_id)  # carries trace_id, span_id, correlation_id
    return JSONResponse({"item_id": item_id})


async def boom(request: Request) -> JSONResponse:
    raise RuntimeError("kaboom for ada@example.com")  # the e-mail is redacted in logs


app = Starlette(
    routes=[
        Route("/items/{item_id:int}", get_item),
        Route("/boom", boom),
    ]
)
