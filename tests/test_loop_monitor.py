from __future__ import annotations

import asyncio
import time

from prometheus_client import REGISTRY

import devkit
from devkit import _loop, _state


def test_lag_monitor_observes_a_blocked_loop_and_stops_cleanly() -> None:
    runtime = devkit.init()

    async def main() -> None:
        _loop.attach(asyncio.get_running_loop(), runtime.metrics, runtime.health)
        await asyncio.sleep(0.1)
        time.sleep(0.8)  # noqa: ASYNC251 - block the loop past the 0.5 s tick
        await asyncio.sleep(0.6)

    asyncio.run(main())
    count = REGISTRY.get_sample_value("devkit_event_loop_lag_seconds_count") or 0
    total = REGISTRY.get_sample_value("devkit_event_loop_lag_seconds_sum") or 0
    assert count >= 1
    assert total >= 0.2  # the blocked tick fired at least 0.2 s late
    devkit.shutdown()
    assert _state.current() is None
    assert not _loop._attached
