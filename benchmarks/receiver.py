"""A local OTLP/HTTP sink so variants that export really export.

Exporting is part of what tracing costs (serialisation and the export thread compete with
requests for the GIL), so the OTel variants send to this receiver instead of to nowhere.
It runs in the parent process, which is idle while a worker is timed, and only stores the
bodies; decoding them to count spans happens after the worker exits, off the clock.
"""

from __future__ import annotations

import gzip
import threading
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Receiver", "Traffic"]


@dataclass(frozen=True)
class Traffic:
    """What one worker sent to the receiver."""

    requests: int
    bytes: int
    spans: int | None  # None when the OTLP protobuf classes are not importable


_DATADOG_TRACES = ("/v0.4/traces", "/v0.5/traces")
_DATADOG_ANSWER = b'{"rate_by_service":{}}'


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as with a real collector
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.record(self.path, self.headers.get("Content-Encoding", ""), body)
        answer, content_type = b"", "application/x-protobuf"
        if self.path.startswith(_DATADOG_TRACES):
            # The Datadog agent answers trace payloads with its sampling rates; ddtrace
            # treats an empty answer as a failed send and drops the traces.
            answer, content_type = _DATADOG_ANSWER, "application/json"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_PUT = do_POST  # some vendor agents (ddtrace) PUT their payloads

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.bodies: list[tuple[str, str, bytes]] = []

    def record(self, path: str, encoding: str, body: bytes) -> None:
        with self.lock:
            self.bodies.append((path, encoding, body))


class Receiver:
    """Accepts any POST/PUT on 127.0.0.1 and answers 200: an empty body, or for Datadog
    trace payloads the agent's (empty) sampling rates."""

    def __init__(self) -> None:
        self._server = _Server()
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="otlp-receiver", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        """Base URL, as in ``OTEL_EXPORTER_OTLP_ENDPOINT`` (signal paths are appended)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def take(self) -> Traffic:
        """Everything received since the last call, with OTLP trace spans counted."""
        with self._server.lock:
            bodies, self._server.bodies = self._server.bodies, []
        spans = 0
        for path, encoding, body in bodies:
            if path.rstrip("/").endswith("/v1/traces"):
                counted = _count_spans(_decompress(encoding, body))
                if counted is None:
                    return Traffic(len(bodies), sum(len(b) for _, _, b in bodies), None)
                spans += counted
        return Traffic(len(bodies), sum(len(b) for _, _, b in bodies), spans)


def _decompress(encoding: str, body: bytes) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


def _count_spans(body: bytes) -> int | None:
    try:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )
    except ImportError:
        return None
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
