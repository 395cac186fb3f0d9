"""The demo service that ``devkit demo`` runs: a small FastAPI shop instrumented by one call.

It lives in the package (not only in ``examples/``) so ``devkit demo`` works from an
installed wheel. Importing this module calls ``devkit.init()``; only servers import it::

    uvicorn devkit.cli._demo_app:app --port 8000

Routes are chosen to show every signal: successes, 4xx, 5xx from an unhandled exception,
slow requests and a log record carrying secrets that devkit redacts.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, HTTPException

import devkit

__all__ = ["app"]

devkit.init()  # before the app is created: FastAPI is instrumented with no middleware to add

log = devkit.get_logger("demo.shop")
app = FastAPI(title="devkit demo shop")

#: How long ``/slow`` sleeps; above the demo's DEVKIT_SLOW_THRESHOLD_MS=300.
SLOW_S = 0.35


class PaymentGatewayError(RuntimeError):
    """The simulated downstream failure behind ``/checkout``."""


@app.get("/items/{item_id}")
async def get_item(item_id: int) -> dict[str, object]:
    """A successful read, or 404 (an ``HTTPException``) for item 0."""
    if item_id == 0:
        raise HTTPException(status_code=404, detail="item 0 does not exist")
    log.info("item fetched", item_id=item_id)
    return {"item_id": item_id, "name": f"item {item_id}"}


@app.get("/checkout/{order_id}")
async def checkout(order_id: int) -> dict[str, object]:
    """Fails with an unhandled exception (a 500) for even order ids."""
    if order_id % 2 == 0:
        raise PaymentGatewayError(f"payment gateway refused order {order_id}")
    log.info("order placed", order_id=order_id)
    return {"order_id": order_id, "status": "placed"}


@app.get("/slow")
async def slow() -> dict[str, float]:
    """Slower than the slow threshold, so its trace is always kept."""
    await asyncio.sleep(SLOW_S)
    return {"slept_s": SLOW_S}


@app.post("/pay")
async def pay() -> dict[str, str]:
    """Logs a card number, an e-mail and a password: the log line shows them redacted."""
    log.info("payment", card="4111 1111 1111 1111", email="ada@example.com", password="hunter2")
    return {"status": "paid"}
