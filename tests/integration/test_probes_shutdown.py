"""Acceptance of health probes and graceful shutdown with a real uvicorn server."""

from __future__ import annotations

import concurrent.futures
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from servers import ROOT, OTLPReceiver, Server, clean_env, free_port, serve, uvicorn_argv

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent


def env_for(receiver: OTLPReceiver, metrics_port: int, **extra: str) -> dict[str, str]:
    env = clean_env(
        DEVKIT_SERVICE_NAME="probes",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        DEVKIT_SAMPLE_SUCCESS_RATIO="1.0",
        DEVKIT_METRICS_PORT=str(metrics_port),
        **extra,
    )
    env["PYTHONPATH"] = f"{HERE}:{ROOT}"
    return env


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    r = OTLPReceiver().start()
    yield r
    r.stop()


def wait_until(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def start(tmp: Path, receiver: OTLPReceiver, **extra: str) -> tuple[object, int]:
    port, metrics_port = free_port(), free_port()
    ctx = serve(
        uvicorn_argv("probe_app:app", port),
        env_for(receiver, metrics_port, **extra),
        tmp,
        port,
        ready_path="/healthz/startup",
    )
    return ctx, metrics_port


def test_probes_semantics(tmp_path: Path, receiver: OTLPReceiver) -> None:
    ctx, metrics_port = start(tmp_path, receiver)
    with ctx as server:
        assert isinstance(server, Server)
        for kind in ("startup", "ready", "live"):
            r = httpx.get(f"{server.url}/healthz/{kind}")
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "pass"
            assert r.headers["cache-control"] == "no-store"
        # the metrics port answers probes too, and serves /metrics (the app port does not)
        assert httpx.get(f"http://127.0.0.1:{metrics_port}/healthz/ready").status_code == 200
        assert "http_requests_total" in httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        assert httpx.get(f"{server.url}/metrics").status_code == 404

        # a failing readiness check flips only /ready, with its (redacted) error
        httpx.post(f"{server.url}/_test/database/down")
        time.sleep(1.1)  # past the 1 s result cache
        ready = httpx.get(f"{server.url}/healthz/ready")
        assert ready.status_code == 503
        check = ready.json()["checks"]["database"]
        assert check["status"] == "fail"
        assert check["error"].startswith("ConnectionError: database unreachable")
        assert "ada@example.com" not in ready.text
        assert httpx.get(f"{server.url}/healthz/live").status_code == 200
        assert httpx.get(f"{server.url}/healthz/startup").status_code == 200

        # a hanging check answers within its timeout
        httpx.post(f"{server.url}/_test/database/hang")
        time.sleep(1.1)
        t0 = time.monotonic()
        hung = httpx.get(f"{server.url}/healthz/ready", timeout=10)
        assert time.monotonic() - t0 < 5
        assert hung.status_code == 503
        assert hung.json()["checks"]["database"]["error"] == "timeout"

        # a probe storm calls the cached check only a few times
        httpx.post(f"{server.url}/_test/database/up")
        time.sleep(1.1)
        before = httpx.get(f"{server.url}/_test/calls").json()["calls"]
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
            codes = list(
                pool.map(
                    lambda _: httpx.get(f"{server.url}/healthz/ready", timeout=10).status_code,
                    range(200),
                )
            )
        storm_s = time.monotonic() - started
        after = httpx.get(f"{server.url}/_test/calls").json()["calls"]
        assert codes.count(200) >= 190
        # At most one call per 1 s cache interval, however many probes (and however slow
        # the machine makes the storm), plus the interval the storm began in.
        assert after - before <= int(storm_s) + 2, (after - before, storm_s)
    logs = server.json_lines()
    assert not [r for r in logs if str(r.get("path", "")).startswith("/healthz")]


def test_blocked_event_loop_fails_liveness_and_recovers(
    tmp_path: Path, receiver: OTLPReceiver
) -> None:
    ctx, metrics_port = start(tmp_path, receiver, DEVKIT_LIVENESS_TIMEOUT_S="0.5")
    live = f"http://127.0.0.1:{metrics_port}/healthz/live"
    with ctx as server:
        assert httpx.get(live).status_code == 200
        blocker = threading.Thread(
            target=lambda: httpx.get(f"{server.url}/block-loop?seconds=2.5", timeout=30)
        )
        blocker.start()
        try:
            assert wait_until(lambda: httpx.get(live, timeout=5).status_code == 503, 5)
            body = httpx.get(live, timeout=5).json()
            assert body["checks"]["event_loop"]["status"] == "fail"
        finally:
            blocker.join(30)
        assert wait_until(lambda: httpx.get(live, timeout=5).status_code == 200, 10)


def test_sigterm_drains_in_flight_request_and_flushes(
    tmp_path: Path, receiver: OTLPReceiver
) -> None:
    ctx, metrics_port = start(tmp_path, receiver, DEVKIT_SHUTDOWN_TIMEOUT_S="10")
    ready = f"http://127.0.0.1:{metrics_port}/healthz/ready"
    with ctx as server:
        assert isinstance(server, Server)
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            slow = pool.submit(httpx.get, f"{server.url}/slow?ms=2000", timeout=30)
            time.sleep(0.5)
            t0 = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            # readiness fails at once, while the in-flight request is still running
            assert wait_until(lambda: httpx.get(ready, timeout=2).status_code == 503, 1.5)
            assert not slow.done()
            response = slow.result(timeout=30)
        assert response.status_code == 200
        server.proc.wait(15)
        assert time.monotonic() - t0 < 12
    server_spans = [s for _, s in receiver.spans() if s.name == "GET /slow"]
    assert len(server_spans) == 1
    (final,) = [r for r in server.json_lines() if r.get("message") == "shutdown complete"]
    assert final["level"] == "info"
    assert final["requests_unfinished"] == 0
    assert final["requests_served"] >= 1
    assert final["spans_exported"] >= 1 and final["spans_unexported"] == 0
