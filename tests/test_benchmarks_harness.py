"""The benchmark harness's pure helpers: summaries, ratios, the gate, the receiver count.

No timing here: the machine is shared and noisy, so only the arithmetic and decisions the
harness makes from numbers are tested, with numbers chosen by the test.
"""

from __future__ import annotations

import io
import json
import os
import random
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from devkit.testing import Traffic

# benchmarks/ is a top-level package of the repository, not part of the installed wheel.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from benchmarks import __main__ as bench_main  # noqa: E402
from benchmarks import (  # noqa: E402
    instructions,
    paired,
    report,
    runner,
    server,
    server_app,
    stats,
    variants,
)
from benchmarks.drivers import batch_sizes, calibrate, normalised  # noqa: E402
from benchmarks.suites import SUITES  # noqa: E402

BUDGET = {"asgi-starlette": 0.5, "wsgi-flask": 0.5, "logging_min_ratio": 1.0}


def test_summarize_gives_median_min_max_and_count() -> None:
    summary = stats.summarize([30.0, 10.0, 20.0, 1000.0, 25.0])
    assert summary == stats.Summary(median=25.0, minimum=10.0, maximum=1000.0, rounds=5)


def test_summarize_even_count_averages_the_middle_pair() -> None:
    assert stats.summarize([4.0, 1.0, 3.0, 2.0]).median == 2.5


def test_summarize_rejects_no_samples() -> None:
    with pytest.raises(ValueError, match="no samples"):
        stats.summarize([])


def test_overhead_is_difference_of_medians() -> None:
    bare = stats.summarize([10.0, 12.0, 11.0])
    variant = stats.summarize([100.0, 500.0, 111.0])
    assert stats.overhead(variant, bare) == pytest.approx(100.0)


def test_overhead_ratio_against_reference() -> None:
    assert stats.overhead_ratio(50.0, 200.0) == pytest.approx(0.25)
    assert stats.overhead_ratio(300.0, 200.0) == pytest.approx(1.5)


@pytest.mark.parametrize("reference", [0.0, -3.0])
def test_overhead_ratio_is_none_when_reference_adds_nothing(reference: float) -> None:
    assert stats.overhead_ratio(50.0, reference) is None


def test_per_second() -> None:
    assert stats.per_second(4.0) == pytest.approx(250_000.0)
    with pytest.raises(ValueError, match="positive"):
        stats.per_second(0.0)


def test_gate_passes_within_budget() -> None:
    report_ = stats.check_gate(BUDGET, {"asgi-starlette": 0.3, "wsgi-flask": 0.5, "logging": 1.2})
    assert report_.passed
    assert not any(line.startswith("FAIL") for line in report_.lines)


def test_gate_fails_when_overhead_ratio_exceeds_budget() -> None:
    report_ = stats.check_gate(BUDGET, {"asgi-starlette": 0.51, "wsgi-flask": 0.1})
    assert not report_.passed
    assert any("asgi-starlette" in line and "0.51 > budget 0.50" in line for line in report_.lines)


def test_gate_fails_when_logging_throughput_below_minimum() -> None:
    report_ = stats.check_gate(BUDGET, {"logging": 0.9})
    assert not report_.passed
    assert any(line.startswith("FAIL logging") for line in report_.lines)


def test_gate_fails_when_devkit_is_unavailable() -> None:
    reason = "the devkit variant is unavailable: devkit has no attribute 'asgi'"
    report_ = stats.check_gate(BUDGET, {"asgi-starlette": reason, "wsgi-flask": 0.1})
    assert not report_.passed
    assert any("cannot be measured" in line and "asgi" in line for line in report_.lines)


def test_gate_skips_suites_not_run_but_fails_when_nothing_checked() -> None:
    partial = stats.check_gate(BUDGET, {"wsgi-flask": 0.2})
    assert partial.passed
    assert "skip asgi-starlette: not run" in partial.lines

    nothing = stats.check_gate(BUDGET, {"some-other-suite": 0.1})
    assert not nothing.passed


def _doc(devkit: dict[str, Any]) -> dict[str, Any]:
    return {
        "suites": {
            "asgi-starlette": {
                "unit": "us/request",
                "variants": {"bare": {"status": "ok"}, "devkit": devkit},
            },
            "logging": {
                "unit": "records/s",
                "cases": ["plain", "pii"],
                "variants": {
                    "devkit": {
                        "status": "ok",
                        "plain": {"ratio_to_baseline": 2.0, "norm_ratio_to_baseline": 1.9},
                        "pii": {"ratio_to_baseline": 1.2, "norm_ratio_to_baseline": 0.8},
                    }
                },
            },
        }
    }


def test_gate_outcomes_read_devkit_normalised_ratio_and_worst_logging_case() -> None:
    devkit = {
        "status": "ok",
        "overhead_ratio_to_stack": 0.2,
        "cpu_overhead_ratio_to_stack": 0.3,
        "norm_overhead_ratio_to_stack": 0.4,
    }
    outcomes = report.gate_outcomes(_doc(devkit))
    assert outcomes == {"asgi-starlette": 0.4, "logging": 0.8}


def test_gate_outcomes_explain_unavailable_devkit() -> None:
    outcome = report.gate_outcomes(_doc({"status": "unavailable", "reason": "not written"}))
    assert outcome["asgi-starlette"] == "the devkit variant is unavailable: not written"


def test_gate_outcomes_refuse_ratio_without_stack_overhead() -> None:
    devkit = {"status": "ok", "overhead_ratio_to_stack": 0.1, "norm_overhead_ratio_to_stack": None}
    outcome = report.gate_outcomes(_doc(devkit))
    assert isinstance(outcome["asgi-starlette"], str)


def test_committed_budget_covers_every_default_suite() -> None:
    budget = bench_main._load_budget(Path(_ROOT) / "benchmarks" / "budget.json")
    defaults = {name for name, suite in SUITES.items() if suite.default}
    gated = {k.removesuffix(stats.MIN_RATIO_SUFFIX) for k in budget}
    assert gated == defaults
    assert all(0 < v < 1 for k, v in budget.items() if not k.endswith(stats.MIN_RATIO_SUFFIX))


def test_normalised_cost_divides_each_part_by_the_calibrations_around_it() -> None:
    # Two batches of 100 ns and 300 ns; the machine halved its speed during the second
    # (reference 10 -> 20 ns): both are worth 10 references.
    assert normalised([100, 300], [10, 10, 20]) == pytest.approx(100 / 10 + 300 / 15)
    with pytest.raises(ValueError, match="calibration"):
        normalised([100, 300], [10, 10])


def test_calibrate_times_the_reference_workload() -> None:
    assert calibrate() > 0


@pytest.mark.parametrize(
    ("total", "expected"), [(10, [1] * 10), (25, [3] * 5 + [2] * 5), (3, [1, 1, 1])]
)
def test_batch_sizes_cover_total(total: int, expected: list[int]) -> None:
    assert batch_sizes(total) == expected
    assert sum(batch_sizes(total)) == total


def test_receiver_counts_bytes_and_spans() -> None:
    # opentelemetry-proto is in the dev extra: a missing install fails here, never skips.
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb

    request = pb.ExportTraceServiceRequest()
    scope_spans = request.resource_spans.add().scope_spans.add()
    for name in ("a", "b"):
        scope_spans.spans.add().name = name
    body = request.SerializeToString()

    receiver = runner.start_receiver()
    try:
        post = urllib.request.Request(
            receiver.endpoint + "/v1/traces",
            data=body,
            headers={"Content-Type": "application/x-protobuf"},
        )
        with urllib.request.urlopen(post, timeout=10) as response:
            assert response.status == 200
            assert response.read() == b""
        traffic = receiver.take()
    finally:
        receiver.stop()
    assert (traffic.requests, traffic.bytes, traffic.spans) == (1, len(body), 2)
    assert receiver.take().requests == 0


def test_receiver_answers_datadog_trace_payloads_as_the_agent_does() -> None:
    receiver = runner.start_receiver()
    try:
        put = urllib.request.Request(
            receiver.endpoint + "/v0.5/traces", data=b"\x91\x90", method="PUT"
        )
        with urllib.request.urlopen(put, timeout=10) as response:
            assert response.headers["Content-Type"] == "application/json"
            assert json.loads(response.read()) == {"rate_by_service": {}}
        assert receiver.take().requests == 1
    finally:
        receiver.stop()


# -- server-level suite -------------------------------------------------------------------

_WRK_OUTPUT = """\
Running 8s test @ http://127.0.0.1:40123/items/42
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.31ms  412.50us  19.03ms   91.20%
    Req/Sec     6.95k   301.22     7.31k    87.50%
  Latency Distribution
     50%    2.20ms
     75%    2.41ms
     90%    2.66ms
     99%    1.02s
  55321 requests in 8.00s, 7.86MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   6914.77
Transfer/sec:      0.98MB
"""


def test_parse_wrk_reads_totals_percentiles_and_errors() -> None:
    result = server.parse_wrk(_WRK_OUTPUT)
    assert result.requests == 55321
    assert result.duration_s == pytest.approx(8.0)
    assert result.requests_per_s == pytest.approx(6914.77)
    assert result.latency_ms == pytest.approx({50: 2.2, 75: 2.41, 90: 2.66, 99: 1020.0})
    assert result.socket_errors == {"connect": 0, "read": 2, "write": 0, "timeout": 1}
    assert result.non_2xx == 4
    assert result.errors == 7


def test_parse_wrk_converts_microseconds_and_defaults_to_no_errors() -> None:
    text = _WRK_OUTPUT.replace("2.20ms", "950.00us").replace("1.02s", "3.80ms")
    text = "\n".join(
        line for line in text.splitlines() if "Socket errors" not in line and "Non-2xx" not in line
    )
    result = server.parse_wrk(text)
    assert result.latency_ms[50] == pytest.approx(0.95)
    assert result.latency_ms[99] == pytest.approx(3.8)
    assert (result.socket_errors, result.non_2xx, result.errors) == ({}, 0, 0)


@pytest.mark.parametrize(
    "text",
    [
        "unable to connect to 127.0.0.1:1 Connection refused",
        _WRK_OUTPUT.replace("Latency Distribution", "").replace("     50%    2.20ms\n", ""),
    ],
)
def test_parse_wrk_rejects_output_without_the_figures(text: str) -> None:
    with pytest.raises(ValueError, match="wrk output"):
        server.parse_wrk(text)


def test_server_command_is_one_uvicorn_worker_on_loopback_without_access_log() -> None:
    cmd = server.command(8123)
    assert cmd[1:4] == ["-m", "uvicorn", "benchmarks.server_app:create_app"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--port") + 1] == "8123"
    assert cmd[cmd.index("--workers") + 1] == "1"
    assert cmd[cmd.index("--log-level") + 1] == "warning"
    assert "--no-access-log" in cmd and "--factory" in cmd
    # The parser and loop are pinned: installing httptools/uvloop changes nothing.
    assert cmd[cmd.index("--http") + 1] == "h11"
    assert cmd[cmd.index("--loop") + 1] == "asyncio"
    standard = server.command(8123, "standard")
    assert standard[standard.index("--http") + 1] == "httptools"
    assert standard[standard.index("--loop") + 1] == "uvloop"


def test_standard_stack_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert server.stack_unavailable("h11") is None
    monkeypatch.setattr(server, "find_spec", lambda name: None if name == "uvloop" else object())
    assert server.stack_unavailable("standard") == "uvloop not installed (pip install uvloop)"
    monkeypatch.setattr(server, "find_spec", lambda name: None)
    assert server.stack_unavailable("h11") == "h11 not installed (pip install h11)"
    assert server.stack_unavailable("standard") == (
        "httptools and uvloop not installed (pip install httptools uvloop)"
    )


def test_server_suite_unavailable_without_wrk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server.shutil, "which", lambda name: None)
    assert server.unavailable_reason() == "wrk not installed (apt-get install wrk)"
    assert server.wrk_version() is None


def test_missing_wrk_excludes_the_server_suite_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    reason = "wrk not installed (apt-get install wrk)"
    monkeypatch.setattr(server, "unavailable_reason", lambda: reason)

    def no_measurement(*args: Any) -> Any:
        raise AssertionError("an unavailable suite must not be measured")

    monkeypatch.setattr(server, "measure", no_measurement)
    said: list[str] = []
    plan = runner.Plan(
        suites={"server-uvicorn": ("bare", "stack", "devkit")},
        rounds=7,
        requests=1,
        records=1,
        seed=1,
    )
    result = runner.run(plan, progress=said.append)

    assert result.unavailable == {"server-uvicorn": reason}
    assert said == [f"server-uvicorn: unavailable: {reason}; the suite is excluded"]
    assert {v.status for v in result.variants["server-uvicorn"].values()} == {"unavailable"}
    doc = report.analyse(result)
    assert doc["suites"]["server-uvicorn"] == {"status": "unavailable", "reason": reason}
    assert f"### server-uvicorn — unavailable: {reason}" in report.markdown(doc)
    outcome = report.gate_outcomes(doc)["server-uvicorn"]
    assert isinstance(outcome, str) and "wrk not installed" in outcome


def _parse(*argv: str) -> runner.Plan:
    parser = bench_main._parser()
    return bench_main._plan(parser, parser.parse_args(list(argv)))


@pytest.mark.parametrize("argv", [(), ("--quick",)])
def test_server_suite_runs_only_when_named(argv: tuple[str, ...]) -> None:
    plan = _parse(*argv)
    assert "server-uvicorn" not in plan.suites
    assert set(plan.suites) == {"asgi-starlette", "asgi-fastapi", "wsgi-flask", "logging"}


@pytest.mark.parametrize(
    ("argv", "rounds"),
    [((), 3), (("--quick",), 1), (("--rounds", "5"), 5)],
)
def test_server_suite_rounds(argv: tuple[str, ...], rounds: int) -> None:
    plan = _parse("--suite", "server-uvicorn", *argv)
    assert plan.suites["server-uvicorn"][:1] == ("bare",)
    assert plan.rounds_of(SUITES["server-uvicorn"]) == rounds
    assert plan.total_rounds == rounds


def test_mixed_plan_runs_each_suite_its_own_rounds() -> None:
    plan = _parse("--suite", "server-uvicorn", "--suite", "wsgi-flask", "--variant", "devkit")
    assert plan.total_rounds == 7
    rng = random.Random(0)
    first = runner._schedule(plan, rng, 0)
    last = runner._schedule(plan, rng, 6)
    assert ("server-uvicorn", "devkit") in first
    assert {s for s, _ in last} == {"wsgi-flask"}


def test_server_only_runs_write_their_own_results_files() -> None:
    assert bench_main.results_name({"server-uvicorn": ("bare",)}) == "server"
    assert bench_main.results_name({"asgi-starlette": ("bare",)}) == "latest"
    both = {"server-uvicorn": ("bare",), "logging": ("devkit",)}
    assert bench_main.results_name(both) == "latest"


def test_gunicorn_runs_write_their_own_results_files() -> None:
    assert bench_main.results_name({"server-gunicorn": ("bare",)}) == "server-gunicorn"
    both = {"server-gunicorn": ("bare",), "server-uvicorn": ("bare",)}
    assert bench_main.results_name(both) == "server"
    assert SUITES["server-gunicorn"].server == "gunicorn"
    assert "server-gunicorn" not in _parse().suites


def test_gunicorn_command_is_one_sync_worker_on_loopback() -> None:
    cmd = server.gunicorn_command(8123)
    assert cmd[1:4] == ["-m", "gunicorn", "benchmarks.server_app:create_wsgi_app()"]
    assert cmd[cmd.index("--bind") + 1] == "127.0.0.1:8123"
    assert cmd[cmd.index("--workers") + 1] == "1"
    assert cmd[cmd.index("--worker-class") + 1] == "sync"
    assert cmd[cmd.index("--log-level") + 1] == "warning"
    assert "--access-logfile" not in cmd  # gunicorn writes no access log unless asked
    with pytest.raises(ValueError, match="unknown server"):
        server.LiveServer("bare", "http://127.0.0.1:9", {}, Path("."), server="hypercorn")


def test_server_app_builds_the_wsgi_variant() -> None:
    import flask

    app = server_app.build_wsgi("bare", "http://127.0.0.1:9", io.BytesIO())
    assert isinstance(app, flask.Flask)
    response = app.test_client().get("/items/42")
    assert response.status_code == 200 and response.get_json()["item_id"] == 42
    with pytest.raises(ValueError, match="unknown WSGI variant"):
        server_app.build_wsgi("nope", "http://127.0.0.1:9", io.BytesIO())


def test_cpu_use_of_a_process_tree_counts_its_children() -> None:
    import subprocess

    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    child = subprocess.Popen([sys.executable, "-c", burn + "\ntime.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while server.CpuUse.read(child.pid).total_s < 0.25 and time.monotonic() < deadline:
            time.sleep(0.05)
        own = server.CpuUse.read(os.getpid())
        tree = server.CpuUse.read_tree(os.getpid())
        # The child's CPU is in the tree's total and its main thread is a request thread.
        assert tree.total_s >= own.total_s + 0.25
        assert tree.request_thread_s >= 0.25
    finally:
        child.kill()
        child.wait()


def test_server_app_builds_the_variant_with_a_flushing_lifespan() -> None:
    from starlette.applications import Starlette

    app = server_app.build("bare", "http://127.0.0.1:9", io.BytesIO())
    assert isinstance(app, Starlette)
    assert app.router.lifespan_context.__name__ == "lifespan"
    with pytest.raises(ValueError, match="unknown ASGI variant"):
        server_app.build("nope", "http://127.0.0.1:9", io.BytesIO())


def test_server_app_switches_the_named_devkit_parts_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from devkit import _state

    # The devkit variant sets these for its own process; give them back after the test.
    for name in ("DEVKIT_SERVICE_NAME", "DEVKIT_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.setenv(name, "")
    server_app.build("devkit", "http://127.0.0.1:9", io.BytesIO(), off=["logs", "span"])
    core = _state.core()
    assert core is not None
    assert core.logs is None and core.server_spans is None
    assert core.metrics is not None
    with pytest.raises(ValueError, match="not tracing"):
        variants.switch_off_devkit(["tracing"])


def test_switching_devkit_parts_off_needs_devkit() -> None:
    with pytest.raises(ValueError, match="needs a devkit variant"):
        variants.switch_off_devkit(["logs"])


def _server_run(rps: list[float], cpu: list[float], spans: int) -> runner.VariantRun:
    vrun = runner.VariantRun()
    vrun.samples = {
        "requests_per_s": rps,
        "p50_ms": [1000.0 / r for r in rps],
        "p99_ms": [4000.0 / r for r in rps],
    }
    vrun.cpu_samples = {"request": cpu}
    vrun.traffic = [Traffic(requests=1, bytes=100, spans=spans)]
    vrun.operations = 1000
    return vrun


def test_server_suite_ratios_to_bare_and_gate_outcome() -> None:
    plan = _parse("--suite", "server-uvicorn")
    variants = {
        "bare": _server_run([7000.0, 8000.0, 7500.0], [100.0, 110.0, 90.0], 0),
        "stack": _server_run([1500.0, 1400.0, 1450.0], [500.0, 520.0, 480.0], 3000),
        "devkit": _server_run([6000.0, 5000.0, 6100.0], [140.0, 150.0, 130.0], 100),
    }
    doc = report.analyse(runner.RunResult(plan, {"server-uvicorn": variants}))
    data = doc["suites"]["server-uvicorn"]
    devkit = data["variants"]["devkit"]
    assert devkit["requests_per_s"]["median_per_s"] == 6000.0
    assert devkit["requests_per_s"]["ratio_to_bare"] == pytest.approx(0.8)
    # rounds paired: 6000/7000, 5000/8000, 6100/7500 -> median 0.813
    assert devkit["requests_per_s"]["paired_ratio_to_bare"] == pytest.approx(0.813)
    assert devkit["p50_ms"]["ratio_to_bare"] == pytest.approx(1.25)
    assert devkit["cpu_overhead_ratio_to_stack"] == pytest.approx(0.1)
    assert devkit["export"]["spans_per_request"] == pytest.approx(0.1)
    assert report.gate_outcomes(doc) == {"server-uvicorn": pytest.approx(0.8)}
    text = report.markdown(doc)
    assert "### server-uvicorn — requests per second" in text
    assert "| devkit | 6,000 | 5,000-6,100 | 0.80 | 0.81 |" in text


def test_paired_ratio_needs_every_round_of_both() -> None:
    assert report._paired_ratio([2.0, 3.0, 9.0], [4.0, 3.0, 10.0]) == pytest.approx(0.9)
    assert report._paired_ratio([2.0, 3.0], [4.0, 3.0, 10.0]) is None
    assert report._paired_ratio([], []) is None
    assert report._paired_ratio([1.0], [0.0]) is None


# -- instruction counts -------------------------------------------------------------------

_CALLGRIND = """# callgrind format
version: 1
creator: callgrind-3.19.0
events: Ir Dr I1mr
fl= (1) ceval.c
summary: 1300000 400000 2600
totals: 1300000 400000 2600
"""


def test_instruction_counts_per_request_by_difference() -> None:
    small = instructions.summary_counts(_CALLGRIND.replace("1300000", "300000"))
    large = instructions.summary_counts(_CALLGRIND)
    assert small == {"Ir": 300000, "Dr": 400000, "I1mr": 2600}
    per = instructions.per_request(small, large, 300, 1300)
    assert per == {"Ir": 1000.0, "Dr": 0.0, "I1mr": 0.0}
    with pytest.raises(ValueError, match="more requests"):
        instructions.per_request(small, large, 1300, 300)
    with pytest.raises(ValueError, match="not a callgrind"):
        instructions.summary_counts("summary: 5\n")


def test_server_counts_read_the_totals_line() -> None:
    # Counting starts off (--instr-atstart=no): the summary line is zero, the totals
    # line holds the counted window and leaves trailing zero events out.
    text = "events: Ir Dr I1mr\nsummary: 0\nfn=(1) f\n0 5\ntotals: 765000 225000\n"
    assert instructions.totals_counts(text) == {"Ir": 765000, "Dr": 225000, "I1mr": 0}
    with pytest.raises(ValueError, match="not a callgrind"):
        instructions.totals_counts("events: Ir\nsummary: 0\n")
    with pytest.raises(ValueError, match="more values"):
        instructions.totals_counts("events: Ir\ntotals: 1 2\n")


def test_instruction_counts_reject_unknown_parts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        instructions.main(["--off", "logs,db"])
    assert "not db" in capsys.readouterr().err


def _bursts(rps: list[float], cpu: list[float]) -> list[paired.Burst]:
    return [paired.Burst(r, 3.0, c) for r, c in zip(rps, cpu, strict=True)]


def test_paired_ratios_take_each_burst_over_the_bare_burst_of_its_round() -> None:
    bare = _bursts([1000, 2000, 1000, 2000], [100, 50, 100, 50])
    devkit = _bursts([700, 1400, 800, 1200], [140, 70, 125, 80])
    summary = paired.paired_summary(devkit, bare, random.Random(1))
    rps = summary["requests_per_s"]
    assert rps["ratios"] == pytest.approx([0.7, 0.7, 0.8, 0.6])
    assert rps["median"] == pytest.approx(0.7)
    low, high = rps["interval_95"]
    assert 0.6 <= low <= rps["median"] <= high <= 0.8
    assert summary["cpu"]["ratios"] == pytest.approx([100 / 140, 50 / 70, 0.8, 50 / 80])


def test_paired_ratios_need_the_same_bursts_of_both() -> None:
    with pytest.raises(ValueError, match="same"):
        paired.paired_summary(
            _bursts([1.0], [1.0]), _bursts([1.0, 1.0], [1.0, 1.0]), random.Random()
        )
    with pytest.raises(ValueError, match="non-zero"):
        paired.paired_summary([], [], random.Random())


def test_bootstrap_interval_is_within_the_values_and_narrows_with_agreement() -> None:
    rng = random.Random(7)
    spread = [0.5, 0.6, 0.7, 0.8, 0.9] * 4
    low, high = paired.bootstrap_median_interval(spread, rng)
    assert 0.5 <= low <= 0.7 <= high <= 0.9
    assert paired.bootstrap_median_interval([0.71] * 9, rng) == (0.71, 0.71)
    with pytest.raises(ValueError, match="no values"):
        paired.bootstrap_median_interval([], rng)


def test_thread_split_takes_medians_of_request_thread_and_the_rest() -> None:
    bursts = [paired.Burst(1000, 3.0, 200, 180, 20), paired.Burst(1000, 3.0, 210, 190, 20),
              paired.Burst(1000, 3.0, 190, 184, 6)]  # fmt: skip
    split = paired._thread_split(bursts)
    assert split["request_thread_cpu_us_per_request"] == pytest.approx(184)
    assert split["background_cpu_us_per_request"] == pytest.approx(20)
    # Bursts measured without the split (another platform) leave it out.
    assert paired._thread_split(_bursts([1000], [200])) == {}


def test_paired_table_shows_the_thread_split_or_a_dash() -> None:
    result = {
        "bursts": 2, "burst_s": 1, "load": "wrk", "seconds": 1.0,
        "variants": {
            "bare": {"requests_per_s": 1000.0, "cpu_us_per_request": 150.0,
                     "request_thread_cpu_us_per_request": 149.5,
                     "background_cpu_us_per_request": 0.5},
            "other": {"requests_per_s": 900.0, "cpu_us_per_request": 160.0},
        },
    }  # fmt: skip
    table = paired.render(result)
    assert "| bare | 1,000 | 150.0 | 149.5 | 0.5 | 1.000 |" in table
    assert "| other | 900 | 160.0 | — | — | 1.000 |" in table


def test_cpu_use_reads_the_process_and_its_main_thread() -> None:
    def spin() -> None:  # 50 ms of CPU on another thread while the main thread waits
        end = time.process_time() + 0.05
        while time.process_time() < end:
            pass

    before = server.CpuUse.read(os.getpid())
    thread = threading.Thread(target=spin)
    thread.start()
    thread.join()
    used = server.CpuUse.read(os.getpid()) - before
    assert 0 <= used.request_thread_s <= used.total_s
    assert used.background_s > 0.02  # /proc counts in clock ticks (10 ms)
    assert used.background_s == pytest.approx(used.total_s - used.request_thread_s)
    assert server.CpuUse(1.0, 1.5).background_s == 0.0  # clock ticks: never negative


@pytest.mark.parametrize(
    "argv",
    [
        ["--bursts", "1"],
        ["--burst-s", "0"],
        ["--env", "NOEQUALS"],
        ["--env", "=x"],
        ["--without", "tracing"],
        ["--uvicorn", "uvloop"],
        ["--server", "hypercorn"],
    ],
)
def test_paired_command_line_rejects_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        paired.main(argv)
    assert exc.value.code == 2
