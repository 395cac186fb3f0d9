"""devkit at the lowest dependency versions pyproject.toml admits: it works, and every
shortcut through a library's internals is the one in use (``devkit._compat``).

The rest of the suite runs at the newest releases (what CI installs); this test builds a
virtual environment with each lower bound pinned exactly, so a bound that no longer
holds (an API devkit uses that the oldest admitted release lacks, or a shortcut it does
not offer) fails here instead of in a user's deployment.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
import venv
from pathlib import Path

import pytest
from servers import ROOT, tool_missing

from devkit.testing import OTLPReceiver

pytestmark = pytest.mark.integration

_PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
_SPEC = re.compile(r"^([A-Za-z0-9_.\-]+)>=([^,;\s]+)$")

#: Runs inside the environment: the shortcuts, then one request through devkit.
_CHECK = """
import json, os, sys
from devkit import _compat
import devkit
paths = [(p.name, p.active, p.detail) for p in _compat.fast_paths()]
devkit.init(service_name="lowest")
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
body = devkit.wsgi(app)({"REQUEST_METHOD": "GET", "PATH_INFO": "/x"}, lambda *a: None)
list(body)
body.close()
devkit.shutdown()
print("RESULT " + json.dumps(paths))
"""


def _lowest(specs: list[str]) -> dict[str, str]:
    """``{distribution: lowest version}`` from ``name>=version`` specifiers."""
    pins = {}
    for spec in specs:
        match = _SPEC.match(spec.strip())
        assert match, f"pyproject.toml: {spec!r} has no plain lower bound to test"
        pins[match.group(1).lower()] = match.group(2)
    return pins


def _environment(tmp: Path, requirements: list[str]) -> Path:
    venv.EnvBuilder(with_pip=True).create(tmp)
    python = tmp / "bin" / "python"
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *requirements,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if install.returncode != 0:
        tool_missing(f"pip could not install {requirements}: {install.stderr[-2000:]}")
    return python


def _check(python: Path, env: dict[str, str]) -> tuple[list[list[object]], str]:
    run = subprocess.run(
        [str(python), "-c", _CHECK],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT / "src"), **env},
    )
    assert run.returncode == 0, run.stderr
    (line,) = [out for out in run.stdout.splitlines() if out.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT ")), run.stdout


def test_lowest_runtime_dependencies(tmp_path: Path) -> None:
    pins = _lowest(_PYPROJECT["project"]["dependencies"])
    python = _environment(tmp_path, [f"{name}=={version}" for name, version in pins.items()])
    paths, out = _check(python, {})
    assert {name for name, _, _ in paths} >= {"context-var", "metric-values", "loop-ready-queue"}
    assert [p for p in paths if not p[1]] == []
    assert '"message":"request completed"' in out and '"path":"/x"' in out


def test_lowest_otlp_exporter(tmp_path: Path) -> None:
    """The exporter pins its own SDK release; the other runtime dependencies stay at
    their lower bounds, and the spans reach a collector through the fast path."""
    runtime = _lowest(_PYPROJECT["project"]["dependencies"])
    exporter = _lowest(_PYPROJECT["project"]["optional-dependencies"]["otlp"])
    requirements = [
        f"{name}=={version}" if not name.startswith("opentelemetry") else f"{name}>={version}"
        for name, version in runtime.items()
    ] + [f"{name}=={version}" for name, version in exporter.items()]
    python = _environment(tmp_path, requirements)
    with OTLPReceiver() as receiver:
        paths, _ = _check(
            python,
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "DEVKIT_SAMPLE_SUCCESS_RATIO": "1",
            },
        )
        assert receiver.wait_for(lambda r: len(r.spans()) >= 1)
    assert {name for name, _, _ in paths} >= {"otlp-encoder", "otlp-connection"}
    assert [p for p in paths if not p[1]] == []
