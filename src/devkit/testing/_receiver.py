"""One OTLP/HTTP receiver on 127.0.0.1 for ``devkit demo``, the tests and the benchmarks.

Recording is all the request path does: bodies are kept as they arrived and decoded
(Content-Encoding undone, then opentelemetry-proto) only when a read asks for it, so a
benchmark timing a worker next to the receiver does not pay for decoding. Only the
standard library is imported here; opentelemetry-proto is imported by the first decode.
"""

from __future__ import annotations

import gzip
import http.server
import socket
import socketserver
import sys
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

__all__ = ["OTLPReceiver", "Received", "Reply", "Traffic"]

#: Where OTLP/HTTP exporters post traces and logs, below the base endpoint.
_TRACES_PATH = "/v1/traces"
_LOGS_PATH = "/v1/logs"


@dataclass(frozen=True)
class Reply:
    """How the receiver answers a request.

    The default is a collector's success: 200 with an empty ``ExportTraceServiceResponse``
    (which serialises to no bytes). ``headers`` are sent as given (e.g. ``Retry-After``);
    ``delay_s`` waits before answering; ``close`` closes the connection after the answer.
    """

    status: int = 200
    body: bytes = b""
    content_type: str = "application/x-protobuf"
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    close: bool = False


#: The answer to a /v1/traces body that is not an ``ExportTraceServiceRequest``, when the
#: receiver rejects malformed bodies.
_MALFORMED = Reply(
    status=400, body=b"not an OTLP ExportTraceServiceRequest", content_type="text/plain"
)


@dataclass(frozen=True)
class Traffic:
    """What arrived between two calls of :meth:`OTLPReceiver.take`."""

    requests: int
    bytes: int  # as on the wire, before Content-Encoding is undone
    spans: int | None  # None when trace bodies came but opentelemetry-proto is not importable
    log_records: int | None = None  # the same for log bodies


@dataclass(slots=True, eq=False)
class Received:
    """One POST or PUT as it arrived: ``data`` is the body on the wire, ``headers`` have
    lower-case names, ``client`` is the (host, port) of the connection it came on."""

    method: str
    path: str
    headers: dict[str, str]
    data: bytes
    client: tuple[str, int]
    _decoded: bool = field(default=False, init=False, repr=False)
    _message: ExportTraceServiceRequest | None = field(default=None, init=False, repr=False)
    _logs_decoded: bool = field(default=False, init=False, repr=False)
    _logs: ExportLogsServiceRequest | None = field(default=None, init=False, repr=False)

    @property
    def body(self) -> bytes:
        """The body with its Content-Encoding (gzip or deflate) undone."""
        encoding = self.headers.get("content-encoding", "").strip().lower()
        if encoding == "gzip":
            return gzip.decompress(self.data)
        if encoding == "deflate":
            return zlib.decompress(self.data)
        return self.data

    @property
    def is_traces(self) -> bool:
        """Whether it was posted to an OTLP traces path (``.../v1/traces``)."""
        return self.path.partition("?")[0].rstrip("/").endswith(_TRACES_PATH)

    @property
    def is_logs(self) -> bool:
        """Whether it was posted to an OTLP logs path (``.../v1/logs``)."""
        return self.path.partition("?")[0].rstrip("/").endswith(_LOGS_PATH)

    def logs_request(self) -> ExportLogsServiceRequest | None:
        """The body decoded as OTLP logs, None when it does not decode as one (decoded
        once, on first call)."""
        if not self._logs_decoded:
            from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
                ExportLogsServiceRequest,
            )

            message = ExportLogsServiceRequest()
            try:
                message.ParseFromString(self.body)
            except Exception:
                self._logs = None
            else:
                self._logs = message
            self._logs_decoded = True
        return self._logs

    def export_request(self) -> ExportTraceServiceRequest | None:
        """The body decoded as OTLP traces, None when it does not decode as one.

        Decoded once, on first call; raises ImportError without opentelemetry-proto.
        """
        if not self._decoded:
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                ExportTraceServiceRequest,
            )

            message = ExportTraceServiceRequest()
            try:
                message.ParseFromString(self.body)
            except Exception:  # a bad encoding or a protobuf DecodeError: malformed either way
                self._message = None
            else:
                self._message = message
            self._decoded = True
        return self._message


class OTLPReceiver:
    """An OTLP/HTTP receiver on 127.0.0.1 that records every POST and PUT.

    Point a service at it with ``OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint`` (or an
    exporter at ``receiver.traces_url``). It speaks HTTP/1.1 with keep-alive, as a
    collector does, serves each connection on a daemon thread and logs nothing. Use it as
    a context manager, or call :meth:`start` and :meth:`stop`.

    What it answers, all settable before or while it runs:

    - ``reply``: a :class:`Reply` for every request (default: 200, empty
      ``ExportTraceServiceResponse``); e.g. ``Reply(status=503, headers={"Retry-After":
      "1"})``, ``Reply(delay_s=2.0)``, ``Reply(close=True)``;
    - ``replies``: a :class:`Reply` per path (query left out), in place of ``reply``;
    - ``reject_malformed``: answer 400 to a ``/v1/traces`` body that does not decode as an
      ``ExportTraceServiceRequest``. This decodes on the request path and needs
      opentelemetry-proto, so it is off by default.

    What it received (decoding happens here, on read): :meth:`received` (every request as
    it arrived), :meth:`connections`, :meth:`requests` (decoded trace exports),
    :meth:`spans` (``(resource, span)`` pairs), :meth:`trace_ids`, :meth:`log_requests`
    and :meth:`log_records` (``(resource, scope, record)``), :attr:`malformed`,
    :meth:`wait_for`, and :meth:`take`, which hands over and forgets what arrived since
    its last call.
    """

    def __init__(
        self,
        *,
        reply: Reply | None = None,
        replies: Mapping[str, Reply] | None = None,
        reject_malformed: bool = False,
        port: int = 0,
    ) -> None:
        self.reply = reply if reply is not None else Reply()
        self.replies: dict[str, Reply] = dict(replies or {})
        self.reject_malformed = reject_malformed
        self._port = port
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        """Listen and serve on a daemon thread: on a free port unless one was given, and
        after a :meth:`stop` on the same port again (a collector that restarts)."""
        if self._server is not None:
            raise RuntimeError("the receiver is already running")
        server = _Server(self._port, self)
        self._port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="otlp-receiver",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close the open connections; what was received stays."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        server.stopping.set()  # delayed answers go out now
        server.shutdown()
        server.server_close()
        server.close_connections()
        thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the receiver has no port until it starts")
        return self._port

    @property
    def endpoint(self) -> str:
        """Base URL, as in ``OTEL_EXPORTER_OTLP_ENDPOINT`` (signal paths are appended)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def traces_url(self) -> str:
        """The traces URL, as in ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``."""
        return self.endpoint + _TRACES_PATH

    @property
    def logs_url(self) -> str:
        """The logs URL, as in ``OTEL_EXPORTER_OTLP_LOGS_ENDPOINT``."""
        return self.endpoint + _LOGS_PATH

    # -- reads -------------------------------------------------------------------------

    def received(self) -> list[Received]:
        """Every request received (since the last :meth:`take`), in arrival order."""
        with self._lock:
            return list(self._received)

    def connections(self) -> set[tuple[str, int]]:
        """The client addresses requests came from: one per connection."""
        return {r.client for r in self.received()}

    def requests(self) -> list[ExportTraceServiceRequest]:
        """The trace exports received, decoded; malformed bodies are left out."""
        decoded = (r.export_request() for r in self.received() if r.is_traces)
        return [message for message in decoded if message is not None]

    def spans(self) -> list[tuple[Resource, Span]]:
        """Every received span with the resource it came with."""
        return [
            (resource_spans.resource, span)
            for request in self.requests()
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]

    def log_requests(self) -> list[ExportLogsServiceRequest]:
        """The log exports received, decoded; malformed bodies are left out."""
        decoded = (r.logs_request() for r in self.received() if r.is_logs)
        return [message for message in decoded if message is not None]

    def log_records(self) -> list[tuple[Resource, InstrumentationScope, LogRecord]]:
        """Every received log record with its resource and instrumentation scope."""
        return [
            (resource_logs.resource, scope_logs.scope, record)
            for request in self.log_requests()
            for resource_logs in request.resource_logs
            for scope_logs in resource_logs.scope_logs
            for record in scope_logs.log_records
        ]

    def trace_ids(self) -> set[str]:
        """The trace ids of every received span, in hex."""
        return {span.trace_id.hex() for _resource, span in self.spans()}

    @property
    def malformed(self) -> int:
        """How many ``/v1/traces`` bodies did not decode as an ``ExportTraceServiceRequest``."""
        return sum(1 for r in self.received() if r.is_traces and r.export_request() is None)

    def wait_for(self, predicate: Callable[[OTLPReceiver], object], timeout: float = 15) -> bool:
        """Poll ``predicate(self)`` until it is true or ``timeout`` seconds have passed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.1)
        return bool(predicate(self))

    def take(self) -> Traffic:
        """Hand over what arrived since the last call, with trace spans counted, and forget
        it (a long benchmark run keeps no bodies)."""
        with self._lock:
            taken, self._received = self._received, []
        wire = sum(len(r.data) for r in taken)
        try:
            decoded = [r.export_request() for r in taken if r.is_traces]
            logs = [r.logs_request() for r in taken if r.is_logs]
        except ImportError:
            return Traffic(len(taken), wire, None, None)
        spans = sum(
            len(scope_spans.spans)
            for message in decoded
            if message is not None
            for resource_spans in message.resource_spans
            for scope_spans in resource_spans.scope_spans
        )
        records = sum(
            len(scope_logs.log_records)
            for message in logs
            if message is not None
            for resource_logs in message.resource_logs
            for scope_logs in resource_logs.scope_logs
        )
        return Traffic(len(taken), wire, spans, records)

    # -- the request path --------------------------------------------------------------

    def _arrived(self, record: Received) -> Reply:
        """Record a request; the answer it gets."""
        if self.reject_malformed and record.is_traces and record.export_request() is None:
            reply = _MALFORMED
        else:
            reply = self.replies.get(record.path.partition("?")[0], self.reply)
        with self._lock:
            self._received.append(record)
        return reply


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as with a real collector
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.closed(self.connection)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        record = Received(
            method=self.command,
            path=self.path,
            headers={name.lower(): value for name, value in self.headers.items()},
            data=self.rfile.read(length) if length else b"",
            client=(str(self.client_address[0]), int(self.client_address[1])),
        )
        reply = self.server.receiver._arrived(record)
        if reply.delay_s > 0:
            self.server.stopping.wait(reply.delay_s)
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(reply.body)

    do_PUT = do_POST  # some vendor agents (ddtrace) PUT their payloads

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the tests and the demo report what they received themselves."""


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, receiver: OTLPReceiver) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.receiver = receiver
        self.stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def server_bind(self) -> None:
        # HTTPServer's own looks the host name up (getfqdn), which can stall on a
        # machine with slow DNS; the address is known.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "127.0.0.1"
        self.server_port = int(self.server_address[1])

    def opened(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def closed(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """Wake the threads waiting on kept-alive connections, so none outlives stop()."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away mid-answer (a timeout, a fault test) is not an error.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)
