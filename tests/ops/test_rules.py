"""The rules devkit slo generates: promtool checks them, and promtool runs the generated
cases against them (which fail on rules that are wrong)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from devkit.cli import main
from devkit.ops import rule_tests, rules, slo

AVAILABILITY_30D = """\
service: checkout
selector: 'job="checkout"'
slos:
  - name: availability
    objective: 99.9
    sli: {kind: availability}
"""
LATENCY_7D_ROUTE = """\
slos:
  - name: fast-items
    objective: 99
    window: 7d
    sli:
      kind: latency
      threshold_s: 1.0
      routes: ["/items/{item_id}", "/items"]
      methods: [GET]
    alerting:
      labels: {team: shop}
      runbook_url: https://runbooks.example/fast-items
"""
MIXED_28D_INCREMENTAL = """\
service: orders
budget_evaluation: incremental
slos:
  - name: checkout-available
    objective: 99.5
    window: 28d
    sli: {kind: availability, routes: ["/checkout/{order_id}"]}
    alerting: {min_request_rate: 0}
  - name: checkout-fast
    objective: 90
    window: 28d
    sli: {kind: latency, threshold_s: 0.3}
"""
FILES = {
    "30d availability": AVAILABILITY_30D,
    "7d route-scoped latency": LATENCY_7D_ROUTE,
    "28d incremental": MIXED_28D_INCREMENTAL,
}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not installed: .ci/run installs the Debian prometheus package")
    return path


def load(tmp_path: Path, text: str) -> slo.SLOFile:
    path = tmp_path / "slo.yaml"
    path.write_text(text)
    return slo.load(path)


@pytest.mark.parametrize("text", list(FILES.values()), ids=list(FILES))
def test_promtool_checks_the_rules_clean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    (tmp_path / "slo.yaml").write_text(text)
    assert main(["slo", "rules", str(tmp_path / "slo.yaml")]) == 0
    (tmp_path / "rules.yml").write_text(capsys.readouterr().out)
    done = subprocess.run(
        [promtool(), "check", "rules", "rules.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@pytest.mark.parametrize("text", list(FILES.values()), ids=list(FILES))
def test_the_generated_cases_pass_on_the_generated_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    promtool()
    (tmp_path / "slo.yaml").write_text(text)
    code = main(["slo", "test", str(tmp_path / "slo.yaml"), "--write", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "SUCCESS" in out and "FAILED" not in out
    cases = [
        case
        for path in sorted((tmp_path / "out").glob("tests*.yml"))
        for case in yaml.safe_load(path.read_text())["tests"]
    ]
    names = " | ".join(case["name"] for case in cases)
    for expected in ("pages within", "opens a ticket and pages no one", "stays silent",
                     "leaves half the budget", "absent alert"):  # fmt: skip
        assert expected in names


def _broken(tmp_path: Path, text: str, old: str, new: str) -> tuple[int, str]:
    """The generated cases, run against rules with ``old`` replaced by ``new``."""
    slo_file = load(tmp_path, text)
    out = tmp_path / "out"
    assert rule_tests.run(slo_file, out)[0]
    rule_text = (out / "rules.yml").read_text()
    assert old in rule_text
    (out / "rules.yml").write_text(rule_text.replace(old, new))
    done = subprocess.run(
        [promtool(), "test", "rules", "tests.yml"],
        cwd=out,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("old", "new", "fails"),
    [
        # the 1 h page factor of a 30-day window, as if it were a 3-day one: pages early
        ("> 14.4", "> 1.44", "pages within"),
        # the ticket never fires
        ("> 1 and", "> 100 and", "opens a ticket"),
        # the minimum request rate forgotten: few requests page someone
        (" >= 0.0166666666667", " >= 0", "minimum rate pages no one"),
        # the budget counted over a shorter window than the SLO's
        ("[30d]))", "[10m]))", "devkit_slo:error_budget_remaining:ratio"),
        # the absent alert looking at the wrong series
        ("absent(devkit_build_info", "absent(up", "stays silent"),
    ],
)
def test_the_cases_fail_on_wrong_rules(tmp_path: Path, old: str, new: str, fails: str) -> None:
    promtool()
    code, output = _broken(tmp_path, AVAILABILITY_30D, old, new)
    assert code != 0
    assert "FAILED" in output and fails in output, output


@pytest.mark.parametrize(
    ("window", "factors"),
    [
        ("30d", ["14.4", "6", "3", "1"]),
        ("28d", ["13.44", "5.6", "2.8", "0.933333"]),
        ("7d", ["3.36", "1.4", "0.7", "0.233333"]),
    ],
)
def test_burn_factors_follow_the_slo_window(
    tmp_path: Path, window: str, factors: list[str]
) -> None:
    slo_file = load(tmp_path, AVAILABILITY_30D + f"    window: {window}\n")
    text = rules.render(rules.rule_groups(slo_file))
    page = [r for g in yaml.safe_load(text)["groups"] for r in g["rules"] if "alert" in r]
    found = [re.findall(r"burn_rate:rate\w+\{[^}]*\} > ([\d.]+)", r["expr"]) for r in page[:2]]
    assert [f for pair in found for f in pair[::2]] == factors


def test_selectors_use_the_client_libraries_spelling_and_count_events(tmp_path: Path) -> None:
    text = rules.render(rules.rule_groups(load(tmp_path, LATENCY_7D_ROUTE)))
    # le as prometheus-client writes it: "1.0", not "1"
    assert 'le="1.0"' in text and 'le="1"' not in text
    # both routes, as an anchored regex with the template's braces escaped
    assert 'route=~"/items/\\\\{item_id\\\\}|/items"' in text
    assert 'method="GET"' in text
    # the SLO window from counted events, never an average of short ratios
    assert "increase(http_request_duration_seconds_count" in text and "[7d]" in text
    assert "avg_over_time" not in text


def test_rules_name_what_they_hold(tmp_path: Path) -> None:
    groups = rules.rule_groups(load(tmp_path, AVAILABILITY_30D))["groups"]
    recorded = {r["record"]: r["expr"] for g in groups for r in g["rules"] if "record" in r}
    assert len(recorded) == 34  # docs/slo.md, "What the rules cost"
    # A burn rate is the error ratio over the budget; an error ratio is bad over all.
    assert recorded["devkit_slo:burn_rate:rate1h"].endswith(" / 0.001")
    assert recorded["devkit_slo:burn_rate:rate1h"].startswith("devkit_slo:error_ratio:rate1h{")
    assert recorded["devkit_slo:error_ratio:rate1h"].startswith("devkit_slo:bad:rate1h{")
    assert recorded["devkit_slo:objective:ratio"] == "vector(0.999)"
    # No errors yet is no bad event: the errors series appears with the first error.
    assert recorded["devkit_slo:bad:rate5m"].endswith("or vector(0))")
