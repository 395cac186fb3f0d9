"""The paired server-level benchmark end to end: real uvicorn and gunicorn servers, real wrk
bursts.

Nothing here is timed or compared with a threshold (the machine is shared); the test
checks that every burst was measured and paired, and that every server was stopped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from servers import tool_missing

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _need_wrk() -> None:
    if shutil.which("wrk") is None:
        tool_missing("wrk not installed: .ci/run installs the Debian package")


def test_paired_run_measures_and_pairs_every_burst(tmp_path: Path) -> None:
    _need_wrk()
    out = tmp_path / "paired.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.paired", "--bursts", "2", "--burst-s", "1",
         "--env", "DEVKIT_SAMPLE_SUCCESS_RATIO=1.0", "--without", "span", "--against", "HEAD",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| devkit |" in proc.stdout
    result = json.loads(out.read_text())
    assert result["bursts"] == 2 and result["env"] == {"DEVKIT_SAMPLE_SUCCESS_RATIO": "1.0"}
    assert set(result["variants"]) == {"bare", "devkit", "devkit without span", "devkit at HEAD"}
    assert result["without"] == ["span"]
    assert result["server"] == "uvicorn --http h11 --loop asyncio"
    devkit = result["variants"]["devkit"]
    assert devkit["requests_per_s"] > 0 and devkit["cpu_us_per_request"] > 0
    # Every trace kept: the export thread works, off the request thread.
    assert 0 < devkit["request_thread_cpu_us_per_request"] <= devkit["cpu_us_per_request"]
    assert devkit["background_cpu_us_per_request"] > 0
    # The server without the span has nothing to export: the switch reached the server.
    no_span = result["variants"]["devkit without span"]
    assert no_span["requests_per_s"] > 0 and len(no_span["paired"]["requests_per_s"]["ratios"]) == 2
    assert no_span["background_cpu_us_per_request"] < devkit["background_cpu_us_per_request"]
    # The committed source served next to the working tree's, and paired with it.
    assert result["change"]["against"] == "HEAD"
    assert len(result["change"]["paired"]["requests_per_s"]["ratios"]) == 2
    assert "devkit over devkit at HEAD, burst by burst" in proc.stdout
    ratios = devkit["paired"]["requests_per_s"]["ratios"]
    assert len(ratios) == 2 and all(r > 0 for r in ratios)
    low, high = devkit["paired"]["requests_per_s"]["interval_95"]
    assert min(ratios) <= low <= high <= max(ratios)
    # Every server was stopped and exited cleanly (uvicorn re-raises SIGTERM after its
    # graceful shutdown).
    assert {v["exit_status"] for v in result["variants"].values()} <= {0, -15}


def test_paired_run_on_gunicorn_pairs_the_flask_app(tmp_path: Path) -> None:
    _need_wrk()
    out = tmp_path / "paired.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.paired", "--server", "gunicorn", "--bursts", "2",
         "--burst-s", "1", "--env", "DEVKIT_SAMPLE_SUCCESS_RATIO=1.0", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "gunicorn, 1 sync worker" in proc.stdout
    result = json.loads(out.read_text())
    assert result["server"] == "gunicorn, 1 sync worker"
    assert set(result["variants"]) == {"bare", "devkit"}
    devkit = result["variants"]["devkit"]
    assert len(devkit["paired"]["requests_per_s"]["ratios"]) == 2
    # The worker's main thread serves; every trace kept, its export thread works.
    assert 0 < devkit["request_thread_cpu_us_per_request"] <= devkit["cpu_us_per_request"]
    assert devkit["background_cpu_us_per_request"] > 0
    # gunicorn's master exits 0 once its worker stopped.
    assert {v["exit_status"] for v in result["variants"].values()} == {0}


@pytest.mark.parametrize(
    ("flags", "reason"),
    [
        (["--variant", "no-such"], "paired run failed: server exited with status"),
        (["--against", "no-such-rev"], "paired run failed: --against no-such-rev:"),
    ],
)
def test_a_run_that_cannot_start_fails_with_its_reason(flags: list[str], reason: str) -> None:
    _need_wrk()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.paired", "--bursts", "2", *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert reason in proc.stderr
    assert "Traceback" not in proc.stderr
