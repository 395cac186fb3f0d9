"""The load tests' services: ``/r/{i}`` answers 200, except every twentieth ``i``, which
fails with a 500 (whose trace devkit must keep whatever the sampling ratio).

``app`` is the ASGI (FastAPI) service for uvicorn, ``wsgi`` the WSGI (Flask) one for
gunicorn; both are instrumented by ``devkit.init()`` alone.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from flask import Flask

import devkit

devkit.init()

log = devkit.get_logger("load")
#: One request in this many fails with a 500.
ERROR_EVERY = 20

app = FastAPI()


class Boom(RuntimeError):
    pass


@app.exception_handler(Boom)
async def boom(request: Request, exc: Boom) -> JSONResponse:
    # Answered here rather than left to the server: uvicorn closes the connection after an
    # exception the application let through, without telling the client (no
    # ``Connection: close``), and the client's next request on it would be reset.
    log.error("item failed", reason=str(exc))
    return JSONResponse({"error": "failed"}, status_code=500)


@app.get("/r/{i}")
async def asgi_item(i: int) -> dict[str, int]:
    if i % ERROR_EVERY == 0:
        raise Boom(f"item {i} failed")
    return {"i": i}


wsgi = Flask(__name__)


@wsgi.get("/r/<int:i>")
def wsgi_item(i: int) -> dict[str, int]:
    if i % ERROR_EVERY == 0:
        raise Boom(f"item {i} failed")
    return {"i": i}


devkit.health.mark_started()
