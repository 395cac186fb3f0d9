"""Item 4: a scrape storm and a hung readiness check, while the service serves.

Two identical uvicorn services (``hung_ready_app.py``): one client, in its own process,
alternates its requests between them, so both are measured at the same moments of a
noisy machine. In each round one service is stormed, the other left alone: its
readiness check ``db`` hangs (and ``vault`` fails with a secret in its message), 50
concurrent ``/metrics`` scrapes arrive every second, and five clients poll
``/healthz/ready`` every 100 ms each. The second round swaps the roles.

Asserted: the stormed requests of both rounds are as fast as their twins' (p50 within
1.1x, p99 within 1.5x); every scrape and probe is answered, every probe within
the checks' timeout plus a margin, with the hung check reported as ``timeout`` and no
secret in the body; each check is called at most once per cache interval however often
the probes come, and the hung one not again until it returns.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import loadgen, percentile, wait_for
from rows import record
from servers import ROOT, OTLPReceiver, Server

from conftest import HERE, UvicornFactory

pytestmark = pytest.mark.integration

SECTION = "Scrapes and probes"
WARMUP = 300
ROUND = 4000
SCRAPERS = 50
BURST_EVERY_S = 1.0
PROBERS = 5
PROBE_EVERY_S = 0.1
#: Every check's timeout_s in the app, and devkit's default cache interval.
CHECK_TIMEOUT_S = 0.5
CACHE_INTERVAL_S = 1.0
#: What a probe may take beyond the checks' timeout: the HTTP exchange on a loop that
#: also serves the requests and the scrapes. kubelet's ``timeoutSeconds`` must cover
#: both (docs/kubernetes.md).
PROBE_MARGIN_S = 0.5
P50_LIMIT = 1.10
P99_LIMIT = 1.50


@dataclass
class Side:
    name: str
    server: Server
    flag: Path  # exists: the checks misbehave
    calls: Path  # the checks' call log

    def check_calls(self) -> dict[str, list[tuple[float, float]]]:
        out: dict[str, list[tuple[float, float]]] = defaultdict(list)
        if self.calls.exists():
            for line in self.calls.read_text().splitlines():
                name, start, end = line.split()
                out[name].append((float(start), float(end)))
        return out


def _storm(url: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            sys.executable, "-c", "import loadgen; loadgen.storm_main()",
            "--url", url, "--scrapers", str(SCRAPERS), "--burst-every-s", str(BURST_EVERY_S),
            "--probers", str(PROBERS), "--probe-every-s", str(PROBE_EVERY_S),
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(HERE)},
    )  # fmt: skip
    assert proc.stderr is not None
    assert proc.stderr.readline().strip() == "storming"
    return proc


def _calm(proc: subprocess.Popen[str]) -> dict[str, Any]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-4000:]
    report: dict[str, Any] = json.loads(out)
    return report


@dataclass
class Round:
    stormed_us: list[int]  # the stormed service's request latencies
    calm_us: list[int]  # its twin's, at the same moments
    failed: int
    storm: dict[str, Any]
    calls_during: dict[str, int]

    @property
    def p50(self) -> float:
        return percentile(self.stormed_us, 0.5) / percentile(self.calm_us, 0.5)

    @property
    def p99(self) -> float:
        return percentile(self.stormed_us, 0.99) / percentile(self.calm_us, 0.99)


def _round(stormed: Side, calm: Side, label: str, warmup: int) -> Round:
    before = {name: len(c) for name, c in stormed.check_calls().items()}
    stormed.flag.touch()
    storm = _storm(stormed.server.url)
    try:
        report = loadgen(
            "ab",
            "--url", stormed.server.url, "--label", f"{stormed.name}{label}",
            "--url", calm.server.url, "--label", f"{calm.name}{label}",
            "--requests", str(ROUND), "--warmup", str(warmup),
        )  # fmt: skip
    finally:
        result = _calm(storm)
    stormed.flag.unlink()
    # The calls made while the checks misbehaved (the hung one is logged once it returns,
    # now that it is released).
    wait_for(lambda: len(stormed.check_calls()["db"]) > before.get("db", 0), 5, 0.05)
    during = {name: len(c) - before.get(name, 0) for name, c in stormed.check_calls().items()}
    s_lat, c_lat = report["latency_us"]
    return Round(
        stormed_us=s_lat,
        calm_us=c_lat,
        failed=sum(report["failed"]),
        storm=result,
        calls_during=during,
    )


def _assert_storm_answered(storm: dict[str, Any]) -> tuple[float, float]:
    """Every scrape and probe answered as it should; (slowest probe s, scrape p99 s)."""
    assert not storm["scrape_errors"] and not storm["probe_errors"], storm
    scrapes = storm["scrapes"]
    assert storm["bursts"] >= 2 and len(scrapes) == storm["bursts"] * SCRAPERS
    assert {s[1] for s in scrapes} == {200}
    # The scrapes see the requests as they are served: the count never goes back.
    by_burst: dict[float, float] = {}
    for started, _, _, total in scrapes:
        by_burst[started] = max(by_burst.get(started, 0.0), total)
    totals = [by_burst[k] for k in sorted(by_burst)]
    assert totals == sorted(totals) and totals[-1] > totals[0], totals
    probes = storm["probes"]
    assert probes and {p[0] for p in probes} == {503}, Counter(p[0] for p in probes)
    slowest = max(p[1] for p in probes)
    assert slowest <= CHECK_TIMEOUT_S + PROBE_MARGIN_S, slowest
    for body in storm["probe_bodies"]:
        doc = json.loads(body)
        assert doc["status"] == "fail"
        checks = doc["checks"]
        assert checks["db"] == {
            "status": "fail",
            "duration_ms": checks["db"]["duration_ms"],
            "error": "timeout",
        }
        assert checks["cache"]["status"] == "pass"
        vault = checks["vault"]["error"]
        assert vault.startswith("RuntimeError: db password=[REDACTED"), vault
        for secret in ("hunter2", "u:pw", ":pw@"):
            assert secret not in body
    return slowest, percentile([s[2] for s in scrapes], 0.99)


def _assert_calls_spaced(side: Side) -> float:
    """At most one call of each check per cache interval, however often it was probed;
    the shortest interval between two calls of one check."""
    shortest = float("inf")
    for name, calls in side.check_calls().items():
        starts = sorted(start for start, _ in calls)
        ends = sorted(end for _, end in calls)
        for previous_end, start in zip(ends, starts[1:], strict=False):
            # A new call only once the last result's cache interval has passed.
            assert start - previous_end >= CACHE_INTERVAL_S * 0.99, (name, calls)
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        shortest = min([shortest, *gaps])
    return shortest


def test_scrape_storm_and_hung_readiness_cost_requests_nothing(
    uvicorn_server: UvicornFactory, tmp_path: Path
) -> None:
    with OTLPReceiver() as rec:
        sides = []
        for name in ("a", "b"):
            flag, calls = tmp_path / f"{name}.hang", tmp_path / f"{name}.calls"
            server = uvicorn_server(
                "hung_ready_app:app",
                receiver=rec,
                args=("--log-level", "warning"),
                HANG_FLAG=str(flag),
                CHECK_CALLS=str(calls),
                CHECK_TIMEOUT_S=str(CHECK_TIMEOUT_S),
            )
            sides.append(Side(name, server, flag, calls))
        a, b = sides
        started = time.monotonic()
        first = _round(a, b, "1", WARMUP)
        second = _round(b, a, "2", 0)
        duration_s = time.monotonic() - started
        for side in sides:  # while their collector still answers: their last spans leave
            side.server.stop()

    rounds = (first, second)
    # Each service was stormed in one round and calm in the other: the stormed requests
    # of both rounds against the calm ones of both rounds, so that neither a difference
    # between the two processes nor a burst of noise in one round decides the ratio.
    stormed = first.stormed_us + second.stormed_us
    calm = first.calm_us + second.calm_us
    p50 = percentile(stormed, 0.5) / percentile(calm, 0.5)
    p99 = percentile(stormed, 0.99) / percentile(calm, 0.99)
    print(p50, p99, [(r.p50, r.p99, r.calls_during, r.storm["bursts"]) for r in rounds])
    assert [r.failed for r in rounds] == [0, 0]
    slowest, scrape_p99 = zip(*(_assert_storm_answered(r.storm) for r in rounds), strict=True)
    for r in rounds:
        # The hung check was called once, and not again until it returned.
        assert r.calls_during.get("db") == 1, r.calls_during
    shortest = min(_assert_calls_spaced(side) for side in sides)
    assert p50 <= P50_LIMIT, (p50, [r.p50 for r in rounds])
    assert p99 <= P99_LIMIT, (p99, [r.p99 for r in rounds])
    probes = sum(len(r.storm["probes"]) for r in rounds)
    check_calls = sum(sum(r.calls_during.values()) for r in rounds)
    record(
        SECTION,
        "50 concurrent scrapes + a hung readiness check, uvicorn",
        f"{SCRAPERS} concurrent /metrics scrapes every {BURST_EVERY_S:g} s, "
        f"{PROBERS} clients probing /healthz/ready every {PROBE_EVERY_S * 1000:g} ms, "
        f"one check hanging (timeout_s {CHECK_TIMEOUT_S:g})",
        requests=2 * (WARMUP + ROUND) + 2 * ROUND,
        requests_failed=0,
        p50_ratio=round(p50, 2),
        p99_ratio=round(p99, 2),
        scrapes=sum(len(r.storm["scrapes"]) for r in rounds),
        scrape_p99_s=round(max(scrape_p99), 3),
        probes=probes,
        probe_max_s=round(max(slowest), 3),
        check_calls=check_calls,
        check_min_interval_s=round(shortest, 2),
        duration_s=round(duration_s, 1),
    )
