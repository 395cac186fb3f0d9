"""A FastAPI app for the probe and shutdown tests: a readiness check the test can steer."""

from __future__ import annotations

import asyncio
import time

from fastapi import FastAPI

import devkit

devkit.init()
app = FastAPI()
state = {"mode": "up", "calls": 0}


@devkit.health.check("database", kind="ready", timeout_s=0.5)
async def database_ready() -> bool:
    state["calls"] += 1
    if state["mode"] == "hang":
        await asyncio.sleep(60)
    if state["mode"] == "down":
        raise ConnectionError("database unreachable for ada@example.com")
    return True


@app.post("/_test/database/{mode}")
async def set_database(mode: str) -> dict[str, object]:
    state["mode"] = mode
    return state


@app.get("/_test/calls")
async def calls() -> dict[str, object]:
    return state


@app.get("/slow")
async def slow(ms: int = 2000) -> dict[str, int]:
    await asyncio.sleep(ms / 1000)
    return {"slept_ms": ms}


@app.get("/block-loop")
async def block_loop(seconds: float = 2.0) -> dict[str, float]:
    time.sleep(seconds)  # noqa: ASYNC251 - deliberately blocks the event loop
    return {"blocked_s": seconds}
