"""Per-event-loop monitors started by the ASGI middleware: loop lag and the liveness beat.

Both need the server's running loop, which exists only once the server serves, so they
start on lifespan startup (or the first request) rather than at ``init()``. The lag
monitor is a chain of ``call_later`` callbacks, not a task: a loop closed without
cancelling it has nothing pending to warn about.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from devkit import _errors

if TYPE_CHECKING:
    from devkit.health import HealthRegistry
    from devkit.metrics import RedMetrics

__all__ = ["attach"]

LAG_INTERVAL_S = 0.5
_attached: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LagMonitor] = (
    weakref.WeakKeyDictionary()
)


class _LagMonitor:
    """Observes how late a timer fires on ``loop``: the loop's saturation."""

    def __init__(self, loop: asyncio.AbstractEventLoop, observe: Callable[[float], None]):
        self._loop = loop
        self._observe = observe
        self._expected = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self.stopped = False

    def start(self) -> None:
        self._expected = time.perf_counter() + LAG_INTERVAL_S
        self._handle = self._loop.call_later(LAG_INTERVAL_S, self._tick)

    def _tick(self) -> None:
        if self.stopped:
            return
        now = time.perf_counter()
        try:
            self._observe(max(0.0, now - self._expected))
        except Exception as exc:
            _errors.report("metrics", "loop_lag_failed", exc)
        self._expected = now + LAG_INTERVAL_S
        self._handle = self._loop.call_later(LAG_INTERVAL_S, self._tick)

    def stop(self) -> None:
        self.stopped = True


def attach(
    loop: asyncio.AbstractEventLoop, metrics: RedMetrics | None, health: HealthRegistry | None
) -> None:
    """Start the lag monitor and attach the liveness watchdog to ``loop`` (once per loop)."""
    current = _attached.get(loop)
    if current is not None and not current.stopped:
        return
    if metrics is not None:
        monitor = _LagMonitor(loop, metrics.loop_lag.observe)
        monitor.start()
        _attached[loop] = monitor
    if health is not None:
        try:
            health.watchdog.attach(loop)
        except Exception as exc:
            _errors.report("health", "watchdog_attach_failed", exc)


def detach_all() -> None:
    """Stop every lag monitor (``devkit.shutdown()``)."""
    for monitor in list(_attached.values()):
        monitor.stop()
    _attached.clear()
