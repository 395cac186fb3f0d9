"""The rollback rules: promtool checks them, and promtool runs the generated cases, which
fire each trigger in time and alone and keep a healthy canary silent (and fail on rules
that are wrong)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from test_rules import promtool

from devkit.cli import main
from devkit.ops import canary, canary_rules
from devkit.ops.canary import Side
from devkit.ops.rule_tests import SeriesError

#: (baseline, canary): by version (joined through devkit_build_info), by target labels,
#: and both at once.
SIDES = {
    "version": ('version="1.3.0"', 'version="1.4.0"'),
    "target labels": ('track="stable", namespace="shop"', 'track="canary", namespace="shop"'),
    "both": ('version="1.3.0", job="checkout"', 'version="1.4.0", job="checkout"'),
}
MOVED = {
    "name": "checkout",
    "rollback": {
        "rate_window": "2m",
        "labels": {"team": "shop"},
        "severity": "page",
        "error_rate": {"above": 10, "for": "3m"},
        "latency_p99": {"factor": 4},
        "restarts": {"count": 2, "within": "10m"},
        "unready": {"above": 25, "for": "2m"},
        "memory": {"above": 80, "for": "1m"},
        "circuit_breaker": {"for": "0s"},
    },
}


def run_promtool(cwd: Path, *args: str) -> tuple[int, str]:
    """promtool's exit status and everything it printed."""
    done = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, check=False)
    return done.returncode, done.stdout + done.stderr


def sides(kind: str) -> tuple[Side, Side]:
    baseline, canary_side = SIDES[kind]
    return Side.parse("baseline", baseline), Side.parse("canary", canary_side)


@pytest.mark.parametrize("kind", list(SIDES))
def test_promtool_checks_the_rules_clean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    baseline, canary_side = SIDES[kind]
    argv = ["canary", "rules", "--baseline", baseline, "--canary", canary_side]
    assert main(argv) == 0
    (tmp_path / "rules.yml").write_text(capsys.readouterr().out)
    status, printed = run_promtool(tmp_path, "check", "rules", "rules.yml")
    assert status == 0 and "SUCCESS: 6 rules found" in printed, printed
    rules = yaml.safe_load((tmp_path / "rules.yml").read_text())["groups"][0]["rules"]
    assert [r["alert"] for r in rules] == [t[0] for t in canary.TRIGGERS.values()]


#: Long waits and many restarts in a short window: the cases make room for them.
SLOW_AND_TIGHT = {
    "rollback": {
        "error_rate": {"for": "20m"},
        "restarts": {"count": 5, "within": "2m"},
        "unready": {"enabled": False},
    }
}


@pytest.mark.parametrize("kind", list(SIDES))
@pytest.mark.parametrize(
    "gates", [{}, MOVED, SLOW_AND_TIGHT], ids=["defaults", "moved", "slow and tight"]
)
def test_every_trigger_fires_in_time_and_a_healthy_canary_stays_silent(
    tmp_path: Path, kind: str, gates: dict[str, object]
) -> None:
    config = canary.parse(gates)
    baseline, canary_side = sides(kind)
    passed, output = canary_rules.run(config, baseline, canary_side, tmp_path, promtool())
    assert passed, output
    tests = yaml.safe_load((tmp_path / "tests.yml").read_text())["tests"]
    names = [t["name"] for t in tests]
    assert names[:3] == [
        "a healthy canary beside a healthy baseline: no alert",
        "a failing, slow baseline: the canary's rules stay silent",
        "a canary just under every limit: no alert",
    ]
    fired = {
        check["alertname"] for t in tests for check in t["alert_rule_test"] if check["exp_alerts"]
    }
    assert fired == {t.alert for t in config.rollback.triggers}


def test_the_cases_fail_on_wrong_rules(tmp_path: Path) -> None:
    """Rules that fire late, early or at the wrong level fail the generated cases."""
    config = canary.defaults()
    baseline, canary_side = sides("version")
    canary_rules.run(config, baseline, canary_side, tmp_path, promtool())
    good = (tmp_path / "rules.yml").read_text()
    for wrong, case in (
        (good.replace("> 0.05", "> 0.5"), "DevkitCanaryErrorRate"),  # never fires
        (good.replace("for: 2m", "for: 30s"), "DevkitCanaryErrorRate"),  # fires too soon
        (good.replace(">= 3", ">= 2"), "a canary just under every limit"),  # fires too easily
        (good.replace(") > 0.5", ") >= 0.5"), "a canary just under every limit"),
        (good.replace("* 3)", "* 12)"), "DevkitCanaryLatency"),
    ):
        assert wrong != good
        (tmp_path / "rules.yml").write_text(wrong)
        status, printed = run_promtool(tmp_path, "test", "rules", "tests.yml")
        assert status != 0 and f"name: {case}" in printed, (wrong, printed)


def test_the_alerts_carry_the_name_labels_and_a_summary() -> None:
    config = canary.parse(MOVED)
    baseline, canary_side = sides("target labels")
    rules = canary_rules.rule_groups(config, baseline, canary_side)["groups"][0]["rules"]
    by_alert = {r["alert"]: r for r in rules}
    errors = by_alert["DevkitCanaryErrorRate"]
    assert errors["labels"] == {"devkit_canary": "checkout", "team": "shop", "severity": "page"}
    assert errors["for"] == "3m" and errors["expr"].endswith(" > 0.1")
    assert 'rate(http_requests_total{track="canary",namespace="shop"}[2m])' in errors["expr"]
    assert "for" not in by_alert["DevkitCanaryCircuitBreakerOpen"]
    assert by_alert["DevkitCanaryCrashLoop"]["expr"] == (
        'changes(process_start_time_seconds{track="canary",namespace="shop"}[10m]) >= 2'
    )
    assert errors["annotations"]["summary"] == (
        "Canary checkout: roll back, more than 10.0% of its requests fail (for 3m)"
    )


@pytest.mark.parametrize(
    ("baseline", "canary_side", "message"),
    [
        ('track="stable"', 'instance="10.0.0.9:80"', "need instance left free"),
        ('track="stable"', 'track=~"can.*"', "need an equality matcher or a regex of plain"),
        ('track=~"stable|canary"', 'track="canary"', "--baseline also selects the canary's"),
    ],
)
def test_sides_no_series_can_be_built_for_are_named(
    baseline: str, canary_side: str, message: str
) -> None:
    with pytest.raises(SeriesError, match=message):
        canary_rules.test_files(
            canary.defaults(),
            Side.parse("baseline", baseline),
            Side.parse("canary", canary_side),
            "rules.yml",
        )


def test_the_test_command_runs_promtool(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gates = tmp_path / "gates.yaml"
    gates.write_text(yaml.safe_dump(MOVED))
    argv = ["canary", "test", "--baseline", 'version="1"', "--canary", 'version="2"']
    assert main([*argv, "--gates", str(gates), "--write", str(tmp_path / "out")]) == 0
    assert "SUCCESS" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"rules.yml", "tests.yml"}
    assert main([*argv, "--promtool", "no-such-promtool"]) == 2
    assert "error: no-such-promtool not found" in capsys.readouterr().err
