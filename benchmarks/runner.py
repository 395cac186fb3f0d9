"""Run the workers, interleaved over rounds, and collect their samples.

Why interleave: on a shared machine the speed drifts during a run (other tenants, CPU
frequency, thermal state). Running all rounds of variant A and then all of variant B would
turn that drift into a fake difference between A and B. Instead every round runs every
variant once, in a new random order after the first round, so drift spreads evenly over
the variants and the per-variant median over rounds cancels most of it.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from benchmarks import server
from benchmarks.suites import SUITES, Suite
from benchmarks.variants import OPTIONAL
from devkit.testing import OTLPReceiver, Reply, Traffic

__all__ = ["Plan", "RunResult", "VariantRun", "run", "server_env", "start_receiver", "worker_env"]

ROOT = Path(__file__).resolve().parent.parent
# Prefixes of variables that would change what a worker measures; workers never inherit them.
_SCRUBBED = ("OTEL_", "DEVKIT_", "DD_", "SENTRY_", "LOGFIRE_")
# The in-process driver runs requests flat out, so with the default 2048-span queue the
# batch processor drops spans whenever the export thread falls behind, and dropping is
# cheaper than exporting. A large queue makes every variant export every span it keeps,
# and the export work still happens inside the timed region (the final flush is timed).
_WORKER_ENV = {"OTEL_BSP_MAX_QUEUE_SIZE": str(1 << 20)}
# devkit's default, stated so the server suite measures what the target assumes.
_SERVER_ENV = {"DEVKIT_SAMPLE_SUCCESS_RATIO": "0.1"}
_WORKER_TIMEOUT_S = 600
# The Datadog agent answers trace payloads with its sampling rates; ddtrace treats an
# empty answer as a failed send and drops the traces.
_DATADOG_REPLY = Reply(body=b'{"rate_by_service":{}}', content_type="application/json")
_DATADOG_TRACES = ("/v0.4/traces", "/v0.5/traces")


@dataclass(frozen=True)
class Plan:
    """What to run: suites with their variants, rounds and sizes."""

    suites: dict[str, tuple[str, ...]]
    rounds: int
    requests: int
    records: int
    seed: int
    #: Rounds of the server-level suites (each round takes seconds per variant).
    server_rounds: int = 3
    load: server.LoadSettings = field(default_factory=server.LoadSettings)

    def size(self, suite: Suite) -> tuple[int, int]:
        """(timed operations, warm-up operations) for one worker of ``suite``."""
        n = self.requests if suite.is_http else self.records
        return n, max(100, n // 5)

    def rounds_of(self, suite: Suite) -> int:
        return self.server_rounds if suite.is_server else self.rounds

    @property
    def total_rounds(self) -> int:
        return max((self.rounds_of(SUITES[name]) for name in self.suites), default=0)


@dataclass
class VariantRun:
    """Everything measured for one variant of one suite, over all rounds."""

    status: str = "ok"  # ok | unavailable | error
    reason: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)  # measure -> µs per round
    cpu_samples: dict[str, list[float]] = field(default_factory=dict)  # same, CPU time
    #: CPU cost in units of the reference workload timed around it (x 1000), per round.
    norm_samples: dict[str, list[float]] = field(default_factory=dict)
    traffic: list[Traffic] = field(default_factory=list)
    flush_us: list[float] = field(default_factory=list)  # timed final flush, per round
    operations: int = 0  # requests that produced telemetry (timed + warm-up + check)
    warnings: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    plan: Plan
    variants: dict[str, dict[str, VariantRun]]
    duration_s: float = 0.0
    #: Suites that could not run at all here (load generator missing), with the reason.
    unavailable: dict[str, str] = field(default_factory=dict)


def worker_env() -> dict[str, str]:
    """The environment of a benchmark process: this one's, without instrumentation
    variables, plus the harness's own and the repository on ``PYTHONPATH``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}
    env.update(_WORKER_ENV)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def start_receiver() -> OTLPReceiver:
    """The local sink the variants export to, started.

    Exporting is part of what tracing costs (serialisation and the export thread compete
    with requests for the GIL), so the variants send to this receiver instead of to
    nowhere. It only records bodies while a worker is timed; :meth:`OTLPReceiver.take`
    decodes them to count spans after the worker exits, off the clock. Vendor agents'
    trace paths get their agent's answer.
    """
    return OTLPReceiver(replies=dict.fromkeys(_DATADOG_TRACES, _DATADOG_REPLY)).start()


def server_env() -> dict[str, str]:
    """A server's environment: a worker's, with devkit's default sampling stated."""
    return {**worker_env(), **_SERVER_ENV}


def _run_worker(
    suite: Suite, variant: str, plan: Plan, receiver: OTLPReceiver
) -> tuple[dict[str, Any], str]:
    n, warmup = plan.size(suite)
    fd, out = tempfile.mkstemp(prefix="devkit-bench-", suffix=".json")
    os.close(fd)
    cmd = [
        sys.executable,
        "-m",
        "benchmarks._worker",
        suite.name,
        variant,
        str(n),
        "--warmup",
        str(warmup),
        "--out",
        out,
        "--endpoint",
        receiver.endpoint,
    ]
    try:
        proc = subprocess.run(
            cmd,
            cwd=ROOT,
            env=worker_env(),
            capture_output=True,
            text=True,
            timeout=_WORKER_TIMEOUT_S,
            check=False,
        )
        try:
            result: dict[str, Any] = json.loads(Path(out).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            tail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
            result = {"status": "error", "reason": f"worker wrote no result: {tail[0]}"}
        return result, proc.stderr
    except subprocess.TimeoutExpired:
        return {"status": "error", "reason": f"timed out after {_WORKER_TIMEOUT_S} s"}, ""
    finally:
        Path(out).unlink(missing_ok=True)


def _schedule(plan: Plan, rng: random.Random, round_index: int) -> list[tuple[str, str]]:
    pairs = [
        (s, v)
        for s, variants in plan.suites.items()
        if round_index < plan.rounds_of(SUITES[s])
        for v in variants
    ]
    if round_index > 0:
        rng.shuffle(pairs)
    return pairs


def _note(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _server_unavailable(suite: Suite) -> str | None:
    """Why a server-level suite cannot run here (None for the in-process suites)."""
    if not suite.is_server:
        return None
    if suite.server not in (None, "uvicorn"):
        return server.unavailable_reason(suite.server)
    return server.unavailable_reason()


def run(plan: Plan, progress: Callable[[str], None] = _note) -> RunResult:
    """Run every planned (suite, variant) once per round and collect the samples."""
    started = time.monotonic()
    variants = {s: {v: VariantRun() for v in vs} for s, vs in plan.suites.items()}
    unavailable: dict[str, str] = {}
    for suite_name, runs in variants.items():
        suite_reason = _server_unavailable(SUITES[suite_name])
        if suite_reason is not None:
            unavailable[suite_name] = suite_reason
            progress(f"{suite_name}: unavailable: {suite_reason}; the suite is excluded")
        for name, vrun in runs.items():
            module = OPTIONAL.get(name)
            if suite_reason is not None:
                vrun.status, vrun.reason = "unavailable", suite_reason
            elif module is not None and find_spec(module) is None:
                vrun.status, vrun.reason = "unavailable", f"{module} is not installed"
    _report_unavailable(variants, unavailable, progress)
    rng = random.Random(plan.seed)
    receiver = start_receiver()
    try:
        for r in range(plan.total_rounds):
            for suite_name, variant in _schedule(plan, rng, r):
                vrun = variants[suite_name][variant]
                if vrun.status != "ok":
                    continue
                suite = SUITES[suite_name]
                receiver.take()  # discard anything late from a previous worker
                if suite.is_server:
                    env = server_env()
                    endpoint = receiver.endpoint
                    result, stderr = server.measure(
                        variant, endpoint, env, ROOT, plan.load, suite.server or "uvicorn"
                    )
                else:
                    result, stderr = _run_worker(suite, variant, plan, receiver)
                _record(vrun, suite, plan, result, stderr, receiver.take())
                rounds = plan.rounds_of(suite)
                progress(_progress_line(r, rounds, suite_name, variant, vrun, result))
    finally:
        receiver.stop()
    return RunResult(plan, variants, time.monotonic() - started, unavailable)


def _record(
    vrun: VariantRun,
    suite: Suite,
    plan: Plan,
    result: Mapping[str, Any],
    stderr: str,
    traffic: Traffic,
) -> None:
    status = result.get("status")
    if status != "ok":
        vrun.status = "unavailable" if status == "unavailable" else "error"
        vrun.reason = str(result.get("reason", "unknown"))
        if status != "unavailable" and stderr.strip():
            vrun.warnings.append(_relative(stderr.strip()[-2000:]))
        return
    # In-process workers give µs per operation; the server suite gives named values.
    for measure, value in result.get("us_per_op", result.get("values", {})).items():
        vrun.samples.setdefault(measure, []).append(float(value))
    for measure, value in result.get("cpu_us_per_op", {}).items():
        vrun.cpu_samples.setdefault(measure, []).append(float(value))
    for measure, value in result.get("norm_per_op", {}).items():
        vrun.norm_samples.setdefault(measure, []).append(float(value))
    vrun.traffic.append(traffic)
    if "flush_us" in result:
        vrun.flush_us.append(float(result["flush_us"]))
    if "operations" in result:
        vrun.operations += int(result["operations"])
    else:
        n, warmup = plan.size(suite)
        vrun.operations += n + warmup + 1
    for line in [*result.get("warnings", []), *_interesting(stderr)]:
        if line not in vrun.warnings:
            vrun.warnings.append(line)


def _interesting(stderr: str) -> Iterable[str]:
    # Anything a worker prints on stderr may invalidate a measurement (dropped spans,
    # failed exports); keep it for the report instead of losing it.
    for line in stderr.splitlines():
        line = line.strip()
        if line:
            yield _relative(line)[:300]


def _relative(text: str) -> str:
    # Results are shared and compared across machines: no checkout paths in them.
    return text.replace(str(ROOT) + os.sep, "").replace(sys.prefix, "<venv>")


def _report_unavailable(
    variants: Mapping[str, Mapping[str, VariantRun]],
    unavailable_suites: Mapping[str, str],
    progress: Callable[[str], None],
) -> None:
    for suite, runs in variants.items():
        if suite in unavailable_suites:
            continue  # said once for the whole suite
        for name, vrun in runs.items():
            if vrun.status == "unavailable":
                progress(f"{suite} {name}: unavailable: {vrun.reason}")


def _progress_line(
    r: int, rounds: int, suite: str, variant: str, vrun: VariantRun, result: Mapping[str, Any]
) -> str:
    head = f"[round {r + 1}/{rounds}] {suite} {variant}"
    if vrun.status != "ok":
        return f"{head}: {vrun.status.upper()}: {vrun.reason}"
    if "values" in result:
        v = result["values"]
        return (
            f"{head}: {v['requests_per_s']:,.0f} req/s, p50 {v['p50_ms']:.2f} ms, "
            f"p99 {v['p99_ms']:.2f} ms"
        )
    values = ", ".join(f"{m} {v:.1f} µs" for m, v in result["us_per_op"].items())
    return f"{head}: {values}"
