"""``devkit slo status`` and its Prometheus client, against a stand-in of the query API
(the real Prometheus answers in tests/integration/test_slo_prometheus.py)."""

from __future__ import annotations

import json
import math
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from devkit.cli import main
from devkit.ops import slo
from devkit.ops.prometheus import Prometheus, PrometheusError
from devkit.ops.status import snapshot

SLO_FILE = """\
slos:
  - name: availability
    objective: 99
    sli: {kind: availability}
  - name: fast
    objective: 90
    sli: {kind: latency, threshold_s: 0.25, routes: ["/a"]}
"""

Answer = Callable[[str], tuple[int, dict[str, Any]]]


@pytest.fixture
def api() -> Iterator[tuple[str, list[Answer], list[str]]]:
    """A query API at the URL; the first answer function decides every response."""
    answers: list[Answer] = [lambda q: (200, _vector([]))]
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)["query"][0]
            asked.append(query)
            status, body = answers[0](query)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", answers, asked
    server.shutdown()
    server.server_close()


def _vector(values: list[float | str]) -> dict[str, Any]:
    result = [{"metric": {}, "value": [0, str(v)]} for v in values]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def test_the_client_reads_vectors_scalars_and_special_values(api: Any) -> None:
    url, answers, _ = api
    prometheus = Prometheus(url)
    answers[0] = lambda q: (200, _vector(["NaN"]))
    assert math.isnan(prometheus.query("x")[0].value)
    answers[0] = lambda q: (200, _vector([]))
    assert prometheus.value("x") is None
    answers[0] = lambda q: (
        200,
        {"status": "success", "data": {"resultType": "scalar", "result": [0, "2"]}},
    )
    assert prometheus.value("scalar(1)") == 2.0
    answers[0] = lambda q: (200, _vector([1, 2]))
    with pytest.raises(PrometheusError, match="gave 2 series, not one"):
        prometheus.value("x")


def test_the_client_names_the_url_and_what_failed(api: Any) -> None:
    url, answers, _ = api
    answers[0] = lambda q: (400, {"status": "error", "error": "parse error at char 3"})
    with pytest.raises(PrometheusError) as caught:
        Prometheus(url).query("sum(")
    assert str(caught.value) == f"{url}: HTTP 400 (parse error at char 3) for query sum("
    with pytest.raises(PrometheusError, match=r"http://127\.0\.0\.1:1 does not answer"):
        Prometheus("http://127.0.0.1:1", timeout_s=2).query("up")
    with pytest.raises(PrometheusError, match="is not an http"):
        Prometheus("prometheus:9090")


def _status(tmp_path: Path, url: str, *extra: str) -> int:
    (tmp_path / "slo.yaml").write_text(SLO_FILE)
    return main(["slo", "status", "--prometheus", url, *extra, str(tmp_path / "slo.yaml")])


def test_status_reports_budget_burn_and_alerts(
    api: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, answers, asked = api

    def answer(query: str) -> tuple[int, dict[str, Any]]:
        # 1000 requests, 20 bad (2 %); rates: 10/s with 0.2 bad/s (2 %) in every window
        if "increase(" in query:
            return 200, _vector([20.0 if "errors" in query or " - " in query else 1000.0])
        return 200, _vector([0.2 if "errors" in query or " - " in query else 10.0])

    answers[0] = answer
    assert _status(tmp_path, url, "--output", "json") == 1  # the 99 % budget is spent
    report = {item["slo"]: item for item in json.loads(capsys.readouterr().out)}
    availability = report["availability"]
    assert availability["objective"] == 0.99 and availability["window"] == "30d"
    assert availability["sli"] == pytest.approx(0.98)
    assert availability["error_ratio"] == pytest.approx(0.02)
    assert availability["budget_remaining"] == pytest.approx(-1.0)
    assert availability["state"] == "spent"
    assert availability["burn_rates"]["1h"] == pytest.approx(2.0)
    # A 2x burn: the 3d/6h ticket (factor 1), not the 1d/2h one (3), no page.
    assert [(a["severity"], a["long_window"]) for a in availability["alerts"]] == [("ticket", "3d")]
    fast = report["fast"]  # 90 %: 2 % bad leaves 80 % of the budget, a 0.2x burn
    assert fast["budget_remaining"] == pytest.approx(0.8) and fast["state"] == "ok"
    assert fast["alerts"] == []
    assert any('le="0.25"' in q and 'route="/a"' in q for q in asked)

    assert _status(tmp_path, url, "--window", "7d") == 1
    table = capsys.readouterr().out
    assert "| availability | 99% | 7d | 98.000% | -100.000% |" in table
    assert "availability: spent; firing: ticket (3d/6h > 1)" in table


def test_status_without_series_cannot_judge(
    api: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _, _ = api
    assert _status(tmp_path, url) == 3
    err = capsys.readouterr().err
    assert f"error: {url} has no series for availability, fast" in err


def test_status_of_an_unreachable_prometheus_exits_3_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _status(tmp_path, "http://127.0.0.1:1", "--timeout", "2") == 3
    assert "error: http://127.0.0.1:1 does not answer" in capsys.readouterr().err


def test_a_bad_window_is_an_error(
    api: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _, _ = api
    assert _status(tmp_path, url, "--window", "a while") == 2
    assert "error: --window: 'a while' is not a duration" in capsys.readouterr().err


EXPOSITION = """\
# TYPE http_requests_total counter
http_requests_total{method="GET",route="/a",status_code="200"} 90.0
http_requests_total{method="GET",route="/a",status_code="500"} 10.0
http_requests_total{method="GET",route="/b",status_code="200"} 100.0
# TYPE http_requests_errors_total counter
http_requests_errors_total{method="GET",route="/a",status_code="500"} 10.0
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{method="GET",route="/a",status_code="200",le="0.25"} 80.0
http_request_duration_seconds_bucket{method="GET",route="/a",status_code="200",le="+Inf"} 90.0
http_request_duration_seconds_count{method="GET",route="/a",status_code="200"} 90.0
http_request_duration_seconds_sum{method="GET",route="/a",status_code="200"} 9.0
"""


def test_a_snapshot_reads_one_scrape() -> None:
    slo_file = slo.parse(
        {
            "slos": [
                {"name": "a", "objective": 90, "sli": {"kind": "availability", "routes": ["/a"]}},
                {"name": "all", "objective": 99, "sli": {"kind": "availability"}},
                {"name": "fast", "objective": 80, "sli": {"kind": "latency", "threshold_s": 0.25}},
            ]
        }
    )
    a, everything, fast = snapshot(slo_file, EXPOSITION)
    assert (a.requests, a.bad, a.error_ratio, a.state) == (100, 10, 0.1, "spent")
    assert everything.requests == 200 and everything.error_ratio == 0.05
    assert (
        fast.requests == 90
        and fast.bad == 10
        and fast.budget_remaining == pytest.approx(1 - (10 / 90) / 0.2)
    )
