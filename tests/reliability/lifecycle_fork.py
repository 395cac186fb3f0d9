"""Forks a process that serves requests (devkit's WSGI middleware, called in-process by
busy threads) after ``init()``, again and again; each child serves requests of its own,
flushes and exits. ``lifecycle_fork.py CHILDREN OUT``: each child writes one JSON line
(its traces, its metric count) to ``OUT/child-<k>.json``; a summary goes to stderr.

A lock that one of the parent's threads held at the fork stays held in the child forever;
a child that does not exit within its timeout is reported as hung (and killed).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import REGISTRY

import devkit
from devkit import _state

CHILDREN = int(sys.argv[1])
#: Where each child writes its line (stdout is shared with the parent's busy threads).
OUT = sys.argv[2]
PER_CHILD = 5
TIMEOUT_S = 15.0

devkit.init()
log = devkit.get_logger("forked")


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/busy":
        time.sleep(0.002)  # the parent's threads are mostly inside a request at the fork
    log.info("served", path=environ["PATH_INFO"])
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


wrapped = devkit.wsgi(app)


def call(cid: str, path: str = "/fork") -> str | None:
    """One request through the middleware; the trace id it answered with."""
    headers: list[tuple[str, str]] = []

    def start_response(status: str, response_headers: list[tuple[str, str]], *_: Any) -> Any:
        headers.extend(response_headers)
        return lambda data: None

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "HTTP_X_CORRELATION_ID": cid,
    }
    body = wrapped(environ, start_response)
    try:
        b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    for name, value in headers:
        if name.lower() == "server-timing" and "00-" in value:
            return value.split("00-", 1)[1].split("-")[0]
    return None


def sample_sum(name: str) -> float:
    """The sum of this process's samples of ``name`` (after the books of finished
    requests)."""
    from devkit._setup import finish_pending

    finish_pending()
    return sum(
        sample.value
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name == name
    )


def served() -> float:
    return sample_sum("http_requests_total")


stop = threading.Event()


def busy(n: int) -> None:
    i = 0
    while not stop.is_set():
        call(f"parent-{n}-{i}", "/busy")
        i += 1


def child(k: int) -> None:
    started = time.monotonic()
    before = served()
    traces = [call(f"child-{k}-{j}") for j in range(PER_CHILD)]
    after = served()
    core = _state.core()
    in_flight = core.in_flight if core is not None else None
    devkit.shutdown()
    line = json.dumps(
        {
            "child": k,
            "traces": traces,
            "counted": after - before,
            "in_flight": in_flight,
            "in_progress": sample_sum("http_requests_in_progress"),
            "took_s": time.monotonic() - started,
        }
    )
    with open(os.path.join(OUT, f"child-{k}.json"), "w") as out:
        out.write(line + "\n")
    os._exit(0)


workers = [threading.Thread(target=busy, args=(n,), daemon=True) for n in range(4)]
for worker in workers:
    worker.start()
hung = 0
failed = 0
for k in range(CHILDREN):
    time.sleep(0.02)
    pid = os.fork()
    if pid == 0:
        try:
            child(k)
        finally:
            os._exit(1)
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            failed += int(os.waitstatus_to_exitcode(status) != 0)
            break
        if time.monotonic() > deadline:
            hung += 1
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        time.sleep(0.01)
stop.set()
for worker in workers:
    worker.join()
sys.stderr.write(json.dumps({"children": CHILDREN, "hung": hung, "failed": failed}) + "\n")
