"""devkit: structured logs, RED metrics, traces and probes for Python services in one call.

    import devkit
    devkit.init()

Importing devkit does nothing; ``init()`` reads the environment and installs everything.
"""

from __future__ import annotations

from devkit import health
from devkit._setup import init, shutdown
from devkit._state import Runtime
from devkit._version import __version__
from devkit.config import Settings
from devkit.exceptions import ConfigError, DevkitError
from devkit.http.asgi import ASGIMiddleware, asgi
from devkit.http.wsgi import WSGIMiddleware, wsgi
from devkit.logs import get_logger
from devkit.redaction import Redactor

__all__ = [
    "ASGIMiddleware",
    "ConfigError",
    "DevkitError",
    "Redactor",
    "Runtime",
    "Settings",
    "WSGIMiddleware",
    "__version__",
    "asgi",
    "get_logger",
    "health",
    "init",
    "shutdown",
    "wsgi",
]
