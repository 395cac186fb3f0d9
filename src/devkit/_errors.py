"""Internal-error accounting: telemetry must never break the host application.

Every guarded failure inside devkit (an unserialisable log argument, a garbage header,
a dead exporter, a full buffer) goes through :func:`report`. It is counted per
``(component, reason)`` (exposed as ``devkit_internal_errors_total``), written once to
stderr per pair so an operator learns of it without a log flood, and swallowed.

devkit's own test-suite turns on *strict* mode so the same guard re-raises and bugs are
not hidden behind the counter.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Callable

__all__ = [
    "add_listener",
    "counts",
    "remove_listener",
    "report",
    "reset",
    "set_strict",
    "type_name",
]

_lock = threading.Lock()
_counts: Counter[tuple[str, str]] = Counter()
_strict = False
_listeners: list[Callable[[str, str], None]] = []


def add_listener(listener: Callable[[str, str], None]) -> None:
    """Also call ``listener(component, reason)`` for every report (the metrics counter)."""
    _listeners.append(listener)


def remove_listener(listener: Callable[[str, str], None]) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def report(
    component: str, reason: str, exc: BaseException | None = None, *, detail: str | None = None
) -> None:
    """Count an internal failure and report the first of its kind on stderr.

    ``exc`` is re-raised in strict mode (devkit's own tests); ``detail`` is only printed.
    """
    with _lock:
        first = (component, reason) not in _counts
        _counts[(component, reason)] += 1
    for listener in list(_listeners):
        try:
            listener(component, reason)
        except Exception:  # a broken listener must not hide the original failure
            pass
    if _strict and exc is not None:
        raise exc
    if first:
        if exc is not None:
            detail = f"{type(exc).__name__}: {exc}"
        detail = f": {detail}" if detail else ""
        try:
            sys.stderr.write(
                f"devkit: internal error in {component} ({reason}){detail}; "
                "counted in devkit_internal_errors_total, further ones are not printed\n"
            )
        except Exception:  # stderr closed: nothing left to tell
            pass


def counts() -> dict[tuple[str, str], int]:
    """A snapshot of the internal-error counts."""
    with _lock:
        return dict(_counts)


def reset() -> None:
    """Forget every count (used by ``devkit.shutdown()`` and the test fixtures)."""
    with _lock:
        _counts.clear()


def set_strict(strict: bool) -> None:
    """Re-raise guarded exceptions instead of swallowing them (devkit's own tests)."""
    global _strict
    _strict = strict


def type_name(exc: BaseException) -> str:
    """An exception's type as logs, spans and ``error.type`` name it: ``ValueError`` for
    builtins, ``module.Qualified`` for everything else."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"
