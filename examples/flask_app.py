"""Flask service instrumented by one call, served by several gunicorn workers.

Run (from the repository root, one command):

PROMETHEUS_MULTIPROC_DIR=$(mktemp -d) gunicorn -c examples/gunicorn_conf.py examples.flask_app:app

Then: curl -i localhost:8000/items/42
      curl localhost:8000/metrics            # summed over every worker
      curl localhost:8000/healthz/startup
"""

from __future__ import annotations

import os

from flask import Flask

import devkit

devkit.init()  # Flask apps created from here on are instrumented: no middleware to add

log = devkit.get_logger("shop")
app = Flask(__name__)
STOCK: dict[int, int] = {1: 3, 2: 0}


@app.errorhandler(KeyError)
def unknown_item(exc: KeyError) -> tuple[dict[str, str], int]:
    # Runs inside devkit's middleware: this record carries the request's trace id.
    log.warning("unknown item handled", item=str(exc))
    return {"error": "unknown item"}, 404


@app.get("/items/<int:item_id>")
def get_item(item_id: int) -> dict[str, int]:
    log.info("item fetched", item_id=item_id)
    return {"item_id": item_id, "pid": os.getpid()}


@app.get("/stock/<int:item_id>")
def get_stock(item_id: int) -> dict[str, int]:
    return {"item_id": item_id, "stock": STOCK[item_id]}  # KeyError -> unknown_item


@app.get("/boom")
def boom() -> None:
    raise RuntimeError("kaboom for ada@example.com")


@app.get("/unavailable")
def unavailable() -> tuple[dict[str, str], int]:
    return {"error": "try later"}, 503


@app.get("/pid")
def pid() -> dict[str, int]:
    return {"pid": os.getpid()}


# A WSGI app has no lifespan event: tell the startup probe the app is built.
devkit.health.mark_started()
