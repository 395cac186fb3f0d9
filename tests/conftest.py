"""Shared fixtures: strict internal-error mode and a clean devkit around every test."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from devkit import _errors, testing


@pytest.fixture(autouse=True)
def _devkit_isolation(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Under devkit's own tests guarded failures re-raise, so bugs are not hidden.
    for name in list(os.environ):
        if name.startswith(("DEVKIT_", "OTEL_")):
            monkeypatch.delenv(name)
    _errors.set_strict(True)
    _errors.reset()
    try:
        yield
    finally:
        # Not strict while resetting: the final "shutdown complete" record may meet a
        # capture stream (capsys) that pytest already closed; that is counted, not a bug.
        _errors.set_strict(False)
        testing.reset()
        _errors.reset()


@pytest.fixture(autouse=True)
def _no_export_thread_left_busy() -> Iterator[None]:
    """An export thread that stays busy makes every later stdout line wait: each test's
    queues must be done with their batches shortly after it ends."""
    yield
    from devkit import _batch

    deadline = time.monotonic() + 3
    while _batch.BUSY and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _batch.BUSY, f"export queues still busy after the test: {_batch.BUSY}"
