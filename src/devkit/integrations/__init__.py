"""Framework integrations enabled by ``init()`` when the framework is installed.

Each integration patches the framework so apps created *or served* after ``init()`` are
instrumented with no further code, and returns an undo action for ``shutdown()``.
Frameworks are imported lazily: devkit never imports one the service does not use.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

from devkit import _errors

__all__ = ["enable_installed"]

Undo = Callable[[], None]


def enable_installed() -> tuple[list[str], list[Undo]]:
    """Enable every integration whose framework is importable; (names, undo actions)."""
    names: list[str] = []
    undos: list[Undo] = []
    for name, module in (("starlette", "starlette"), ("flask", "flask"), ("django", "django")):
        if importlib.util.find_spec(module) is None:
            continue
        try:
            integration = importlib.import_module(f"devkit.integrations.{name}")
            undos.append(integration.enable())
            names.append(name)
        except Exception as exc:
            _errors.report("integrations", f"{name}_enable_failed", exc)
    return names, undos
