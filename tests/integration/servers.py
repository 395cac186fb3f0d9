"""Real servers for integration tests: uvicorn/gunicorn subprocesses and an OTLP receiver."""

from __future__ import annotations

import gzip
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client.parser import text_string_to_metric_families

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


@dataclass
class OTLPReceiver:
    """An OTLP/HTTP traces endpoint that decodes every request with opentelemetry-proto."""

    port: int = 0
    requests: list[ExportTraceServiceRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OTLPReceiver:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                message = ExportTraceServiceRequest()
                message.ParseFromString(body)
                with receiver.lock:
                    receiver.requests.append(message)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def spans(self) -> list[tuple[Any, Any]]:
        """Every received (resource, span) pair."""
        out = []
        with self.lock:
            for request in self.requests:
                for rs in request.resource_spans:
                    for ss in rs.scope_spans:
                        for span in ss.spans:
                            out.append((rs.resource, span))
        return out

    def trace_ids(self) -> set[str]:
        return {span.trace_id.hex() for _, span in self.spans()}

    def wait_for(self, predicate: Any, timeout: float = 15) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.1)
        return bool(predicate(self))


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
