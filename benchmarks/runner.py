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

from benchmarks.receiver import Receiver, Traffic
from benchmarks.suites import SUITES, Suite
from benchmarks.variants import OPTIONAL

__all__ = ["Plan", "RunResult", "VariantRun", "run"]

ROOT = Path(__file__).resolve().parent.parent
# Prefixes of variables that would change what a worker measures; workers never inherit them.
_SCRUBBED = ("OTEL_", "DEVKIT_", "DD_", "SENTRY_", "LOGFIRE_")
# The in-process driver runs requests flat out, so with the default 2048-span queue the
# batch processor drops spans whenever the export thread falls behind, and dropping is
# cheaper than exporting. A large queue makes every variant export every span it keeps,
# and the export work still happens inside the timed region (the final flush is timed).
_WORKER_ENV = {"OTEL_BSP_MAX_QUEUE_SIZE": str(1 << 20)}
_WORKER_TIMEOUT_S = 600


@dataclass(frozen=True)
class Plan:
    """What to run: suites with their variants, rounds and sizes."""

    suites: dict[str, tuple[str, ...]]
    rounds: int
    requests: int
    records: int
    seed: int

    def size(self, suite: Suite) -> tuple[int, int]:
        """(timed operations, warm-up operations) for one worker of ``suite``."""
        n = self.requests if suite.is_http else self.records
        return n, max(100, n // 5)


@dataclass
class VariantRun:
    """Everything measured for one variant of one suite, over all rounds."""

    status: str = "ok"  # ok | unavailable | error
    reason: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)  # measure -> µs per round
    cpu_samples: dict[str, list[float]] = field(default_factory=dict)  # same, CPU time
    traffic: list[Traffic] = field(default_factory=list)
    flush_us: list[float] = field(default_factory=list)  # timed final flush, per round
    operations: int = 0  # requests that produced telemetry (timed + warm-up + check)
    warnings: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    plan: Plan
    variants: dict[str, dict[str, VariantRun]]
    duration_s: float = 0.0


def _worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}
    env.update(_WORKER_ENV)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _run_worker(
    suite: Suite, variant: str, plan: Plan, receiver: Receiver
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
            env=_worker_env(),
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
    pairs = [(s, v) for s, variants in plan.suites.items() for v in variants]
    if round_index > 0:
        rng.shuffle(pairs)
    return pairs


def _note(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(plan: Plan, progress: Callable[[str], None] = _note) -> RunResult:
    """Run every planned (suite, variant) once per round and collect the samples."""
    started = time.monotonic()
    variants = {s: {v: VariantRun() for v in vs} for s, vs in plan.suites.items()}
    for runs in variants.values():
        for name, vrun in runs.items():
            module = OPTIONAL.get(name)
            if module is not None and find_spec(module) is None:
                vrun.status, vrun.reason = "unavailable", f"{module} is not installed"
    _report_unavailable(variants, progress)
    rng = random.Random(plan.seed)
    receiver = Receiver().start()
    try:
        for r in range(plan.rounds):
            for suite_name, variant in _schedule(plan, rng, r):
                vrun = variants[suite_name][variant]
                if vrun.status != "ok":
                    continue
                suite = SUITES[suite_name]
                receiver.take()  # discard anything late from a previous worker
                result, stderr = _run_worker(suite, variant, plan, receiver)
                _record(vrun, suite, plan, result, stderr, receiver.take())
                progress(_progress_line(r, plan.rounds, suite_name, variant, vrun, result))
    finally:
        receiver.stop()
    return RunResult(plan, variants, time.monotonic() - started)


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
    for measure, value in result["us_per_op"].items():
        vrun.samples.setdefault(measure, []).append(float(value))
    for measure, value in result.get("cpu_us_per_op", {}).items():
        vrun.cpu_samples.setdefault(measure, []).append(float(value))
    vrun.traffic.append(traffic)
    if "flush_us" in result:
        vrun.flush_us.append(float(result["flush_us"]))
    n, warmup = plan.size(suite)
    vrun.operations += n + warmup + 1
    for line in _interesting(stderr):
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
    variants: Mapping[str, Mapping[str, VariantRun]], progress: Callable[[str], None]
) -> None:
    for suite, runs in variants.items():
        for name, vrun in runs.items():
            if vrun.status == "unavailable":
                progress(f"{suite} {name}: unavailable: {vrun.reason}")


def _progress_line(
    r: int, rounds: int, suite: str, variant: str, vrun: VariantRun, result: Mapping[str, Any]
) -> str:
    head = f"[round {r + 1}/{rounds}] {suite} {variant}"
    if vrun.status != "ok":
        return f"{head}: {vrun.status.upper()}: {vrun.reason}"
    values = ", ".join(f"{m} {v:.1f} µs" for m, v in result["us_per_op"].items())
    return f"{head}: {values}"
