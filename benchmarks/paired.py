"""Server level, paired: one live server per variant, short wrk bursts alternated between them.

``python -m benchmarks.paired [--variant devkit] [--without PART] [--against REV]
[--bursts 20] [--burst-s 2] [--env K=V] [--uvicorn h11|standard] [--server gunicorn]``

The server suite starts a fresh server for each 8 s round; on a shared machine whose
speed drifts within seconds, five such rounds resolve devkit's ``x bare`` to about
±0.1. Here each variant's server (the bare app's included) is started once and kept up,
and the bursts alternate between them, in reversed order every other round (A B, B A,
...), so every burst of a variant has a bare burst seconds away. The figure read is the
*paired ratio*: each burst's requests per second over the bare burst of the same round,
summarised by its median, interquartile range and a 95 % bootstrap interval of the
median; the same for server CPU per request (bare over variant, so that higher is better
in both). Server CPU is also split into the request thread (the event loop) and the
background threads (devkit's span export): work a change moves between them, or a
request thread slowed by the other's activity, shows there. Short bursts understate the
p99 (an export batch may fall between two bursts), so latency is read from the server
suite. Results go to stdout and, with ``--json``, to a file. Needs ``wrk``; takes
bursts x variants x burst length, plus start-up.

``--without logs`` (or ``span``, ``metrics``; repeatable) adds a devkit server with that
part switched off, paired like the rest: what each part costs at server level, where
the in-process figures understate it.

``--against REV`` adds a devkit server running devkit's source at git revision ``REV``
(exported to a temporary directory, first on its ``PYTHONPATH``; the harness and the app
stay this checkout's): a change's before and after, paired in one run.

``--uvicorn standard`` serves every variant with httptools and uvloop (what
``uvicorn[standard]`` installs) instead of the pinned h11 + asyncio: the bare app is then
several times faster per request, and the same devkit cost a larger share of it.

``--server gunicorn`` serves the WSGI variants (the Flask app) with gunicorn, one sync
worker, as the ``server-gunicorn`` suite does; the request thread is the worker's main
thread, and the CPU is the master's and the worker's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import runner, server, server_app, variants

__all__ = ["Burst", "bootstrap_median_interval", "main", "paired_summary"]


@dataclass(frozen=True)
class Burst:
    """One wrk burst against one live server."""

    requests_per_s: float
    p99_ms: float
    cpu_us_per_request: float
    #: Of which the server's request thread (its main thread, the event loop) and the
    #: other threads (span export); None where /proc does not split them.
    request_thread_cpu_us: float | None = None
    background_cpu_us: float | None = None


@dataclass
class _Live:
    label: str
    server: server.LiveServer
    bursts: list[Burst] = field(default_factory=list)
    exit_status: int | None = None


def bootstrap_median_interval(
    values: Sequence[float], rng: random.Random, resamples: int = 2000, level: float = 0.95
) -> tuple[float, float]:
    """A percentile-bootstrap interval for the median of ``values``."""
    if not values:
        raise ValueError("no values")
    n = len(values)
    medians = sorted(statistics.median(rng.choices(values, k=n)) for _ in range(resamples))
    tail = (1.0 - level) / 2.0
    low = medians[int(tail * (resamples - 1))]
    high = medians[int((1.0 - tail) * (resamples - 1))]
    return low, high


def paired_summary(
    variant: Sequence[Burst], bare: Sequence[Burst], rng: random.Random
) -> dict[str, Any]:
    """Per-round ratios to the bare app: throughput (variant/bare) and CPU (bare/variant)."""
    if len(variant) != len(bare) or not variant:
        raise ValueError("paired ratios need the same, non-zero number of bursts of both")
    out: dict[str, Any] = {}
    for name, ratios in (
        (
            "requests_per_s",
            [v.requests_per_s / b.requests_per_s for v, b in zip(variant, bare, strict=True)],
        ),
        (
            "cpu",
            [
                b.cpu_us_per_request / v.cpu_us_per_request
                for v, b in zip(variant, bare, strict=True)
            ],
        ),
    ):
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        out[name] = {
            "median": statistics.median(ratios),
            "iqr": [quartiles[0], quartiles[2]],
            "interval_95": list(bootstrap_median_interval(ratios, rng)),
            "ratios": ratios,
        }
    return out


def _burst(live: _Live, seconds: int, load: server.LoadSettings) -> Burst:
    result, cpu = live.server.load(seconds, load)
    if result.requests == 0 or result.errors:
        raise RuntimeError(f"{live.label}: {result.requests} requests, {result.errors} errors")
    per_request = 1e6 / result.requests
    return Burst(
        result.requests_per_s,
        result.latency_ms[99],
        cpu.total_s * per_request,
        cpu.request_thread_s * per_request,
        cpu.background_s * per_request,
    )


def run(
    variants: Sequence[str],
    bursts: int,
    burst_s: int,
    extra_env: dict[str, str],
    load: server.LoadSettings,
    seed: int = 0,
    without: Sequence[str] = (),
    stack: str = "h11",
    against: str | None = None,
    server_name: str = "uvicorn",
) -> dict[str, Any]:
    """Start ``bare``, each variant, a devkit server per part in ``without`` (that part
    switched off) and one of devkit at revision ``against``, all on ``server_name``
    (uvicorn on its ``stack``, or gunicorn), alternate the bursts, summarise the pairs."""
    reason = server.unavailable_reason(server_name)
    if reason is None and server_name == "uvicorn":
        reason = server.stack_unavailable(stack)
    if reason is not None:
        raise RuntimeError(reason)

    def start(variant: str, env: dict[str, str]) -> server.LiveServer:
        return server.LiveServer(
            variant, receiver.endpoint, env, runner.ROOT, stack=stack, server=server_name
        )

    started = time.monotonic()
    receiver = runner.start_receiver()
    env = {**runner.server_env(), **extra_env}
    lives: list[_Live] = []
    source = contextlib.ExitStack()
    try:
        for variant in ("bare", *variants):
            lives.append(_Live(variant, start(variant, env)))
        for part in without:
            lives.append(
                _Live(f"devkit without {part}", start("devkit", {**env, server_app.OFF_ENV: part}))
            )
        if against is not None:
            old = source.enter_context(_devkit_source(against))
            old_env = {**env, "PYTHONPATH": os.pathsep.join([str(old), env["PYTHONPATH"]])}
            lives.append(_Live(f"devkit at {against}", start("devkit", old_env)))
        for live in lives:
            live.server.wait_ready()
            live.server.load(load.warmup_s, load)
        for r in range(bursts):
            for live in lives if r % 2 == 0 else lives[::-1]:
                live.bursts.append(_burst(live, burst_s, load))
    finally:
        for live in lives:
            live.exit_status, _ = live.server.stop()
        receiver.stop()
        source.close()
    rng = random.Random(seed)
    bare = lives[0]
    by_label = {live.label: live for live in lives}
    change = None
    if against is not None and "devkit" in by_label:
        # The change itself: this checkout's devkit over the revision's, burst by burst.
        change = {
            "against": against,
            "paired": paired_summary(
                by_label["devkit"].bursts, by_label[f"devkit at {against}"].bursts, rng
            ),
        }
    return {
        "change": change,
        "bursts": bursts,
        "burst_s": burst_s,
        "load": f"wrk -t{load.threads} -c{load.connections} -d{burst_s}s per burst, "
        f"after a {load.warmup_s} s warm-up per server",
        "env": extra_env,
        "without": list(without),
        "server": _server_line(server_name, stack),
        "seconds": round(time.monotonic() - started, 1),
        "variants": {
            live.label: {
                "requests_per_s": statistics.median(b.requests_per_s for b in live.bursts),
                "p99_ms": statistics.median(b.p99_ms for b in live.bursts),
                "cpu_us_per_request": statistics.median(b.cpu_us_per_request for b in live.bursts),
                **_thread_split(live.bursts),
                "exit_status": live.exit_status,
                **(
                    {"paired": paired_summary(live.bursts, bare.bursts, rng)}
                    if live is not bare
                    else {}
                ),
            }
            for live in lives
        },
    }


@contextlib.contextmanager
def _devkit_source(revision: str) -> Iterator[Path]:
    """``src/`` of this repository at ``revision``, exported to a temporary directory."""
    try:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", revision, "src"],
            cwd=runner.ROOT,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        raise RuntimeError(f"--against {revision}: {detail.decode(errors='replace')}") from exc
    with tempfile.TemporaryDirectory(prefix="devkit-against-") as tmp:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        yield Path(tmp, "src")


def _server_line(server_name: str, stack: str) -> str:
    if server_name == "gunicorn":
        return "gunicorn, 1 sync worker"
    return "uvicorn --http {} --loop {}".format(*server.STACKS[stack])


def _thread_split(bursts: Sequence[Burst]) -> dict[str, float]:
    """Median CPU per request of the request thread and of the background threads."""
    split = [
        (b.request_thread_cpu_us, b.background_cpu_us)
        for b in bursts
        if b.request_thread_cpu_us is not None and b.background_cpu_us is not None
    ]
    if not split:
        return {}
    return {
        "request_thread_cpu_us_per_request": statistics.median(s[0] for s in split),
        "background_cpu_us_per_request": statistics.median(s[1] for s in split),
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"server level, paired: {result['bursts']} bursts of {result['burst_s']} s per "
        f"variant, alternating between live servers ({result['load']}; "
        f"{result.get('server', 'uvicorn --http h11 --loop asyncio')}), {result['seconds']} s",
        "",
        "| variant | req/s | server CPU µs/req | request thread | background threads "
        "| x bare req/s, paired median | IQR | 95 % interval | CPU x bare, paired median "
        "| 95 % interval |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, v in result["variants"].items():
        paired = v.get("paired")
        if paired is None:
            cells = ["1.000", "", "", "1.000", ""]
        else:
            rps, cpu = paired["requests_per_s"], paired["cpu"]
            cells = [
                f"{rps['median']:.3f}",
                "{:.3f}-{:.3f}".format(*rps["iqr"]),
                "{:.3f}-{:.3f}".format(*rps["interval_95"]),
                f"{cpu['median']:.3f}",
                "{:.3f}-{:.3f}".format(*cpu["interval_95"]),
            ]
        threads = [
            f"{v[key]:.1f}" if key in v else "—"
            for key in ("request_thread_cpu_us_per_request", "background_cpu_us_per_request")
        ]
        lines.append(
            f"| {name} | {v['requests_per_s']:,.0f} | {v['cpu_us_per_request']:.1f} | "
            + " | ".join(threads + cells)
            + " |"
        )
    change = result.get("change")
    if change:
        rps, cpu = change["paired"]["requests_per_s"], change["paired"]["cpu"]
        lines += [
            "",
            f"devkit over devkit at {change['against']}, burst by burst: req/s "
            f"{rps['median']:.3f} (95 % {rps['interval_95'][0]:.3f}-{rps['interval_95'][1]:.3f}), "
            f"CPU {cpu['median']:.3f} (95 % {cpu['interval_95'][0]:.3f}-"
            f"{cpu['interval_95'][1]:.3f}); above 1 is faster than the revision",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.paired")
    parser.add_argument(
        "--variant", action="append", help="variant(s) of the server's app; default devkit"
    )
    parser.add_argument(
        "--without",
        action="append",
        default=[],
        choices=variants.DEVKIT_PARTS,
        help="also a devkit server with this part switched off (repeatable)",
    )
    parser.add_argument(
        "--against",
        metavar="REV",
        help="also a devkit server running devkit's source at this git revision",
    )
    parser.add_argument("--bursts", type=int, default=20, help="bursts per variant (20)")
    parser.add_argument("--burst-s", type=int, default=2, help="seconds per burst (2)")
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="for every server"
    )
    parser.add_argument(
        "--uvicorn",
        choices=sorted(server.STACKS),
        default="h11",
        help="uvicorn's parser and loop: h11 + asyncio (default) or httptools + uvloop",
    )
    parser.add_argument(
        "--server",
        choices=server.SERVERS,
        default="uvicorn",
        help="uvicorn serving the Starlette app (default) or gunicorn serving the Flask app",
    )
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    if args.bursts < 2 or args.burst_s < 1:
        parser.error("--bursts takes at least 2, --burst-s at least 1")
    extra: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--env takes KEY=VALUE, not {item!r}")
        extra[key] = value
    try:
        result = run(
            args.variant or ["devkit"],
            args.bursts,
            args.burst_s,
            extra,
            server.LoadSettings(),
            without=args.without,
            stack=args.uvicorn,
            against=args.against,
            server_name=args.server,
        )
    except RuntimeError as exc:
        print(f"paired run failed: {exc}", file=sys.stderr)
        return 2
    print(render(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
