"""The probe tests' service: a FastAPI app whose readiness checks misbehave on demand.

While the file named by ``HANG_FLAG`` exists, the ``db`` check hangs (it returns once the
file is removed) and the ``vault`` check fails with a secret in its message; the
``cache`` check always passes at once. Every call of a check appends
``<name> <start> <end>`` (``time.monotonic()``, which every process of the machine
shares) to the file named by ``CHECK_CALLS``, so the test can count the calls.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from fastapi import FastAPI

import devkit

devkit.init()

HANG_FLAG = Path(os.environ["HANG_FLAG"])
CHECK_CALLS = Path(os.environ["CHECK_CALLS"])
#: Each check's timeout: the probe must answer within it even while ``db`` hangs.
CHECK_TIMEOUT_S = float(os.environ.get("CHECK_TIMEOUT_S", "0.5"))

app = FastAPI()


def _called(name: str, start: float) -> None:
    with CHECK_CALLS.open("a") as calls:
        calls.write(f"{name} {start:.6f} {time.monotonic():.6f}\n")


@devkit.health.check("db", timeout_s=CHECK_TIMEOUT_S)
def db() -> bool:
    start = time.monotonic()
    while HANG_FLAG.exists():
        time.sleep(0.05)
    _called("db", start)
    return True


@devkit.health.check("cache", timeout_s=CHECK_TIMEOUT_S)
def cache() -> bool:
    _called("cache", time.monotonic())
    return True


@devkit.health.check("vault", timeout_s=CHECK_TIMEOUT_S)
def vault() -> bool:
    _called("vault", time.monotonic())
    if HANG_FLAG.exists():
        raise RuntimeError("db password=hunter2 at postgres://u:pw@h/db")
    return True


@app.get("/items/{item_id}")
async def get_item(item_id: int) -> dict[str, int]:
    return {"item_id": item_id}
