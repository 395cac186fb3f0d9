"""Test helpers for applications that use devkit, shipped as a pytest plugin.

Installed with devkit (entry point ``pytest11``), so the fixtures are available in any
test-suite without imports:

- ``devkit_logs``: captures every rendered log record of the code under test as parsed
  JSON dicts (exactly what reaches stdout, after redaction), and resets devkit afterwards;
- ``devkit_spans``: every span devkit exported during the test (an in-memory exporter
  replaces the configured one; tail sampling still decides what is exported);
- ``devkit_metrics``: ``sample_value(name, labels)`` over the metrics devkit serves;
- ``devkit_reset``: only the reset: ``devkit.shutdown()`` and cleared request context.

It also ships :class:`OTLPReceiver`, an OTLP/HTTP receiver on 127.0.0.1 that a test can
point its own service at. The receiver and the capture classes work without pytest (the
``devkit demo`` command uses the receiver); the fixtures are defined when pytest is
importable.

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
import structlog
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from devkit import _context, _setup, _state, health, logs
from devkit._setup import shutdown
from devkit.testing._receiver import OTLPReceiver, Received, Reply, Traffic

try:
    import pytest
except ImportError:  # devkit demo imports the receiver where pytest may not be installed
    _HAVE_PYTEST = False
else:
    _HAVE_PYTEST = True

__all__ = [
    "CapturedLogs",
    "CapturedSpans",
    "MetricSamples",
    "OTLPReceiver",
    "Received",
    "Reply",
    "Traffic",
    "reset",
]


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
        """Every captured JSON record, parsed (console-format lines are skipped).

        Access records of requests that just ended are written first.
        """
        _setup.finish_pending()
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


class CapturedSpans:
    """Spans exported by devkit during a test (after tail sampling)."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self.exporter = exporter

    @property
    def spans(self) -> list[ReadableSpan]:
        """Every exported span; pending kept spans are flushed first."""
        _setup.flush(5.0)
        return list(self.exporter.get_finished_spans())

    def find(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name == name]


class MetricSamples:
    """Reads the samples devkit serves at ``/metrics``."""

    def sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """The value of sample ``name`` with exactly ``labels``, or None if absent."""
        core = _state.core()
        if core is None or core.metrics is None:
            return None
        core.flush_pending()
        core.metrics.prepare_scrape()
        value = core.metrics.registry.get_sample_value(name, labels or {})
        return None if value is None else float(value)


if _HAVE_PYTEST:
    __all__ += ["devkit_logs", "devkit_metrics", "devkit_reset", "devkit_spans"]

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

    @pytest.fixture
    def devkit_spans() -> Iterator[CapturedSpans]:
        """Export devkit's spans to memory for the test; reset devkit afterwards."""
        exporter = InMemorySpanExporter()
        _setup.components["span_exporter"] = exporter
        try:
            yield CapturedSpans(exporter)
        finally:
            _setup.components.pop("span_exporter", None)
            reset()

    @pytest.fixture
    def devkit_metrics() -> Iterator[MetricSamples]:
        """Metric samples of the code under test; reset devkit afterwards."""
        try:
            yield MetricSamples()
        finally:
            reset()
