"""Test helpers for applications that use devkit, shipped as a pytest plugin.

Installed with devkit (entry point ``pytest11``), so the fixtures are available in any
test-suite without imports:

- ``devkit_logs``: captures every rendered log record of the code under test as parsed
  JSON dicts (exactly what reaches stdout, after redaction), and resets devkit afterwards;
- ``devkit_reset``: only the reset: ``devkit.shutdown()`` and cleared request context.

Example::

    def test_checkout_logs_the_order(devkit_logs):
        devkit.init(service_name="shop")
        checkout(order_id="A-1")
        assert devkit_logs.find(message="order placed")[0]["order_id"] == "A-1"
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import structlog

from devkit import _context, health, logs
from devkit._setup import shutdown

__all__ = ["CapturedLogs", "devkit_logs", "devkit_reset", "reset"]


class CapturedLogs:
    """Rendered log records captured while a test runs."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self._lock = threading.Lock()

    def _tap(self, line: bytes) -> None:
        with self._lock:
            self.lines.append(line)

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every captured JSON record, parsed (console-format lines are skipped)."""
        with self._lock:
            lines = list(self.lines)
        out = []
        for line in lines:
            if line.startswith(b"{"):
                out.append(orjson.loads(line))
        return out

    def find(self, **fields: Any) -> list[dict[str, Any]]:
        """Records whose fields equal every keyword given, e.g. ``find(level="error")``."""
        return [r for r in self.records if all(r.get(k) == v for k, v in fields.items())]

    def clear(self) -> None:
        with self._lock:
            self.lines.clear()


def reset() -> None:
    """Undo ``devkit.init()`` and clear request-scoped context (between tests)."""
    shutdown()
    health.reset()
    structlog.contextvars.clear_contextvars()
    _context.correlation_id.set(None)


@pytest.fixture
def devkit_reset() -> Iterator[None]:
    """Reset devkit after the test, whatever the test initialised."""
    try:
        yield
    finally:
        reset()


@pytest.fixture
def devkit_logs() -> Iterator[CapturedLogs]:
    """Capture the rendered log records of the test; reset devkit afterwards."""
    captured = CapturedLogs()
    logs.add_tap(captured._tap)
    try:
        yield captured
    finally:
        logs.remove_tap(captured._tap)
        reset()
