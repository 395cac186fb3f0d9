"""SLO rules in the real Prometheus, over a devkit service's real metrics.

The service answers a known mix (5 % errors, 10 % slower than the latency threshold);
Prometheus scrapes it every second and evaluates the rules ``devkit slo rules`` generates
every second. The recorded SLIs must read the mix, the burn-rate alerts must fire where
the factors say, and ``devkit slo status`` must report what the rules record and exit 1
because both budgets are spent.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from servers import ROOT, clean_env, free_port, poll, serve, uvicorn_argv
from servers import prometheus as start_prometheus

from devkit.ops import rules, slo

pytestmark = pytest.mark.integration

JOB = "orders"
REQUESTS = 400
ERRORS = 20  # 5 %
SLOW = 40  # 10 %, slower than 0.05 s
SLO_FILE = f"""\
service: {JOB}
selector: 'job="{JOB}"'
slos:
  - name: availability
    objective: 99
    sli:
      kind: availability
    alerting:
      min_request_rate: 0
  - name: fast-orders
    objective: 95
    window: 7d
    sli:
      kind: latency
      threshold_s: 0.05
      routes: ["/orders/{{order_id}}"]
    alerting:
      min_request_rate: 0
"""


def _drive(url: str) -> None:
    plan = ["fail=true"] * ERRORS + ["slow_ms=120"] * SLOW + [""] * (REQUESTS - ERRORS - SLOW)
    limits = httpx.Limits(max_keepalive_connections=0)
    with (
        httpx.Client(base_url=url, timeout=10, limits=limits) as client,
        concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool,
    ):
        statuses = list(
            pool.map(lambda q: client.get(f"/orders/{q[0]}?{q[1]}").status_code, enumerate(plan))
        )
    assert statuses.count(500) == ERRORS and statuses.count(200) == REQUESTS - ERRORS


def test_rules_read_the_mix_and_status_agrees(tmp_path: Path) -> None:
    (tmp_path / "slo.yaml").write_text(SLO_FILE)
    slo_file = slo.load(tmp_path / "slo.yaml")
    rule_path = tmp_path / "rules.yml"
    rule_path.write_text(rules.render(rules.rule_groups(slo_file)))
    port = free_port()
    env = clean_env(DEVKIT_SERVICE_NAME=JOB)
    argv = uvicorn_argv("tests.integration.slo_app:app", port)
    with serve(argv, env, tmp_path, port) as service:
        # Every series exists before the first scrape: increase() counts from there.
        _warm = [httpx.get(f"{service.url}/orders/0?{q}") for q in ("", "fail=true", "slow_ms=120")]
        with start_prometheus(tmp_path, {JOB: port}, [rule_path]) as prom:
            prom.wait_scraped(JOB)
            _drive(service.url)
            seen = REQUESTS + len(_warm)
            poll(
                lambda: prom.query(f'sum(http_requests_total{{job="{JOB}"}})'),
                lambda r: bool(r) and float(r[0]["value"][1]) >= seen,
            )
            time.sleep(3)  # a few more evaluations of the rules on the final counts

            def recorded(name: str, which: str) -> float:
                return prom.scalar(f'{name}{{slo="{which}",service="{JOB}"}}')

            for name, mix in (
                ("availability", ERRORS / REQUESTS),
                ("fast-orders", SLOW / REQUESTS),
            ):
                assert recorded(rules.series.error_ratio_window, name) == pytest.approx(
                    mix, abs=0.01
                )
                assert recorded(rules.series.error_ratio("5m"), name) == pytest.approx(
                    mix, abs=0.01
                )
            # 5 % against a 1 % budget: a 5x burn, above the ticket factors (3 and 1) and
            # under the page factors (14.4, 6); 10 % against 5 % is 2x, above the 7-day
            # window's 6 h page factor (1.4).
            assert recorded(rules.series.burn_rate("5m"), "availability") == pytest.approx(5, abs=1)
            assert recorded(rules.series.budget_remaining, "availability") < 0

            def firing() -> set[tuple[str, str]]:
                alerts = prom.api("alerts")["alerts"]
                return {
                    (a["labels"]["alertname"], a["labels"]["slo"])
                    for a in alerts
                    if a["state"] == "firing"
                }

            expected = {
                (rules.TICKET_ALERT, "availability"),
                (rules.PAGE_ALERT, "fast-orders"),
                (rules.TICKET_ALERT, "fast-orders"),
            }
            assert poll(firing, lambda got: got == expected) == expected

            done = subprocess.run(
                [sys.executable, "-m", "devkit", "slo", "status", "--prometheus", prom.url,
                 "--output", "json", str(tmp_path / "slo.yaml")],
                cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            report = {item["slo"]: item for item in json.loads(done.stdout)}
            assert done.returncode == 1, done.stderr  # both budgets spent: no deploys
            for name in ("availability", "fast-orders"):
                item = report[name]
                assert item["error_ratio"] == pytest.approx(
                    recorded(rules.series.error_ratio_window, name), abs=0.005
                )
                assert item["sli"] == pytest.approx(1 - item["error_ratio"])
                assert item["state"] == "spent" and item["budget_remaining"] < 0
                assert item["burn_rates"]["5m"] == pytest.approx(
                    recorded(rules.series.burn_rate("5m"), name), rel=0.1
                )
            assert report["availability"]["objective"] == 0.99
            severities = {a["severity"] for a in report["availability"]["alerts"]}
            assert severities == {"ticket"}
            assert {a["severity"] for a in report["fast-orders"]["alerts"]} == {"page", "ticket"}
