"""A service of a call chain for the downstream-keep tests: ``/work`` calls the next
service (``DOWNSTREAM_URL``) while ``depth`` is above 0; the last one does ``mode``."""

from __future__ import annotations

import asyncio
import os

import httpx
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.trace import StatusCode

import devkit

devkit.init()
app = FastAPI()
tracer = trace.get_tracer("chain")


@app.get("/work")
async def work(mode: str = "ok", depth: int = 0) -> dict[str, str]:
    if depth > 0:
        async with httpx.AsyncClient(base_url=os.environ["DOWNSTREAM_URL"]) as client:
            response = await client.get("/work", params={"mode": mode, "depth": depth - 1})
            response.raise_for_status()
        return {"downstream": response.text}
    if mode == "internal_error":
        # An error this service recovers from: its caller sees only a 200.
        with tracer.start_as_current_span("cache lookup") as span:
            span.set_status(StatusCode.ERROR, "cache unavailable, served from the database")
    elif mode == "slow":
        await asyncio.sleep(0.15)
    return {"done": mode}
