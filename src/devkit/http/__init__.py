"""HTTP middleware: one pass per request for correlation, logs, metrics and the server span.

``asgi`` and ``wsgi`` adapt a server's calls to the request core (``_core``); devkit's
own answers (``/metrics``, the probes) come from ``_endpoints``.
"""

from devkit.http.asgi import ASGIMiddleware, asgi
from devkit.http.wsgi import WSGIMiddleware, wsgi

__all__ = ["ASGIMiddleware", "WSGIMiddleware", "asgi", "wsgi"]
