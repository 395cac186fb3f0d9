"""Real servers for integration tests: uvicorn/gunicorn subprocesses, and devkit's OTLP
receiver for them to export to."""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devkit.testing import OTLPReceiver

__all__ = [
    "BIN",
    "ROOT",
    "OTLPReceiver",
    "Prometheus",
    "Server",
    "attributes",
    "clean_env",
    "free_port",
    "poll",
    "prometheus",
    "samples",
    "serve",
    "tool_missing",
    "uvicorn_argv",
    "value",
]

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def tool_missing(reason: str) -> NoReturn:
    """A tool .ci/run installs is missing: fail in CI (``CI`` set), skip with ``reason``
    elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DEVKIT_", "OTEL_", "PROMETHEUS_"))
    }
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    out_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def json_lines(self) -> list[dict[str, Any]]:
        import json

        out = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


@contextmanager
def serve(
    argv: Sequence[str], env: dict[str, str], tmp: Path, port: int, ready_path: str = "/metrics"
) -> Iterator[Server]:
    """Start ``argv`` (which must listen on ``port``) and wait until it answers."""
    out_path = tmp / f"server-{port}.log"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(list(argv), env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    server = Server(proc, port, out_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{server.output()}")
            try:
                if httpx.get(server.url + ready_path, timeout=1).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{server.output()}")
            time.sleep(0.1)
        yield server
    finally:
        server.stop()


def uvicorn_argv(app: str, port: int, *extra: str) -> list[str]:
    return [str(BIN / "uvicorn"), app, "--host", "127.0.0.1", "--port", str(port), *extra]


def attributes(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        value = kv.value
        kind = value.WhichOneof("value")
        out[kv.key] = getattr(value, kind) if kind else None
    return out


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a classic exposition, by (name, labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    """One sample's value (0 when absent)."""
    return samples(text).get((name, frozenset(labels.items())), 0.0)


# -- the real Prometheus ---------------------------------------------------------------------


def poll(fetch: Callable[[], T], ok: Callable[[T], bool], timeout: float = 20) -> T:
    """Call ``fetch`` until ``ok`` accepts its result or ``timeout`` passes; the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = fetch()
        if ok(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.25)


@dataclass
class Prometheus:
    """A running Prometheus server (Debian package) and an HTTP client to its API."""

    url: str
    log_path: Path
    started: float
    client: httpx.Client

    def api(self, endpoint: str, **params: str) -> Any:
        response = self.client.get(f"/api/v1/{endpoint}", params=params)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def scalar(self, expr: str, timeout: float = 20) -> float:
        """The value of a one-element vector ``expr``, polled until it is finite and > 0."""

        def value(result: list[dict[str, Any]]) -> float:
            return float(result[0]["value"][1]) if len(result) == 1 else math.nan

        result = poll(lambda: self.query(expr), lambda r: value(r) > 0, timeout)
        assert len(result) == 1, (expr, result)
        return value(result)

    def target(self, job: str) -> dict[str, Any] | None:
        """The scrape target of ``job`` as ``/api/v1/targets`` reports it."""
        targets = self.api("targets", state="active")["activeTargets"]
        mine = [t for t in targets if t["scrapePool"] == job]
        assert len(mine) <= 1, targets
        return mine[0] if mine else None

    def wait_scraped(self, job: str) -> None:
        """Until ``job``'s target was scraped successfully once (the scrape manager applies
        new targets up to 5 s after start-up)."""
        first = poll(lambda: self.target(job), lambda t: t is not None and t["health"] == "up", 30)
        assert first is not None and first["health"] == "up", (first, self.log())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def prometheus(
    tmp: Path,
    targets: dict[str, int],
    rule_files: Sequence[Path] = (),
    job_settings: Mapping[str, str] | None = None,
) -> Iterator[Prometheus]:
    """The real Prometheus scraping each ``{job: port}`` on 127.0.0.1 every second and
    evaluating ``rule_files`` every second, with exemplar storage on. ``job_settings``
    adds YAML lines to a job's configuration (an ``authorization`` block, say)."""
    settings = job_settings or {}
    binary = shutil.which("prometheus")
    if binary is None:
        tool_missing("prometheus not installed: .ci/run installs the Debian package")
    jobs = "".join(
        f"""
  - job_name: {job}
    scrape_interval: 1s
    scrape_timeout: 1s
    metrics_path: /metrics
{settings.get(job, "")}    static_configs:
      - targets: ["127.0.0.1:{port}"]"""
        for job, port in targets.items()
    )
    rules = "".join(f"\n  - {path}" for path in rule_files)
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        + (f"rule_files:{rules}\n" if rule_files else "")
        + f"scrape_configs:{jobs}\n"
    )
    port = free_port()
    log_path = tmp / "prometheus.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--enable-feature=exemplar-storage",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            prom = Prometheus(url, log_path, time.time(), client)
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"prometheus exited early:\n{prom.log()}")
                try:
                    if client.get("/-/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"prometheus did not become ready:\n{prom.log()}")
                time.sleep(0.1)
            yield prom
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
