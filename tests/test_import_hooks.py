"""``when_imported``: a callback runs right after a module's first import, or at once."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from devkit import _errors
from devkit.integrations import _import_hooks
from devkit.integrations._import_hooks import when_imported


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path for throw-away modules, forgotten again afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def _write(directory: Path, name: str, body: str = "VALUE = 1\n") -> None:
    (directory / f"{name}.py").write_text(body, encoding="utf-8")


def _package(directory: Path, name: str, init: str, **modules: str) -> None:
    """Package ``name`` with ``init`` as its ``__init__`` and one file per ``modules`` item."""
    package = directory / name
    package.mkdir()
    (package / "__init__.py").write_text(init, encoding="utf-8")
    for module, body in modules.items():
        _write(package, module, body)


def _watching() -> bool:
    return any(isinstance(f, _import_hooks.WatchedImports) for f in sys.meta_path)


def test_the_callback_runs_after_the_first_import_with_the_executed_module(
    module_dir: Path,
) -> None:
    _write(module_dir, "dk_hook_later")
    seen: list[ModuleType] = []
    when_imported("dk_hook_later", seen.append)
    assert seen == [] and "dk_hook_later" not in sys.modules
    assert _watching()

    import dk_hook_later  # type: ignore[import-not-found]

    assert seen == [dk_hook_later]
    assert dk_hook_later.VALUE == 1  # the module's code ran before the callback
    # The module keeps its own loader; the finder leaves once nothing is pending.
    assert type(dk_hook_later.__loader__).__name__ == "SourceFileLoader"
    assert dk_hook_later.__spec__.loader is dk_hook_later.__loader__
    assert not _watching()
    import dk_hook_later as again  # type: ignore[import-not-found]  # noqa: F401

    assert len(seen) == 1


def test_an_imported_module_gets_the_callback_at_once(module_dir: Path) -> None:
    _write(module_dir, "dk_hook_now")
    import dk_hook_now  # type: ignore[import-not-found]

    seen: list[ModuleType] = []
    when_imported("dk_hook_now", seen.append)
    assert seen == [dk_hook_now] and not _watching()


def test_a_submodule_is_watched_by_its_dotted_name(module_dir: Path) -> None:
    _package(module_dir, "dk_hook_pkg", "", inner="class Thing:\n    pass\n")
    seen: list[str] = []
    when_imported("dk_hook_pkg.inner", lambda m: seen.append(m.Thing.__name__))
    import dk_hook_pkg  # type: ignore[import-not-found]  # noqa: F401

    assert seen == []  # the package alone is not the watched module
    from dk_hook_pkg.inner import Thing  # type: ignore[import-not-found]  # noqa: F401

    assert seen == ["Thing"]


def test_cancelling_a_pending_callback_removes_the_finder(module_dir: Path) -> None:
    _write(module_dir, "dk_hook_cancelled")
    seen: list[ModuleType] = []
    cancel = when_imported("dk_hook_cancelled", seen.append)
    cancel()
    assert not _watching()
    import dk_hook_cancelled  # type: ignore[import-not-found]  # noqa: F401

    assert seen == []


def test_a_failing_callback_is_counted_and_the_import_still_succeeds(module_dir: Path) -> None:
    _errors.set_strict(False)
    _write(module_dir, "dk_hook_failing")

    def boom(module: ModuleType) -> None:
        raise RuntimeError("patch failed")

    when_imported("dk_hook_failing", boom)
    import dk_hook_failing  # type: ignore[import-not-found]

    assert dk_hook_failing.VALUE == 1
    assert _errors.counts() == {("integrations", "import_hook_failed"): 1}


def test_a_module_that_does_not_exist_still_raises_import_error(module_dir: Path) -> None:
    seen: list[ModuleType] = []
    cancel = when_imported("dk_hook_missing", seen.append)
    with pytest.raises(ModuleNotFoundError):
        import dk_hook_missing  # type: ignore[import-not-found]  # noqa: F401
    assert seen == []
    cancel()
    assert not _watching()


def test_a_watched_package_keeps_its_path_for_later_submodules(module_dir: Path) -> None:
    _package(module_dir, "dk_hook_whole", "VALUE = 2\n", later="VALUE = 3\n")
    seen: list[int] = []
    when_imported("dk_hook_whole", lambda m: seen.append(m.VALUE))
    import dk_hook_whole  # type: ignore[import-not-found]

    assert seen == [2]
    assert dk_hook_whole.__spec__.loader is dk_hook_whole.__loader__
    from dk_hook_whole import later  # type: ignore[import-not-found]

    assert later.VALUE == 3
