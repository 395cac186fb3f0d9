"""One measurement in a fresh process: ``python -m benchmarks._worker SUITE VARIANT N``.

Instrumentation is global (tracer providers, structlog configuration, ``devkit.init()``,
Prometheus registries), so every variant runs in its own interpreter; nothing one variant
installs can slow down or speed up another. File descriptor 1 is sent to ``/dev/null``
(devkit logs to stdout); the result is written as JSON to the file named by ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from benchmarks import apps, drivers
from benchmarks.logging_suite import CASES, LOGGING_VARIANTS, Emitters
from benchmarks.suites import SUITES
from benchmarks.variants import ASGI_VARIANTS, WSGI_VARIANTS, Context, Unavailable

_FACTORIES: dict[str, Callable[[], Any]] = {
    "asgi-starlette": apps.starlette_app,
    "asgi-fastapi": apps.fastapi_app,
    "wsgi-flask": apps.flask_app,
}


def measure_http(suite: str, variant: str, n: int, warmup: int, ctx: Context) -> dict[str, Any]:
    kind = SUITES[suite].kind
    build = (ASGI_VARIANTS if kind == "asgi" else WSGI_VARIANTS)[variant]
    app = build(_FACTORIES[suite], ctx)
    timer = drivers.time_asgi if kind == "asgi" else drivers.time_wsgi
    timing = timer(app, n, warmup, ctx.flushers)
    return {
        "us_per_op": {"request": timing.us_per_op},
        "cpu_us_per_op": {"request": timing.cpu_us_per_op},
        "norm_per_op": {"request": timing.norm_per_op},
        "batch_us": [round(ns / 1000 / size, 3) for ns, size in _batches(timing, n)],
        "calibration_us": [round(ns / 1000, 1) for ns in timing.calibration_ns],
        "flush_us": round(timing.flush_ns / 1000, 1),
    }


def _batches(timing: drivers.Timing, n: int) -> zip[tuple[int, int]]:
    return zip(timing.batch_ns, drivers.batch_sizes(n), strict=True)


def measure_logging(variant: str, n: int, warmup: int, ctx: Context) -> dict[str, Any]:
    emitters = LOGGING_VARIANTS[variant](ctx)
    if emitters.check is not None:
        emitters.check(_capture_devkit_lines(emitters))
    us_per_op: dict[str, float] = {}
    cpu_us_per_op: dict[str, float] = {}
    norm_per_op: dict[str, float] = {}
    for case in CASES:
        emit = emitters.emit[case]
        for _ in range(warmup):
            emit()
        gc.collect()
        # Timed in batches with the reference workload around each, like the HTTP drivers.
        cpu_parts: list[int] = []
        calibration = [drivers.calibrate()]
        wall_ns = 0
        for size in drivers.batch_sizes(n):
            cpu_start, start = time.process_time_ns(), time.perf_counter_ns()
            for _ in range(size):
                emit()
            wall_ns += time.perf_counter_ns() - start
            cpu_parts.append(time.process_time_ns() - cpu_start)
            calibration.append(drivers.calibrate())
        us_per_op[case] = wall_ns / n / 1000.0
        cpu_us_per_op[case] = sum(cpu_parts) / n / 1000.0
        norm_per_op[case] = drivers.normalised(cpu_parts, calibration) / n * 1000.0
    return {"us_per_op": us_per_op, "cpu_us_per_op": cpu_us_per_op, "norm_per_op": norm_per_op}


def _capture_devkit_lines(emitters: Emitters) -> dict[str, bytes]:
    from devkit import logs

    lines: dict[str, bytes] = {}
    for case, emit in emitters.emit.items():
        captured: list[bytes] = []
        logs.add_tap(captured.append)
        try:
            emit()
        finally:
            logs.remove_tap(captured.append)
        lines[case] = b"".join(captured)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._worker")
    parser.add_argument("suite", choices=sorted(SUITES))
    parser.add_argument("variant")
    parser.add_argument("n", type=int)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--out", required=True)
    parser.add_argument("--endpoint", required=True, help="OTLP/HTTP base URL of the receiver")
    args = parser.parse_args(argv)

    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    ctx = Context(otlp_endpoint=args.endpoint, sink=open(os.devnull, "wb"))  # noqa: SIM115
    result: dict[str, Any]
    try:
        if args.suite == "logging":
            measured = measure_logging(args.variant, args.n, args.warmup, ctx)
        else:
            measured = measure_http(args.suite, args.variant, args.n, args.warmup, ctx)
        result = {"status": "ok", **measured}
    except Unavailable as exc:
        result = {"status": "unavailable", "reason": str(exc)}
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        result = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
    with open(args.out, "w", encoding="utf-8") as out:
        json.dump(result, out)
    return 0 if result["status"] != "error" else 1


if __name__ == "__main__":
    raise SystemExit(main())
