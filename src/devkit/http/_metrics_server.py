"""The ``DEVKIT_METRICS_PORT`` server: /metrics and the probes on a port of their own.

A small threaded HTTP server outside the application's event loop and workers. Scrapes
never queue behind application requests, and the probes keep answering while the app is
draining (uvicorn closes its listening socket at SIGTERM) or while its event loop is
blocked — so ``/healthz/live`` here reports a wedged loop as 503 instead of timing out.

It is the recommended production exposure (docs/kubernetes.md): the port is declared on
the container for Prometheus and kubelet but left out of the Service, so neither the
metrics nor the probe answers are reachable through the application's own port, and
``DEVKIT_METRICS_TOKEN`` guards ``/metrics`` here as well.
"""

from __future__ import annotations

import http.server
import threading
from typing import TYPE_CHECKING, Any

from devkit._threads import without_signals

if TYPE_CHECKING:
    from devkit.http._endpoints import Endpoints

__all__ = ["MetricsServer"]


class MetricsServer:
    """Serves ``metrics_path`` and ``health_path/{startup,ready,live}`` on ``port``."""

    def __init__(self, endpoints: Endpoints, port: int, host: str = "0.0.0.0") -> None:
        self._endpoints = endpoints
        self._server = http.server.ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        # Its threads (one per request, started by this one) leave the process's
        # signals to the main thread (devkit._threads).
        self._thread = threading.Thread(
            target=without_signals,
            args=(self._server.serve_forever,),
            name="devkit-metrics-server",
            daemon=True,
        )

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self, _timeout_s: float = 0.0) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        endpoints = self._endpoints

        class Handler(http.server.BaseHTTPRequestHandler):
            server_version = "devkit"
            sys_version = ""
            # http.server's errors quote the request back (its method, its request line) in
            # the status line and an HTML page; these say the status and its standard
            # explanation, nothing received.
            error_message_format = "%(code)d %(explain)s\n"
            error_content_type = "text/plain; charset=utf-8"

            def send_error(
                self, code: int, message: str | None = None, explain: str | None = None
            ) -> None:
                super().send_error(code)

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                headers = self.headers
                answer = endpoints.answer(path, headers.get("Accept"), headers.get("Authorization"))
                self.send_response(answer.status)
                for name, value in answer.headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, *args: Any) -> None:  # scrapes and probes are not logged
                pass

        return Handler
