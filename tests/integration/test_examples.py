"""Every example starts the way its docstring says and answers.

A smoke test per example, run as a user would run it (uvicorn, gunicorn, ``python``),
imported as ``examples.<name>`` from the repository root. The deeper behaviour of each
integration is tested elsewhere; the point here is that no example rots.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import ROOT, Server, clean_env, free_port, serve, uvicorn_argv, value

pytestmark = pytest.mark.integration

GUNICORN = Path(sys.executable).parent / "gunicorn"
HEX32 = re.compile(r"[0-9a-f]{32}")


def _control_socket_off() -> list[str]:
    # gunicorn >= 25 opens a control socket at a fixed path in $HOME; parallel servers clash.
    from gunicorn.config import KNOWN_SETTINGS

    names = {setting.name for setting in KNOWN_SETTINGS}
    return ["--no-control-socket"] if "control_socket_disable" in names else []


def _records(server: Server) -> list[dict[str, Any]]:
    out = []
    for line in server.output().splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line still being written
                continue
    return out


def _wait_for_record(
    server: Server, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in _records(server) if predicate(r)]
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no matching log record in:\n{server.output()}")
        time.sleep(0.05)


def _get(server: Server, *paths: str) -> list[httpx.Response]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        return [client.get(path) for path in paths]


def _requests_total(metrics: str, route: str, status: str = "200") -> float:
    return value(metrics, "http_requests_total", method="GET", route=route, status_code=status)


def test_starlette_app_under_uvicorn(tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(DEVKIT_SERVICE_NAME="starlette-example")
    with serve(uvicorn_argv("examples.starlette_app:app", port), env, tmp_path, port) as server:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            item = client.get("/items/1", headers={"X-Correlation-ID": "example-starlette"})
            # uvicorn closes the connection after an unhandled exception: do not reuse it.
            boom = client.get("/boom", headers={"Connection": "close"})
            metrics = client.get("/metrics").text
        assert item.status_code == 200
        assert item.json() == {"item_id": 1}
        assert item.headers["X-Correlation-ID"] == "example-starlette"
        assert boom.status_code == 500
        assert _requests_total(metrics, "/items/{item_id}") == 1
        assert _requests_total(metrics, "/boom", "500") == 1
        assert 'route="/items/1"' not in metrics

        access = _wait_for_record(
            server,
            lambda r: (
                r.get("message") == "request completed"
                and r.get("correlation_id") == "example-starlette"
            ),
        )
        assert access["service"] == "starlette-example"
        assert access["route"] == "/items/{item_id}"
        assert access["status_code"] == 200
        assert HEX32.fullmatch(access["trace_id"])
        fetched = _wait_for_record(server, lambda r: r.get("message") == "item fetched")
        assert fetched["trace_id"] == access["trace_id"]
        failed = _wait_for_record(
            server, lambda r: r.get("message") == "request completed" and r.get("route") == "/boom"
        )
        assert failed["level"] == "error"
        assert failed["error"]["type"] == "RuntimeError"
        assert "ada@example.com" not in server.output()


def test_fastapi_app_under_uvicorn(tmp_path: Path) -> None:
    port = free_port()
    argv = uvicorn_argv("examples.fastapi_app:app", port)
    with serve(argv, clean_env(), tmp_path, port) as server:
        item, metrics = _get(server, "/items/1", "/metrics")
    assert item.status_code == 200
    assert item.json() == {"item_id": 1}
    assert HEX32.fullmatch(item.headers["X-Correlation-ID"])
    assert _requests_total(metrics.text, "/items/{item_id}") == 1


def test_flask_app_under_gunicorn_with_the_example_config(tmp_path: Path) -> None:
    port = free_port()
    multiproc = tmp_path / "multiproc"
    multiproc.mkdir()
    env = clean_env(
        PORT=str(port),
        HOST="127.0.0.1",
        WEB_CONCURRENCY="1",
        PROMETHEUS_MULTIPROC_DIR=str(multiproc),
    )
    argv = [
        str(GUNICORN),
        "-c",
        "examples/gunicorn_conf.py",
        *_control_socket_off(),
        "examples.flask_app:app",
    ]
    with serve(argv, env, tmp_path, port, ready_path="/healthz/startup") as server:
        item, ready, metrics = _get(server, "/items/1", "/healthz/ready", "/metrics")
    assert item.status_code == 200
    assert item.json()["item_id"] == 1
    assert "X-Correlation-ID" in item.headers
    assert ready.status_code == 200
    assert _requests_total(metrics.text, "/items/<int:item_id>") == 1
    assert any(multiproc.iterdir()), "workers wrote no multiprocess metric files"


def test_django_example_under_gunicorn(tmp_path: Path) -> None:
    port = free_port()
    argv = [
        str(GUNICORN),
        "--workers",
        "1",
        "--bind",
        f"127.0.0.1:{port}",
        *_control_socket_off(),
        "examples.django_app.wsgi:application",
    ]
    with serve(argv, clean_env(), tmp_path, port, ready_path="/healthz/startup") as server:
        item, metrics = _get(server, "/items/1", "/metrics")
    assert item.status_code == 200
    assert item.json()["item_id"] == 1
    assert "X-Correlation-ID" in item.headers
    assert _requests_total(metrics.text, "/items/<int:item_id>") == 1


def test_logs_quickstart_prints_json_lines() -> None:
    proc = subprocess.run(
        [sys.executable, "examples/logs_quickstart.py"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert records, "no output"
    assert {r["service"] for r in records} == {"svc"}
    assert any(HEX32.fullmatch(r.get("trace_id", "")) for r in records)
    assert "hunter2" not in proc.stdout


def test_demo_service_is_importable() -> None:
    # A subprocess: importing the module calls devkit.init(), which is process-global.
    code = (
        "from starlette.applications import Starlette\n"
        "from examples.demo_service import app\n"
        "assert isinstance(app, Starlette), type(app)\n"
        "print(sorted(r.path for r in app.routes))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=clean_env(DEVKIT_LOG_LEVEL="error"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "/items/{item_id}" in proc.stdout
