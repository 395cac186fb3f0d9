"""The lifecycle tests' ASGI service: ``/work`` answers after ``ms`` milliseconds with
``status``, so a test holds as many requests in flight as it wants when it stops the
server."""

from __future__ import annotations

import asyncio
import os

from fastapi import FastAPI, Response

import devkit

devkit.init()
log = devkit.get_logger("lifecycle")
app = FastAPI()


@app.get("/work")
async def work(ms: int = 0, status: int = 200) -> Response:
    if ms:
        await asyncio.sleep(ms / 1000)
    log.info("work done", ms=ms, status=status, pid=os.getpid())
    return Response(f'{{"pid": {os.getpid()}}}', status, media_type="application/json")
