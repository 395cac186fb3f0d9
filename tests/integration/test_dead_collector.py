"""A dead collector never slows requests, never grows memory, and every loss is counted."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from servers import clean_env, free_port, serve, uvicorn_argv

pytestmark = pytest.mark.integration


@pytest.fixture
def black_hole() -> Iterator[int]:
    """Accepts connections and never answers: a hung collector."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


def test_hung_collector_does_not_block_requests(black_hole: int, tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{black_hole}",
        DEVKIT_SAMPLE_SUCCESS_RATIO="1.0",
        OTEL_BSP_MAX_QUEUE_SIZE="50",
        OTEL_BSP_MAX_EXPORT_BATCH_SIZE="10",
        OTEL_EXPORTER_OTLP_TIMEOUT="30",
        DEVKIT_SHUTDOWN_TIMEOUT_S="2",
    )
    with serve(uvicorn_argv("examples.fastapi_app:app", port), env, tmp_path, port) as server:
        started = time.monotonic()
        with httpx.Client(base_url=server.url, timeout=10) as client:
            statuses = [client.get(f"/items/{i}").status_code for i in range(400)]
        elapsed = time.monotonic() - started
        assert statuses == [200] * 400
        # A generous bound, not a benchmark: one blocked export would take 30 s.
        assert elapsed < 25
        metrics = httpx.get(server.url + "/metrics").text
        dropped = [
            line
            for line in metrics.splitlines()
            if line.startswith('devkit_spans_dropped_total{reason="export_queue_full"}')
        ]
        assert dropped and float(dropped[0].split()[-1]) >= 300
        t0 = time.monotonic()
        server.stop()
        # shutdown is bounded by DEVKIT_SHUTDOWN_TIMEOUT_S even with the export hung
        assert time.monotonic() - t0 < 15
