"""The suites: which app, which driver and which variants each one measures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from benchmarks.logging_suite import BASELINE, CASES, LOGGING_VARIANTS
from benchmarks.variants import ASGI_VARIANTS, WSGI_VARIANTS

__all__ = ["SUITES", "Suite"]


@dataclass(frozen=True)
class Suite:
    """A group of variants compared with each other in one run."""

    name: str
    kind: Literal["asgi", "wsgi", "logging", "server"]
    variants: tuple[str, ...]
    #: Measured quantities per worker run: one per request, or one per logging case.
    measures: tuple[str, ...]
    baseline: str
    #: The variant overheads are compared with (the hand-assembled stack).
    reference: str | None
    #: Run when no ``--suite`` is named. The server suites are not: they take minutes of
    #: wall time per round and their load generator may be missing.
    default: bool = True
    #: The server of a server-level suite (``benchmarks.server.SERVERS``).
    server: str | None = None

    @property
    def is_http(self) -> bool:
        """Measured per request in-process (a worker calling the app)."""
        return self.kind in ("asgi", "wsgi")

    @property
    def is_server(self) -> bool:
        """Measured with a real server under a load generator."""
        return self.kind == "server"


def _http(name: str, kind: Literal["asgi", "wsgi"]) -> Suite:
    variants = ASGI_VARIANTS if kind == "asgi" else WSGI_VARIANTS
    return Suite(name, kind, tuple(variants), ("request",), "bare", "stack")


SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        _http("asgi-starlette", "asgi"),
        _http("asgi-fastapi", "asgi"),
        _http("wsgi-flask", "wsgi"),
        Suite("logging", "logging", tuple(LOGGING_VARIANTS), tuple(CASES), BASELINE, None),
        Suite(
            "server-uvicorn",
            "server",
            tuple(ASGI_VARIANTS),
            ("requests_per_s", "p50_ms", "p99_ms"),
            "bare",
            "stack",
            default=False,
            server="uvicorn",
        ),
        Suite(
            "server-gunicorn",
            "server",
            tuple(WSGI_VARIANTS),
            ("requests_per_s", "p50_ms", "p99_ms"),
            "bare",
            "stack",
            default=False,
            server="gunicorn",
        ),
    )
}
