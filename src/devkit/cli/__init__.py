"""The ``devkit`` command: ``doctor``, ``demo`` and ``version``.

- ``devkit doctor`` prints the effective configuration (secrets masked), the framework
  integrations and OpenTelemetry instrumentors ``init()`` would enable, the multiprocess
  mode and whether the OTLP endpoint is reachable. Exit status: 0 healthy, 1 a problem
  was found (each comes with one line of advice), 2 invalid configuration.
- ``devkit demo`` (what ``make demo`` runs) starts the demo service of ``devkit._demo``
  under uvicorn next to an in-process OTLP/HTTP receiver, drives traffic at it and shows
  the logs, RED metrics, probe answers and which traces the tail sampler kept. No
  collector, no network beyond 127.0.0.1, bounded in time everywhere.

Only the standard library is used here (plus opentelemetry-proto for the receiver), so
the command works wherever devkit is installed.
"""

from __future__ import annotations

import argparse
import difflib
import gzip
import http.server
import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    from devkit.config import Settings

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``devkit`` command line; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="devkit", description="devkit: logs, metrics, traces and probes in one call."
    )
    commands = parser.add_subparsers(dest="command", metavar="command")
    commands.add_parser("version", help="print the devkit version")
    commands.add_parser(
        "doctor", help="check the configuration from the environment and the exporter"
    )
    commands.add_parser("demo", help="run the demo service, drive traffic and show every signal")
    args = parser.parse_args(argv)
    if args.command == "version":
        from devkit import __version__

        print(f"devkit {__version__}")
        return 0
    if args.command == "doctor":
        return doctor(os.environ, sys.stdout, sys.stderr)
    if args.command == "demo":
        return demo(sys.stdout, sys.stderr)
    parser.print_help(sys.stderr)
    return 2


# -- doctor ------------------------------------------------------------------------------

_OTLP_HTTP_MODULE = "opentelemetry.exporter.otlp.proto.http"
_OTLP_GRPC_MODULE = "opentelemetry.exporter.otlp.proto.grpc"


@dataclass
class _Report:
    """Doctor output: sections on ``out`` and the problems found, each with advice."""

    out: TextIO
    problems: list[tuple[str, str]] = field(default_factory=list)

    def section(self, title: str) -> None:
        self.out.write(f"\n{title}\n")

    def row(self, name: str, value: str, note: str = "") -> None:
        self.out.write(f"  {name:<32} {value}{f'  ({note})' if note else ''}\n")

    def problem(self, what: str, advice: str) -> None:
        self.problems.append((what, advice))


def doctor(
    environ: Mapping[str, str], out: TextIO, err: TextIO, *, connect_timeout_s: float = 1.0
) -> int:
    """Check the configuration in ``environ``: 0 healthy, 1 problems found, 2 invalid."""
    from devkit import __version__
    from devkit.config import Settings
    from devkit.exceptions import ConfigError

    env = {k: v for k, v in environ.items() if v.strip()}
    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        err.write(f"error: {exc}\n")
        return 2

    report = _Report(out)
    out.write(f"devkit {__version__} doctor\n")
    _doctor_configuration(report, settings, env)
    _doctor_integrations(report, settings)
    _doctor_multiprocess(report, settings)
    _doctor_traces(report, settings, connect_timeout_s)

    if report.problems:
        report.section(f"Problems ({len(report.problems)})")
        for what, advice in report.problems:
            out.write(f"  ! {what}\n    advice: {advice}\n")
        return 1
    out.write("\nhealthy: no problems found\n")
    return 0


def _doctor_configuration(report: _Report, settings: Settings, env: Mapping[str, str]) -> None:
    from devkit.config import VARIABLES, source_of

    report.section("Configuration (effective value, source)")
    for var in VARIABLES:
        value = getattr(settings, var.field)
        shown = ("***" if value else "unset") if var.field == "redact_salt" else _show(value)
        report.row(var.name, shown, source_of(var, env))

    known = {v.name for v in VARIABLES}
    for name in sorted(n for n in env if n.startswith("DEVKIT_") and n not in known):
        close = difflib.get_close_matches(name, sorted(known), n=1)
        report.problem(
            f"{name} is not a devkit variable and is ignored",
            f"did you mean {close[0]}?" if close else "remove it; `devkit doctor` lists them all",
        )

    otel = sorted(n for n in env if n.startswith("OTEL_"))
    if otel:
        report.section("OpenTelemetry variables")
        for name in otel:
            report.row(name, _masked_otel_value(name, env[name]))


def _show(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "empty"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _masked_otel_value(name: str, value: str) -> str:
    """Header values are credentials; URLs may carry user:password."""
    if name.endswith("_HEADERS"):
        keys = [item.partition("=")[0].strip() for item in value.split(",") if item.strip()]
        return ",".join(f"{key}=***" for key in keys)
    if name.endswith("_ENDPOINT"):
        return _masked_url(value)
    return value


def _masked_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def _doctor_integrations(report: _Report, settings: Settings) -> None:
    from devkit.config import FRAMEWORKS, SERVER_INSTRUMENTORS

    report.section("Framework integrations (enabled by init() when importable)")
    for framework in FRAMEWORKS:
        found = [f"{m} {_dist_version(m)}" for m in framework.packages if _importable(m)]
        report.row(framework.label, ", ".join(found) if found else "not installed")

    report.section("OpenTelemetry instrumentors (entry points opentelemetry_instrumentor)")
    disabled = settings.disabled_instrumentations
    eps = sorted(metadata.entry_points(group="opentelemetry_instrumentor"), key=lambda e: e.name)
    if not eps:
        report.row("(none installed)", "")
    for ep in eps:
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else ""
        if ep.name in SERVER_INSTRUMENTORS:
            state = "skipped: devkit's middleware makes the server span"
        elif ep.name in disabled:
            state = "disabled by OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"
        else:
            state = "enabled by init()"
        report.row(ep.name, state, dist)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "(version unknown)"


def _doctor_multiprocess(report: _Report, settings: Settings) -> None:
    report.section("Metrics")
    directory = settings.multiprocess_dir
    if directory is None:
        report.row("multiprocess mode", "off", "PROMETHEUS_MULTIPROC_DIR unset: one process")
        return
    report.row("multiprocess mode", "on", f"PROMETHEUS_MULTIPROC_DIR={directory}")
    if not os.path.isdir(directory):
        report.problem(
            f"PROMETHEUS_MULTIPROC_DIR={directory} does not exist",
            "create it (empty) before the server starts, e.g. in the container entrypoint",
        )
    elif not os.access(directory, os.W_OK | os.X_OK):
        report.problem(
            f"PROMETHEUS_MULTIPROC_DIR={directory} is not writable",
            "give the server's user write access to it (an emptyDir volume in Kubernetes)",
        )


def _doctor_traces(report: _Report, settings: Settings, timeout_s: float) -> None:
    report.section("Traces")
    if settings.disabled:
        report.row("devkit", "disabled", "DEVKIT_DISABLED / OTEL_SDK_DISABLED: init() is a no-op")
    report.row("tail sampling", settings.tail_sampling)
    exporter = settings.traces_exporter
    if exporter == "none":
        report.row("exporter", "none", "set OTEL_EXPORTER_OTLP_ENDPOINT to export kept traces")
        return
    if exporter == "console":
        report.row("exporter", "console", "spans printed on stdout")
        return

    protocol = settings.export.protocol
    report.row("exporter", f"otlp ({protocol})")
    module = _OTLP_HTTP_MODULE if protocol == "http/protobuf" else _OTLP_GRPC_MODULE
    if not _importable(module):
        report.problem(
            f"the OTLP {protocol} exporter is not installed: init() will fail",
            "pip install 'devkit-observability[otlp]'"
            if protocol == "http/protobuf"
            else "pip install opentelemetry-exporter-otlp-proto-grpc",
        )
    endpoint = settings.export.endpoint
    report.row("endpoint", _masked_url(endpoint))

    reachable, detail = _reachable(endpoint, timeout_s)
    report.row("reachable", "yes" if reachable else "no", detail)
    if not reachable:
        report.problem(
            f"OTLP endpoint {_masked_url(endpoint)} is unreachable ({detail})",
            "start a collector there or point OTEL_EXPORTER_OTLP_ENDPOINT at yours "
            "(meanwhile kept spans are dropped and counted, requests are not slowed)",
        )


def _reachable(endpoint: str, timeout_s: float) -> tuple[bool, str]:
    """TCP connect to the endpoint's host:port; nothing is sent."""
    try:
        parts = urlsplit(endpoint if "://" in endpoint else "http://" + endpoint)
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        return False, f"malformed URL: {exc}"
    if not host:
        return False, "malformed URL: no host"
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True, f"TCP connect to {host}:{port}"
    except TimeoutError:
        return False, f"no answer from {host}:{port} within {timeout_s:g} s"
    except OSError as exc:
        return False, f"{host}:{port}: {exc.strerror or exc}"


# -- demo: OTLP receiver ---------------------------------------------------------------------


class _ReceiverServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, decode: Callable[[bytes], list[Span]], reply: bytes) -> None:
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self.decode = decode
        self.reply = reply
        self.lock = threading.Lock()
        self.spans: list[Span] = []
        self.exports = 0
        self.rejected = 0


class _ReceiverHandler(http.server.BaseHTTPRequestHandler):
    """OTLP/HTTP traces: protobuf bodies, optionally gzip or deflate encoded."""

    def do_POST(self) -> None:
        server = self.server
        assert isinstance(server, _ReceiverServer)
        try:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            encoding = (self.headers.get("Content-Encoding") or "").strip().lower()
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            spans = server.decode(body)
        except Exception:
            with server.lock:
                server.rejected += 1
            self.send_error(400, "not an OTLP ExportTraceServiceRequest")
            return
        with server.lock:
            server.spans.extend(spans)
            server.exports += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(server.reply)))
        self.end_headers()
        self.wfile.write(server.reply)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the demo prints its own summary."""


class _Receiver:
    """An in-process OTLP/HTTP trace receiver on 127.0.0.1, decoding every span."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        def decode(body: bytes) -> list[Span]:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            return [
                span
                for resource_spans in request.resource_spans
                for scope_spans in resource_spans.scope_spans
                for span in scope_spans.spans
            ]

        self._server = _ReceiverServer(decode, ExportTraceServiceResponse().SerializeToString())
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def snapshot(self) -> tuple[list[Span], int, int]:
        """(spans, export requests, rejected requests) received so far."""
        with self._server.lock:
            return list(self._server.spans), self._server.exports, self._server.rejected


# -- demo: traffic -----------------------------------------------------------------------------

_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_SLOW_THRESHOLD_MS = 300
_SAMPLE_RATIO = 0.1
_DEMO_APP = "devkit._demo:app"
_READY_TIMEOUT_S = 30.0
_REQUEST_TIMEOUT_S = 5.0
_STOP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class _Call:
    kind: str  # ok, correlated, not_found, unmatched, error, slow, secret
    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class _Answer:
    status: int
    body: str


# Never through a proxy: everything the demo talks to is on 127.0.0.1.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _fetch(
    url: str,
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    timeout_s: float = _REQUEST_TIMEOUT_S,
) -> _Answer:
    request = urllib.request.Request(
        url, method=method, headers=dict(headers), data=b"" if method == "POST" else None
    )
    try:
        with _opener.open(request, timeout=timeout_s) as response:
            return _Answer(response.status, response.read().decode("utf-8", "replace"))
    except urllib.error.HTTPError as exc:
        try:
            return _Answer(exc.code, exc.read().decode("utf-8", "replace"))
        finally:
            exc.close()


def _traffic_plan(seed: int = 7) -> list[_Call]:
    """About 100 requests: successes, 4xx, 5xx, slow, correlated and one logging secrets."""
    calls = [_Call("ok", "GET", f"/items/{i}") for i in range(1, 60)]
    calls += [
        _Call("correlated", "GET", f"/items/{100 + i}", (("X-Correlation-ID", f"demo-order-{i}"),))
        for i in range(1, 9)
    ]
    calls += [_Call("not_found", "GET", "/items/0") for _ in range(6)]
    calls += [_Call("unmatched", "GET", f"/no/such/page/{i}") for i in range(6)]
    calls += [_Call("error" if i % 2 == 0 else "ok", "GET", f"/checkout/{i}") for i in range(1, 17)]
    calls += [_Call("slow", "GET", "/slow") for _ in range(4)]
    random.Random(seed).shuffle(calls)
    calls.insert(len(calls) // 2, _Call("secret", "POST", "/pay"))
    return calls


class _Progress:
    """A one-line text progress bar; redrawn in place on a terminal, drawn once otherwise."""

    def __init__(self, total: int, stream: TextIO, width: int = 40) -> None:
        self._total = total
        self._stream = stream
        self._width = width
        self._tty = stream.isatty()

    def update(self, done: int, note: str = "") -> None:
        if self._tty or done == self._total:
            filled = self._width * done // self._total
            bar = "#" * filled + "." * (self._width - filled)
            self._stream.write(f"\r  traffic [{bar}] {done:3d}/{self._total} {note:<24}")
            if done == self._total:
                self._stream.write("\n")
            self._stream.flush()


def _drive(base: str, calls: Sequence[_Call], stream: TextIO) -> list[tuple[_Call, int]]:
    progress = _Progress(len(calls), stream)
    results: list[tuple[_Call, int]] = []
    for n, call in enumerate(calls, 1):
        try:
            status = _fetch(base + call.path, call.method, call.headers).status
        except (OSError, urllib.error.URLError):
            status = 0
        results.append((call, status))
        progress.update(n, f"{call.method} {call.path}")
    return results


# -- demo: the run ---------------------------------------------------------------------------


def _missing_dependency(err: TextIO) -> bool:
    try:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2  # noqa: F401
    except ImportError:
        err.write(
            "error: devkit demo receives the traces itself and needs opentelemetry-proto and "
            "the OTLP exporter: pip install 'devkit-observability[otlp]'\n"
        )
        return True
    if not _importable(_OTLP_HTTP_MODULE):
        err.write(
            "error: devkit demo exports traces over OTLP/HTTP: "
            "pip install 'devkit-observability[otlp]'\n"
        )
        return True
    missing = [m for m in ("fastapi", "uvicorn") if not _importable(m)]
    if missing:
        err.write(
            f"error: the demo service needs {' and '.join(missing)}: "
            "pip install 'devkit-observability[fastapi]' uvicorn\n"
        )
        return True
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _service_env(receiver_endpoint: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DEVKIT_", "OTEL_")) and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    no_proxy = ",".join(filter(None, [env.get("NO_PROXY", ""), "127.0.0.1,localhost"]))
    env.update(
        DEVKIT_SERVICE_NAME="devkit-demo",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver_endpoint,
        DEVKIT_SAMPLE_SUCCESS_RATIO=str(_SAMPLE_RATIO),
        DEVKIT_SLOW_THRESHOLD_MS=str(_SLOW_THRESHOLD_MS),
        PYTHONUNBUFFERED="1",
        NO_PROXY=no_proxy,
        no_proxy=no_proxy,
    )
    return env


def _wait_ready(proc: subprocess.Popen[bytes], url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if _fetch(url, timeout_s=1.0).status == 200:
                return True
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    return False


def _stop(proc: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    """SIGTERM, then wait; kill if the server does not exit in time. The exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            return None
    return proc.returncode


def demo(out: TextIO, err: TextIO) -> int:
    """Run the demo end to end; 0 when every signal showed what it should."""
    if _missing_dependency(err):
        return 1
    started = time.monotonic()
    receiver = _Receiver()
    receiver.start()
    workdir = Path(tempfile.mkdtemp(prefix="devkit-demo-"))
    log_path = workdir / "service.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "uvicorn", _DEMO_APP, "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--timeout-graceful-shutdown", "5"]
        out.write(
            f"devkit demo: uvicorn {_DEMO_APP} on {base}, OTLP receiver on {receiver.endpoint}\n"
            f"  DEVKIT_SAMPLE_SUCCESS_RATIO={_SAMPLE_RATIO} "
            f"DEVKIT_SLOW_THRESHOLD_MS={_SLOW_THRESHOLD_MS}\n"
        )
        out.flush()
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                argv,
                env=_service_env(receiver.endpoint),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        if not _wait_ready(proc, base + "/healthz/ready", _READY_TIMEOUT_S):
            err.write("error: the demo service did not become ready; its output:\n")
            err.write(_tail(log_path))
            return 1

        calls = _traffic_plan()
        results = _drive(base, calls, err)
        metrics = _fetch(base + "/metrics", headers=[("Accept", _OPENMETRICS)])
        probes = [
            (path, _fetch(base + path))
            for path in ("/healthz/startup", "/healthz/ready", "/healthz/live")
        ]
        before_stop = len(receiver.snapshot()[0])
        stopped_at = time.monotonic()
        exit_status = _stop(proc, _STOP_TIMEOUT_S)
        stop_s = time.monotonic() - stopped_at
        spans, exports, rejected = receiver.snapshot()
        records = _json_lines(log_path)

        traces = _kept_traces(spans)
        failures: list[str] = []
        _show_logs(out, records, traces, log_path, failures)
        exemplar = _show_metrics(out, metrics, failures)
        _show_probes(out, probes, failures)
        _show_traces(out, results, traces, exemplar, failures)
        out.write(
            f"  {len(spans)} spans in {exports} OTLP export requests"
            f" ({len(spans) - before_stop} arrived after SIGTERM, flushed at shutdown);"
            f" the service stopped in {stop_s:.1f} s with status {exit_status}\n"
        )
        if rejected:
            failures.append(f"the receiver rejected {rejected} malformed export requests")
        # uvicorn re-raises SIGTERM after its graceful shutdown: -SIGTERM is a clean exit.
        if exit_status not in (0, -signal.SIGTERM):
            failures.append(f"the service exited with status {exit_status} after SIGTERM")
        for failure in failures:
            out.write(f"! {failure}\n")
        out.write(f"\ndemo finished in {time.monotonic() - started:.1f} s\n")
        return 1 if failures else 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)
        receiver.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "".join(line + "\n" for line in text.splitlines()[-lines:])


def _json_lines(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


@dataclass(frozen=True)
class _Trace:
    trace_id: str
    category: str  # error, slow, ratio, other
    name: str
    status_code: int | None


def _kept_traces(spans: Sequence[Span]) -> dict[str, _Trace]:
    """One entry per received trace, classified by its SERVER span."""
    from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto
    from opentelemetry.proto.trace.v1.trace_pb2 import Status

    by_trace: dict[str, list[Span]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id.hex(), []).append(span)
    traces = {}
    for trace_id, members in by_trace.items():
        servers = [s for s in members if s.kind == SpanProto.SPAN_KIND_SERVER]
        if not servers:
            traces[trace_id] = _Trace(trace_id, "other", members[0].name, None)
            continue
        root = min(servers, key=lambda s: (len(s.parent_span_id) > 0, s.start_time_unix_nano))
        duration_ms = (root.end_time_unix_nano - root.start_time_unix_nano) / 1e6
        if root.status.code == Status.STATUS_CODE_ERROR:
            category = "error"
        elif duration_ms >= _SLOW_THRESHOLD_MS:
            category = "slow"
        else:
            category = "ratio"
        status_code = None
        for attribute in root.attributes:
            if attribute.key == "http.response.status_code":
                status_code = int(attribute.value.int_value)
        traces[trace_id] = _Trace(trace_id, category, root.name, status_code)
    return traces


def _heading(out: TextIO, title: str) -> None:
    out.write(f"\n=== {title} ===\n")


def _abbreviated(record: dict[str, Any], limit: int = 160) -> dict[str, Any]:
    """Long values (stack traces) cut in the middle so a record fits a few lines."""

    def cut(value: Any) -> Any:
        if isinstance(value, str) and len(value) > limit:
            return value[: limit // 3] + " ... " + value[-(2 * limit // 3) :]
        if isinstance(value, dict):
            return {k: cut(v) for k, v in value.items()}
        return value

    return {k: cut(v) for k, v in record.items()}


def _show_logs(
    out: TextIO,
    records: Sequence[dict[str, Any]],
    traces: Mapping[str, _Trace],
    log_path: Path,
    failures: list[str],
) -> None:
    _heading(out, "Logs")
    out.write(f"  the service wrote {len(records)} JSON lines on stdout; three of them:\n")
    access = [r for r in records if r.get("message") == "request completed"]
    picks = [
        (
            "access record of a kept trace (its trace_id is in the Traces below):",
            _first(
                [r for r in access if r.get("status_code") == 200 and r.get("trace_id") in traces],
                lambda r: str(r.get("correlation_id", "")).startswith("demo-order-"),
            ),
        ),
        (
            "application record with secrets, redacted before it was written:",
            _first([r for r in records if r.get("message") == "payment"]),
        ),
        (
            "error record of an unhandled exception:",
            _first([r for r in access if r.get("level") == "error"]),
        ),
    ]
    for label, record in picks:
        if record is None:
            failures.append(f"no log line found for: {label.rstrip(':')}")
            continue
        out.write(f"  {label}\n    {json.dumps(_abbreviated(record), ensure_ascii=False)}\n")
    text = log_path.read_text(errors="replace")
    if "ada@example.com" in text or "4111 1111 1111 1111" in text:
        failures.append("a secret logged by the demo reached stdout unredacted")


def _first(
    records: Sequence[dict[str, Any]], prefer: Callable[[dict[str, Any]], bool] | None = None
) -> dict[str, Any] | None:
    if prefer is not None:
        for record in records:
            if prefer(record):
                return record
    return records[0] if records else None


def _show_metrics(out: TextIO, metrics: _Answer, failures: list[str]) -> str | None:
    """Print the RED excerpt; returns the trace id of the exemplar shown."""
    _heading(out, "Metrics")
    out.write("  GET /metrics with Accept: application/openmetrics-text (excerpt)\n")
    lines = metrics.body.splitlines()
    wanted = ("http_requests_total{", "http_requests_errors_total{", "devkit_traces_sampled_total{")
    for line in lines:
        if line.startswith(wanted):
            out.write(f"    {line}\n")
    exemplars = [
        line
        for line in lines
        if line.startswith("http_request_duration_seconds_bucket{") and ' # {trace_id="' in line
    ]
    chosen = _first(
        [{"line": line} for line in exemplars], lambda r: 'route="/checkout/' in r["line"]
    )
    if metrics.status != 200 or chosen is None:
        failures.append(f"no exemplar in /metrics (status {metrics.status})")
        return None
    out.write(f"    {chosen['line']}\n")
    trace_id: str = chosen["line"].split(' # {trace_id="', 1)[1].split('"', 1)[0]
    return trace_id


def _show_probes(out: TextIO, probes: Sequence[tuple[str, _Answer]], failures: list[str]) -> None:
    _heading(out, "Probes")
    for path, answer in probes:
        body = " ".join(answer.body.split())
        out.write(f"  GET {path:<17} -> {answer.status} {body}\n")
        if answer.status != 200:
            failures.append(f"{path} answered {answer.status}")


def _show_traces(
    out: TextIO,
    results: Sequence[tuple[_Call, int]],
    traces: Mapping[str, _Trace],
    exemplar: str | None,
    failures: list[str],
) -> None:
    _heading(out, "Traces")
    sent = len(results)
    statuses = [status for _call, status in results]
    errors_sent = sum(1 for s in statuses if s >= 500)
    slow_sent = sum(1 for call, _s in results if call.kind == "slow")
    correlated = sum(1 for call, _s in results if call.headers)
    out.write(
        f"  sent {sent} requests: {sum(1 for s in statuses if 200 <= s < 300)} 2xx, "
        f"{sum(1 for s in statuses if 400 <= s < 500)} 4xx, {errors_sent} 5xx, "
        f"{slow_sent} slower than {_SLOW_THRESHOLD_MS} ms, {correlated} with X-Correlation-ID"
    )
    failed = sum(1 for s in statuses if s == 0)
    out.write(f", {failed} failed to connect\n" if failed else "\n")
    counts = {c: sum(1 for t in traces.values() if t.category == c) for c in ("error", "slow")}
    ratio = sum(1 for t in traces.values() if t.category == "ratio")
    other = len(traces) - counts["error"] - counts["slow"] - ratio
    out.write(
        f"  kept {len(traces)} of {sent} traces: {counts['error']} errors, "
        f"{counts['slow']} slow, {ratio} by ratio{f', {other} other' if other else ''}\n"
    )
    out.write(
        f"  (every error and slow trace is kept; of the rest, about"
        f" {_SAMPLE_RATIO:.0%} chosen by trace id)\n"
    )
    if exemplar is not None:
        linked = traces.get(exemplar)
        out.write(
            f"  the exemplar above links to trace {exemplar}: "
            + (f"kept ({linked.name}, {linked.category})\n" if linked else "NOT received\n")
        )
        if linked is None:
            failures.append(f"the exemplar's trace {exemplar} was not exported")
    if counts["error"] < errors_sent:
        failures.append(f"only {counts['error']} of {errors_sent} error traces were exported")
    if counts["slow"] < slow_sent:
        failures.append(f"only {counts['slow']} of {slow_sent} slow traces were exported")
    if len(traces) >= sent:
        failures.append("every trace was kept: the success ratio was not applied")
