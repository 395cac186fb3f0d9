"""Turn round samples into the results document (JSON) and the markdown table.

All ratios come from one run: overheads are ``median(variant) - median(bare)`` measured
in the same interleaved rounds, so they are comparable with each other even though the
absolute numbers depend on the machine.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import server, stats
from benchmarks.runner import ROOT, RunResult, VariantRun
from benchmarks.suites import SUITES, Suite

__all__ = [
    "GATE_HTTP_KEY",
    "GATE_LOGGING_KEY",
    "analyse",
    "gate_outcomes",
    "machine_info",
    "markdown",
    "write_results",
]

#: What the gate reads for an in-process HTTP suite: devkit's overhead over the stack's,
#: from CPU time normalised by the reference workload (see drivers.calibrate).
GATE_HTTP_KEY = "norm_overhead_ratio_to_stack"
#: ... and for logging: devkit's records/s over stdlib's, from the same normalised cost.
GATE_LOGGING_KEY = "norm_ratio_to_baseline"


def source_info() -> dict[str, Any]:
    """Which devkit was measured: results from a dirty tree are not comparable to a commit."""
    info: dict[str, Any] = {}
    try:
        info["devkit_version"] = metadata.version("devkit-observability")
    except metadata.PackageNotFoundError:
        info["devkit_version"] = None
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return info
    info["git_commit"] = head.stdout.strip()
    info["src_modified_files"] = len(dirty.stdout.splitlines())
    return info


#: Distributions whose versions decide the numbers (the peers devkit is compared with).
PACKAGES = (
    "opentelemetry-sdk",
    "opentelemetry-instrumentation-asgi",
    "structlog",
    "prometheus-client",
    "starlette",
    "fastapi",
    "flask",
    "uvicorn",
    "python-json-logger",
)


def cpu_model() -> str | None:
    """The CPU model name from /proc/cpuinfo (Linux), or None."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return None


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine_info(with_wrk: bool = False) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": package_versions(),
    }
    if with_wrk:
        info["wrk"] = server.wrk_version()
    return info


def _summary_dict(summary: stats.Summary, unit: str, prefix: str = "") -> dict[str, float]:
    return {
        f"{prefix}median_{unit}": round(summary.median, 3),
        f"{prefix}min_{unit}": round(summary.minimum, 3),
        f"{prefix}max_{unit}": round(summary.maximum, 3),
    }


def _export(vrun: VariantRun) -> dict[str, Any] | None:
    if not vrun.traffic or vrun.operations == 0:
        return None
    spans = [t.spans for t in vrun.traffic]
    total_bytes = sum(t.bytes for t in vrun.traffic)
    out: dict[str, Any] = {
        "posts": sum(t.requests for t in vrun.traffic),
        "bytes": total_bytes,
        "bytes_per_request": round(total_bytes / vrun.operations, 1),
    }
    if all(s is not None for s in spans):
        total_spans = sum(s for s in spans if s is not None)
        out["spans"] = total_spans
        out["spans_per_request"] = round(total_spans / vrun.operations, 3)
    return out


def _compare(
    samples: dict[str, list[float]], suite: Suite, prefix: str, unit: str = "us"
) -> dict[str, Any]:
    """Per variant: summary, overhead vs bare and overhead ratio vs the stack."""
    summaries = {name: stats.summarize(values) for name, values in samples.items() if values}
    bare = summaries.get(suite.baseline)
    stack = summaries.get(suite.reference) if suite.reference else None
    stack_overhead = stats.overhead(stack, bare) if stack and bare else None
    out: dict[str, Any] = {}
    for name, summary in summaries.items():
        entry: dict[str, Any] = _summary_dict(summary, unit, prefix)
        entry[f"{prefix}samples_{unit}"] = [round(v, 3) for v in samples[name]]
        if bare is not None:
            over = stats.overhead(summary, bare)
            entry[f"{prefix}overhead_{unit}"] = round(over, 3)
            entry[f"{prefix}ratio_to_bare"] = round(summary.median / bare.median, 3)
            if stack_overhead is not None and name != suite.baseline:
                ratio = stats.overhead_ratio(over, stack_overhead)
                entry[f"{prefix}overhead_ratio_to_stack"] = (
                    None if ratio is None else round(ratio, 3)
                )
        out[name] = entry
    return out


def _http_suite(suite: Suite, runs: dict[str, VariantRun]) -> dict[str, Any]:
    ok = {name: vrun for name, vrun in runs.items() if vrun.status == "ok"}
    wall = _compare({n: v.samples.get("request", []) for n, v in ok.items()}, suite, "")
    cpu = _compare({n: v.cpu_samples.get("request", []) for n, v in ok.items()}, suite, "cpu_")
    norm = _compare(
        {n: v.norm_samples.get("request", []) for n, v in ok.items()}, suite, "norm_", "mref"
    )
    variants: dict[str, Any] = {}
    for name, vrun in runs.items():
        entry: dict[str, Any] = {"status": vrun.status}
        if vrun.reason:
            entry["reason"] = vrun.reason
        entry.update(wall.get(name, {}))
        entry.update(cpu.get(name, {}))
        entry.update(norm.get(name, {}))
        export = _export(vrun)
        if export is not None and export["posts"]:
            entry["export"] = export
            entry["final_flush_us"] = vrun.flush_us
        if vrun.warnings:
            entry["warnings"] = vrun.warnings
        variants[name] = entry
    return {
        "unit": "us/request",
        "baseline": suite.baseline,
        "reference": suite.reference,
        "variants": variants,
    }


def _logging_suite(suite: Suite, runs: dict[str, VariantRun]) -> dict[str, Any]:
    rates: dict[str, dict[str, stats.Summary]] = {}
    norms: dict[str, dict[str, stats.Summary]] = {}
    for name, vrun in runs.items():
        if vrun.status == "ok":
            rates[name] = {
                case: stats.summarize([stats.per_second(us) for us in samples])
                for case, samples in vrun.samples.items()
            }
            norms[name] = {
                case: stats.summarize(samples) for case, samples in vrun.norm_samples.items()
            }
    base = rates.get(suite.baseline, {})
    base_norm = norms.get(suite.baseline, {})
    variants: dict[str, Any] = {}
    for name, vrun in runs.items():
        entry: dict[str, Any] = {"status": vrun.status}
        if vrun.reason:
            entry["reason"] = vrun.reason
        for case, summary in rates.get(name, {}).items():
            case_entry: dict[str, Any] = _summary_dict(summary, "per_s")
            case_entry["us_per_record_median"] = round(
                stats.summarize(vrun.samples[case]).median, 3
            )
            if vrun.cpu_samples.get(case):
                case_entry["cpu_us_per_record_median"] = round(
                    stats.summarize(vrun.cpu_samples[case]).median, 3
                )
            if case in base:
                case_entry["ratio_to_baseline"] = round(summary.median / base[case].median, 3)
            norm = norms.get(name, {}).get(case)
            if norm is not None:
                case_entry["norm_mref_per_record_median"] = round(norm.median, 3)
                case_entry["norm_samples_mref"] = [round(v, 3) for v in vrun.norm_samples[case]]
                if case in base_norm:
                    # Throughput ratio = inverse cost ratio, in reference units.
                    case_entry["norm_ratio_to_baseline"] = round(
                        base_norm[case].median / norm.median, 3
                    )
            entry[case] = case_entry
        if vrun.warnings:
            entry["warnings"] = vrun.warnings
        variants[name] = entry
    return {
        "unit": "records/s",
        "baseline": suite.baseline,
        "cases": list(suite.measures),
        "variants": variants,
    }


def _server_suite(suite: Suite, runs: dict[str, VariantRun]) -> dict[str, Any]:
    """Per variant: medians of requests/s and latency percentiles, each with its ratio to
    bare, and the server's CPU time per request compared like the in-process suites."""
    ok = {name: vrun for name, vrun in runs.items() if vrun.status == "ok"}
    summaries = {
        name: {m: stats.summarize(v) for m, v in vrun.samples.items() if v}
        for name, vrun in ok.items()
    }
    bare = summaries.get(suite.baseline, {})
    cpu = _compare({n: v.cpu_samples.get("request", []) for n, v in ok.items()}, suite, "cpu_")
    variants: dict[str, Any] = {}
    for name, vrun in runs.items():
        entry: dict[str, Any] = {"status": vrun.status}
        if vrun.reason:
            entry["reason"] = vrun.reason
        for measure, summary in summaries.get(name, {}).items():
            unit = "per_s" if measure == "requests_per_s" else "ms"
            m: dict[str, Any] = _summary_dict(summary, unit)
            m["samples"] = [round(v, 3) for v in vrun.samples[measure]]
            if measure in bare:
                m["ratio_to_bare"] = round(summary.median / bare[measure].median, 3)
                paired = _paired_ratio(vrun.samples[measure], ok[suite.baseline].samples[measure])
                if paired is not None:
                    m["paired_ratio_to_bare"] = round(paired, 3)
            entry[measure] = m
        entry.update(cpu.get(name, {}))
        export = _export(vrun)
        if export is not None and export["posts"]:
            entry["export"] = export
        if vrun.operations:
            entry["requests_answered"] = vrun.operations
        if vrun.warnings:
            entry["warnings"] = vrun.warnings
        variants[name] = entry
    return {
        "unit": "requests/s",
        "baseline": suite.baseline,
        "reference": suite.reference,
        "measures": list(suite.measures),
        "variants": variants,
    }


def _paired_ratio(samples: list[float], baseline: list[float]) -> float | None:
    """Median over rounds of sample / baseline sample of the same round.

    A round runs the variants back to back, so its pair shares the machine's speed of
    that moment; on a machine whose speed drifts over minutes this ratio varies less than
    the ratio of the two medians. None when a round is missing from either list.
    """
    if not samples or len(samples) != len(baseline) or not all(baseline):
        return None
    return stats.summarize([a / b for a, b in zip(samples, baseline, strict=True)]).median


_SERVER_COMMANDS = {
    "uvicorn": "uvicorn (1 worker, --no-access-log, --log-level warning)",
    "gunicorn": "gunicorn (1 sync worker, no access log, --log-level warning)",
}


def analyse(result: RunResult) -> dict[str, Any]:
    """The results document: machine, run settings and per-suite numbers."""
    plan = result.plan
    suites: dict[str, Any] = {}
    for name, runs in result.variants.items():
        suite = SUITES[name]
        if name in result.unavailable:
            suites[name] = {"status": "unavailable", "reason": result.unavailable[name]}
        elif suite.is_server:
            suites[name] = _server_suite(suite, runs)
        elif suite.is_http:
            suites[name] = _http_suite(suite, runs)
        else:
            suites[name] = _logging_suite(suite, runs)
    has_server = any(SUITES[name].is_server for name in plan.suites)
    run: dict[str, Any] = {
        "rounds": plan.rounds,
        "requests_per_round": plan.requests,
        "records_per_round": plan.records,
        "seed": plan.seed,
        "duration_s": round(result.duration_s, 1),
    }
    if has_server:
        run["server_rounds"] = plan.server_rounds
        servers = sorted(
            {SUITES[name].server or "uvicorn" for name in plan.suites if SUITES[name].is_server}
        )
        run["server"] = {
            "command": " and ".join(_SERVER_COMMANDS[name] for name in servers),
            "load": plan.load.describe(),
            "duration_s": plan.load.duration_s,
            "connections": plan.load.connections,
            "threads": plan.load.threads,
            "warmup_s": plan.load.warmup_s,
        }
    return {
        "machine": machine_info(with_wrk=has_server),
        "run": run,
        "source": source_info(),
        "suites": suites,
    }


def gate_outcomes(doc: dict[str, Any], devkit: str = "devkit") -> dict[str, stats.Outcome]:
    """Per suite: devkit's overhead ratio to the stack (HTTP) or throughput ratio (logging)."""
    outcomes: dict[str, stats.Outcome] = {}
    for name, data in doc["suites"].items():
        if data.get("status") == "unavailable":
            outcomes[name] = f"the suite is unavailable: {data.get('reason')}"
            continue
        entry = data["variants"].get(devkit)
        if entry is None:
            outcomes[name] = f"the {devkit} variant was not run"
            continue
        if entry["status"] != "ok":
            outcomes[name] = f"the {devkit} variant is {entry['status']}: {entry.get('reason')}"
            continue
        if data["unit"] == "records/s":
            ratios = [
                entry[c][GATE_LOGGING_KEY]
                for c in data["cases"]
                if GATE_LOGGING_KEY in entry.get(c, {})
            ]
            # The claim must hold for every record shape, so the worst case is gated.
            outcomes[name] = min(ratios) if ratios else "the baseline logger was not measured"
            continue
        if data["unit"] == "requests/s":
            ratio = entry.get("requests_per_s", {}).get("ratio_to_bare")
            outcomes[name] = ratio if ratio is not None else "the bare app was not measured"
            continue
        ratio = entry.get(GATE_HTTP_KEY)
        if ratio is None:
            outcomes[name] = "the stack's overhead was not measured or not above zero"
        else:
            outcomes[name] = float(ratio)
    return outcomes


# -- markdown -----------------------------------------------------------------------------


def _fmt(value: Any, spec: str = ".1f") -> str:
    return "—" if value is None else format(value, spec)


def _http_markdown(name: str, data: dict[str, Any], rounds: int) -> list[str]:
    lines = [
        f"### {name} — µs per request (median of {rounds} rounds)",
        "",
        "| variant | median | min | max | overhead | x bare | overhead / stack "
        "| CPU overhead | CPU overhead / stack | norm. overhead / stack "
        "| spans/req exported | export B/req |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    notes = []
    for variant, e in data["variants"].items():
        if e["status"] != "ok":
            lines.append(f"| {variant} | {e['status']} |" + " |" * 11)
            notes.append(f"- **{variant}** {e['status']}: {e.get('reason', '')}")
            continue
        export = e.get("export") or {}
        lines.append(
            f"| {variant} | {_fmt(e['median_us'])} | {_fmt(e['min_us'])} | {_fmt(e['max_us'])} "
            f"| {_fmt(e.get('overhead_us'), '+.1f')} | {_fmt(e.get('ratio_to_bare'), '.2f')} "
            f"| {_fmt(e.get('overhead_ratio_to_stack'), '.2f')} "
            f"| {_fmt(e.get('cpu_overhead_us'), '+.1f')} "
            f"| {_fmt(e.get('cpu_overhead_ratio_to_stack'), '.2f')} "
            f"| {_fmt(e.get('norm_overhead_ratio_to_stack'), '.2f')} "
            f"| {_fmt(export.get('spans_per_request'), '.2f')} "
            f"| {_fmt(export.get('bytes_per_request'), '.0f')} |"
        )
        notes.extend(f"- **{variant}** worker said: `{w}`" for w in e.get("warnings", [])[:3])
    return [*lines, "", *notes, ""] if notes else [*lines, ""]


def _logging_markdown(data: dict[str, Any], rounds: int) -> list[str]:
    cases = data["cases"]
    head = "| variant |" + "".join(
        f" {c} records/s | min-max | x {data['baseline']} | x (norm.) |" for c in cases
    )
    lines = [
        f"### logging — records per second (median of {rounds} rounds)",
        "",
        head,
        "|---|" + "--:|--:|--:|--:|" * len(cases),
    ]
    notes = []
    for variant, e in data["variants"].items():
        if e["status"] != "ok":
            lines.append(f"| {variant} |" + " |" * (4 * len(cases)))
            notes.append(f"- **{variant}** {e['status']}: {e.get('reason', '')}")
            continue
        row = f"| {variant} |"
        for c in cases:
            ce = e[c]
            row += (
                f" {ce['median_per_s']:,.0f} | {ce['min_per_s']:,.0f}-{ce['max_per_s']:,.0f} "
                f"| {_fmt(ce.get('ratio_to_baseline'), '.2f')} "
                f"| {_fmt(ce.get('norm_ratio_to_baseline'), '.2f')} |"
            )
        lines.append(row)
    lines.append("")
    lines.append(
        'Cases: `plain` = `info("order placed", order_id=..., amount=..., user_id=...)`; '
        '`pii` = `info("login for ada@example.com", card="4111 1111 1111 1111")`. '
        "`x (norm.)`: the same ratio from CPU time in units of the reference workload."
    )
    return [*lines, "", *notes, ""] if notes else [*lines, ""]


def _server_markdown(name: str, data: dict[str, Any], rounds: int) -> list[str]:
    lines = [
        f"### {name} — requests per second and latency under load (median of {rounds} rounds)",
        "",
        "| variant | req/s | min-max | x bare | x bare, paired | p50 ms | x bare | p99 ms "
        "| x bare | server CPU µs/req | CPU overhead | CPU overhead / stack "
        "| spans/req exported |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    notes = []
    for variant, e in data["variants"].items():
        if e["status"] != "ok":
            lines.append(f"| {variant} | {e['status']} |" + " |" * 11)
            notes.append(f"- **{variant}** {e['status']}: {e.get('reason', '')}")
            continue
        rps, p50, p99 = e["requests_per_s"], e["p50_ms"], e["p99_ms"]
        export = e.get("export") or {}
        lines.append(
            f"| {variant} | {rps['median_per_s']:,.0f} "
            f"| {rps['min_per_s']:,.0f}-{rps['max_per_s']:,.0f} "
            f"| {_fmt(rps.get('ratio_to_bare'), '.2f')} "
            f"| {_fmt(rps.get('paired_ratio_to_bare'), '.2f')} "
            f"| {_fmt(p50['median_ms'], '.2f')} | {_fmt(p50.get('ratio_to_bare'), '.2f')} "
            f"| {_fmt(p99['median_ms'], '.2f')} | {_fmt(p99.get('ratio_to_bare'), '.2f')} "
            f"| {_fmt(e.get('cpu_median_us'))} | {_fmt(e.get('cpu_overhead_us'), '+.1f')} "
            f"| {_fmt(e.get('cpu_overhead_ratio_to_stack'), '.2f')} "
            f"| {_fmt(export.get('spans_per_request'), '.2f')} |"
        )
        notes.extend(f"- **{variant}** said: `{w}`" for w in e.get("warnings", [])[:3])
    lines += [
        "",
        "`x bare` for req/s: higher is better (devkit's target is at least 0.70); for "
        "latency: lower is better. `x bare, paired`: the median over rounds of each "
        "round's req/s over the bare app's in the same round, steadier when the machine's "
        "speed drifts. Server CPU: the server's user + system time (uvicorn's process; "
        "gunicorn's master and worker) "
        "during the timed load divided by the requests wrk completed. `spans/req exported`: "
        "spans the receiver got over every request the server answered.",
    ]
    return [*lines, "", *notes, ""] if notes else [*lines, ""]


def _describe_source(source: dict[str, Any]) -> str:
    text = f"devkit {source.get('devkit_version') or 'unknown version'}"
    if source.get("git_commit"):
        text += f" at {source['git_commit'][:12]}"
        if source.get("src_modified_files"):
            text += f" with {source['src_modified_files']} uncommitted change(s) in src/"
    return text


def _describe_run(doc: dict[str, Any]) -> str:
    run = doc["run"]
    kinds = {SUITES[name].kind for name in doc["suites"] if name in SUITES}
    parts = []
    if kinds - {"server"}:
        parts.append(
            f"{run['rounds']} interleaved rounds, {run['requests_per_round']} requests / "
            f"{run['records_per_round']} records per worker"
        )
    if "server" in kinds and "server" in run:
        parts.append(
            f"server level: {run['server_rounds']} interleaved rounds of {run['server']['command']}"
            f" loaded by {run['server']['load']} on {server.HOST}"
        )
    return "; ".join(parts) + f", {run['duration_s']} s"


def _describe_machine(machine: dict[str, Any]) -> str:
    text = f"Python {machine['python']} on {machine['platform']}, {machine['cpu_count']} CPUs"
    if machine.get("cpu_model"):
        text += f" ({machine['cpu_model']})"
    packages = {k: v for k, v in (machine.get("packages") or {}).items() if v}
    if machine.get("wrk"):
        packages["wrk"] = machine["wrk"].removeprefix("wrk ")
    if packages:
        text += "; " + ", ".join(f"{k} {v}" for k, v in packages.items())
    return text


def markdown(doc: dict[str, Any], gate: stats.GateReport | None = None) -> str:
    machine, run = doc["machine"], doc["run"]
    lines = [
        "## devkit benchmarks",
        "",
        f"{_describe_machine(machine)}.",
        "",
        f"{_describe_run(doc)}; {_describe_source(doc.get('source', {}))}.",
        "Overhead = median(variant) - median(bare). `overhead / stack` compares with the "
        "hand-assembled stack (OTel + Prometheus + correlation id + structlog access log). "
        "CPU columns: the same from the worker's CPU time (all its threads, export included), "
        "which other tenants of a busy machine do not inflate. `norm.`: the same from CPU "
        "time divided by a fixed reference workload timed around each batch in the same "
        "worker, which cancels the machine's speed swings (what the gate reads).",
        "",
    ]
    for name, data in doc["suites"].items():
        if data.get("status") == "unavailable":
            lines += [f"### {name} — unavailable: {data.get('reason')}", ""]
        elif data["unit"] == "records/s":
            lines += _logging_markdown(data, run["rounds"])
        elif data["unit"] == "requests/s":
            lines += _server_markdown(name, data, run.get("server_rounds", run["rounds"]))
        else:
            lines += _http_markdown(name, data, run["rounds"])
    if gate is not None:
        lines += [
            "### gate: " + ("PASSED" if gate.passed else "FAILED"),
            "",
            "```",
            *gate.lines,
            "```",
            "",
        ]
    return "\n".join(lines)


def write_results(doc: dict[str, Any], text: str, directory: Path, stem: str = "latest") -> None:
    """Write ``STEM.json`` and ``STEM.md`` atomically (a reader never sees half)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in (
        (f"{stem}.json", json.dumps(doc, indent=2, ensure_ascii=False) + "\n"),
        (f"{stem}.md", text),
    ):
        tmp = directory / (name + ".tmp")
        tmp.write_text(content, encoding="utf-8")
        tmp.replace(directory / name)
