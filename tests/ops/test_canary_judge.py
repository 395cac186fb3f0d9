"""``devkit canary judge``: verdicts, the noise test and the command, against stand-ins of
Prometheus (the real one judges real services in
tests/integration/test_canary_prometheus.py)."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from test_status import _vector, api  # noqa: F401  # the query API stand-in, by name

from devkit.cli import main
from devkit.ops import canary, canary_judge
from devkit.ops.canary import CanaryError, CanaryFileError, Side
from devkit.ops.canary_judge import compare, hodges_lehmann, judge
from devkit.ops.prometheus import Prometheus, PrometheusError, Sample, SeriesRange

scipy_stats = pytest.importorskip("scipy.stats")

BASELINE = Side.parse("baseline", 'version="1.0.0"')
CANARY = Side.parse("canary", 'version="1.1.0"')
GATE_OF = {
    "http_requests_errors_total": "error_rate",
    "histogram_quantile(0.99": "latency_p99",
    "histogram_quantile(0.5,": "latency_p50",
    "process_cpu_seconds_total": "cpu",
    "process_resident_memory_bytes": "memory",
}
HEALTHY = {"error_rate": 0.01, "latency_p99": 0.2, "latency_p50": 0.05, "cpu": 0.2, "memory": 1e8}


class World:
    """Prometheus as the judge's queries see it: per side, requests, each gate's value over
    the window and its samples over the intervals, told apart by the PromQL's text."""

    url = "http://prometheus.test"

    def __init__(
        self,
        values: dict[str, dict[str, float | None]],
        samples: dict[str, dict[str, list[float]]] | None = None,
        requests: dict[str, float | None] | None = None,
    ) -> None:
        self.values = values
        self.samples = samples or {}
        self.requests = requests or {"baseline": 5000.0, "canary": 1000.0}
        self.asked: list[str] = []

    @staticmethod
    def side(expr: str) -> str:
        return "canary" if "1.1.0" in expr else "baseline"

    @staticmethod
    def gate(expr: str) -> str:
        return next(gate for text, gate in GATE_OF.items() if text in expr)

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        self.asked.append(expr)
        side = self.side(expr)
        if expr.startswith("sum(increase("):
            value = self.requests[side]
        else:
            value = self.values[side].get(self.gate(expr))
        return [] if value is None else [Sample({}, value)]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[SeriesRange]:
        self.asked.append(expr)
        values = self.samples.get(self.side(expr), {}).get(self.gate(expr))
        if values is None:  # steady: every interval reads the window's value
            value = self.values[self.side(expr)].get(self.gate(expr))
            values = [] if value is None else [value] * round((end - start) / step + 1)
        return [SeriesRange({}, [(start + i * step, v) for i, v in enumerate(values)])]


def world(canary: dict[str, float | None] | None = None, **kwargs: Any) -> World:
    return World({"baseline": dict(HEALTHY), "canary": {**HEALTHY, **(canary or {})}}, **kwargs)


def noisy(mean: float, spread: float, count: int = 15, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [max(0.0, rng.gauss(mean, spread)) for _ in range(count)]


def by_name(judgement: canary_judge.Judgement) -> dict[str, canary_judge.GateResult]:
    return {g.gate.name: g for g in judgement.gates}


def test_an_identical_canary_is_promoted() -> None:
    judgement = judge(canary.defaults(), BASELINE, CANARY, world(), at=1000.0)
    assert judgement.verdict == "promote" and judgement.exit_status == 0
    assert {g.verdict for g in judgement.gates} == {"pass"}
    assert judgement.statistics == "mann-whitney" and judgement.notes == []
    errors = by_name(judgement)["error_rate"]
    assert errors.threshold == pytest.approx(0.015)
    assert errors.comparison is not None and errors.comparison.p_value == 1.0


def test_a_worse_canary_is_rolled_back_naming_the_gates() -> None:
    w = world({"error_rate": 0.04, "latency_p99": 0.3})
    judgement = judge(canary.defaults(), BASELINE, CANARY, w, at=1000.0)
    assert judgement.verdict == "rollback" and judgement.exit_status == 1
    results = by_name(judgement)
    assert {n for n, g in results.items() if g.verdict == "fail"} == {"error_rate", "latency_p99"}
    assert results["latency_p99"].threshold == pytest.approx(0.24)
    comparison = results["error_rate"].comparison
    assert comparison is not None and comparison.p_value < 0.001
    assert comparison.shift == pytest.approx(0.03) and comparison.samples == (15, 15)
    table = judgement.table()
    assert "| error_rate | 15m | 1.00% | 4.00% | <= 1.50% |" in table
    assert "| latency_p99 | 15m | 200.0 ms | 300.0 ms | <= 240.0 ms |" in table
    assert table.endswith("verdict: rollback (failed: error_rate, latency_p99)\n")


def test_noise_beyond_the_threshold_is_not_a_regression() -> None:
    # Over the window the canary reads 30 % slower, but its intervals are as spread as the
    # baseline's: the test finds no significant difference, and the gate passes.
    samples = {
        "baseline": {"latency_p99": noisy(0.2, 0.08, seed=1)},
        "canary": {"latency_p99": noisy(0.2, 0.08, seed=2)},
    }
    w = world({"latency_p99": 0.26}, samples=samples)
    result = by_name(judge(canary.defaults(), BASELINE, CANARY, w, at=1000.0))["latency_p99"]
    assert result.verdict == "pass"
    assert result.comparison is not None and result.comparison.p_value > 0.05
    assert "beyond the threshold but not significant" in result.reason


def test_a_significant_shift_within_the_threshold_passes() -> None:
    samples = {"baseline": {"cpu": [0.2] * 10}, "canary": {"cpu": [0.22] * 10}}
    result = by_name(judge(canary.defaults(), BASELINE, CANARY, world(samples=samples)))["cpu"]
    assert result.verdict == "pass"
    assert result.comparison is not None and result.comparison.p_value < 0.001


def test_without_scipy_the_threshold_alone_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(canary_judge, "mann_whitney", lambda: None)
    samples = {
        "baseline": {"latency_p99": noisy(0.2, 0.08, seed=1)},
        "canary": {"latency_p99": noisy(0.2, 0.08, seed=2)},
    }
    w = world({"latency_p99": 0.26}, samples=samples)
    judgement = judge(canary.defaults(), BASELINE, CANARY, w)
    assert judgement.verdict == "rollback" and judgement.statistics == "threshold-only"
    assert "SciPy is not installed" in judgement.notes[0]
    assert "pip install 'devkit-observability[canary]'" in judgement.notes[0]
    assert not any("query_range" in q or "[1m]" in q for q in w.asked)


def test_too_few_intervals_leave_the_threshold_to_decide() -> None:
    samples = {"canary": {"error_rate": [0.04] * 3}}
    w = world({"error_rate": 0.04}, samples=samples)
    result = by_name(judge(canary.defaults(), BASELINE, CANARY, w))["error_rate"]
    assert result.verdict == "fail" and result.comparison is None
    assert "3 intervals of 1m on a side, fewer than 5: the threshold alone decides" in result.reason


def test_the_statistics_can_be_turned_off() -> None:
    config = canary.parse({"statistics": {"enabled": False}})
    judgement = judge(config, BASELINE, CANARY, world({"error_rate": 0.02}))
    assert judgement.statistics == "threshold-only" and judgement.verdict == "rollback"
    assert judgement.notes == ["statistics are off in the gates file: threshold-only verdicts"]


@pytest.mark.parametrize(
    ("w", "reason"),
    [
        (
            world(requests={"baseline": 5000.0, "canary": 12.0}),
            "too few requests over 15m: canary 12, under the minimum of 100",
        ),
        (
            world(requests={"baseline": 5000.0, "canary": None}),
            'no request series for the canary (does --canary version="1.1.0" match',
        ),
        (world({"latency_p99": None}), "no series for the canary's latency_p99"),
        (world({"latency_p99": math.nan}), "the canary's latency_p99 is nan"),
    ],
    ids=["few requests", "no requests series", "no gate series", "not a number"],
)
def test_what_cannot_be_judged_is_inconclusive_with_its_reason(w: World, reason: str) -> None:
    judgement = judge(canary.defaults(), BASELINE, CANARY, w)
    assert judgement.verdict == "inconclusive" and judgement.exit_status == 3
    assert any(reason in g.reason for g in judgement.gates if g.verdict == "inconclusive")


def test_a_failure_beside_an_inconclusive_gate_rolls_back() -> None:
    judgement = judge(
        canary.defaults(), BASELINE, CANARY, world({"error_rate": 0.5, "memory": None})
    )
    verdicts = {g.gate.name: g.verdict for g in judgement.gates}
    assert verdicts["error_rate"] == "fail" and verdicts["memory"] == "inconclusive"
    assert judgement.verdict == "rollback"


def test_a_higher_is_better_custom_gate_fails_on_a_drop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(GATE_OF, "orders_total", "conversion")
    config = canary.parse(
        {
            "gates": {g: {"enabled": False} for g in canary.GATES},
            "custom": [
                {
                    "name": "conversion",
                    "query": "sum(rate(orders_total{$selector}[$window]) $join) "
                    "/ sum(rate(http_requests_total{$selector}[$window]) $join)",
                    "direction": "decrease",
                    "tolerance": 5,
                }
            ],
        }
    )

    def verdict(conversion: float) -> canary_judge.GateResult:
        w = world({"conversion": conversion})
        w.values["baseline"]["conversion"] = 0.1
        return judge(config, BASELINE, CANARY, w).gates[0]

    assert verdict(0.096).verdict == "pass"
    result = verdict(0.09)
    assert result.verdict == "fail" and result.threshold == pytest.approx(0.095)
    assert result.gate.window == "30m" and result.gate.rule == "canary >= baseline x 0.95"
    join = 'group_left() devkit_build_info{version="1.1.0"}'
    assert (
        f"sum(rate(orders_total{{}}[30m]) * on(job, instance) {join})" in result.queries["canary"]
    )


class Down:
    url = "http://127.0.0.1:1"

    def __init__(self, status: int | None = None) -> None:
        self.status = status
        self.calls = 0

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        self.calls += 1
        raise PrometheusError(f"{self.url} does not answer: refused", status=self.status)

    def query_range(self, *args: Any) -> list[SeriesRange]:
        raise AssertionError("never reached")


def test_a_prometheus_that_does_not_answer_is_asked_once() -> None:
    down = Down()
    judgement = judge(canary.defaults(), BASELINE, CANARY, down)
    assert judgement.verdict == "inconclusive" and down.calls == 1
    assert (
        judgement.unanswered
        == "Prometheus did not answer: http://127.0.0.1:1 does not answer: refused"
    )
    assert {g.reason for g in judgement.gates} == {judgement.unanswered}
    assert judgement.to_json()["unanswered"] == judgement.unanswered


def test_a_query_prometheus_rejects_is_bad_input() -> None:
    with pytest.raises(CanaryError, match="the error_rate gate's query was rejected"):
        judge(canary.defaults(), BASELINE, CANARY, Down(status=400))
    config = canary.parse(_custom_only("sum(x{$selector} $join"), "gates.yaml")
    with pytest.raises(CanaryFileError, match=r"^gates.yaml: custom\[0\] \(x\): query: rejected"):
        judge(config, BASELINE, CANARY, _Rejecting())


def _custom_only(query: str, direction: str = "increase") -> dict[str, Any]:
    return {
        "min_requests": 0,
        "gates": {g: {"enabled": False} for g in canary.GATES},
        "custom": [{"name": "x", "query": query, "direction": direction, "tolerance": 1}],
    }


class _Rejecting(World):
    def __init__(self) -> None:
        super().__init__({"baseline": {}, "canary": {}})

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        if expr.startswith("sum(increase("):
            return [Sample({}, 100.0)]
        raise PrometheusError("http://p: HTTP 400 (parse error)", status=400)


def test_a_custom_query_giving_several_series_is_bad_input() -> None:
    class Several(_Rejecting):
        def query(self, expr: str, at: float | None = None) -> list[Sample]:
            if expr.startswith("sum(increase("):
                return [Sample({}, 100.0)]
            return [Sample({"route": "/a"}, 1.0), Sample({"route": "/b"}, 2.0)]

    config = canary.parse(_custom_only("rate(x{$selector}[$window]) $join"), "gates.yaml")
    with pytest.raises(CanaryFileError, match="gives 2 series for the baseline, not one"):
        judge(config, BASELINE, CANARY, Several())


def test_hodges_lehmann_is_the_median_pairwise_difference() -> None:
    baseline = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    shifted = [v + 10 for v in baseline]
    shift, (low, high) = hodges_lehmann(shifted, baseline, 0.95)
    assert shift == 10.0 and low < 10.0 < high
    assert hodges_lehmann([3.0, 1.0], [0.0], 0.95)[0] == 2.0
    # Wider at a higher confidence.
    wide = hodges_lehmann(shifted, baseline, 0.99)[1]
    assert wide[0] <= low and wide[1] >= high


def test_the_test_looks_in_the_direction_that_is_worse() -> None:
    test = canary_judge.mann_whitney()
    assert test is not None
    lower = canary.defaults().gates[0]
    higher = canary.parse(_custom_only("x{$selector}", "decrease")).gates[0]
    low, high = [1.0, 1.1, 1.2, 1.3, 1.4], [2.0, 2.1, 2.2, 2.3, 2.4]
    assert compare(lower, low, high, test, 0.05).p_value < 0.01  # canary higher: worse
    assert compare(lower, high, low, test, 0.05).p_value > 0.9
    assert compare(higher, high, low, test, 0.05).p_value < 0.01  # canary lower: worse
    expected = scipy_stats.mannwhitneyu(high, low, alternative="greater").pvalue
    assert compare(lower, low, high, test, 0.05).p_value == pytest.approx(expected)


def test_the_json_has_the_contract_fields() -> None:
    report = judge(canary.defaults(), BASELINE, CANARY, world({"error_rate": 0.05})).to_json()
    assert report["verdict"] == "rollback"
    for gate in report["gates"]:
        assert {"name", "baseline", "canary", "threshold", "verdict"} <= set(gate)
        assert gate["verdict"] in ("pass", "fail", "inconclusive")
        assert set(gate["queries"]) == {"baseline", "canary"}
    json.dumps(report, allow_nan=False)


def test_windows_and_intervals_can_be_scaled_down_with_the_same_promql() -> None:
    config = canary.defaults().with_windows(20.0, 2.0)
    w = world()
    judge(config, BASELINE, CANARY, w)
    assert all(g.window == "20s" for g in config.gates)
    gate = config.gates[0]
    assert canary.value_query(gate, CANARY) in w.asked
    assert canary.value_query(gate, CANARY, "2s") in w.asked
    assert canary.value_query(gate, CANARY).replace("[20s]", "[15m]") == canary.value_query(
        canary.defaults().gates[0], CANARY
    )


# -- the command, over HTTP -------------------------------------------------------------------


def _answer(values: dict[str, float], few: bool = False) -> Any:
    """An answer function for test_status's query API stand-in."""

    def answer(query: str) -> tuple[int, dict[str, Any]]:
        side = World.side(query)
        if query.startswith("sum(increase("):
            return 200, _vector([5.0 if few and side == "canary" else 1000.0])
        value = (values if side == "canary" else HEALTHY)[World.gate(query)]
        if "[1m]" in query or "[2s]" in query:
            points = [[1000 + i, str(value)] for i in range(10)]
            result = [{"metric": {}, "values": points}]
            return 200, {"status": "success", "data": {"resultType": "matrix", "result": result}}
        return 200, _vector([value])

    return answer


def _judge_command(url: str, *extra: str) -> int:
    sides = ["--baseline", 'version="1.0.0"', "--canary", 'version="1.1.0"']
    return main(["canary", "judge", "--prometheus", url, *sides, *extra])


def test_the_command_prints_the_table_and_exits_with_the_verdict(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    url, answers, _ = request.getfixturevalue("api")
    answers[0] = _answer({**HEALTHY, "latency_p50": 0.08})
    assert _judge_command(url) == 1
    out = capsys.readouterr().out
    assert "| latency_p50 | 15m | 50.0 ms | 80.0 ms | <= 55.0 ms | " in out
    assert "verdict: rollback (failed: latency_p50)" in out
    answers[0] = _answer(HEALTHY)
    assert _judge_command(url, "--output", "json", "--window", "20s", "--interval", "2s") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == "promote" and report["statistics"] == "mann-whitney"
    assert all(g["window"] == "20s" and g["intervals"]["canary"] == 10 for g in report["gates"])
    answers[0] = _answer(HEALTHY, few=True)
    assert _judge_command(url) == 3
    assert "verdict: inconclusive (cannot judge: error_rate," in capsys.readouterr().out


def test_the_command_names_an_unreachable_prometheus_and_exits_3(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _judge_command("http://127.0.0.1:1", "--timeout", "2", "--output", "json") == 3
    captured = capsys.readouterr()
    assert json.loads(captured.out)["verdict"] == "inconclusive"
    assert "error: Prometheus did not answer: http://127.0.0.1:1 does not answer" in captured.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--canary", "version=1.1"], "error: --canary: 'version=1.1' is not a list of PromQL"),
        (["--canary", 'version="1.0.0"'], "error: --baseline and --canary select the same series"),
        (["--canary", 'hash="{{args.h}}"'], "holds a template, which only the rollout engine"),
        (["--window", "soon"], "error: --window: 'soon' is not a duration"),
        (
            ["--interval", "20m"],
            "the sample interval 20m (--interval) is longer than the error_rate",
        ),
        (["--prometheus", "prometheus:9090"], "error: --prometheus: 'prometheus:9090' is not an"),
        (["--gates", "/nonexistent/gates.yaml"], "error: /nonexistent/gates.yaml: cannot be read"),
    ],
    ids=["selector", "same sides", "template", "window", "interval", "url", "file"],
)
def test_bad_input_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    base = {"--prometheus": "http://127.0.0.1:1", "--canary": 'version="1.1.0"'}
    flags = dict(zip(argv[::2], argv[1::2], strict=True))
    args = [a for k, v in {**base, **flags}.items() for a in (k, v)]
    assert main(["canary", "judge", "--baseline", 'version="1.0.0"', *args]) == 2
    assert message in capsys.readouterr().err


def test_the_client_reads_range_vectors(request: pytest.FixtureRequest) -> None:
    url, answers, _ = request.getfixturevalue("api")
    result = [{"metric": {"job": "a"}, "values": [[10, "1"], [12, "NaN"]]}]
    answers[0] = lambda q: (
        200,
        {"status": "success", "data": {"resultType": "matrix", "result": result}},
    )
    (series,) = Prometheus(url).query_range("up", 10.0, 12.0, 2.0)
    assert series.labels == {"job": "a"} and series.points[0] == (10.0, 1.0)
    assert math.isnan(series.points[1][1])
    answers[0] = lambda q: (200, _vector([1.0]))
    with pytest.raises(PrometheusError, match="gave a vector, not a range vector"):
        Prometheus(url).query_range("up", 10.0, 12.0, 2.0)
    answers[0] = lambda q: (400, {"status": "error", "error": "bad step"})
    with pytest.raises(PrometheusError) as caught:
        Prometheus(url).query_range("up", 10.0, 12.0, 2.0)
    assert caught.value.status == 400 and "HTTP 400 (bad step)" in str(caught.value)
