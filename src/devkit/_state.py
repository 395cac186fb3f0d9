"""The one mutable runtime of the process, so ``shutdown()`` and test fixtures can reset it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from devkit.config import Settings
from devkit.logs import LogPipeline
from devkit.redaction import Redactor

if TYPE_CHECKING:
    from devkit.health import HealthRegistry
    from devkit.http._core import Instruments
    from devkit.metrics import RedMetrics
    from devkit.tracing.provider import Tracing

__all__ = ["Runtime", "current", "reset", "set_current"]


@dataclass
class Runtime:
    """What ``devkit.init()`` built. Returned by ``init()``; read-only for applications."""

    settings: Settings
    enabled: bool = True
    redactor: Redactor | None = None
    logs: LogPipeline | None = None
    metrics: RedMetrics | None = None
    tracing: Tracing | None = None
    health: HealthRegistry | None = None
    instruments: Instruments | None = None
    #: Framework integrations and OpenTelemetry instrumentors that init() enabled.
    integrations: list[str] = field(default_factory=list)
    instrumentors: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    #: Undo actions, run in reverse order by ``shutdown()``.
    closers: list[tuple[str, Callable[[float], None]]] = field(default_factory=list, repr=False)
    warned_reinit: bool = field(default=False, repr=False)


_lock = threading.RLock()
_current: Runtime | None = None


def lock() -> threading.RLock:
    return _lock


def current() -> Runtime | None:
    """The runtime built by ``init()``, or ``None`` before it / after ``shutdown()``."""
    return _current


def set_current(runtime: Runtime | None) -> None:
    global _current
    _current = runtime


def reset() -> None:
    set_current(None)
