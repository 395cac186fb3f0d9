"""``devkit demo`` (what ``make demo`` runs): every signal of one instrumented service.

It starts the demo service of ``devkit.cli._demo_app`` under uvicorn next to an in-process
OTLP/HTTP receiver (``devkit.testing.OTLPReceiver``), drives traffic at it and shows the
logs, RED metrics, probe answers and which traces the tail sampler kept. No collector, no
network beyond 127.0.0.1, bounded in time everywhere.

Only the standard library is imported here; the receiver, opentelemetry-proto and the
service's dependencies are checked for and imported when the demo runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from devkit.cli._command import Subcommands
from devkit.cli._installed import OTLP_HTTP_MODULE, importable

if TYPE_CHECKING:
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    from devkit.testing._receiver import OTLPReceiver

__all__ = ["add_parser", "demo", "run"]


def add_parser(commands: Subcommands) -> argparse.ArgumentParser:
    """Add ``demo`` to the ``devkit`` command line."""
    return commands.add_parser(
        "demo", help="run the demo service, drive traffic and show every signal"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``devkit demo``."""
    return demo(sys.stdout, sys.stderr)


# -- traffic ---------------------------------------------------------------------------------

_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_SLOW_THRESHOLD_MS = 300
_SAMPLE_RATIO = 0.1
_DEMO_APP = "devkit.cli._demo_app:app"
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


#: The demo service's SLOs (JSON: the demo needs no YAML library).
_DEMO_SLO = "demo_slo.json"


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


# -- the run ---------------------------------------------------------------------------------


def _missing_dependency(err: TextIO) -> bool:
    try:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2  # noqa: F401
    except ImportError:
        err.write(
            "error: devkit demo receives the traces itself and needs opentelemetry-proto and "
            "the OTLP exporter: pip install 'devkit-observability[otlp]'\n"
        )
        return True
    if not importable(OTLP_HTTP_MODULE):
        err.write(
            "error: devkit demo exports traces over OTLP/HTTP: "
            "pip install 'devkit-observability[otlp]'\n"
        )
        return True
    missing = [m for m in ("fastapi", "uvicorn") if not importable(m)]
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


def _start_receiver() -> OTLPReceiver:
    """The demo's OTLP receiver: like a collector, it answers 400 to a body that is not an
    export request, and the demo counts those as failures."""
    from devkit.testing._receiver import OTLPReceiver

    return OTLPReceiver(reject_malformed=True).start()


def _snapshot(receiver: OTLPReceiver) -> tuple[list[Span], int, int]:
    """(spans, export requests, malformed requests) received so far."""
    spans = [span for _resource, span in receiver.spans()]
    return spans, len(receiver.requests()), receiver.malformed


def demo(out: TextIO, err: TextIO) -> int:
    """Run the demo end to end; 0 when every signal showed what it should."""
    if _missing_dependency(err):
        return 1
    started = time.monotonic()
    receiver = _start_receiver()
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
        before_stop = len(receiver.spans())
        stopped_at = time.monotonic()
        exit_status = _stop(proc, _STOP_TIMEOUT_S)
        stop_s = time.monotonic() - stopped_at
        spans, exports, rejected = _snapshot(receiver)
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
        _show_slos(out, metrics, failures)
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


def _show_slos(out: TextIO, metrics: _Answer, failures: list[str]) -> None:
    """The demo's SLOs over its traffic, from the scrape above (no Prometheus needed)."""
    from importlib import resources

    from devkit.ops.slo import load
    from devkit.ops.status import snapshot

    _heading(out, "SLOs")
    with resources.as_file(resources.files("devkit.cli").joinpath(_DEMO_SLO)) as path:
        slo_file = load(path)
    statuses = {s.slo: s for s in snapshot(slo_file, metrics.body)}
    for slo in slo_file.slos:
        s = statuses[slo.name]
        sli = "—" if s.sli is None else f"{s.sli:.1%}"
        left = "—" if s.budget_remaining is None else f"{s.budget_remaining:.0%}"
        out.write(
            f"  {slo.name:<20} objective {slo.objective:>5g} %  SLI {sli:>6}  budget left {left:>7}"
            f"  {s.state:<8} ({slo.description})\n"
        )
    out.write(
        f"  (over the {int(statuses['checkout-available'].requests or 0)} checkouts and the "
        "item pages above; with Prometheus: `devkit slo rules` writes the burn-rate alerts,\n"
        "   `devkit slo status --prometheus URL` is the deployment gate; the SLO file is "
        f"devkit/cli/{_DEMO_SLO}, `devkit dashboard --slo` draws it)\n"
    )
    if statuses["checkout-available"].state != "spent":
        failures.append("the failing checkouts did not spend the checkout SLO's budget")
    if statuses["items-fast"].state != "ok":
        failures.append(f"the item pages' latency SLO is {statuses['items-fast'].state}, not ok")


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
