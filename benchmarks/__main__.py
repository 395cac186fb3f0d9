"""Command line: ``python -m benchmarks [--quick] [--gate] [--suite NAME] [--variant NAME]``.

Prints the markdown table on stdout (progress goes to stderr) and writes
``benchmarks/results/latest.md`` and ``latest.json`` (``server.md`` and ``server.json``
when only server-level suites ran, ``server-gunicorn.md`` and ``.json`` when only that
one did, so they do not overwrite the in-process results).
With ``--gate`` the exit status is 1 when devkit's overhead ratio exceeds ``budget.json``
or cannot be measured.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from benchmarks import report, stats
from benchmarks.runner import Plan, run
from benchmarks.server import LoadSettings
from benchmarks.suites import SUITES

HERE = Path(__file__).resolve().parent
#: (rounds, requests per worker, log records per worker)
FULL = (7, 5000, 20000)
QUICK = (3, 1000, 5000)
#: Rounds of the server-level suite (full, quick); it runs only when named with --suite.
SERVER_ROUNDS = (3, 1)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Per-request overhead of devkit vs the bare app and the hand-assembled "
        "stack, and logging throughput.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"few rounds and small workers (CI): {QUICK[0]} rounds, "
        f"{QUICK[1]} requests, {QUICK[2]} records",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help=f"interleaved rounds (default {FULL[0]}; server-level suite {SERVER_ROUNDS[0]}, "
        f"{SERVER_ROUNDS[1]} with --quick)",
    )
    parser.add_argument(
        "--requests", type=int, help=f"timed requests per HTTP worker (default {FULL[1]})"
    )
    parser.add_argument(
        "--records", type=int, help=f"timed records per logging case and worker (default {FULL[2]})"
    )
    parser.add_argument(
        "--suite",
        action="append",
        choices=list(SUITES),
        help="run only this suite (repeatable); default: every suite but the server-level "
        "ones, which run only when named",
    )
    parser.add_argument(
        "--duration",
        type=int,
        default=LoadSettings.duration_s,
        help="seconds of wrk load per server-level measurement "
        f"(default {LoadSettings.duration_s})",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=LoadSettings.connections,
        help=f"wrk connections in the server-level suite (default {LoadSettings.connections})",
    )
    parser.add_argument(
        "--variant",
        action="append",
        help="run only this variant, plus each suite's baseline and stack (repeatable)",
    )
    parser.add_argument(
        "--gate",
        action="store_true",
        help="exit 1 when devkit's ratios break the budget or are unmeasurable",
    )
    parser.add_argument(
        "--budget",
        type=Path,
        default=HERE / "budget.json",
        help="budget file for --gate (default benchmarks/budget.json)",
    )
    parser.add_argument("--seed", type=int, help="seed for the round order (default random)")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=HERE / "results",
        help="where latest.md/json (server.md/json) go (default benchmarks/results)",
    )
    return parser


def _positive(parser: argparse.ArgumentParser, name: str, value: int) -> int:
    if value < 1:
        parser.error(f"--{name} must be at least 1, got {value}")
    return value


def _plan(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Plan:
    rounds, requests, records = QUICK if args.quick else FULL
    suites: dict[str, tuple[str, ...]] = {}
    wanted = set(args.variant or ())
    known = {v for s in SUITES.values() for v in s.variants}
    if unknown := sorted(wanted - known):
        parser.error(f"unknown variant {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for name in args.suite or [n for n, s in SUITES.items() if s.default]:
        suite = SUITES[name]
        keep = wanted | {suite.baseline} | ({suite.reference} if suite.reference else set())
        variants = tuple(v for v in suite.variants if not wanted or v in keep)
        suites[name] = variants
    server_rounds = SERVER_ROUNDS[1] if args.quick else SERVER_ROUNDS[0]
    return Plan(
        suites=suites,
        rounds=_positive(parser, "rounds", args.rounds or rounds),
        requests=_positive(parser, "requests", args.requests or requests),
        records=_positive(parser, "records", args.records or records),
        seed=args.seed if args.seed is not None else random.randrange(1 << 30),
        server_rounds=_positive(parser, "rounds", args.rounds or server_rounds),
        load=LoadSettings(
            duration_s=_positive(parser, "duration", args.duration),
            connections=_positive(parser, "connections", args.connections),
        ),
    )


def results_name(suites: dict[str, tuple[str, ...]]) -> str:
    """``server`` when only server-level suites ran (``server-gunicorn`` when that was
    the only one), else ``latest``: none of these runs overwrites another's files."""
    if not suites or not all(SUITES[s].is_server for s in suites):
        return "latest"
    return "server-gunicorn" if set(suites) == {"server-gunicorn"} else "server"


def _load_budget(path: Path) -> dict[str, float]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"gate: cannot read budget {path}: {exc}") from None
    if not isinstance(raw, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in raw.values()
    ):
        raise SystemExit(f"gate: budget {path} must be a JSON object of numbers")
    return {str(k): float(v) for k, v in raw.items()}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    plan = _plan(parser, args)
    budget = _load_budget(args.budget) if args.gate else None  # fail before running

    result = run(plan)
    doc = report.analyse(result)
    gate = None
    if budget is not None:
        gate = stats.check_gate(budget, report.gate_outcomes(doc))
        doc["gate"] = {"budget": budget, "passed": gate.passed, "lines": gate.lines}
    text = report.markdown(doc, gate)
    report.write_results(doc, text, args.output_dir, results_name(plan.suites))
    print(text)

    status = 0
    errors = [
        f"{s}/{v}: {e.get('reason')}"
        for s, d in doc["suites"].items()
        for v, e in d["variants"].items()
        if e["status"] == "error"
    ]
    if errors:
        print("benchmark workers failed:\n  " + "\n  ".join(errors), file=sys.stderr)
        status = 1
    if gate is not None and not gate.passed:
        failed = [line for line in gate.lines if line.startswith("FAIL")]
        print("benchmark gate FAILED:\n  " + "\n  ".join(failed), file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
