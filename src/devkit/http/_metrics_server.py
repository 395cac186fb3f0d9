"""The ``DEVKIT_METRICS_PORT`` server: /metrics and the probes on a port of their own.

A small threaded HTTP server outside the application's event loop and workers. Scrapes
never queue behind application requests, and the probes keep answering while the app is
draining (uvicorn closes its listening socket at SIGTERM) or while its event loop is
blocked — so ``/healthz/live`` here reports a wedged loop as 503 instead of timing out.
"""

from __future__ import annotations

import http.server
import threading
from typing import TYPE_CHECKING, Any

from devkit.http._core import metrics_answer, probe_answer

if TYPE_CHECKING:
    from devkit.http._core import Instruments

__all__ = ["MetricsServer"]


class MetricsServer:
    """Serves ``metrics_path`` and ``health_path/{startup,ready,live}`` on ``port``."""

    def __init__(self, instruments: Instruments, port: int, host: str = "0.0.0.0") -> None:
        self._instruments = instruments
        self._server = http.server.ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="devkit-metrics-server", daemon=True
        )

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self, _timeout_s: float = 0.0) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        inst = self._instruments
        metrics_path = inst.settings.metrics_path

        class Handler(http.server.BaseHTTPRequestHandler):
            server_version = "devkit"
            sys_version = ""

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == metrics_path:
                    self._reply(*metrics_answer(inst, self.headers.get("Accept")))
                elif path in inst.probes:
                    self._reply(*probe_answer(inst, inst.probes[path]))
                else:
                    self._reply(404, "text/plain", b"not found\n")

            def _reply(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # scrapes and probes are not logged
                pass

        return Handler
