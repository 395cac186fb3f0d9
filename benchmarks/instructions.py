"""CPU instructions per in-process request under valgrind's callgrind: a deterministic count.

``python -m benchmarks.instructions [--suite asgi-starlette|asgi-fastapi|wsgi-flask]
[--variant devkit] [--off logs,span] [--cache]
[--server [--seconds 15] [--warmup 3] [--uvicorn h11|standard]]``

Timing on a shared machine moves by tens of percent between runs; an instruction count
does not, so it is how a small change to the request path is judged. The variant's app
is called in-process twice, in two fresh interpreters under callgrind, with a small and
a large number of requests; the difference divided by the difference in requests is the
cost of one request, free of start-up, imports and warm-up. ``--cache`` adds callgrind's
cache simulation: first-level instruction and data misses per request, which is where
devkit's time goes at server level (see docs/benchmarks.md#where-the-time-goes).

What the child pins so that two runs differ by the requests only: ``PYTHONHASHSEED=0``;
``DEVKIT_SAMPLE_SUCCESS_RATIO=0`` (with 10 % of traces kept, whether a 64-span export
batch falls between the two counts moves one request by thousands of instructions); a
full ``gc.collect()`` after the warm-up (the first full collection of a large heap would
otherwise land inside the count). ``--off`` switches parts of devkit off after
``init()`` (``logs``, ``span``, ``metrics``) to price each part by difference.

``--server`` counts the whole uvicorn process instead (the server suite's Starlette app,
``--http h11 --loop asyncio``, or httptools and uvloop with ``--uvicorn standard``): the
server starts under callgrind with counting off, wrk loads it with one connection for
``--warmup`` seconds, then counting is switched on (``callgrind_control``) for
``--seconds`` of the same load and off again, and the counts are divided by the requests
wrk completed in that window. One request at a time takes the same path every time;
with more connections, how many requests one event-loop turn serves changes from run to
run and moves the count by a few per cent. What remains varies by about 1 % between
runs: work that does not come once per request (timers, which callgrind's fifty-fold
slowdown spreads over fewer requests, and the occasional full garbage collection) lands
in the window or not. Real servers also pay for the kernel's work between requests,
which callgrind does not see.

Needs ``valgrind`` (Debian package ``valgrind``); takes one to three minutes (with
``--server``, ``wrk`` too, and about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import drivers, runner, server, server_app, variants
from benchmarks._worker import _FACTORIES
from benchmarks.suites import SUITES

__all__ = ["per_request", "summary_counts", "totals_counts"]

ROOT = Path(__file__).resolve().parent.parent
#: Under callgrind, start-up (imports) and each callgrind_control call are slow.
_VALGRIND_START_S = 300.0


def totals_counts(text: str) -> dict[str, int]:
    """``{event: count}`` from the ``totals:`` line (callgrind leaves trailing zeros out).

    A run that starts with instrumentation off (``--instr-atstart=no``) writes a zero
    ``summary:``; its ``totals:`` line holds what was counted.
    """
    names, values = _event_line(text, "totals")
    if len(values) > len(names):
        raise ValueError("callgrind totals have more values than events")
    values += ["0"] * (len(names) - len(values))
    return {name: int(value) for name, value in zip(names, values, strict=True)}


def _event_line(text: str, key: str) -> tuple[list[str], list[str]]:
    """The event names and the values of the ``key:`` line of a callgrind output file."""
    events = re.search(r"^events:\s*(.+)$", text, re.M)
    line = re.search(rf"^{key}:\s*(.+)$", text, re.M)
    if events is None or line is None:
        raise ValueError(f"not a callgrind output file (no events/{key} line)")
    return events.group(1).split(), line.group(1).split()


def summary_counts(text: str) -> dict[str, int]:
    """``{event: count}`` from a callgrind output file's ``events:`` and ``summary:`` lines."""
    names, values = _event_line(text, "summary")
    if len(names) != len(values):
        raise ValueError("callgrind events and summary do not match")
    return {name: int(value) for name, value in zip(names, values, strict=True)}


def per_request(
    small: dict[str, int], large: dict[str, int], n_small: int, n_large: int
) -> dict[str, float]:
    """Each event's count per request, by difference of a small and a large run."""
    if n_large <= n_small:
        raise ValueError("the large run must have more requests than the small one")
    return {name: (large[name] - small[name]) / (n_large - n_small) for name in large}


def _child(suite: str, variant: str, requests: int, off: list[str]) -> None:
    """Build the variant's app as the timing worker does, warm it up, collect, then serve
    ``requests`` requests."""
    receiver = runner.start_receiver()
    ctx = variants.Context(otlp_endpoint=receiver.endpoint, sink=open(os.devnull, "wb"))  # noqa: SIM115
    asgi = SUITES[suite].kind == "asgi"
    app = (variants.ASGI_VARIANTS if asgi else variants.WSGI_VARIANTS)[variant](
        _FACTORIES[suite], ctx
    )
    if off:
        try:
            variants.switch_off_devkit(off)
        except ValueError as exc:
            raise SystemExit(f"--off: {exc}") from None
    if asgi:
        asyncio.run(drivers._asgi_batches(app, [200]))
        gc.collect()
        asyncio.run(drivers._asgi_batches(app, [requests]))
    else:
        drivers._wsgi_batches(app, [200])
        gc.collect()
        drivers._wsgi_batches(app, [requests])
    for flush in ctx.flushers:
        flush()


def _count(args: argparse.Namespace, requests: int, out: Path) -> dict[str, int]:
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        *(["--cache-sim=yes"] if args.cache else []),
        sys.executable,
        "-m",
        "benchmarks.instructions",
        "--child",
        str(requests),
        "--suite",
        args.suite,
        "--variant",
        args.variant,
        "--off",
        ",".join(args.off),
    ]
    env = dict(os.environ, PYTHONHASHSEED="0", DEVKIT_SAMPLE_SUCCESS_RATIO="0")
    subprocess.run(
        command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return summary_counts(out.read_text(errors="replace"))


def _server_counts(args: argparse.Namespace) -> tuple[dict[str, float], int]:
    """uvicorn serving the variant under callgrind, counted only while wrk loads it with
    one connection (one request at a time, the same path every time); per request."""
    env = {**runner.server_env(), "PYTHONHASHSEED": "0", "DEVKIT_SAMPLE_SUCCESS_RATIO": "0"}
    if args.off:
        env[server_app.OFF_ENV] = ",".join(args.off)
    load = server.LoadSettings(connections=1, threads=1)
    receiver = runner.start_receiver()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "server.out")
        prefix = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            *(["--cache-sim=yes"] if args.cache else []),
        ]
        live = server.LiveServer(
            args.variant, receiver.endpoint, env, ROOT, prefix=prefix, stack=args.uvicorn
        )
        try:
            live.wait_ready(timeout_s=_VALGRIND_START_S)
            live.load(args.warmup, load)
            _control(live.proc.pid, "--instr=on")
            result, _cpu = live.load(args.seconds, load)
            _control(live.proc.pid, "--instr=off")
            _control(live.proc.pid, "--dump")
        finally:
            live.stop()
            receiver.stop()
        totals: dict[str, int] = {}
        for path in sorted(Path(tmp).glob("server.out*")):
            for name, value in totals_counts(path.read_text(errors="replace")).items():
                totals[name] = totals.get(name, 0) + value
    if not result.requests or not totals:
        raise RuntimeError("no requests counted")
    return {name: value / result.requests for name, value in totals.items()}, result.requests


def _control(pid: int, action: str) -> None:
    subprocess.run(
        ["callgrind_control", action, str(pid)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=_VALGRIND_START_S,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions")
    parser.add_argument("--suite", choices=sorted(_FACTORIES), default="asgi-starlette")
    parser.add_argument("--variant", default="devkit")
    parser.add_argument(
        "--off",
        type=lambda v: [p for p in v.split(",") if p],
        default=[],
        help="devkit parts switched off: any of logs,span,metrics",
    )
    parser.add_argument("--cache", action="store_true", help="simulate caches too")
    parser.add_argument(
        "--server",
        action="store_true",
        help="count the whole uvicorn process under wrk instead (Starlette app)",
    )
    parser.add_argument("--seconds", type=int, default=15, help="--server: counted load")
    parser.add_argument("--warmup", type=int, default=3, help="--server: load before counting")
    parser.add_argument(
        "--uvicorn",
        choices=sorted(server.STACKS),
        default="h11",
        help="--server: uvicorn's parser and loop (as in benchmarks.paired)",
    )
    parser.add_argument("--small", type=int, default=300)
    parser.add_argument("--large", type=int, default=1300)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.off) - set(variants.DEVKIT_PARTS)
    if unknown:
        parts = ",".join(variants.DEVKIT_PARTS)
        parser.error(f"--off takes {parts}, not {','.join(sorted(unknown))}")
    if args.child is not None:
        _child(args.suite, args.variant, args.child, args.off)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    if args.server:
        reason = server.unavailable_reason() or server.stack_unavailable(args.uvicorn)
        if shutil.which("callgrind_control") is None:
            reason = "callgrind_control not installed (apt-get install valgrind)"
        if reason is not None:
            print(reason, file=sys.stderr)
            return 2
        counts, requests = _server_counts(args)
        label = f"server ({args.uvicorn}) {args.variant}" + (
            f" (off: {','.join(args.off)})" if args.off else ""
        )
        print(
            f"{label}, {requests:,} requests: "
            + ", ".join(f"{name} {round(value):,}" for name, value in counts.items())
        )
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        small = _count(args, args.small, Path(tmp, "small.out"))
        large = _count(args, args.large, Path(tmp, "large.out"))
    counts = per_request(small, large, args.small, args.large)
    label = f"{args.suite} {args.variant}" + (f" (off: {','.join(args.off)})" if args.off else "")
    print(f"{label}: " + ", ".join(f"{name} {round(value):,}" for name, value in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
