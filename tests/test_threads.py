"""devkit's own background threads leave the process's signals to the main thread.

A SIGTERM the kernel hands to one of them waits until the main thread runs bytecode
again: a gunicorn sync worker asleep in a slow request would turn readiness 503 only when
the request ends. Read from the kernel (``/proc``), not from devkit's own bookkeeping.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import devkit
from devkit import _threads
from devkit.http import _timer
from devkit.testing import CapturedLogs

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads thread signal masks from /proc"
)


def _blocked(thread: threading.Thread) -> set[int]:
    """The signal numbers ``thread`` blocks, as the kernel reports them."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    (line,) = [ln for ln in status.splitlines() if ln.startswith("SigBlk:")]
    mask = int(line.split()[1], 16)
    return {n for n in range(1, 65) if mask >> (n - 1) & 1}


def _wait_for(predicate: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    return predicate()


def _term_signals() -> set[int]:
    return {int(signal.SIGTERM), int(signal.SIGINT), int(signal.SIGHUP)}


def test_start_daemon_blocks_process_signals_in_the_thread_only() -> None:
    release = threading.Event()
    thread = _threads.start_daemon(release.wait, "devkit-test-thread", 5)
    try:
        assert _term_signals() <= _blocked(thread)
        assert not _term_signals() & _blocked(threading.main_thread())
    finally:
        release.set()
        thread.join(5)


def test_the_records_timer_thread_blocks_them() -> None:
    timer = _timer.FlushTimer(lambda: None, lambda: 1, delay_s=0.01, idle_after_s=1)
    timer.start()
    try:
        (thread,) = [t for t in threading.enumerate() if t.name == "devkit-records"]
        assert _term_signals() <= _blocked(thread)
    finally:
        timer.stop()


def test_export_threads_block_them(devkit_logs: CapturedLogs, monkeypatch: Any) -> None:
    monkeypatch.setenv("DEVKIT_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("DEVKIT_SAMPLE_SUCCESS_RATIO", "1")
    monkeypatch.setenv("DEVKIT_SHUTDOWN_TIMEOUT_S", "0.5")  # nothing listens there
    devkit.init()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    wrapped = devkit.wsgi(app)
    body = wrapped({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, lambda *a: None)
    list(body)
    body.close()  # type: ignore[attr-defined]
    threads = _wait_for(
        lambda: [t for t in threading.enumerate() if t.name.startswith("devkit-span")]
    )
    assert threads, [t.name for t in threading.enumerate()]
    for thread in threads:
        assert _term_signals() <= _blocked(thread), thread.name


def test_the_metrics_servers_threads_block_them_and_health_checks_do_not(
    devkit_logs: CapturedLogs,
) -> None:
    """The metrics port's threads (one per request, a readiness probe every few ms)
    block the process's signals; a health check (the application's code) runs with them
    unblocked although a blocked thread started its thread."""
    import socket
    import urllib.request

    from prometheus_client import REGISTRY
    from prometheus_client.core import GaugeMetricFamily

    seen: dict[str, set[int]] = {}

    def ready_check() -> bool:
        seen["check"] = _blocked(threading.current_thread())
        return True

    class Probe:
        def collect(self) -> Any:
            seen["scrape"] = _blocked(threading.current_thread())
            yield GaugeMetricFamily("devkit_test_probe", "test", value=1)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    probe = Probe()
    REGISTRY.register(probe)  # type: ignore[arg-type]
    try:
        devkit.init(metrics_port=port)
        devkit.health.add_check("signals", ready_check)
        devkit.health.mark_started()
        for path in ("/healthz/ready", "/metrics"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
                assert answer.status == 200
        (server,) = [t for t in threading.enumerate() if t.name == "devkit-metrics-server"]
        assert _term_signals() <= _blocked(server)
        assert _term_signals() <= seen["scrape"]  # a request's thread, started by it
        assert not _term_signals() & seen["check"]
    finally:
        REGISTRY.unregister(probe)  # type: ignore[arg-type]
        devkit.health.reset()
