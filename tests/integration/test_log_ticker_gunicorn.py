"""The last access records before a quiet spell are written while gunicorn runs.

Lines that come close together wait for the ones after them and go out in one write;
when no line follows, the log pipeline's ticker thread writes them within
``MAX_HOLD_S``. With ``--preload`` that thread must be the forked worker's own: the
master's is not in the child. Nothing here stops the server before the records are read,
so only the ticker can have written the last ones.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest
from servers import OTLPReceiver, clean_env, free_port, serve

from devkit.logs import MAX_HOLD_S

pytestmark = pytest.mark.integration

GUNICORN = Path(sys.executable).parent / "gunicorn"
#: Requests back to back: their access records come close together and wait.
REQUESTS = 5


@pytest.mark.parametrize("preload", [False, True], ids=["workers", "preload"])
def test_the_last_access_records_are_written_while_gunicorn_runs(
    preload: bool, tmp_path: Path
) -> None:
    receiver = OTLPReceiver().start()
    port = free_port()
    env = clean_env(
        PORT=str(port),
        WEB_CONCURRENCY="1",
        DEVKIT_SERVICE_NAME="shop",
        DEVKIT_SAMPLE_SUCCESS_RATIO="1.0",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
    )
    argv = [str(GUNICORN), "-c", "examples/gunicorn_conf.py"]
    if preload:
        argv.append("--preload")
    argv.append("examples.flask_app:app")
    try:
        with serve(argv, env, tmp_path, port, ready_path="/healthz/startup") as server:
            cids = [f"quiet-{i}" for i in range(REQUESTS)]
            for cid in cids:
                response = httpx.get(
                    f"{server.url}/items/{len(cid)}", headers={"X-Correlation-ID": cid}, timeout=10
                )
                assert response.status_code == 200
            sent = time.monotonic()
            deadline = sent + 10
            found: set[str] = set()
            while time.monotonic() < deadline:
                found = {
                    record["correlation_id"]
                    for record in server.json_lines()
                    if record.get("message") == "request completed"
                    and record.get("correlation_id") in cids
                }
                if found == set(cids):
                    break
                time.sleep(0.01)
            waited = time.monotonic() - sent
            assert found == set(cids), server.output()
            assert server.proc.poll() is None  # still serving: not the shutdown's flush
            # The ticker's bound, with room for a loaded CI machine.
            assert waited < MAX_HOLD_S + 2.0
            receiver.wait_for(lambda r: len(r.spans()) >= REQUESTS, timeout=10)
    finally:
        receiver.stop()
