"""``DEVKIT_METRICS_TOKEN`` against the real Prometheus, in the recommended production
exposure: ``/metrics`` and the probes on ``DEVKIT_METRICS_PORT`` only
(``DEVKIT_HEALTH_ON_APP_PORT=false``), ``/metrics`` behind the token.

Prometheus scrapes the metrics port with three jobs: one with
``authorization: {type: Bearer, credentials: <the token>}`` (the target is up and its
series are stored), one without credentials and one with a wrong token (both down, the
401 in the target's last error). The application's port answers none of devkit's paths.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import servers
from servers import Prometheus, clean_env, free_port, poll, serve, uvicorn_argv

pytestmark = pytest.mark.integration

TOKEN = "prometheus-scrape-token-0123456789"


def bearer(credentials: str) -> str:
    """A scrape job's ``authorization`` block."""
    return f"    authorization:\n      type: Bearer\n      credentials: {credentials}\n"


def jobs_for(token: str) -> dict[str, str]:
    """Scrape jobs and their ``authorization`` blocks: the token, none, a wrong one."""
    return {
        "with_token": bearer(token),
        "without_token": "",
        "wrong_token": bearer("not-the-token-0123456789"),
    }


@contextmanager
def prometheus(tmp: Path, port: int, jobs: dict[str, str]) -> Iterator[Prometheus]:
    """The real Prometheus scraping ``127.0.0.1:port`` every second, once per job of
    ``jobs`` (name -> its ``authorization`` block)."""
    with servers.prometheus(tmp, dict.fromkeys(jobs, port), job_settings=jobs) as prom:
        yield prom


def scrape_with_and_without(prom: Prometheus, jobs: dict[str, str]) -> dict[str, float]:
    """``up`` of each job once Prometheus scraped every one, after asserting that only
    the job with the token is up and the others failed with the 401."""

    def targets() -> dict[str, dict[str, object]]:
        active = prom.api("targets", state="active")["activeTargets"]
        return {str(t["scrapePool"]): t for t in active}

    def settled(found: dict[str, dict[str, object]]) -> bool:
        return set(found) == set(jobs) and all(
            t["health"] in ("up", "down") for t in found.values()
        )

    found = poll(targets, settled, timeout=30)
    assert settled(found), (found, prom.log())
    assert found["with_token"]["health"] == "up", found["with_token"]
    for job in ("without_token", "wrong_token"):
        assert found[job]["health"] == "down", found[job]
        assert "401" in str(found[job]["lastError"]), found[job]
    # Prometheus' own view: up per job, and the service's series stored for the one
    # scrape that was let in.
    ups = {
        r["metric"]["job"]: float(r["value"][1])
        for r in poll(lambda: prom.query("up"), lambda r: len(r) == len(jobs), 20)
    }
    assert ups == {"with_token": 1.0, "without_token": 0.0, "wrong_token": 0.0}, ups
    stored = poll(lambda: prom.query("http_requests_total"), bool)
    assert stored and {r["metric"]["job"] for r in stored} == {"with_token"}, stored
    return ups


def test_prometheus_scrapes_with_the_token_and_is_refused_without(tmp_path: Path) -> None:
    app_port, metrics_port = free_port(), free_port()
    env = clean_env(
        DEVKIT_SERVICE_NAME="token",
        DEVKIT_METRICS_PORT=str(metrics_port),
        DEVKIT_HEALTH_ON_APP_PORT="false",
        DEVKIT_METRICS_TOKEN=TOKEN,
    )
    argv = uvicorn_argv("examples.fastapi_app:app", app_port)
    jobs = jobs_for(TOKEN)
    with (
        serve(argv, env, tmp_path, app_port, ready_path="/items/1") as app,
        prometheus(tmp_path, metrics_port, jobs) as prom,
    ):
        # The application's port answers none of devkit's paths; the metrics port does.
        for path in ("/metrics", "/healthz/ready", "/healthz/live", "/healthz/startup"):
            assert httpx.get(app.url + path, timeout=5).status_code == 404, path
            if path != "/metrics":
                probe = httpx.get(f"http://127.0.0.1:{metrics_port}{path}", timeout=5)
                assert probe.status_code == 200, (path, probe.text)
        scrape_with_and_without(prom, jobs)
        stored = prom.query('http_requests_total{route="/items/{item_id}"}')
        assert {r["metric"]["job"] for r in stored} == {"with_token"}, stored
