"""What one item waiting in devkit's export queues costs in memory, measured on the real
objects: the FastAPI example serves requests in this process (through httpx's ASGI
transport) while its collector refuses every connection, so the span and log record
queues fill as they do in a service whose collector is down. Then the queued items are
taken out and released, and tracemalloc tells how much memory they alone held: the
item, and everything only it kept alive (for a span, the request it was recorded from).

Run as its own process (``devkit.init()`` configures the process it runs in); prints
one JSON report: ``{"span_kb": ..., "log_record_kb": ..., "spans": n, "log_records": m}``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import sys
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def refused_endpoint() -> str:
    """An address nothing listens on (a port just freed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def released_kb(queue: Any) -> tuple[int, float]:
    """(items taken out of ``queue``, KB their release freed per item)."""
    with queue._cond:  # the export thread pops under this lock too
        items = list(queue._queue)
        queue._queue.clear()
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    count = len(items)
    del items
    gc.collect()
    freed = before - tracemalloc.get_traced_memory()[0]
    return count, freed / 1024 / max(count, 1)


async def serve(app: Any, requests: int) -> None:
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
        for i in range(requests):
            response = await client.get(
                f"/items/{i % 1000}", headers={"X-Correlation-ID": f"m-{i}"}
            )
            assert response.status_code == 200, response.status_code


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queue", type=int, default=256)
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    os.environ.update(
        {
            "DEVKIT_SERVICE_NAME": "reliability",
            "DEVKIT_SAMPLE_SUCCESS_RATIO": "1.0",
            "DEVKIT_LOGS_EXPORTER": "otlp",
            "OTEL_BSP_MAX_QUEUE_SIZE": str(args.queue),
            "OTEL_BLRP_MAX_QUEUE_SIZE": str(args.queue),
            "OTEL_EXPORTER_OTLP_ENDPOINT": refused_endpoint(),
        }
    )
    sys.path.insert(0, str(ROOT))
    report = sys.stdout
    # The service's own records (stdout) are not what is measured here.
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the process's stdout from now on
    import examples.fastapi_app as example

    from devkit import _batch
    from devkit._log_export import _Records
    from devkit.tracing._export import BatchExporter

    tracemalloc.start()  # after the imports: the queued items are all made after it
    asyncio.run(serve(example.app, args.requests))
    queues = {type(q): q for q in list(_batch._instances)}
    spans, span_kb = released_kb(queues[BatchExporter])
    records, record_kb = released_kb(queues[_Records])
    json.dump(
        {
            "span_kb": round(span_kb, 3),
            "log_record_kb": round(record_kb, 3),
            "spans": spans,
            "log_records": records,
        },
        report,
    )
    report.flush()
    os._exit(0)  # the export threads are still waiting on the refused collector


if __name__ == "__main__":
    main()
