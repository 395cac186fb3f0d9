"""devkit's exposition against the real Prometheus tooling: ``promtool`` and the server.

The unit and uvicorn tests parse ``/metrics`` with prometheus_client's own parser; these
tests prove the other side of the contract: ``promtool check metrics`` lints the classic
exposition clean, and a real Prometheus (Debian package, installed by ``.ci/run``) scrapes
the app every second (negotiating OpenMetrics, so exemplars included), stores the series
and exemplars, and answers the PromQL a dashboard would run.
"""

from __future__ import annotations

import concurrent.futures
import math
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import pytest
from servers import OTLPReceiver, Prometheus, Server, poll, tool_missing
from servers import prometheus as start_prometheus

pytestmark = pytest.mark.integration

# uvicorn closes a connection after an unhandled exception: no reuse across requests.
NO_KEEPALIVE = httpx.Limits(max_keepalive_connections=0)
TRACE_ID = re.compile(r"[0-9a-f]{32}")
JOB = "devkit"
TRAFFIC_SECONDS = 8.0
SLOW_MS = 350

T = TypeVar("T")


def require(binary: str) -> str:
    """The path of ``binary``; a missing binary fails in CI and skips elsewhere."""
    path = shutil.which(binary)
    if path is None:
        tool_missing("prometheus not installed: .ci/run installs the Debian package")
    return path


@dataclass
class Traffic:
    """Requests to the app in a background pool: fast items, unhandled errors, slow calls."""

    url: str
    statuses: dict[str, list[int]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def drive(self, seconds: float) -> None:
        paths = ["/items/{n}", "/items/{n}", "/boom", f"/slow?ms={SLOW_MS}"]
        with (
            httpx.Client(base_url=self.url, limits=NO_KEEPALIVE, timeout=10) as client,
            concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool,
        ):
            deadline = time.monotonic() + seconds
            n = 0
            while time.monotonic() < deadline:
                for template in paths:
                    pool.submit(self._get, client, template.format(n=n % 50))
                n += 1
                time.sleep(0.1)
            pool.shutdown(wait=True)

    def _get(self, client: httpx.Client, path: str) -> None:
        route = "/items" if path.startswith("/items/") else path.split("?")[0]
        try:
            status = client.get(path).status_code
        except httpx.HTTPError as exc:  # recorded, asserted on by the tests
            with self.lock:
                self.failures.append(f"{path}: {exc!r}")
            return
        with self.lock:
            self.statuses.setdefault(route, []).append(status)


# -- promtool ------------------------------------------------------------------------------


def test_promtool_check_metrics_is_clean(server: Server) -> None:
    promtool = require("promtool")
    Traffic(server.url).drive(1.0)
    classic = httpx.get(server.url + "/metrics", timeout=10)
    assert classic.headers["content-type"].startswith("text/plain")
    assert "http_request_duration_seconds_bucket" in classic.text
    assert "http_requests_errors_total" in classic.text

    done = subprocess.run(
        [promtool, "check", "metrics"],
        input=classic.content,
        capture_output=True,
        timeout=30,
        check=False,
    )
    problems = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0, problems
    assert problems.strip() == ""

    # The OpenMetrics body is not checked: promtool (2.42, and later 2.x) lints stdin with
    # the classic text parser only. It rejects the first exemplar ("expected integer as
    # timestamp, got '#'") and, without exemplars, reads OpenMetrics' suffix-less family
    # names (`# HELP http_requests` for `http_requests_total`) as "no help text" -- both
    # are the OpenMetrics format itself, not problems in devkit's exposition. Prometheus
    # parsing the OpenMetrics scrape (below) is the check for that format.


# -- the Prometheus server -----------------------------------------------------------------


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, server: Server) -> Iterator[Prometheus]:
    with start_prometheus(tmp_path_factory.mktemp("prometheus"), {JOB: server.port}) as prom:
        # The whole traffic run is covered by 1 s scrapes.
        prom.wait_scraped(JOB)
        traffic = Traffic(server.url)
        traffic.drive(TRAFFIC_SECONDS)
        assert traffic.failures == []
        assert set(traffic.statuses["/items"]) == {200}
        assert set(traffic.statuses["/boom"]) == {500}
        assert set(traffic.statuses["/slow"]) == {200}
        yield prom


def test_target_is_up_and_scrapes_without_error(prometheus: Prometheus) -> None:
    assert prometheus.scalar(f'up{{job="{JOB}"}}') == 1
    target = prometheus.target(JOB)
    assert target is not None and target["health"] == "up", target
    assert target["lastError"] == "", target
    # Nothing rejected at ingestion either (out-of-order exemplars, duplicate series,
    # invalid samples...): Prometheus logs those as warnings of the scrape manager.
    scrape_warnings = [
        line
        for line in prometheus.log().splitlines()
        if "scrape" in line and re.search(r"level=(warn|error)", line)
    ]
    assert scrape_warnings == []


def test_request_rate(prometheus: Prometheus) -> None:
    # rate() needs two scrapes in the window; the traffic ran for several scrape intervals.
    assert prometheus.scalar("sum(rate(http_requests_total[30s]))") > 0


def test_latency_quantile_from_histogram_buckets(prometheus: Prometheus) -> None:
    p99 = prometheus.scalar(
        "histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[30s])))"
    )
    assert math.isfinite(p99)
    # A quarter of the requests sleep 350 ms: the 99th percentile is past the 0.3 s bucket.
    assert 0.3 < p99 < 10


def test_errors_counted_for_the_failing_route(prometheus: Prometheus) -> None:
    errors = prometheus.scalar(
        f'sum(http_requests_errors_total{{job="{JOB}",route="/boom",status_code="500"}})'
    )
    assert errors > 0
    fast_errors = prometheus.query(
        f'sum(http_requests_errors_total{{job="{JOB}",route="/items/{{item_id}}"}})'
    )
    assert [float(r["value"][1]) for r in fast_errors] in ([], [0.0])


@pytest.mark.parametrize("metric", ["http_request_duration_seconds_bucket", "http_requests_total"])
def test_exemplars_link_to_exported_traces(
    prometheus: Prometheus, receiver: OTLPReceiver, metric: str
) -> None:
    def exemplars() -> list[dict[str, Any]]:
        data = prometheus.api(
            "query_exemplars",
            query=metric,
            start=str(prometheus.started - 60),
            end=str(time.time() + 60),
        )
        return [e for series in data for e in series["exemplars"]]

    found = poll(exemplars, bool)
    assert found, f"no exemplars stored for {metric}"
    trace_ids = {e["labels"].get("trace_id", "") for e in found}
    assert all(TRACE_ID.fullmatch(t) for t in trace_ids), trace_ids
    # Exemplars only for kept traces: each one links to a trace the exporter delivered.
    assert receiver.wait_for(lambda r: trace_ids <= r.trace_ids()), trace_ids - receiver.trace_ids()
