"""Unit tests of what protects a service's life around devkit: the multiprocess directory
checked and reserved at ``init()``, a process forked after ``init()``, and the gunicorn
master's ``child_exit`` hook. (The real servers: tests/reliability/test_lifecycle.py.)"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.mmap_dict import MmapedDict

import devkit
from devkit import _errors, _multiprocess, _setup, _state
from devkit.metrics import mark_process_dead

PID = 4242


def _paths(directory: Path, pid: int = PID) -> list[Path]:
    return [directory / f"{kind}_{pid}.db" for kind in _multiprocess.FILE_KINDS]


def test_the_reserved_size_is_the_one_prometheus_client_maps() -> None:
    from prometheus_client import mmap_dict

    assert mmap_dict._INITIAL_MMAP_SIZE == _multiprocess.INITIAL_SIZE


def test_reserve_allocates_this_process_files(tmp_path: Path) -> None:
    _multiprocess.reserve(str(tmp_path), PID)
    for path in _paths(tmp_path):
        stat = path.stat()
        assert stat.st_size == _multiprocess.INITIAL_SIZE
        # Allocated, not sparse: a full filesystem cannot fault these pages later.
        assert stat.st_blocks * 512 >= _multiprocess.INITIAL_SIZE


def test_a_reserved_file_is_a_fresh_file_to_prometheus_client(tmp_path: Path) -> None:
    _multiprocess.reserve(str(tmp_path), PID)
    path = str(_paths(tmp_path)[0])
    values = MmapedDict(path)
    values.write_value("key", 3.0, 0.0)
    values.close()
    reread = MmapedDict(path, read_mode=True)
    assert [(k, v) for k, v, *_ in reread.read_all_values()] == [("key", 3.0)]
    reread.close()


def test_reserve_keeps_an_existing_file(tmp_path: Path) -> None:
    path = _paths(tmp_path)[0]
    path.write_bytes(b"x" * (2 * _multiprocess.INITIAL_SIZE))
    _multiprocess.reserve(str(tmp_path), PID)
    assert path.read_bytes() == b"x" * (2 * _multiprocess.INITIAL_SIZE)


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_missing_directory_is_a_config_error(tmp_path: Path, kind: str) -> None:
    directory = tmp_path / kind
    if kind == "file":
        directory.write_text("")
    with pytest.raises(devkit.ConfigError) as error:
        _multiprocess.reserve(str(directory), PID)
    assert error.value.variable == "PROMETHEUS_MULTIPROC_DIR"
    assert ("not a directory" if kind == "file" else "does not exist") in str(error.value)


def _failing(code: int) -> Any:
    def fail(*args: object) -> None:
        raise OSError(code, os.strerror(code))

    return fail


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (errno.ENOSPC, "with room for 3 files"),
        (errno.EDQUOT, "with room for 3 files"),
        (errno.EFBIG, "with room for 3 files"),
        (errno.EROFS, "this process can write to"),
    ],
)
def test_a_full_or_read_only_directory_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, reason: str
) -> None:
    monkeypatch.setattr(os, "posix_fallocate", _failing(code))
    with pytest.raises(devkit.ConfigError) as error:
        _multiprocess.reserve(str(tmp_path), PID)
    assert error.value.variable == "PROMETHEUS_MULTIPROC_DIR"
    assert reason in str(error.value) and os.strerror(code) in str(error.value)
    assert list(tmp_path.iterdir()) == []  # what it created is removed


def test_an_unwritable_directory_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def denied(path: str, flags: int, *args: Any) -> int:
        if str(path).startswith(str(tmp_path)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(devkit.ConfigError, match="this process can write to"):
        _multiprocess.reserve(str(tmp_path), PID)


def test_a_filesystem_without_fallocate_still_gets_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "posix_fallocate", _failing(errno.EOPNOTSUPP))
    _multiprocess.reserve(str(tmp_path), PID)
    assert [p.stat().st_size for p in _paths(tmp_path)] == [_multiprocess.INITIAL_SIZE] * 3


def test_init_fails_before_installing_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
    with pytest.raises(devkit.ConfigError, match="PROMETHEUS_MULTIPROC_DIR"):
        devkit.init()
    assert _state.current() is None
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    assert devkit.init().enabled  # nothing was left half-installed


def test_a_forked_child_starts_with_no_request_in_flight() -> None:
    runtime = devkit.init()
    core = _state.core()
    assert core is not None and runtime.metrics is not None
    metrics = runtime.metrics
    # As if two requests of the parent's threads were in progress at the fork (their
    # threads, and so their ends, stay in the parent).
    core._in_flight = 2
    for _ in range(2):
        metrics.request_started("GET")
    held = threading.Lock()
    held.acquire()
    metrics._lock = held  # one of them held the metrics lock
    assert core.in_flight == 2

    _setup._after_fork_in_child()

    assert core.in_flight == 0
    assert metrics._lock is not held
    text = "\n".join(
        f"{s.name} {s.value}"
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == "http_requests_in_progress"
    )
    assert text == "", text  # no method in progress any more


def test_mark_process_dead_never_raises_in_the_master(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / f"gauge_livesum_{PID}.db").write_bytes(b"")
    monkeypatch.setattr(os, "remove", _failing(errno.EROFS))
    _errors.set_strict(False)
    mark_process_dead(PID, str(tmp_path))
    assert _errors.counts()[("metrics", "mark_process_dead_failed")] == 1


def test_a_forked_child_reserves_its_own_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    devkit.init()
    for path in _paths(tmp_path, os.getpid()):
        path.unlink()  # as if init() had run in another process (gunicorn --preload)
    _setup._after_fork_in_child()
    for path in _paths(tmp_path, os.getpid()):
        assert path.stat().st_blocks * 512 >= _multiprocess.INITIAL_SIZE


def test_a_forked_child_reports_a_full_directory_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    devkit.init()
    monkeypatch.setattr(os, "posix_fallocate", _failing(errno.ENOSPC))
    for path in _paths(tmp_path, os.getpid()):
        path.unlink()
    _setup._after_fork_in_child()  # never raises into the fork
    assert _errors.counts()[("metrics", "multiprocess_dir_unusable")] == 1
    assert "PROMETHEUS_MULTIPROC_DIR" in capsys.readouterr().err
