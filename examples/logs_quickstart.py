"""Logs in one call: run `python examples/logs_quickstart.py` and read stdout.

Every line is one JSON object with timestamp, level, service, logger and message;
records written inside a span carry its trace_id and span_id; secrets are redacted.
"""

from __future__ import annotations

import logging

from opentelemetry.sdk.trace import TracerProvider

import devkit

devkit.init(service_name="svc")
log = devkit.get_logger("quickstart")
stdlib_log = logging.getLogger("quickstart.stdlib")

log.info("outside any span", user_id=42)
stdlib_log.info("stdlib outside any span")

tracer = TracerProvider().get_tracer("quickstart")
with tracer.start_as_current_span("work"):
    log.info("inside a span", order_id="ORD-2024-000123")
    stdlib_log.warning("stdlib inside a span", extra={"attempt": 2})
    log.info("signing in", password="hunter2", contact="ada@example.com")

try:
    raise ValueError("card 4111 1111 1111 1111 declined")
except ValueError:
    log.exception("payment failed")

devkit.shutdown()
