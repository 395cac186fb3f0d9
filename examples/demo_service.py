"""The demo service of ``devkit demo``, runnable on its own.

``devkit demo`` (or ``make demo``) starts this app, drives traffic at it and shows the
logs, metrics, probes and kept traces. To run it yourself::

    uvicorn examples.demo_service:app --port 8000
    curl -i localhost:8000/items/42
    curl -i localhost:8000/checkout/2        # 500: an unhandled exception
    curl -X POST localhost:8000/pay          # the log line shows the secrets redacted
    curl -H 'Accept: application/openmetrics-text' localhost:8000/metrics
    curl localhost:8000/healthz/ready

Add ``OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318`` to export the kept traces to a
collector. The app itself lives in ``devkit.cli._demo_app`` so the demo works from an
installed package; importing it calls ``devkit.init()``.
"""

from __future__ import annotations

from devkit.cli._demo_app import app

__all__ = ["app"]
