"""The server-level instruction count end to end: uvicorn under callgrind, loaded by wrk.

The count is checked for shape and order of magnitude only (it is what the tool is for
to read); what matters here is that the window between the two ``callgrind_control``
calls was counted and divided by the requests wrk completed in it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from servers import tool_missing

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_server_instruction_count_counts_the_loaded_window() -> None:
    missing = [tool for tool in ("valgrind", "callgrind_control", "wrk") if not shutil.which(tool)]
    if missing:
        tool_missing(f"{', '.join(missing)} not installed: .ci/run installs the Debian packages")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.instructions", "--server", "--variant", "bare",
         "--seconds", "2", "--warmup", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r"^server \(h11\) bare, ([\d,]+) requests: Ir ([\d,]+)", proc.stdout, re.M)
    assert found is not None, proc.stdout
    requests, per_request = (int(g.replace(",", "")) for g in found.groups())
    assert requests > 0
    # A uvicorn + Starlette request is hundreds of thousands of instructions; start-up
    # (tens of billions) would show if counting had not started off.
    assert 100_000 < per_request < 5_000_000
