"""Per-event-loop monitors started by the ASGI middleware: loop lag and the liveness beat.

Both need the server's running loop, which exists only once the server serves, so they
start on lifespan startup (or the first request) rather than at ``init()``.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import TYPE_CHECKING

from devkit import _errors

if TYPE_CHECKING:
    from devkit.middleware._common import Instruments

__all__ = ["attach"]

_LAG_INTERVAL_S = 0.5
_attached: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = (
    weakref.WeakKeyDictionary()
)


def attach(loop: asyncio.AbstractEventLoop, inst: Instruments) -> None:
    """Start the lag monitor and attach the liveness watchdog to ``loop`` (once per loop)."""
    if loop in _attached:
        return
    if inst.metrics is not None:
        _attached[loop] = loop.create_task(_monitor_lag(inst), name="devkit-loop-lag")
    if inst.health is not None:
        try:
            inst.health.watchdog.attach(loop)
        except Exception as exc:
            _errors.report("health", "watchdog_attach_failed", exc)


async def _monitor_lag(inst: Instruments) -> None:
    metrics = inst.metrics
    if metrics is None:
        return
    observe = metrics.loop_lag.observe
    while True:
        before = time.perf_counter()
        await asyncio.sleep(_LAG_INTERVAL_S)
        observe(max(0.0, time.perf_counter() - before - _LAG_INTERVAL_S))
