"""The one mutable runtime of the process, so ``shutdown()`` and test fixtures can reset it.

:class:`State` is what ``init()`` built and what ``shutdown()`` undoes; the components a
request touches live once, in its :class:`~devkit.http._core.Core`. Applications get a
:class:`Runtime`: a read-only view of it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from devkit.config import Settings
from devkit.redaction import Redactor

if TYPE_CHECKING:
    from devkit._log_export import LogExport
    from devkit.health import HealthRegistry
    from devkit.http._core import Core
    from devkit.http._metrics_server import MetricsServer
    from devkit.logs import LogPipeline
    from devkit.metrics import RedMetrics
    from devkit.tracing.provider import Tracing

__all__ = ["Runtime", "State", "core", "current", "lock", "reset", "set_current"]

#: An undo action of ``init()``: called with the time left for the whole shutdown.
Closer = Callable[[float], None]


@dataclass
class State:
    """What ``init()`` built, and what ``shutdown()`` must undo (devkit's own)."""

    settings: Settings
    enabled: bool = True
    redactor: Redactor | None = None
    #: Everything a request touches (None when devkit is disabled).
    core: Core | None = None
    metrics_server: MetricsServer | None = None
    #: The OTLP log export (``DEVKIT_LOGS_EXPORTER=otlp``).
    log_export: LogExport | None = None
    #: Framework integrations and OpenTelemetry instrumentors that init() enabled.
    integrations: tuple[str, ...] = ()
    instrumentors: tuple[str, ...] = ()
    #: Undo actions, run in reverse order by ``shutdown()``.
    closers: list[tuple[str, Closer]] = field(default_factory=list)
    #: ``stop_serving`` ran (readiness failed, requests drained, spans flushed).
    stopped: bool = False
    warned_reinit: bool = False
    view: Runtime = field(init=False)

    def __post_init__(self) -> None:
        self.view = Runtime(self)


class Runtime:
    """What ``devkit.init()`` built: returned by ``init()``, read-only."""

    __slots__ = ("_state",)

    def __init__(self, state: State) -> None:
        self._state = state

    @property
    def settings(self) -> Settings:
        """The validated configuration."""
        return self._state.settings

    @property
    def enabled(self) -> bool:
        """False when ``DEVKIT_DISABLED`` (or ``OTEL_SDK_DISABLED``) made ``init()`` a no-op."""
        return self._state.enabled

    @property
    def redactor(self) -> Redactor | None:
        return self._state.redactor

    @property
    def logs(self) -> LogPipeline | None:
        core = self._state.core
        return core.logs if core is not None else None

    @property
    def metrics(self) -> RedMetrics | None:
        core = self._state.core
        return core.metrics if core is not None else None

    @property
    def tracing(self) -> Tracing | None:
        core = self._state.core
        return core.tracing if core is not None else None

    @property
    def health(self) -> HealthRegistry | None:
        core = self._state.core
        return core.health if core is not None else None

    @property
    def integrations(self) -> tuple[str, ...]:
        """The framework integrations ``init()`` enabled (starlette, flask, django)."""
        return self._state.integrations

    @property
    def instrumentors(self) -> tuple[str, ...]:
        """The OpenTelemetry instrumentors ``init()`` activated (httpx, requests, ...)."""
        return self._state.instrumentors

    def __repr__(self) -> str:
        return (
            f"Runtime(service={self.settings.service_name!r}, enabled={self.enabled}, "
            f"integrations={list(self.integrations)}, instrumentors={list(self.instrumentors)})"
        )


_lock = threading.RLock()
#: Read directly by the ASGI middleware on the request path (see :func:`core`).
_current: State | None = None


def lock() -> threading.RLock:
    return _lock


def current() -> State | None:
    """The state ``init()`` built, or ``None`` before it / after ``shutdown()``."""
    return _current


def core() -> Core | None:
    """The request core of the current runtime, if devkit is initialised and enabled."""
    state = _current
    return state.core if state is not None else None


def set_current(state: State | None) -> None:
    global _current
    _current = state


def reset() -> None:
    set_current(None)
