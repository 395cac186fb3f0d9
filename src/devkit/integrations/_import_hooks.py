"""Run a callback when a module is first imported, or now if it already was.

``init()`` patches frameworks (Starlette, FastAPI, Flask, Django) so apps are instrumented
with no further code. Importing every *installed* framework to patch it would load
hundreds of modules a service does not use (Django alone is about 200), and every object
they leave behind lengthens each full garbage collection of the server. So a framework
that is not imported yet is patched the moment it is: a finder on ``sys.meta_path``
watches for the module and runs the callback right after the module's code has run,
before the importer gets it back.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from devkit import _errors

__all__ = ["WatchedImports", "when_imported"]

Callback = Callable[[ModuleType], None]


class _Loader(importlib.abc.Loader):
    """The module's own loader, then the callback; the module keeps its own loader."""

    def __init__(self, loader: importlib.abc.Loader, after: Callable[[ModuleType], None]):
        self._loader = loader
        self._after = after

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # Put the real loader back first: importlib.resources, pkgutil and reload use it.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        self._after(module)


class WatchedImports(importlib.abc.MetaPathFinder):
    """One finder for all of devkit's pending callbacks (see :func:`when_imported`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, list[Callback]] = {}
        self._resolving: set[str] = set()

    def add(self, name: str, callback: Callback) -> None:
        with self._lock:
            self._pending.setdefault(name, []).append(callback)
            if self not in sys.meta_path:
                sys.meta_path.insert(0, self)

    def discard(self, name: str, callback: Callback) -> None:
        with self._lock:
            callbacks = self._pending.get(name)
            if callbacks and callback in callbacks:
                callbacks.remove(callback)
                if not callbacks:
                    del self._pending[name]
            self._retire_locked()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self._pending or fullname in self._resolving:
            return None
        # Let the other finders find it (this one steps aside for the nested lookup).
        self._resolving.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)
        except Exception:
            return None
        finally:
            self._resolving.discard(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _Loader(spec.loader, lambda module: self._fire(fullname, module))
        return spec

    def _fire(self, name: str, module: ModuleType) -> None:
        with self._lock:
            callbacks = self._pending.pop(name, [])
            self._retire_locked()
        for callback in callbacks:
            _run(callback, module)

    def _retire_locked(self) -> None:
        if not self._pending and self in sys.meta_path:
            sys.meta_path.remove(self)


def _run(callback: Callback, module: ModuleType) -> None:
    """A failing callback is reported, never raised into the application's import."""
    try:
        callback(module)
    except Exception as exc:
        _errors.report("integrations", "import_hook_failed", exc)


_watched = WatchedImports()


def when_imported(name: str, callback: Callback) -> Callable[[], None]:
    """Call ``callback(module)`` once module ``name`` is imported: now if it already is,
    else right after its first import. Returns a function that cancels a pending call."""
    module: Any = sys.modules.get(name)
    if module is not None:
        _run(callback, module)
        return lambda: None
    _watched.add(name, callback)
    return lambda: _watched.discard(name, callback)
