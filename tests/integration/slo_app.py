"""A service for the SLO tests: one route whose requests fail or dawdle on request."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

import devkit

devkit.init()
app = FastAPI()


@app.get("/orders/{order_id}")
async def order(order_id: int, fail: bool = False, slow_ms: int = 0) -> dict[str, int]:
    if slow_ms:
        await asyncio.sleep(slow_ms / 1000)
    if fail:
        raise RuntimeError(f"order {order_id} failed")
    return {"order_id": order_id}
