"""Acceptance: a script that only calls devkit.init() prints SPEC-conformant JSON lines."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def test_quickstart_script_prints_only_spec_json_lines() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEVKIT_", "OTEL_"))}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "logs_quickstart.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    lines = proc.stdout.splitlines()
    records = [json.loads(line) for line in lines]  # every line is JSON
    assert len(records) == 7
    for r in records:
        assert list(r)[:5] == ["timestamp", "level", "service", "logger", "message"]
        assert r["service"] == "svc"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["timestamp"])
        assert r["level"] in {"debug", "info", "warn", "error", "fatal"}
    outside, stdlib_outside, inside, stdlib_inside, secret, failure, final = records
    assert final["message"] == "shutdown complete" and final["logger"] == "devkit"
    assert "trace_id" not in outside and "trace_id" not in stdlib_outside
    assert stdlib_outside["logger"] == "quickstart.stdlib"
    assert re.fullmatch(r"[0-9a-f]{32}", inside["trace_id"])
    assert re.fullmatch(r"[0-9a-f]{16}", inside["span_id"])
    assert stdlib_inside["trace_id"] == inside["trace_id"]
    assert stdlib_inside["span_id"] == inside["span_id"]
    assert stdlib_inside["level"] == "warn" and stdlib_inside["attempt"] == 2
    assert inside["order_id"] == "ORD-2024-000123"
    assert secret["password"] == "[REDACTED:secret]"
    assert secret["contact"] == "[REDACTED:email]"
    assert failure["error"]["type"] == "ValueError"
    assert "4111" not in proc.stdout and "hunter2" not in proc.stdout
    assert "ada@example.com" not in proc.stdout
