"""The SLO file: what it accepts, and one clear error (exit 2, nothing written) for the rest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from devkit.cli import main
from devkit.conventions import buckets_for
from devkit.ops import slo

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
service: checkout
selector: 'job="checkout", namespace=~"shop|shop-canary"'
slos:
  - name: availability
    objective: 99.9
    sli:
      kind: availability
  - name: fast-items
    objective: 99
    window: 7d
    description: item pages answer fast
    sli:
      kind: latency
      threshold_s: 0.3
      routes: ["/items/{item_id}"]
      methods: [GET, HEAD]
    alerting:
      page_severity: page
      ticket_severity: ticket
      labels: {team: shop}
      runbook_url: https://runbooks.example/fast-items
      min_request_rate: 0.5
"""


def write(tmp_path: Path, text: str, name: str = "slo.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_good_file_with_its_defaults(tmp_path: Path) -> None:
    loaded = slo.load(write(tmp_path, GOOD))
    assert loaded.service == "checkout" and loaded.budget_evaluation == "exact"
    availability, fast = loaded.slos
    assert availability.window == "30d" and availability.objective_ratio == 0.999
    assert availability.budget == 0.001
    assert availability.alerting.page_severity == "critical"
    assert availability.alerting.min_request_rate == pytest.approx(1 / 60)
    assert fast.window_s == 7 * 86400 and fast.sli.threshold_s == 0.3
    assert fast.sli.routes == ("/items/{item_id}",) and fast.sli.methods == ("GET", "HEAD")
    assert fast.alerting.labels == {"team": "shop"} and fast.alerting.min_request_rate == 0.5


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (
            ("kind: availability", "kind: throughput"),
            "slos[0] (availability): sli.kind: 'throughput' is invalid: "
            "expected availability or latency",
        ),
        (
            ("objective: 99.9", "objective: 100"),
            "slos[0] (availability): objective: 100 is invalid: "
            "expected a percentage above 0 and below 100",
        ),
        (
            ("objective: 99.9", "objective: 0"),
            "slos[0] (availability): objective: 0 is invalid",
        ),
        (
            ("threshold_s: 0.3", "threshold_s: 0.2"),
            "slos[1] (fast-items): sli.threshold_s: 0.2 is not a bucket bound of "
            "http_request_duration_seconds, so no series would match it; "
            "the nearest bounds are 0.1 and 0.25",
        ),
        (
            ('routes: ["/items/{item_id}"]', 'route: ["/items/{item_id}"]'),
            "slos[1] (fast-items): sli: route: unknown field; expected one of kind, methods, "
            "routes, threshold_s",
        ),
        (
            ("      kind: availability", "      kind: availability\n      threshold_s: 0.3"),
            "slos[0] (availability): sli: threshold_s: unknown field",
        ),
        (
            ("window: 7d", "window: 1d"),
            "slos[1] (fast-items): window: '1d' is invalid: expected from 3d",
        ),
        (
            ("window: 7d", "window: a week"),
            "slos[1] (fast-items): window: 'a week' is invalid: expected a duration",
        ),
        (
            ("name: fast-items", "name: availability"),
            "slos[1] (availability): name: already used",
        ),
        (
            ("name: fast-items", "name: Fast Items"),
            "slos[1]: name: 'Fast Items' is invalid: expected [a-z0-9_-]+",
        ),
        (
            ("methods: [GET, HEAD]", "methods: [get]"),
            "slos[1] (fast-items): sli.methods: 'get' is invalid",
        ),
        (
            ('routes: ["/items/{item_id}"]', 'routes: ["items"]'),
            "slos[1] (fast-items): sli.routes: 'items' is invalid: expected a route template",
        ),
        (
            ("labels: {team: shop}", "labels: {severity: low}"),
            "slos[1] (fast-items): alerting.labels: 'severity' is invalid",
        ),
        (
            ("min_request_rate: 0.5", "min_request_rate: -1"),
            "slos[1] (fast-items): alerting.min_request_rate: -1 is invalid",
        ),
        (
            (
                'selector: \'job="checkout", namespace=~"shop|shop-canary"\'',
                "selector: 'job=checkout'",
            ),
            "selector: 'job=checkout' is not a list of PromQL label matchers",
        ),
        (
            ("service: checkout", "service: checkout\nowner: me"),
            "owner: unknown field; expected one of budget_evaluation, selector, service, slos",
        ),
        (
            ('routes: ["/items/{item_id}"]', 'routes: ["/items/{item_id}"'),
            "line 16, column 7: not valid YAML: expected ',' or ']'",
        ),
    ],
)
def test_each_mistake_is_one_message_naming_file_slo_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mutation: tuple[str, str], message: str
) -> None:
    old, new = mutation
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    assert main(["slo", "rules", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""  # nothing written
    assert err.count("\n") == 1 and err.startswith(f"error: {path}: "), err
    assert message in err


def test_threshold_bounds_follow_the_services_slow_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, GOOD.replace("threshold_s: 0.3", "threshold_s: 0.2"))
    with pytest.raises(slo.SLOFileError, match=r"nearest bounds are 0\.1 and 0\.25"):
        slo.load(path)
    assert slo.load(path, buckets=buckets_for(0.2)).slos[1].sli.threshold_s == 0.2
    monkeypatch.setenv("DEVKIT_SLOW_THRESHOLD_MS", "200")
    assert main(["slo", "rules", str(path)]) == 0
    assert 'le="0.2"' in capsys.readouterr().out


def test_a_missing_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["slo", "rules", str(tmp_path / "nope.yaml")]) == 2
    assert f"error: {tmp_path / 'nope.yaml'}: cannot be read" in capsys.readouterr().err


def test_without_pyyaml_the_extra_is_named(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['yaml'] = None\n"
        "from devkit.cli import main\n"
        f"raise SystemExit(main(['slo', 'rules', {str(write(tmp_path, GOOD))!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "pip install 'devkit-observability[slo]'" in done.stderr


# -- the JSON Schema agrees with the loader ---------------------------------------------------


def test_the_schema_command_prints_the_shipped_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["slo", "schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == slo.schema()
    jsonschema.Draft202012Validator.check_schema(printed)


def test_the_good_file_is_valid_for_the_schema() -> None:
    jsonschema.validate(yaml.safe_load(GOOD), slo.schema())


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("kind: availability", "kind: throughput"),
        ("objective: 99.9", "objective: 100"),
        ("objective: 99.9", "objective: 0"),
        ('routes: ["/items/{item_id}"]', 'route: ["/items/{item_id}"]'),
        ("      kind: availability", "      kind: availability\n      threshold_s: 0.3"),
        ("threshold_s: 0.3", "threshold_s: -1"),
        ("name: fast-items", "name: Fast Items"),
        ("methods: [GET, HEAD]", "methods: [get]"),
        ("labels: {team: shop}", "labels: {severity: low}"),
        ("service: checkout", "service: checkout\nowner: me"),
    ],
)
def test_what_the_loader_rejects_the_schema_rejects(old: str, new: str) -> None:
    data = yaml.safe_load(GOOD.replace(old, new, 1))
    with pytest.raises(slo.SLOFileError):
        slo.parse(data)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, slo.schema())


def test_the_schema_ships_with_the_package() -> None:
    assert (ROOT / "src" / "devkit" / "ops" / "slo.schema.json").is_file()
