"""Server-level suites: uvicorn serving the Starlette app, or gunicorn (sync workers)
serving the Flask app, loaded by wrk on 127.0.0.1.

The in-process suites isolate the middleware's cost; this one shows what a user sees: a
real server (uvicorn or gunicorn, one worker, no access log), real sockets and HTTP
parsing, and a
load generator (``wrk``, closed loop: a fixed number of connections, each sending its
next request when the previous one is answered). Both share the machine's cores with
each other and with the harness's OTLP receiver, as they would on a small host.

One measurement: start the server, wait until it answers, warm it up for a second, read
the server's CPU time, load it for ``duration_s`` seconds, read the CPU time again, then
stop it with SIGTERM and wait for it to exit (it flushes its queued spans at lifespan
shutdown; a gunicorn worker when it exits). Every step is bounded in time; traffic only
goes to 127.0.0.1.

gunicorn's sync worker serves one request at a time and closes the connection after each
answer (it has no keep-alive), so wrk opens a connection per request there: what a sync
worker costs its users, and the same for every variant.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import IO, Any

from benchmarks.apps import PATH
from benchmarks.server_app import ENDPOINT_ENV, UNAVAILABLE_MARK, VARIANT_ENV

__all__ = [
    "HOST",
    "SERVERS",
    "STACKS",
    "CpuUse",
    "LiveServer",
    "LoadSettings",
    "ServerExited",
    "WrkResult",
    "command",
    "measure",
    "parse_wrk",
    "stack_unavailable",
    "unavailable_reason",
    "wrk_version",
]

#: The only address load is ever sent to.
HOST = "127.0.0.1"
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 30.0
#: wrk gets this long beyond its own duration before it is killed.
_WRK_GRACE_S = 30.0
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class LoadSettings:
    """How wrk loads the server: ``wrk -tTHREADS -cCONNECTIONS -dDURATIONs --latency``."""

    duration_s: int = 8
    connections: int = 16
    threads: int = 1
    warmup_s: int = 1

    def describe(self) -> str:
        return (
            f"wrk -t{self.threads} -c{self.connections} -d{self.duration_s}s --latency "
            f"after a {self.warmup_s} s warm-up"
        )


#: The servers a server-level suite can run: uvicorn (ASGI, the Starlette app) and
#: gunicorn with sync workers (WSGI, the Flask app).
SERVERS = ("uvicorn", "gunicorn")


def unavailable_reason(server: str = "uvicorn") -> str | None:
    """Why a suite of ``server`` cannot run on this machine, or None."""
    if shutil.which("wrk") is None:
        return "wrk not installed (apt-get install wrk)"
    if find_spec(server) is None:
        return f"{server} not installed (pip install {server})"
    return None


def wrk_version() -> str | None:
    """wrk's version line (``wrk -v`` prints it and exits 1), or None when not installed."""
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    try:
        out = subprocess.run(
            [wrk, "-v"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = out.strip().splitlines()[:1]
    return first[0].split(" Copyright")[0].strip() if first else None


# -- wrk ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    """What wrk printed: totals, throughput, latency percentiles (ms) and errors."""

    requests: int
    duration_s: float
    requests_per_s: float
    latency_ms: dict[int, float]
    socket_errors: dict[str, int]
    non_2xx: int

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx


_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)\b", re.M)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_PERCENTILE = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.M
)
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)", re.M)


def parse_wrk(text: str) -> WrkResult:
    """Parse ``wrk --latency`` output; raises ``ValueError`` when a figure is missing."""
    total, rps = _TOTAL.search(text), _RPS.search(text)
    if total is None or rps is None:
        raise ValueError(f"no request totals in wrk output: {text.strip()[-300:]!r}")
    latency = {int(p): float(v) * _UNITS_MS[unit] for p, v, unit in _PERCENTILE.findall(text)}
    if 50 not in latency or 99 not in latency:
        raise ValueError("no latency distribution in wrk output (was --latency given?)")
    errors = _SOCKET_ERRORS.search(text)
    socket_errors = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, errors.groups()), strict=True))
        if errors
        else {}
    )
    non_2xx = _NON_2XX.search(text)
    return WrkResult(
        requests=int(total.group(1)),
        duration_s=float(total.group(2)) * _UNITS_MS[total.group(3)] / 1000.0,
        requests_per_s=float(rps.group(1)),
        latency_ms=latency,
        socket_errors=socket_errors,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def _run_wrk(port: int, duration_s: int, load: LoadSettings) -> WrkResult:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk not installed (apt-get install wrk)")
    cmd = [
        wrk,
        f"-t{load.threads}",
        f"-c{load.connections}",
        f"-d{duration_s}s",
        "--timeout",
        "5s",
        "--latency",
        f"http://{HOST}:{port}{PATH}",
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=duration_s + _WRK_GRACE_S, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return parse_wrk(proc.stdout)


# -- the server ---------------------------------------------------------------------------


#: uvicorn's HTTP parser and event loop per stack. ``h11`` (pure Python, what a plain
#: ``pip install uvicorn`` gives) is the default and is pinned, so that results do not
#: change when httptools or uvloop happen to be installed. ``standard`` is what
#: ``uvicorn[standard]`` gives: several times faster per request, so the same devkit
#: cost is a larger share of it.
STACKS = {"h11": ("h11", "asyncio"), "standard": ("httptools", "uvloop")}


def stack_unavailable(stack: str) -> str | None:
    """Why uvicorn cannot run with ``stack`` here, or None."""
    missing = [name for name in STACKS[stack] if name != "asyncio" and find_spec(name) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (pip install {' '.join(missing)})"
    return None


def command(port: int, stack: str = "h11") -> list[str]:
    """The uvicorn command line: one worker, no access log, warnings only, the parser and
    loop of ``stack`` (:data:`STACKS`)."""
    http, loop = STACKS[stack]
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "benchmarks.server_app:create_app",
        "--factory",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--no-access-log",
        "--log-level",
        "warning",
        "--lifespan",
        "on",
        "--http",
        http,
        "--loop",
        loop,
    ]


def gunicorn_command(port: int) -> list[str]:
    """The gunicorn command line: one sync worker serving the Flask app on 127.0.0.1,
    no access log (gunicorn writes none unless asked), warnings only."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "benchmarks.server_app:create_wsgi_app()",
        "--bind",
        f"{HOST}:{port}",
        "--workers",
        "1",
        "--worker-class",
        "sync",
        "--log-level",
        "warning",
        *_gunicorn_control_socket_off(),
    ]


def _gunicorn_control_socket_off() -> list[str]:
    # gunicorn >= 25 opens a control socket at a fixed path in $HOME: two servers at once
    # (another benchmark, a test) would clash on it.
    try:
        from gunicorn.config import KNOWN_SETTINGS  # type: ignore[import-untyped]
    except ImportError:
        return []
    names = {setting.name for setting in KNOWN_SETTINGS}
    return ["--no-control-socket"] if "control_socket_disable" in names else []


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("GET", PATH)
        response = conn.getresponse()
        body = response.read()
        return response.status == 200 and b"item_id" in body
    except OSError:
        return False
    finally:
        conn.close()


class ServerExited(RuntimeError):
    """The server exited before it answered its first request."""

    def __init__(self, code: int | None) -> None:
        super().__init__(f"server exited with status {code} before answering")
        self.code = code


def _cpu_seconds(stat_path: str) -> float:
    """User + system CPU time from a /proc ``stat`` file (a process's or one thread's)."""
    stat = Path(stat_path).read_text(encoding="ascii")
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


@dataclass(frozen=True)
class CpuUse:
    """A server's CPU time over one load: all its threads, and its request thread alone.

    The request thread is the process's main thread (uvicorn's event loop); the rest is
    background threads, devkit's span export among them. The split shows whether a
    change moved work off the request thread or made it slower.
    """

    total_s: float
    request_thread_s: float

    @property
    def background_s(self) -> float:
        return max(0.0, self.total_s - self.request_thread_s)

    @classmethod
    def read(cls, pid: int) -> CpuUse:
        """The CPU time used so far by process ``pid`` (Linux /proc)."""
        return cls(_cpu_seconds(f"/proc/{pid}/stat"), _cpu_seconds(f"/proc/{pid}/task/{pid}/stat"))

    @classmethod
    def read_tree(cls, pid: int) -> CpuUse:
        """The CPU time of process ``pid`` and its live children (a gunicorn master and its
        workers); the request thread is each worker's main thread."""
        total, request_thread = cls.read(pid).total_s, 0.0
        for child in _children(pid):
            try:
                worker = cls.read(child)
            except (OSError, ValueError):  # exited in between
                continue
            total += worker.total_s
            request_thread += worker.request_thread_s
        return cls(total, request_thread)

    def __sub__(self, before: CpuUse) -> CpuUse:
        return CpuUse(
            self.total_s - before.total_s, self.request_thread_s - before.request_thread_s
        )


def _children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes (scanned from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="ascii")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[1] == str(pid):
            found.append(int(entry.name))
    return found


class LiveServer:
    """One server serving ``variant`` on a free port of 127.0.0.1 until :meth:`stop`.

    Shared by the server suite (a fresh server per round), the paired run (one server
    per variant kept up across bursts) and the server-level instruction count, so all
    start, load and stop servers alike. ``prefix`` runs uvicorn under another program
    (valgrind); ``stack`` picks uvicorn's parser and loop (:data:`STACKS`). ``server``
    is ``uvicorn`` (an ASGI variant) or ``gunicorn`` (a WSGI variant, one sync worker;
    its CPU time is the master's and the worker's).
    """

    def __init__(
        self,
        variant: str,
        endpoint: str,
        env: dict[str, str],
        cwd: Path,
        stderr: IO[bytes] | int = subprocess.DEVNULL,
        prefix: Sequence[str] = (),
        stack: str = "h11",
        server: str = "uvicorn",
    ) -> None:
        if server not in SERVERS:
            raise ValueError(f"unknown server {server!r}; known: {', '.join(SERVERS)}")
        self.variant = variant
        self.server = server
        self.port = _free_port()
        argv = gunicorn_command(self.port) if server == "gunicorn" else command(self.port, stack)
        self.proc = subprocess.Popen(
            [*prefix, *argv],
            cwd=cwd,
            env={**env, VARIANT_ENV: variant, ENDPOINT_ENV: endpoint},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )

    def wait_ready(self, timeout_s: float = _START_TIMEOUT_S) -> int:
        """Poll until the app answers 200; returns the number of requests it took."""
        deadline = time.monotonic() + timeout_s
        probes = 0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerExited(self.proc.returncode)
            probes += 1
            if _answers(self.port):
                return probes
            time.sleep(0.1)
        raise RuntimeError(f"server did not answer 200 on {PATH} within {timeout_s:.0f} s")

    def load(self, duration_s: int, load: LoadSettings) -> tuple[WrkResult, CpuUse]:
        """Load the server with wrk; returns wrk's result and the CPU the server used."""
        read = CpuUse.read_tree if self.server == "gunicorn" else CpuUse.read
        before = read(self.proc.pid)
        result = _run_wrk(self.port, duration_s, load)
        return result, read(self.proc.pid) - before

    def stop(self) -> tuple[int | None, str | None]:
        """SIGTERM and wait; kill after the timeout. Returns (exit status, problem)."""
        proc = self.proc
        if proc.poll() is not None:
            return proc.returncode, None
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=_STOP_TIMEOUT_S), None
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=_STOP_TIMEOUT_S)
            return proc.returncode, f"server ignored SIGTERM for {_STOP_TIMEOUT_S:.0f} s; killed"


def measure(
    variant: str,
    endpoint: str,
    env: dict[str, str],
    cwd: Path,
    load: LoadSettings,
    server: str = "uvicorn",
) -> tuple[dict[str, Any], str]:
    """Serve ``variant`` with ``server`` and load it with wrk. Returns (result, server
    stderr).

    The result has the shape the runner records: ``values`` (requests/s, p50 and p99 in
    ms), ``cpu_us_per_op`` (server CPU per request) and ``operations`` (every request the
    server answered, readiness probes and warm-up included, for the span count).
    """
    with tempfile.TemporaryFile() as err:
        live = LiveServer(variant, endpoint, env, cwd, stderr=err, server=server)
        result: dict[str, Any]
        try:
            probes = live.wait_ready()
            warm, _ = live.load(load.warmup_s, load)
            timed, cpu_used = live.load(load.duration_s, load)
            result = _result(timed, warm, probes, cpu_used.total_s)
        except ServerExited as exc:
            result = {"status": "error", "reason": str(exc)}
        except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
            result = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
        finally:
            code, problem = live.stop()
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    unavailable = [line for line in stderr.splitlines() if line.startswith(UNAVAILABLE_MARK)]
    if unavailable:
        return {"status": "unavailable", "reason": unavailable[0][len(UNAVAILABLE_MARK) :]}, ""
    if problem is not None:
        result.setdefault("warnings", []).append(problem)
    # uvicorn re-raises SIGTERM after its graceful shutdown, so -SIGTERM is a clean exit
    # (gunicorn's master exits 0).
    if result["status"] == "ok" and code not in (0, -signal.SIGTERM):
        result["warnings"] = [*result.get("warnings", []), f"server exited with status {code}"]
    return result, stderr


def _result(timed: WrkResult, warm: WrkResult, probes: int, cpu_s: float) -> dict[str, Any]:
    if timed.requests == 0:
        return {"status": "error", "reason": "wrk completed no request"}
    if timed.non_2xx or warm.non_2xx:
        return {
            "status": "error",
            "reason": f"{timed.non_2xx + warm.non_2xx} responses were not 2xx/3xx",
        }
    warnings = []
    if timed.errors:
        detail = ", ".join(f"{k} {v}" for k, v in timed.socket_errors.items() if v)
        warnings.append(f"wrk socket errors: {detail}")
    return {
        "status": "ok",
        "values": {
            "requests_per_s": timed.requests_per_s,
            "p50_ms": timed.latency_ms[50],
            "p99_ms": timed.latency_ms[99],
        },
        "cpu_us_per_op": {"request": cpu_s * 1e6 / timed.requests},
        "operations": probes + warm.requests + timed.requests,
        "timed_requests": timed.requests,
        "warnings": warnings,
    }
