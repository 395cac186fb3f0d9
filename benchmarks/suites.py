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
    kind: Literal["asgi", "wsgi", "logging"]
    variants: tuple[str, ...]
    #: Measured quantities per worker run: one per request, or one per logging case.
    measures: tuple[str, ...]
    baseline: str
    #: The variant overheads are compared with (the hand-assembled stack).
    reference: str | None

    @property
    def is_http(self) -> bool:
        return self.kind != "logging"


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
    )
}
