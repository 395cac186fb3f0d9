"""Framework integrations enabled by ``init()`` when the framework is installed.

Each integration patches the framework so apps created *or served* after ``init()`` are
instrumented with no further code, and gives an undo action for ``shutdown()``.
Frameworks are never imported by devkit: one the service has imported already is
patched at ``init()``, one it imports later is patched as that import completes
(:mod:`devkit.integrations._import_hooks`), and one it never imports stays unloaded.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from types import ModuleType

from devkit import _errors
from devkit.config import FRAMEWORKS
from devkit.integrations._import_hooks import when_imported

__all__ = ["enable_installed"]

Undo = Callable[[], None]
Patch = Callable[[ModuleType], Undo]


def enable_installed() -> tuple[list[str], list[Undo]]:
    """Arm every integration whose framework is installed; (names, undo actions)."""
    names: list[str] = []
    undos: list[Undo] = []
    for framework in FRAMEWORKS:
        name = framework.integration
        if not _installed(framework.packages[0]):
            continue
        try:
            integration = importlib.import_module(f"devkit.integrations.{name}")
            patches: list[tuple[str, Patch]] = integration.PATCHES
            undos.extend(_arm(module, patch) for module, patch in patches if _installed(module))
            names.append(name)
        except Exception as exc:
            _errors.report("integrations", f"{name}_enable_failed", exc)
    return names, undos


def _installed(module: str) -> bool:
    """Whether the top-level package of ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module.partition(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def _arm(module: str, patch: Patch) -> Undo:
    """Apply ``patch`` when ``module`` is imported (now, if it is); undo whatever ran."""
    applied: list[Undo] = []

    def apply(loaded: ModuleType) -> None:
        applied.append(patch(loaded))

    cancel = when_imported(module, apply)

    def undo() -> None:
        cancel()
        while applied:
            applied.pop()()

    return undo
