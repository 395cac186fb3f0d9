"""``devkit canary judge`` against the real Prometheus scraping real devkit services.

Four uvicorn processes of one app, each its own scrape job and its own
``DEVKIT_SERVICE_VERSION``: a baseline, a canary identical to it, a canary with 3 % more
errors and 50 % more latency, and a canary without traffic. Traffic runs at all but the
last while the judge, over windows scaled down to seconds (the PromQL is the same), must
roll the bad canary back naming its gates, promote the identical one and find the idle one
inconclusive, whether the sides are told apart by version (joined through
``devkit_build_info``) or by a target label (``job``).
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from servers import clean_env, free_port, serve, uvicorn_argv
from servers import prometheus as start_prometheus

from devkit.cli import main
from devkit.ops import canary
from devkit.ops.canary import Side

pytestmark = pytest.mark.integration

#: (job, version, milliseconds each request sleeps, one request in N fails; 0: no traffic)
SIDES = {
    "baseline": ("1.0.0", 100, 100),
    "good": ("1.1.0", 100, 100),
    "bad": ("1.2.0", 150, 25),  # 4 % errors against 1 %, 50 % slower
    "idle": ("1.3.0", 0, 0),
}
RATE = 40  # requests per second to each side with traffic
WINDOW, INTERVAL = "20s", "2s"
#: Every request of the baseline lands in the (0.1, 0.15] bucket, every one of the bad
#: canary above it, so the quantiles' ratios are far from the thresholds.
SLOW_THRESHOLD_MS = "150"
GATES = "min_requests: 50\n"


def _drive(clients: dict[str, httpx.Client], stop: threading.Event) -> dict[str, int]:
    """Requests at RATE per second to every side with traffic until ``stop``."""
    sent = dict.fromkeys(clients, 0)
    with concurrent.futures.ThreadPoolExecutor(max_workers=48) as pool:
        start = time.monotonic()
        tick = 0
        while not stop.is_set():
            for job, client in clients.items():
                _, slow_ms, fail_every = SIDES[job]
                fail = "true" if sent[job] % fail_every == fail_every - 1 else "false"
                pool.submit(client.get, f"/orders/{sent[job]}?fail={fail}&slow_ms={slow_ms}")
                sent[job] += 1
            tick += 1
            time.sleep(max(0.0, start + tick / RATE - time.monotonic()))
    return sent


def _side(kind: str, job: str) -> str:
    """The matchers of ``job``'s process: its version (through devkit_build_info) or its
    scrape job (a target label)."""
    return f'version="{SIDES[job][0]}"' if kind == "version" else f'job="{job}"'


def _judge(
    url: str, tmp_path: Path, baseline: str, canary: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any], str]:
    argv = ["canary", "judge", "--prometheus", url, "--gates", str(tmp_path / "gates.yaml")]
    argv += ["--baseline", baseline, "--canary", canary, "--window", WINDOW]
    argv += ["--interval", INTERVAL]
    status = main([*argv, "--output", "json"])
    report = json.loads(capsys.readouterr().out)
    assert main(argv) == status
    return status, report, capsys.readouterr().out


def test_the_judge_rolls_back_promotes_and_cannot_tell(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "gates.yaml").write_text(GATES)
    ports = {job: free_port() for job in SIDES}
    with ExitStack() as stack:
        for job, (version, _, _) in SIDES.items():
            env = clean_env(
                DEVKIT_SERVICE_NAME="orders",
                DEVKIT_SERVICE_VERSION=version,
                DEVKIT_SLOW_THRESHOLD_MS=SLOW_THRESHOLD_MS,
                DEVKIT_LOG_LEVEL="warning",
            )
            argv = uvicorn_argv("tests.integration.slo_app:app", ports[job], "--no-access-log")
            stack.enter_context(serve(argv, env, tmp_path, ports[job]))
        # Series exist before the first scrape, the idle canary's too (then no traffic).
        for job in SIDES:
            httpx.get(f"http://127.0.0.1:{ports[job]}/orders/0")
        prom = stack.enter_context(start_prometheus(tmp_path, ports))
        for job in SIDES:
            prom.wait_scraped(job)
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        clients = {
            job: stack.enter_context(
                httpx.Client(base_url=f"http://127.0.0.1:{ports[job]}", limits=limits, timeout=10)
            )
            for job, (_, slow_ms, _) in SIDES.items()
            if slow_ms
        }
        stop = threading.Event()
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as driver:
            traffic = driver.submit(_drive, clients, stop)
            try:
                time.sleep(23)  # the window, and a scrape or two to spare
                results = {
                    (kind, case): _judge(
                        prom.url, tmp_path, _side(kind, "baseline"), _side(kind, case), capsys
                    )
                    for kind in ("version", "job")
                    for case in ("bad", "good", "idle")
                }
                # What Argo Rollouts and Flagger would read: the exported margins.
                config = canary.parse(yaml.safe_load(GATES)).with_windows(20.0, 2.0)
                margins = {
                    (kind, case, gate.name): prom.query(
                        canary.margin_query(
                            gate,
                            Side.parse("baseline", _side(kind, "baseline")),
                            Side.parse("canary", _side(kind, case)),
                            config.min_requests,
                        )
                    )
                    for kind in ("version", "job")
                    for case in ("bad", "good", "idle")
                    for gate in config.gates
                    if gate.name in ("error_rate", "latency_p99")
                }
            finally:
                stop.set()
            assert traffic.result()["bad"] > RATE * 20

    for kind in ("version", "job"):
        status, report, table = results[(kind, "bad")]
        gates = {g["name"]: g for g in report["gates"]}
        failed = {name for name, g in gates.items() if g["verdict"] == "fail"}
        assert status == 1 and report["verdict"] == "rollback", table
        assert {"error_rate", "latency_p99", "latency_p50"} <= failed, table
        assert "verdict: rollback (failed: error_rate, latency_p99, latency_p50" in table
        errors = gates["error_rate"]
        assert errors["baseline"] == pytest.approx(0.01, abs=0.006), table
        assert errors["canary"] == pytest.approx(0.04, abs=0.012), table
        assert errors["threshold"] == pytest.approx(errors["baseline"] + 0.005)
        assert errors["p_value"] < 0.05 and errors["shift"] > 0, table
        p99 = gates["latency_p99"]
        assert p99["canary"] / p99["baseline"] == pytest.approx(0.249 / 0.1495, rel=0.05), table
        assert report["statistics"] == "mann-whitney"
        assert all(g["intervals"]["canary"] >= 5 for g in gates.values()), table

        status, report, table = results[(kind, "good")]
        assert status == 0 and report["verdict"] == "promote", table
        assert {g["verdict"] for g in report["gates"]} == {"pass"}, table

        status, report, table = results[(kind, "idle")]
        assert status == 3 and report["verdict"] == "inconclusive", table
        for gate in report["gates"]:
            assert gate["verdict"] == "inconclusive"
            assert "too few requests over 20s: canary 0" in gate["reason"], table
    for (kind, case, gate), result in margins.items():
        if case == "idle":
            assert result == [], (kind, gate)  # no verdict: Argo's Inconclusive
        else:
            (margin,) = result
            assert (float(margin["value"][1]) > 0) == (case == "bad"), (kind, gate, margin)
    print(results[("version", "bad")][2])
