"""FastAPI service instrumented by one call.

Run:  uvicorn examples.fastapi_app:app --port 8000
Then: curl -i localhost:8000/items/42
      curl localhost:8000/metrics
      curl localhost:8000/healthz/ready
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse

import devkit

devkit.init()  # everything below is instrumented: no middleware to add

log = devkit.get_logger("shop")
app = FastAPI()


class OutOfStock(Exception):
    pass


@app.exception_handler(OutOfStock)
async def out_of_stock(request: object, exc: OutOfStock) -> JSONResponse:
    log.warning("out of stock handled", reason=str(exc))
    return JSONResponse({"error": "out of stock"}, status_code=409)


@app.get("/items/{item_id}")
async def get_item(item_id: int) -> dict[str, object]:
    log.info("item fetched", item_id=item_id)
    return {"item_id": item_id}


@app.get("/sync/{item_id}")
def get_item_sync(item_id: int) -> dict[str, object]:
    logging.getLogger("shop.sync").info("sync endpoint in the thread pool")
    return {"item_id": item_id}


@app.get("/task")
async def spawn_task() -> dict[str, str]:
    async def child() -> None:
        log.info("inside a child task")

    await asyncio.create_task(child())
    return {"ok": "yes"}


@app.get("/boom")
async def boom() -> None:
    raise RuntimeError("kaboom for ada@example.com")


@app.get("/stock")
async def stock() -> None:
    raise OutOfStock("none left")


@app.get("/unavailable")
async def unavailable() -> JSONResponse:
    return JSONResponse({"error": "try later"}, status_code=503)


@app.get("/slow")
async def slow(ms: int = 400) -> dict[str, int]:
    await asyncio.sleep(ms / 1000)
    return {"slept_ms": ms}


@app.get("/block")
def block(seconds: float = 0.0) -> dict[str, float]:
    time.sleep(seconds)
    return {"blocked_s": seconds}


@app.get("/proxy/{item_id}")
async def proxy(item_id: int) -> dict[str, object]:
    """Calls another service (DOWNSTREAM_URL): one trace, one correlation id across both."""
    async with httpx.AsyncClient(base_url=os.environ["DOWNSTREAM_URL"]) as client:
        response = await client.get(f"/items/{item_id}")
    log.info("downstream answered", status=response.status_code)
    return {"downstream_status": response.status_code}
