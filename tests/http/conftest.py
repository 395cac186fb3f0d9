"""Fixtures of the middleware tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from devkit import _setup


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Spans devkit exports during the test, in memory."""
    exporter = InMemorySpanExporter()
    _setup.components["span_exporter"] = exporter
    yield exporter
    _setup.components.clear()
