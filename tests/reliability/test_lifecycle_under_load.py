"""Item 3: the service's life around devkit: stopped in the middle of a burst, a worker
killed, a multiprocess directory that cannot be written, ``init()`` raced by threads,
and processes forked after ``init()``.

The SIGTERM tests hold a burst of requests in flight (the service answers them after a
delay), stop the server, and watch from outside: every in-flight request must be
answered, readiness (polled on ``DEVKIT_METRICS_PORT``, the listener that keeps
answering during the drain) must fail before the application's port stops accepting,
every trace the service said it kept (the sampled flag of its ``Server-Timing`` answer)
must reach the collector, and the process must exit within the shutdown budget once the
last response left.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from harness import children, finish_loadgen, metric, records, start_loadgen, wait_for
from rows import record
from servers import OTLPReceiver, Server, free_port

from conftest import GunicornFactory, UvicornFactory

pytestmark = pytest.mark.integration

SECTION = "Lifecycle"
HERE = Path(__file__).resolve().parent
#: devkit's own part of a shutdown (drain what is left, flush, uninstall).
BUDGET_S = 5.0
#: The server's own steps after devkit's (close connections, reap workers, exit).
EXIT_MARGIN_S = 1.0
#: How long each request of the burst is held by the service.
HOLD_MS = 2000
#: Requests the warm-up sends before the burst: a fifth of them answer 500.
WARMUP = 200
SUCCESS_RATIO = "0.1"
_TIMING = re.compile(r"00-([0-9a-f]{32})-[0-9a-f]{16}-([0-9a-f]{2})")


@dataclass(frozen=True)
class Answer:
    """One request of the test's client: what came back, or the error."""

    status: int | None
    trace_id: str | None
    kept: bool
    at: float  # time.monotonic() when the answer (or the error) arrived
    error: str | None = None


def get(url: str, timeout: float = 30) -> Answer:
    """One GET on a connection of its own (http.client: an httpx client per request
    costs more than the request)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        conn.request("GET", f"{parts.path}?{parts.query}")
        response = conn.getresponse()
        response.read()
    except (OSError, http.client.HTTPException) as exc:
        return Answer(None, None, False, time.monotonic(), type(exc).__name__)
    finally:
        conn.close()
    found = _TIMING.search(response.getheader("server-timing") or "")
    trace_id, kept = (found[1], bool(int(found[2], 16) & 1)) if found else (None, False)
    return Answer(response.status, trace_id, kept, time.monotonic())


def work(base: str, *, ms: int = 0, status: int = 200) -> str:
    return f"{base}/work?ms={ms}&status={status}"


# -- readiness against the listener ------------------------------------------------------------


@dataclass(frozen=True)
class Look:
    at: float
    accepting: bool  # a TCP connection to the application's port was accepted
    ready: int | None  # /healthz/ready on the metrics port (None: no answer)


class Watcher:
    """Looks at the application's listener, then at readiness, in turn, as fast as it can.

    Readiness must fail before the listener closes. Looking at the listener first and at
    readiness right after makes that checkable without a race: once a look finds the
    listener closed, readiness was already failing, so the same look must find 503."""

    def __init__(self, app_port: int, metrics_port: int) -> None:
        self.app_port = app_port
        self.ready_url = f"http://127.0.0.1:{metrics_port}/healthz/ready"
        self.looks: list[Look] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="watcher")

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with httpx.Client(timeout=1) as client:
            while not self._stop.is_set():
                at = time.monotonic()
                try:
                    with socket.create_connection(("127.0.0.1", self.app_port), timeout=1):
                        accepting = True
                except OSError:
                    accepting = False
                try:
                    ready: int | None = client.get(self.ready_url).status_code
                except httpx.HTTPError:
                    ready = None
                self.looks.append(Look(at, accepting, ready))
                time.sleep(0.002)

    def first(self, predicate: Any) -> float | None:
        return next((look.at for look in self.looks if predicate(look)), None)


# -- the burst ---------------------------------------------------------------------------------


def warm_up(base: str) -> list[Answer]:
    """Fast requests before the burst: successes (a tenth of them kept) and errors (all
    kept)."""
    urls = [work(base, status=500 if i % 5 == 0 else 200) for i in range(WARMUP)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(get, urls))


def in_progress(metrics_port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    return metric(text, "http_requests_in_progress")


def process_exit_s(server: Server, timeout: float) -> float:
    """Wait for the server process to end; when it ended (time.monotonic())."""
    deadline = time.monotonic() + timeout
    while server.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert server.proc.poll() is not None, "the server did not exit"
    return time.monotonic()


@dataclass(frozen=True)
class Stopped:
    answers: list[Answer]  # warm-up and burst
    burst: list[Answer]
    shutdown_s: float  # SIGTERM -> process gone
    after_last_response_s: float  # last response of the burst -> process gone
    looks: list[Look]


def stop_mid_burst(server: Server, metrics_port: int, burst: int) -> Stopped:
    before = warm_up(server.url)
    urls = [work(server.url, ms=HOLD_MS, status=500 if i % 3 == 0 else 200) for i in range(burst)]
    with concurrent.futures.ThreadPoolExecutor(burst) as pool:
        futures = [pool.submit(get, url) for url in urls]
        # Every request of the burst is being served when SIGTERM arrives.
        assert wait_for(lambda: in_progress(metrics_port) == burst, 10, 0.02), in_progress(
            metrics_port
        )
        with Watcher(server.port, metrics_port) as watcher:
            # At least one look before SIGTERM (the reference: accepting, ready).
            assert wait_for(lambda: len(watcher.looks) >= 2, 10, 0.005)
            sent = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            answers = [f.result(timeout=60) for f in futures]
            gone = process_exit_s(server, 60)
            time.sleep(0.05)
    last = max(a.at for a in answers)
    return Stopped(before + answers, answers, gone - sent, gone - last, watcher.looks)


def check_and_record(label: str, server: Server, receiver: OTLPReceiver, stopped: Stopped) -> None:
    burst = stopped.burst
    failed = [a for a in burst if a.status is None]
    assert not failed, failed
    # Each request got the answer the application gave it (the errors are the app's).
    assert [a.status for a in burst] == [500 if i % 3 == 0 else 200 for i in range(len(burst))]

    looks = stopped.looks
    # The first look is before SIGTERM.
    assert looks[0].ready == 200 and looks[0].accepting
    # Readiness failed before the listener closed: no look found the listener closed
    # while readiness still passed (see Watcher), and readiness failed while requests
    # of the burst were still being served.
    assert not [k for k in looks if not k.accepting and k.ready == 200], looks
    failed_at = next((k.at for k in looks if k.ready == 503), None)
    assert failed_at is not None and failed_at < min(a.at for a in burst), looks
    closed_at = next((k.at for k in looks if not k.accepting), None)
    lead_ms = (closed_at - failed_at) * 1000 if closed_at is not None else None

    # Every trace the service kept arrived; every error was kept.
    kept = {a.trace_id for a in stopped.answers if a.kept}
    errors = [a for a in stopped.answers if a.status == 500]
    assert all(a.kept for a in errors)
    assert receiver.wait_for(lambda r: kept <= r.trace_ids(), 5)
    lost = kept - receiver.trace_ids()
    assert not lost

    # devkit's own account: nothing unfinished, nothing unexported.
    finals = [r for r in records(server.out_path) if r.get("message") == "shutdown complete"]
    assert finals, server.output()[-3000:]
    for final in finals:
        assert final["requests_unfinished"] == 0 and final["spans_unexported"] == 0, final

    assert stopped.after_last_response_s <= BUDGET_S + EXIT_MARGIN_S, stopped
    record(
        SECTION,
        f"SIGTERM mid-burst ({label})",
        f"SIGTERM with {len(burst)} requests in flight (held {HOLD_MS} ms, a third of them "
        "answering 500) after a warm-up; readiness polled on the metrics port",
        requests=len(stopped.answers),
        requests_in_flight=len(burst),
        requests_failed=len(failed),
        ready_failed_before_close=True,
        readiness_lead_ms=round(lead_ms, 1) if lead_ms is not None else None,
        spans_kept=len(kept),
        spans_lost_uncounted=len(lost),
        shutdown_s=round(stopped.shutdown_s, 2),
        exit_after_last_response_s=round(stopped.after_last_response_s, 2),
        shutdown_budget_s=BUDGET_S,
    )


def _env(metrics_port: int) -> dict[str, str]:
    return {
        "DEVKIT_SAMPLE_SUCCESS_RATIO": SUCCESS_RATIO,
        "DEVKIT_SHUTDOWN_TIMEOUT_S": str(BUDGET_S),
        "DEVKIT_METRICS_PORT": str(metrics_port),
    }


def test_sigterm_mid_burst_uvicorn(uvicorn_server: UvicornFactory, receiver: OTLPReceiver) -> None:
    metrics_port = free_port()
    server = uvicorn_server("lifecycle_asgi:app", receiver=receiver, **_env(metrics_port))
    stopped = stop_mid_burst(server, metrics_port, burst=24)
    check_and_record("uvicorn", server, receiver, stopped)


@pytest.mark.parametrize(
    ("worker", "args", "burst"),
    [
        # Sync workers (examples/gunicorn_conf.py): one request in flight per worker.
        ("sync", (), 2),
        # Threaded workers, 8 threads each: several requests in flight per worker.
        ("gthread", ("--threads", "8"), 8),
    ],
)
def test_sigterm_mid_burst_gunicorn(
    worker: str,
    args: tuple[str, ...],
    burst: int,
    receiver: OTLPReceiver,
    gunicorn_server: GunicornFactory,
) -> None:
    metrics_port = free_port()
    server = gunicorn_server(
        "lifecycle_wsgi:app", receiver=receiver, args=args, **_env(metrics_port)
    )
    stopped = stop_mid_burst(server, metrics_port, burst=burst)
    check_and_record(f"gunicorn {worker}, 2 workers", server, receiver, stopped)


# -- a worker killed under load ----------------------------------------------------------------


def livesum(path: Path) -> float:
    """The in-progress count a worker's ``gauge_livesum_<pid>.db`` holds."""
    from prometheus_client.mmap_dict import MmapedDict

    if not path.exists():  # a worker that has not served yet
        return 0.0
    values = MmapedDict(str(path), read_mode=True)
    try:
        return sum(item[1] for item in values.read_all_values())
    finally:
        values.close()


def kill_busy_worker(master: int, directory: Path) -> tuple[int, float]:
    """SIGKILL one of ``master``'s workers while it serves a request (frozen with
    SIGSTOP while its in-progress file is read); (its pid, its in-progress count)."""
    for _ in range(200):
        (pid, *_) = children(master)
        os.kill(pid, signal.SIGSTOP)
        count = livesum(directory / f"gauge_livesum_{pid}.db")
        if count > 0:
            os.kill(pid, signal.SIGKILL)
            return pid, count
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.005)
    raise AssertionError("no worker was busy")


def test_sigkilled_worker_leaves_metrics_right(
    gunicorn_server: GunicornFactory, tmp_path: Path
) -> None:
    directory = tmp_path / "multiproc"
    directory.mkdir()
    server = gunicorn_server("lifecycle_wsgi:app", workers=2, multiproc_dir=directory)
    master = server.proc.pid
    load = start_loadgen(
        "load", "--url", server.url, "--path", "/work?ms=5&n={i}", "--clients", "8",
        "--seconds", "6",
    )  # fmt: skip
    killed: list[tuple[int, float]] = []
    time.sleep(1.5)
    for _ in range(2):
        killed.append(kill_busy_worker(master, directory))
        # gunicorn replaces the worker; the load goes on.
        assert wait_for(lambda: len(children(master)) == 2, 10)
        time.sleep(1.5)
    report = finish_loadgen(load, 60)

    answered = sum(report["statuses"].values())
    failed = len(report["failed_cids"])
    assert report["statuses"] == {"200": answered}
    text = httpx.get(server.url + "/metrics", timeout=10).text
    counted = metric(text, "http_requests_total")
    stale = metric(text, "http_requests_in_progress")
    # Each worker died with a request in progress; its gauge went with it ...
    assert all(count >= 1 for _, count in killed)
    assert not [pid for pid, _ in killed if (directory / f"gauge_livesum_{pid}.db").exists()]
    assert stale == 0, text
    # ... and it took that one request (sync workers) with it: the client's request
    # failed or, when the worker had sent the response but not yet closed it (where a
    # multiprocess count is made), the client has its answer and that count is lost.
    # Nothing else fails, and every other answered request stays counted.
    lost = answered - int(counted)
    assert lost >= 0, (counted, answered)
    assert failed + lost == sum(count for _, count in killed), (
        report["errors"],
        killed,
        counted,
        answered,
    )
    record(
        SECTION,
        "worker SIGKILLed under load (gunicorn, 2 workers)",
        "SIGKILL to a worker while it serves a request, twice, under 8 clients for 6 s "
        "(the request each killed worker was serving dies with it)",
        requests=answered + failed,
        requests_failed=0,
        requests_killed_with_worker=failed,
        workers_killed=len(killed),
        in_progress_stale=stale,
        requests_counted=int(counted),
        requests_answered=answered,
        counts_lost=answered - int(counted),
    )


# -- a multiprocess directory that cannot be written -------------------------------------------


@contextmanager
def tmpfs(path: Path, size_kb: int, *options: str) -> Iterator[bool]:
    """Mount a tmpfs of ``size_kb`` at ``path``; yields whether the mount worked."""
    path.mkdir()
    opts = ",".join((f"size={size_kb}k", *options))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, check=False
    )
    try:
        yield done.returncode == 0
    finally:
        if done.returncode == 0:
            # Lazy: the server may still hold files there until its fixture stops it.
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(directory: Path) -> None:
    """Write into ``directory`` until its filesystem is full."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def start_fails(gunicorn_server: GunicornFactory, directory: Path, **env: str) -> tuple[str, float]:
    """Start gunicorn on ``directory``; the output it failed with, and how long it ran."""
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="server exited early") as failure:
        gunicorn_server("lifecycle_wsgi:app", workers=2, multiproc_dir=directory, **env)
    return str(failure.value), time.monotonic() - started


def clear_error(output: str, reason: str) -> None:
    """A ConfigError naming the variable and the reason, not an OSError or a signal."""
    assert "devkit.exceptions.ConfigError: PROMETHEUS_MULTIPROC_DIR=" in output, output[-3000:]
    assert reason in output, output[-3000:]
    assert "SIGBUS" not in output


def test_unwritable_multiprocess_dir_fails_at_start(
    gunicorn_server: GunicornFactory, tmp_path: Path
) -> None:
    directory = tmp_path / "readonly"
    with tmpfs(directory, 1024, "ro") as mounted:
        if mounted:
            how = "read-only tmpfs"
        elif os.geteuid() != 0:
            how = "directory mode 0555"
            directory.chmod(0o555)
        else:  # root without mount: a directory that cannot be written does not exist
            how = "a file in place of the directory"
            directory.rmdir()
            directory.write_text("")
        output, ran_s = start_fails(gunicorn_server, directory)
    clear_error(output, "this process can write to")
    record(
        SECTION,
        "multiprocess directory unwritable",
        f"PROMETHEUS_MULTIPROC_DIR on a {how}; gunicorn, 2 workers",
        simulated_by=how,
        requests_failed=0,
        clear_error_at_start=True,
        exit_s=round(ran_s, 2),
    )


def test_full_multiprocess_dir_fails_at_start(
    gunicorn_server: GunicornFactory, tmp_path: Path
) -> None:
    directory = tmp_path / "full"
    with tmpfs(directory, 64) as mounted:
        if mounted:
            how = "full 64 KiB tmpfs"
            fill(directory)
            output, ran_s = start_fails(gunicorn_server, directory)
        else:
            # Without a mount: a file-size limit smaller than a metrics file (set by the
            # app module before init()), so the files cannot grow.
            how = "RLIMIT_FSIZE below one metrics file"
            directory.mkdir(exist_ok=True)
            output, ran_s = start_fails(
                gunicorn_server, directory, LIFECYCLE_FSIZE_LIMIT=str(16 * 1024)
            )
    clear_error(output, "with room for")
    record(
        SECTION,
        "multiprocess directory full",
        f"PROMETHEUS_MULTIPROC_DIR on a {how}; gunicorn, 2 workers",
        simulated_by=how,
        requests_failed=0,
        clear_error_at_start=True,
        exit_s=round(ran_s, 2),
    )


#: Statuses the requests after the filling ask for: each one a new series in every
#: metrics file, within the first mapping devkit reserved.
NEW_SERIES = (200, 201, 202, 204, 400, 404, 500, 503)


def test_multiprocess_dir_filled_after_start_fails_no_request(
    gunicorn_server: GunicornFactory, tmp_path: Path
) -> None:
    directory = tmp_path / "fills"
    with tmpfs(directory, 1024) as mounted:
        if not mounted:
            pytest.fail("needs a tmpfs mount (root with CAP_SYS_ADMIN) to fill a filesystem")
        server = gunicorn_server("lifecycle_wsgi:app", workers=2, multiproc_dir=directory)
        workers = children(server.proc.pid)
        fill(directory)
        answers = []
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for _ in range(5):
                for status in NEW_SERIES:
                    try:
                        answers.append(client.get(f"/work?status={status}").status_code)
                    except httpx.HTTPError as exc:
                        answers.append(type(exc).__name__)  # type: ignore[arg-type]
        text = httpx.get(server.url + "/metrics", timeout=10).text
        after = children(server.proc.pid)
        server.stop()
    expected = [status for _ in range(5) for status in NEW_SERIES]
    failed = sum(1 for got, want in zip(answers, expected, strict=True) if got != want)
    assert failed == 0, answers
    assert after == workers, "a worker died"
    assert metric(text, "http_requests_total") == len(expected)
    record(
        SECTION,
        "multiprocess directory fills after start",
        f"tmpfs filled to the last byte after start, then {len(expected)} requests making "
        f"{len(NEW_SERIES)} new series in each metrics file; gunicorn, 2 workers",
        simulated_by="tmpfs filled by a file",
        requests=len(expected),
        requests_failed=failed,
        workers_crashed=len(set(workers) - set(after)),
    )


# -- init() raced by threads -------------------------------------------------------------------


def test_init_from_many_threads_builds_once() -> None:
    rounds, threads = 3, 16
    summaries = []
    for _ in range(rounds):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DEVKIT_", "OTEL_"))}
        env.update(
            DEVKIT_SERVICE_NAME="race", PYTHONPATH=f"{HERE}{os.pathsep}{env.get('PYTHONPATH', '')}"
        )
        done = subprocess.run(
            [sys.executable, str(HERE / "lifecycle_threads.py"), str(threads)],
            capture_output=True, text=True, timeout=60, env=env, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads(done.stderr.strip().splitlines()[-1])
        lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        summary["devkit_records"] = sum(1 for r in lines if r.get("message") == "one devkit record")
        summary["stdlib_records"] = sum(1 for r in lines if r.get("message") == "one stdlib record")
        summaries.append(summary)
    for s in summaries:
        assert s["errors"] == [] and s["builds"] == 1, s
        assert s["runtimes"] == threads and s["distinct_runtimes"] == 1, s
        assert s["devkit_records"] == 1 and s["stdlib_records"] == 1, s
    record(
        SECTION,
        "init() from many threads",
        f"{threads} threads call init() at once (barrier, GIL switch interval 1 us), "
        f"{rounds} fresh processes",
        initialisations=max(s["builds"] for s in summaries),
        exceptions=sum(len(s["errors"]) for s in summaries),
        records_per_log_call=max(s["devkit_records"] for s in summaries),
    )


# -- fork after init() -------------------------------------------------------------------------


@pytest.mark.parametrize("preload", [False, True], ids=["no-preload", "preload"])
def test_workers_forked_after_init_export_and_count(
    preload: bool, receiver: OTLPReceiver, gunicorn_server: GunicornFactory, tmp_path: Path
) -> None:
    directory = tmp_path / "multiproc"
    directory.mkdir()
    server = gunicorn_server(
        "lifecycle_wsgi:app",
        receiver=receiver,
        workers=2,
        preload=preload,
        multiproc_dir=directory,
        DEVKIT_SAMPLE_SUCCESS_RATIO="1.0",
        DEVKIT_SHUTDOWN_TIMEOUT_S=str(BUDGET_S),
    )
    urls = [work(server.url, ms=5) for _ in range(200)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda url: get(url, timeout=10), urls))
    failed = [a for a in answers if a.status != 200]
    assert not failed, failed[:5]
    traces = {a.trace_id for a in answers}
    assert all(a.kept for a in answers) and None not in traces
    assert receiver.wait_for(lambda r: traces <= r.trace_ids(), 15)
    text = httpx.get(server.url + "/metrics", timeout=10).text
    counted = metric(text, "http_requests_total")
    assert counted == len(answers), (counted, len(answers))
    assert metric(text, "http_requests_in_progress") == 0
    # Both workers served a share, and each one flushed everything at its exit.
    served_by = {r["pid"] for r in records(server.out_path) if r.get("message") == "work done"}
    assert len(served_by) == 2, served_by
    # Each worker's metrics files are backed (allocated), forked after init() or not.
    unbacked = [
        path.name
        for pid in served_by
        for path in directory.glob(f"*_{pid}.db")
        if path.stat().st_blocks * 512 < path.stat().st_size
    ]
    assert not unbacked and len(list(directory.glob("*.db"))) >= 2 * 3, unbacked
    started = time.monotonic()
    server.stop()
    stop_s = time.monotonic() - started
    finals = [r for r in records(server.out_path) if r.get("message") == "shutdown complete"]
    assert len(finals) == 2 + preload, finals  # with --preload the master has one too
    assert all(f["spans_unexported"] == 0 and f["requests_unfinished"] == 0 for f in finals)
    assert stop_s <= BUDGET_S + EXIT_MARGIN_S
    record(
        SECTION,
        f"fork after init() (gunicorn{' --preload' if preload else ''}, 2 workers)",
        "200 requests over 4 connections, every trace kept; then SIGTERM",
        requests=len(answers),
        requests_failed=len(failed),
        spans_lost_uncounted=len(traces - receiver.trace_ids()),
        requests_counted=int(counted),
        workers_serving=len(served_by),
        metrics_files_unbacked=len(unbacked),
        hung=0,
        shutdown_s=round(stop_s, 2),
    )


def test_raw_fork_after_init_does_not_deadlock(receiver: OTLPReceiver, tmp_path: Path) -> None:
    children_n = 20
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEVKIT_", "OTEL_"))}
    env.update(
        DEVKIT_SERVICE_NAME="fork",
        DEVKIT_SAMPLE_SUCCESS_RATIO="1.0",
        DEVKIT_SHUTDOWN_TIMEOUT_S=str(BUDGET_S),
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        PYTHONPATH=f"{HERE}{os.pathsep}{env.get('PYTHONPATH', '')}",
    )
    done = subprocess.run(
        [sys.executable, str(HERE / "lifecycle_fork.py"), str(children_n), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stderr.strip().splitlines()[-1])
    lines = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("child-*.json"))]
    assert summary == {"children": children_n, "hung": 0, "failed": 0}, summary
    assert len(lines) == children_n
    traces = {t for line in lines for t in line["traces"]}
    assert None not in traces and len(traces) == children_n * 5
    assert all(line["counted"] == 5 for line in lines), lines
    # The parent's requests in flight at the fork are not the child's: nothing in
    # progress in the child, and its shutdown does not wait for them.
    assert all(line["in_flight"] == 0 and line["in_progress"] == 0 for line in lines), lines
    slowest_s = max(line["took_s"] for line in lines)
    assert slowest_s < 2.0, lines
    assert receiver.wait_for(lambda r: traces <= r.trace_ids(), 15)
    record(
        SECTION,
        "os.fork() after init() while serving",
        f"{children_n} forks while 4 threads serve requests through the WSGI middleware; "
        "each child serves 5, flushes and exits",
        children=children_n,
        hung=summary["hung"],
        spans_lost_uncounted=len(traces - receiver.trace_ids()),
        requests_counted=sum(int(line["counted"]) for line in lines),
        in_progress_stale=max(line["in_progress"] for line in lines),
        child_shutdown_s=round(slowest_s, 2),
    )
