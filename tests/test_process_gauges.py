"""What each process reports for a canary's rollback rules: readiness, circuit breakers and
its container's memory, read at scrape time."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY

import devkit
from devkit import _cgroup, _errors
from devkit.health import MAX_CIRCUIT_BREAKERS, HealthRegistry


def _cgroup_v1(tmp_path: Path, limit: str, usage: str) -> tuple[str, str]:
    directory = tmp_path / "memory" / "kubepods" / "pod1"
    directory.mkdir(parents=True)
    (directory / "memory.limit_in_bytes").write_text(limit + "\n")
    (directory / "memory.usage_in_bytes").write_text(usage + "\n")
    proc = tmp_path / "cgroup"
    proc.write_text("5:cpu,cpuacct:/\n4:memory:/kubepods/pod1\n0::/\n")
    return str(tmp_path), str(proc)


def _cgroup_v2(tmp_path: Path, limit: str, usage: str, path: str = "/") -> tuple[str, str]:
    directory = tmp_path / path.lstrip("/")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "memory.max").write_text(limit + "\n")
    (directory / "memory.current").write_text(usage + "\n")
    proc = tmp_path / "cgroup"
    proc.write_text(f"0::{path}\n")
    return str(tmp_path), str(proc)


def test_cgroup_v2_limit_and_usage(tmp_path: Path) -> None:
    assert _cgroup.memory(*_cgroup_v2(tmp_path, "536870912", "1048576")) == (536870912, 1048576)


def test_cgroup_v2_without_a_limit(tmp_path: Path) -> None:
    assert _cgroup.memory(*_cgroup_v2(tmp_path, "max", "4096", "/user.slice")) == (None, 4096)


def test_cgroup_v1_limit_and_the_unlimited_marker(tmp_path: Path) -> None:
    assert _cgroup.memory(*_cgroup_v1(tmp_path / "a", "268435456", "2048")) == (268435456, 2048)
    unlimited = _cgroup_v1(tmp_path / "b", "9223372036854771712", "2048")
    assert _cgroup.memory(*unlimited) == (None, 2048)


def test_cgroup_namespace_paths_fall_back_to_the_root(tmp_path: Path) -> None:
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("1000\n")
    (tmp_path / "memory" / "memory.usage_in_bytes").write_text("10\n")
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/not/visible/here\n")
    assert _cgroup.memory(str(tmp_path), str(proc)) == (1000, 10)


def test_no_cgroup_information_is_no_gauge(tmp_path: Path) -> None:
    assert _cgroup.memory(str(tmp_path), str(tmp_path / "missing")) == (None, None)


def test_readiness_state_follows_start_drain_and_the_last_probe() -> None:
    registry = HealthRegistry()
    assert registry.ready_state() == 0.0  # not started
    registry.mark_started()
    assert registry.ready_state() == 1.0
    healthy = [True]
    registry.add_check("db", lambda: healthy[0])
    healthy[0] = False
    assert registry.evaluate("ready").status == "fail"
    assert registry.ready_state() == 0.0
    healthy[0] = True
    registry.configure(cache_interval_s=0)
    assert registry.evaluate("ready").status == "pass"
    assert registry.ready_state() == 1.0
    registry.begin_shutdown()
    assert registry.ready_state() == 0.0
    registry.stop()


def test_circuit_breakers_are_bounded() -> None:
    registry = HealthRegistry()
    registry.set_circuit_breaker("payments", True)
    registry.set_circuit_breaker("payments", False)
    assert registry.circuit_breakers() == {"payments": False}
    _errors.set_strict(False)
    for n in range(MAX_CIRCUIT_BREAKERS + 5):
        registry.set_circuit_breaker(f"dep-{n}", True)
    registry.set_circuit_breaker("", True)
    assert len(registry.circuit_breakers()) == MAX_CIRCUIT_BREAKERS
    assert _errors.counts()[("health", "circuit_breakers_over_limit")] == 6
    assert _errors.counts()[("health", "circuit_breaker_name_invalid")] == 1


def test_the_gauges_are_served(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cgroup, "memory", lambda: (1024.0, 512.0))
    devkit.init()
    devkit.health.circuit_breaker("payments", open=True)
    devkit.health.mark_started()
    assert REGISTRY.get_sample_value("devkit_ready") == 1.0
    assert REGISTRY.get_sample_value("devkit_circuit_breaker_open", {"dependency": "payments"}) == 1
    assert REGISTRY.get_sample_value("devkit_memory_limit_bytes") == 1024.0
    assert REGISTRY.get_sample_value("devkit_memory_usage_bytes") == 512.0
    devkit.health.circuit_breaker("payments", open=False)
    assert REGISTRY.get_sample_value("devkit_circuit_breaker_open", {"dependency": "payments"}) == 0
    monkeypatch.setattr(_cgroup, "memory", lambda: (None, None))
    assert REGISTRY.get_sample_value("devkit_memory_limit_bytes") is None
