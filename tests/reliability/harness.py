"""What the reliability tests share besides fixtures: a collector whose failure the test
switches while the service runs, the load generator's subprocess, and readings of a
server process from /proc (memory, threads, file descriptors)."""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from servers import ROOT, samples

HERE = Path(__file__).resolve().parent
LOADGEN = HERE / "loadgen.py"

# -- a collector that fails on demand ----------------------------------------------------------

#: How a :class:`FaultyCollector` answers.
OK = "ok"  # 200 at once
REFUSED = "refused"  # nothing listens: connections are refused
HANG = "hang"  # accepts and reads, never answers
SLOW = "slow"  # answers 200 after ``delay_s``
STATUS = "status"  # answers ``status`` with ``headers``
CLOSE = "close"  # closes the connection in the middle of its answer's status line
FLAP = "flap"  # up (OK) and down (REFUSED) in turn, ``period_s`` each


@dataclass(frozen=True)
class Post:
    """One request the collector read: when, where to, and how it answered."""

    at: float  # time.monotonic()
    path: str
    outcome: str
    body: bytes = field(repr=False, default=b"")


class FaultyCollector:
    """An OTLP/HTTP collector on 127.0.0.1 whose way of failing is switched while the
    service under test keeps exporting to it (:meth:`set`). It keeps every post it read,
    with its body (accepted or not), decoded on read."""

    def __init__(self) -> None:
        self.mode = OK
        self.status = 200
        self.headers: dict[str, str] = {}
        self.delay_s = 2.0
        self.period_s = 1.0
        self._lock = threading.Lock()
        self._posts: list[Post] = []
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._release = threading.Event()  # wakes held (hung) connections
        self._stopped = threading.Event()
        self._flapper: threading.Thread | None = None
        self._flap_stop = threading.Event()
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = int(probe.getsockname()[1])
        probe.close()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FaultyCollector:
        self._listen()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._stop_flapping()
        self._unlisten()
        self._release.set()

    def __enter__(self) -> FaultyCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set(self, mode: str, **params: Any) -> None:
        """Fail as ``mode`` from now on (``status=``, ``headers=``, ``delay_s=``,
        ``period_s=`` as the mode needs). Held connections of a hung collector are reset,
        as when a collector restarts."""
        self._stop_flapping()
        for name, value in params.items():
            setattr(self, name, value)
        self._apply(mode)
        if mode == FLAP:
            self._flap_stop.clear()
            self._flapper = threading.Thread(target=self._flap, daemon=True, name="flapper")
            self._flapper.start()

    def _apply(self, mode: str) -> None:
        if self.mode == HANG and mode != HANG:
            self._release.set()
        if mode == HANG:
            self._release.clear()
        self.mode = mode
        if mode in (REFUSED, FLAP):
            # A collector that goes away takes its connections with it.
            self._unlisten()
            if mode == FLAP:
                self.mode = REFUSED
        elif self._listener is None:
            self._listen()

    def _flap(self) -> None:
        up = False
        while not self._flap_stop.wait(self.period_s):
            up = not up
            self.mode = OK if up else REFUSED
            if up:
                self._listen()
            else:
                self._unlisten()

    def _stop_flapping(self) -> None:
        if self._flapper is not None:
            self._flap_stop.set()
            self._flapper.join(5)
            self._flapper = None

    # -- reads -------------------------------------------------------------------------------

    def posts(self, path: str = "/v1/traces") -> list[Post]:
        with self._lock:
            return [p for p in self._posts if p.path == path]

    def accepted(self, path: str = "/v1/traces") -> list[bytes]:
        return [p.body for p in self.posts(path) if p.outcome == "accepted"]

    def span_ids(self, accepted: bool = True) -> list[bytes]:
        """The span id of every span accepted (repeats included); with
        ``accepted=False``, of every span posted but not accepted (answered with a
        failure, or never answered)."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        out = []
        posts = self.posts("/v1/traces")
        for body in (p.body for p in posts if (p.outcome == "accepted") == accepted):
            message = ExportTraceServiceRequest()
            message.ParseFromString(body)
            for rs in message.resource_spans:
                for ss in rs.scope_spans:
                    out.extend(span.span_id for span in ss.spans)
        return out

    def trace_ids(self) -> set[str]:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        out = set()
        for body in self.accepted():
            message = ExportTraceServiceRequest()
            message.ParseFromString(body)
            for rs in message.resource_spans:
                for ss in rs.scope_spans:
                    out.update(span.trace_id.hex() for span in ss.spans)
        return out

    def log_correlation_ids(self) -> list[str]:
        """The ``correlation_id`` attribute of every log record accepted."""
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
            ExportLogsServiceRequest,
        )

        out = []
        for body in self.accepted("/v1/logs"):
            message = ExportLogsServiceRequest()
            message.ParseFromString(body)
            for rl in message.resource_logs:
                for sl in rl.scope_logs:
                    for record in sl.log_records:
                        for kv in record.attributes:
                            if kv.key == "correlation_id":
                                out.append(kv.value.string_value)
        return out

    # -- serving -----------------------------------------------------------------------------

    def _listen(self) -> None:
        with self._lock:
            if self._listener is not None or self._stopped.is_set():
                return
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(128)
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _unlisten(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            connections = list(self._connections)
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self._connections.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            stream = conn.makefile("rb")
            while True:
                line = stream.readline()
                if not line:
                    return
                path = line.split()[1].decode() if len(line.split()) > 1 else "/"
                length = 0
                while True:
                    header = stream.readline()
                    if header in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = header.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                body = stream.read(length) if length else b""
                if not self._answer(conn, path, body):
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._connections.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def _answer(self, conn: socket.socket, path: str, body: bytes) -> bool:
        """Answer one request as the mode says; whether the connection stays open."""
        mode = self.mode
        if mode == HANG:
            self._note(path, "held", body)
            while not self._release.wait(0.2):
                if self._stopped.is_set():
                    break
            return False
        if mode == SLOW:
            self._stopped.wait(self.delay_s)
        if mode == STATUS and self.status != 200:
            extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
            self._note(path, str(self.status), body)
            conn.sendall(
                f"HTTP/1.1 {self.status} Fault\r\nContent-Type: application/x-protobuf\r\n"
                f"Content-Length: 0\r\n{extra}\r\n".encode()
            )
            return True
        if mode == CLOSE:
            # Cut before the status is known: the exporter cannot tell what became of the
            # post. (A cut after a 200 status line is a success to any HTTP client: the
            # collector said it took the data.)
            self._note(path, "closed", body)
            conn.sendall(b"HTTP/1.1 2")
            return False
        if mode == REFUSED:  # went down while this request was read
            self._note(path, "reset", body)
            return False
        self._note(path, "accepted", body)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
        )
        return True

    def _note(self, path: str, outcome: str, body: bytes = b"") -> None:
        with self._lock:
            self._posts.append(Post(time.monotonic(), path, outcome, body))


# -- the service's process, from /proc ---------------------------------------------------------


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        out[name] = value.strip()
    return out


def rss_kb(pid: int) -> int:
    return int(proc_status(pid)["VmRSS"].split()[0])


def threads(pid: int) -> int:
    return int(proc_status(pid)["Threads"])


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (gunicorn's workers)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: fields after the last ')'.
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return sorted(out)


# -- figures -----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def slope(points: Iterable[tuple[float, float]]) -> float:
    """The least-squares slope of ``(x, y)`` points."""
    xs, ys = zip(*points, strict=True)
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
    total = 0.0
    for (sample, sample_labels), value in samples(text).items():
        if sample == name and set(labels.items()) <= set(sample_labels):
            total += value
    return total


def scrape(base: str) -> str:
    return httpx.get(base + "/metrics", timeout=10).text


def wait_for(predicate: Callable[[], object], timeout: float, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return bool(predicate())


def records(path: Path) -> list[dict[str, Any]]:
    """The JSON records of a server's output (other lines, such as a server's banner, are
    left out)."""
    out = []
    with open(path, errors="replace") as lines:
        for line in lines:
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
    return out


HEX32 = re.compile(r"[0-9a-f]{32}")


# -- the load generator's subprocess -----------------------------------------------------------


def loadgen(*args: str, timeout: float = 900) -> dict[str, Any]:
    """Run tests/reliability/loadgen.py with ``args``; its JSON report.

    The client runs in its own process: latencies measured there do not share a GIL with
    the collector threads of the test process.
    """
    done = subprocess.run(
        [sys.executable, str(LOADGEN), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed ({done.returncode}):\n{done.stderr[-4000:]}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def start_loadgen(*args: str) -> subprocess.Popen[str]:
    """Start loadgen.py in the background (:func:`finish_loadgen` collects its report)."""
    return subprocess.Popen(
        [sys.executable, str(LOADGEN), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def finish_loadgen(proc: subprocess.Popen[str], timeout: float = 900) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed ({proc.returncode}):\n{err[-4000:]}")
    report: dict[str, Any] = json.loads(out)
    return report
