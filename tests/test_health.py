"""The probe engine: lifecycle gates, checks, timeouts, cache, single flight, watchdog."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator

import orjson
import pytest

from devkit import _errors, health
from devkit.health import CheckResult, HealthRegistry, LivenessWatchdog, ProbeResult
from devkit.redaction import Redactor

MODES = ["thread", "loop"]


@pytest.fixture
def registry() -> Iterator[HealthRegistry]:
    reg = HealthRegistry()
    try:
        yield reg
    finally:
        reg.reset()


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at teardown, so checks that hang on it free their threads."""
    event = threading.Event()
    try:
        yield event
    finally:
        event.set()


@pytest.fixture
def default_registry() -> Iterator[HealthRegistry]:
    health.reset()
    try:
        yield health.get_registry()
    finally:
        health.reset()


class Counter:
    def __init__(self) -> None:
        self.n = 0
        self._lock = threading.Lock()

    def hit(self) -> None:
        with self._lock:
            self.n += 1


def probe(reg: HealthRegistry, kind: str, mode: str) -> ProbeResult:
    """Evaluate from a thread (WSGI) or on a fresh event loop (ASGI)."""
    if mode == "thread":
        return reg.evaluate(kind)
    return asyncio.run(reg.evaluate_async(kind))


def returning(value: object, is_async: bool) -> Callable[[], object]:
    if is_async:

        async def async_check() -> object:
            await asyncio.sleep(0)
            return value

        return async_check

    def sync_check() -> object:
        return value

    return sync_check


def raising(exc: Exception, is_async: bool) -> Callable[[], object]:
    if is_async:

        async def async_check() -> None:
            await asyncio.sleep(0)
            raise exc

        return async_check

    def sync_check() -> None:
        raise exc

    return sync_check


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


class LoopThread:
    """An event loop running forever in its own thread, like a server's."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[object]) -> object:
        async def wrapper() -> object:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(5)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


async def _attach(watchdog: LivenessWatchdog) -> None:
    watchdog.attach()


# -- startup -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_startup_fails_before_mark_started_and_passes_after(
    registry: HealthRegistry, mode: str
) -> None:
    result = probe(registry, "startup", mode)
    assert result.status == "fail"
    assert result.http_status == 503
    assert result.checks == {
        "started": CheckResult("fail", 0.0, "application startup not complete")
    }

    registry.mark_started()
    result = probe(registry, "startup", mode)
    assert result.status == "pass"
    assert result.http_status == 200
    assert result.checks["started"].status == "pass"


def test_startup_checks_wait_for_startup_and_can_fail_it(registry: HealthRegistry) -> None:
    calls = Counter()

    def migrations() -> bool:
        calls.hit()
        return False

    registry.add_check("migrations", migrations, kind="startup")
    assert registry.evaluate("startup").checks.keys() == {"started"}
    assert calls.n == 0

    registry.mark_started()
    result = registry.evaluate("startup")
    assert result.status == "fail"
    assert result.checks["started"].status == "pass"
    assert result.checks["migrations"] == CheckResult(
        "fail", result.checks["migrations"].duration_ms, "check returned False"
    )
    assert calls.n == 1


# -- ready ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_ready_reports_passing_failing_and_raising_checks(
    registry: HealthRegistry, mode: str, is_async: bool
) -> None:
    registry.add_check("none", returning(None, is_async))  # type: ignore[arg-type]
    registry.add_check("true", returning(True, is_async))  # type: ignore[arg-type]
    registry.mark_started()
    result = probe(registry, "ready", mode)
    assert result.status == "pass"
    assert result.http_status == 200
    assert {n: r.status for n, r in result.checks.items()} == {"none": "pass", "true": "pass"}

    registry.add_check("false", returning(False, is_async))  # type: ignore[arg-type]
    registry.add_check("raises", raising(ConnectionError("db down"), is_async))  # type: ignore[arg-type]
    result = probe(registry, "ready", mode)
    assert result.status == "fail"
    assert result.http_status == 503
    assert {n: r.status for n, r in result.checks.items()} == {
        "none": "pass",
        "true": "pass",
        "false": "fail",
        "raises": "fail",
    }
    assert result.checks["false"].error == "check returned False"
    assert result.checks["raises"].error == "ConnectionError: db down"
    assert result.checks["none"].error is None


@pytest.mark.parametrize("is_async", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_hung_check_answers_timeout_without_blocking_others(
    registry: HealthRegistry, release: threading.Event, mode: str, is_async: bool
) -> None:
    if is_async:

        async def hung() -> None:
            await asyncio.sleep(30)

    else:

        def hung() -> None:  # type: ignore[misc]
            release.wait(30)

    registry.add_check("hung", hung, timeout_s=0.2)
    registry.add_check("fast", lambda: True)
    registry.mark_started()

    began = time.monotonic()
    result = probe(registry, "ready", mode)
    elapsed = time.monotonic() - began

    assert elapsed < 5.0
    assert result.status == "fail"
    assert result.checks["hung"].status == "fail"
    assert result.checks["hung"].error == "timeout"
    assert result.checks["hung"].duration_ms >= 100.0
    assert result.checks["fast"].status == "pass"


def test_async_check_blocking_its_thread_still_times_out(
    registry: HealthRegistry, release: threading.Event
) -> None:
    # asyncio's own timeout cannot fire in a blocked loop: the waiter's deadline does.
    async def blocks_its_loop() -> None:
        release.wait(30)

    registry.add_check("blocking", blocks_its_loop, timeout_s=0.2)
    registry.mark_started()
    began = time.monotonic()
    result = registry.evaluate("ready")
    assert time.monotonic() - began < 5.0
    assert result.checks["blocking"].error == "timeout"


def test_hung_sync_check_is_not_called_again_until_it_returns(release: threading.Event) -> None:
    reg = HealthRegistry(cache_interval_s=0.0)
    calls = Counter()

    def hung() -> None:
        calls.hit()
        release.wait(30)

    reg.add_check("hung", hung, timeout_s=0.1)
    reg.mark_started()
    try:
        for _ in range(5):
            assert reg.evaluate("ready").checks["hung"].error == "timeout"
        assert calls.n == 1

        release.set()  # the call returns; the next probe calls again and passes
        assert wait_until(lambda: reg.evaluate("ready").status == "pass")
        assert calls.n == 2
    finally:
        reg.reset()


def test_hung_sync_checks_pin_at_most_the_pool(release: threading.Event) -> None:
    reg = HealthRegistry(cache_interval_s=0.0, max_workers=3)
    for i in range(2):
        reg.add_check(f"hung{i}", lambda: release.wait(30), timeout_s=0.1)
    reg.add_check("fast", lambda: True, timeout_s=2.0)
    reg.mark_started()
    try:
        for _ in range(5):  # repeated probes do not pile up threads on the hung checks
            result = reg.evaluate("ready")
            assert result.checks["fast"].status == "pass"
            assert result.checks["hung0"].error == result.checks["hung1"].error == "timeout"
        pool = reg._pool
        assert pool is not None
        assert 1 <= len(pool._threads) <= 3
        assert all(t.daemon for t in pool._threads)
    finally:
        reg.reset()


@pytest.mark.parametrize("mode", MODES)
def test_ready_fails_as_soon_as_shutdown_begins(mode: str) -> None:
    reg = HealthRegistry(cache_interval_s=0.0)
    calls = Counter()
    reg.add_check("db", calls.hit)
    reg.mark_started()
    try:
        assert probe(reg, "ready", mode).status == "pass"
        assert calls.n == 1

        reg.begin_shutdown()
        result = probe(reg, "ready", mode)
        assert result.http_status == 503
        assert result.checks == {"shutdown": CheckResult("fail", 0.0, "shutting down")}
        assert calls.n == 1  # a leaving pod does not load its dependencies
        assert probe(reg, "live", mode).status == "pass"  # draining is not dying
    finally:
        reg.reset()


def test_ready_requires_startup(registry: HealthRegistry) -> None:
    calls = Counter()
    registry.add_check("db", calls.hit)
    result = registry.evaluate("ready")
    assert result.status == "fail"
    assert result.checks == {
        "started": CheckResult("fail", 0.0, "application startup not complete")
    }
    assert calls.n == 0


# -- live ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_live_never_calls_ready_or_startup_checks(registry: HealthRegistry, mode: str) -> None:
    calls = Counter()
    registry.add_check("db", calls.hit, kind="ready")
    registry.add_check("warm", calls.hit, kind="startup")
    result = probe(registry, "live", mode)  # before startup too: liveness is not readiness
    assert result.status == "pass"
    assert result.checks == {}
    registry.mark_started()
    assert probe(registry, "live", mode).status == "pass"
    assert calls.n == 0


def test_live_runs_live_checks(registry: HealthRegistry) -> None:
    registry.add_check("heap", lambda: False, kind="live")
    result = registry.evaluate("live")
    assert result.status == "fail"
    assert result.checks["heap"].error == "check returned False"


# -- cache and single flight ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_probe_storm_on_the_loop_calls_each_check_a_few_times_at_most(
    registry: HealthRegistry,
) -> None:
    async_calls, sync_calls = Counter(), Counter()

    async def db() -> bool:
        async_calls.hit()
        await asyncio.sleep(0.05)
        return True

    def cache() -> bool:
        sync_calls.hit()
        time.sleep(0.05)
        return True

    registry.add_check("db", db)
    registry.add_check("cache", cache)
    registry.mark_started()
    results = await asyncio.gather(*(registry.evaluate_async("ready") for _ in range(200)))
    assert len(results) == 200
    assert all(r.status == "pass" for r in results)
    assert 1 <= async_calls.n <= 3
    assert 1 <= sync_calls.n <= 3


@pytest.mark.parametrize("is_async", [False, True])
def test_probe_storm_from_threads_calls_each_check_a_few_times_at_most(
    registry: HealthRegistry, is_async: bool
) -> None:
    calls = Counter()

    async def async_db() -> bool:
        calls.hit()
        await asyncio.sleep(0.05)
        return True

    def sync_db() -> bool:
        calls.hit()
        time.sleep(0.05)
        return True

    registry.add_check("db", async_db if is_async else sync_db)
    registry.mark_started()
    barrier = threading.Barrier(50)
    results: list[ProbeResult] = []

    def worker() -> None:
        barrier.wait(5)
        results.append(registry.evaluate("ready"))

    threads = [threading.Thread(target=worker) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 50
    assert all(r.status == "pass" for r in results)
    assert 1 <= calls.n <= 3


def test_concurrent_probes_share_the_call_in_flight_even_without_cache() -> None:
    reg = HealthRegistry(cache_interval_s=0.0)
    calls = Counter()
    gate = threading.Event()

    def db() -> bool:
        calls.hit()
        gate.wait(5)
        return True

    reg.add_check("db", db, timeout_s=5.0)
    reg.mark_started()
    results: list[ProbeResult] = []
    barrier = threading.Barrier(21)

    def worker() -> None:
        barrier.wait(5)
        results.append(reg.evaluate("ready"))

    threads = [threading.Thread(target=worker) for _ in range(20)]
    try:
        for t in threads:
            t.start()
        barrier.wait(5)
        time.sleep(0.3)  # let every worker join the flight
        gate.set()
        for t in threads:
            t.join(10)
        assert len(results) == 20
        assert all(r.status == "pass" for r in results)
        assert calls.n <= 2
        before = calls.n
        assert reg.evaluate("ready").status == "pass"  # no cache: a later probe calls again
        assert calls.n == before + 1
    finally:
        gate.set()
        reg.reset()


@pytest.mark.asyncio
async def test_thread_probe_joins_a_flight_started_on_the_loop() -> None:
    reg = HealthRegistry(cache_interval_s=0.0)
    calls = Counter()

    async def db() -> bool:
        calls.hit()
        await asyncio.sleep(0.3)
        return True

    reg.add_check("db", db)
    reg.mark_started()
    try:
        on_loop = asyncio.ensure_future(reg.evaluate_async("ready"))
        await asyncio.sleep(0.05)
        from_thread = await asyncio.to_thread(reg.evaluate, "ready")
        assert (await on_loop).status == "pass"
        assert from_thread.status == "pass"
        assert calls.n == 1
    finally:
        reg.reset()


def test_results_are_cached_for_the_interval_then_refreshed() -> None:
    reg = HealthRegistry(cache_interval_s=0.5)
    calls = Counter()
    healthy = [True]

    def db() -> bool:
        calls.hit()
        return healthy[0]

    reg.add_check("db", db)
    reg.mark_started()
    try:
        assert reg.evaluate("ready").status == "pass"
        healthy[0] = False
        assert reg.evaluate("ready").status == "pass"  # the cached answer
        assert calls.n == 1
        time.sleep(0.7)
        assert reg.evaluate("ready").status == "fail"
        assert calls.n == 2
    finally:
        reg.reset()


# -- where checks run ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_on_the_loop_async_checks_await_on_it_and_sync_checks_run_in_threads(
    registry: HealthRegistry,
) -> None:
    seen: dict[str, object] = {}

    async def on_loop() -> None:
        seen["loop"] = asyncio.get_running_loop()

    def in_thread() -> None:
        seen["thread"] = threading.current_thread()

    registry.add_check("async", on_loop)
    registry.add_check("sync", in_thread)
    registry.mark_started()
    assert (await registry.evaluate_async("ready")).status == "pass"
    assert seen["loop"] is asyncio.get_running_loop()
    assert seen["thread"] is not threading.current_thread()


def test_async_callables_in_disguise_are_awaited(registry: HealthRegistry) -> None:
    async def ok() -> bool:
        return True

    async def bad() -> bool:
        return False

    class AsyncCheck:
        async def __call__(self) -> bool:
            return False

    registry.add_check("lambda", lambda: ok())
    registry.add_check("lambda_bad", lambda: bad())
    registry.add_check("object", AsyncCheck())
    registry.mark_started()
    for mode in MODES:
        result = probe(registry, "ready", mode)
        assert result.checks["lambda"].status == "pass"
        assert result.checks["lambda_bad"].error == "check returned False"
        assert result.checks["object"].error == "check returned False"


def test_a_timeout_error_raised_by_the_check_is_not_our_timeout(registry: HealthRegistry) -> None:
    async def check() -> None:
        raise TimeoutError("upstream took too long")

    registry.add_check("upstream", check, timeout_s=5.0)
    registry.mark_started()
    result = asyncio.run(registry.evaluate_async("ready"))
    assert result.checks["upstream"].error == "TimeoutError: upstream took too long"


# -- error text ----------------------------------------------------------------------------------


def test_error_text_is_redacted_then_truncated() -> None:
    seen: list[str] = []

    def redact(text: str) -> str:
        seen.append(text)
        return text.replace("hunter2", "[REDACTED]")

    reg = HealthRegistry(redact=redact)

    def db() -> None:
        raise RuntimeError("login failed, password=hunter2 " + "x" * 500)

    reg.add_check("db", db)
    reg.mark_started()
    try:
        result = reg.evaluate("ready")
        error = result.checks["db"].error
        assert error is not None
        assert error.startswith("RuntimeError: login failed, password=[REDACTED] xxx")
        assert len(error) == 200
        assert error.endswith("…")
        assert b"hunter2" not in result.body()
        assert len(seen) == 1
        assert len(seen[0]) > 500  # redaction saw the whole text, before truncation
    finally:
        reg.reset()


def test_configure_installs_the_runtime_redactor(registry: HealthRegistry) -> None:
    token = (
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
        "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
    )

    def api() -> None:
        raise PermissionError(f"rejected Authorization: Bearer {token}")

    registry.add_check("api", api)
    assert registry.configure(redact=Redactor().redact_str) is registry
    registry.mark_started()
    error = registry.evaluate("ready").checks["api"].error
    assert error is not None
    assert error.startswith("PermissionError: rejected Authorization")
    assert token not in error
    assert "REDACTED" in error


def test_a_failing_redactor_withholds_the_text_and_is_reported(registry: HealthRegistry) -> None:
    _errors.set_strict(False)

    def broken(text: str) -> str:
        raise ValueError("redactor bug")

    registry.configure(redact=broken)
    registry.add_check("db", raising(RuntimeError("password=hunter2"), False))  # type: ignore[arg-type]
    registry.mark_started()
    result = registry.evaluate("ready")
    assert result.checks["db"].error == "error text withheld: redaction failed"
    assert b"hunter2" not in result.body()
    assert _errors.counts() == {("health", "redact_failed"): 1}


def test_a_failing_redactor_raises_under_devkits_own_tests(registry: HealthRegistry) -> None:
    def broken(text: str) -> str:
        raise ValueError("redactor bug")

    registry.configure(redact=broken)
    registry.add_check("db", raising(RuntimeError("boom"), False))  # type: ignore[arg-type]
    registry.mark_started()
    with pytest.raises(ValueError, match="redactor bug"):
        registry.evaluate("ready")


def test_engine_failures_are_reported_not_raised(
    registry: HealthRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_submit(self: object, fn: object) -> None:
        raise RuntimeError("pool exploded")

    monkeypatch.setattr(health._DaemonPool, "submit", broken_submit)
    registry.add_check("db", lambda: True)
    registry.mark_started()
    with pytest.raises(RuntimeError, match="pool exploded"):  # strict mode re-raises
        registry.evaluate("ready")

    _errors.set_strict(False)
    registry.configure(cache_interval_s=0.0)
    result = registry.evaluate("ready")
    assert result.http_status == 503
    assert result.checks["db"].error == "internal error"
    assert _errors.counts()[("health", "check_runner_failed")] >= 1


# -- the liveness watchdog -----------------------------------------------------------------------


def test_watchdog_sees_a_blocked_loop_from_another_thread() -> None:
    reg = HealthRegistry(liveness_timeout_s=0.3)
    server = LoopThread()
    unblock = threading.Event()
    try:
        server.run(_attach(reg.watchdog))
        assert reg.watchdog.attached
        time.sleep(0.8)  # well past the timeout: a running loop keeps beating
        assert not reg.watchdog.is_wedged()
        result = reg.evaluate("live")
        assert result.status == "pass"
        assert result.checks["event_loop"].status == "pass"

        server.loop.call_soon_threadsafe(unblock.wait, 10)  # block the loop
        assert wait_until(reg.watchdog.is_wedged, 5.0)
        assert reg.watchdog.blocked_for() > 0.3
        result = reg.evaluate("live")  # answered from this thread while the loop is stuck
        assert result.http_status == 503
        error = result.checks["event_loop"].error
        assert error is not None
        assert re.fullmatch(r"event loop blocked for \d+\.\d s", error)

        unblock.set()
        assert wait_until(lambda: not reg.watchdog.is_wedged(), 5.0)
        assert reg.evaluate("live").status == "pass"
    finally:
        unblock.set()
        reg.reset()
        server.close()


def test_watchdog_detaches_when_its_loop_closes() -> None:
    watchdog = LivenessWatchdog(0.2)
    server = LoopThread()
    try:
        server.run(_attach(watchdog))
        assert watchdog.attached
    finally:
        server.close()
    assert wait_until(lambda: not watchdog.attached, 5.0)
    time.sleep(0.5)
    assert not watchdog.is_wedged()
    assert watchdog.blocked_for() == 0.0


def test_a_loop_closed_with_a_heartbeat_queued_is_finished_not_wedged() -> None:
    watchdog = LivenessWatchdog(0.2)
    server = LoopThread()
    unblock = threading.Event()

    def stop_then_block() -> None:
        # stop() ends the loop after this iteration, so the heartbeat queued meanwhile never runs
        server.loop.stop()
        unblock.wait(10)

    try:
        server.run(_attach(watchdog))
        server.loop.call_soon_threadsafe(stop_then_block)
        assert wait_until(lambda: watchdog._pending, 5.0)
        unblock.set()
        server.thread.join(5)
        assert not server.thread.is_alive()
    finally:
        unblock.set()
        server.close()
    assert wait_until(lambda: not watchdog.attached, 5.0)
    time.sleep(0.5)
    assert not watchdog.is_wedged()


def test_watchdog_stops_and_restarts() -> None:
    watchdog = LivenessWatchdog(0.2)
    assert watchdog.interval_s == pytest.approx(0.05)
    server = LoopThread()
    try:
        server.run(_attach(watchdog))
        thread = watchdog._thread
        assert thread is not None
        assert thread.daemon
        assert thread.is_alive()
        watchdog.stop()
        assert not watchdog.attached
        assert not thread.is_alive()
        assert not watchdog.is_wedged()

        server.run(_attach(watchdog))
        assert watchdog._thread is not None
        assert watchdog._thread.is_alive()
        time.sleep(0.5)
        assert not watchdog.is_wedged()
    finally:
        watchdog.stop()
        server.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_after_fork_the_child_starts_afresh() -> None:
    reg = HealthRegistry(liveness_timeout_s=0.4)
    reg.add_check("db", lambda: True)
    reg.mark_started()
    assert reg.evaluate("ready").status == "pass"  # the pool's threads now exist
    server = LoopThread()
    try:
        server.run(_attach(reg.watchdog))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, 3.12+
            pid = os.fork()
        if pid == 0:  # the child: no pytest, report through the exit code only
            code = 1
            try:
                code = _child_starts_afresh(reg)
            finally:
                os._exit(code)
        deadline = time.monotonic() + 30
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail("the forked child hung")
            time.sleep(0.05)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        reg.reset()
        server.close()


def _child_starts_afresh(reg: HealthRegistry) -> int:
    # The parent's heartbeat thread and loop thread are gone: detached, not wedged.
    if reg.watchdog.attached or reg.watchdog.is_wedged():
        return 11
    server = LoopThread()
    server.run(_attach(reg.watchdog))
    time.sleep(1.0)
    if not reg.watchdog.attached or reg.watchdog.is_wedged():
        return 12
    reg.configure(cache_interval_s=0.0)
    if reg.evaluate("ready").status != "pass":  # a fresh pool serves the checks
        return 13
    return 0


# -- registration and module API -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["readiness", "", None, "READY"])
def test_invalid_kind_is_a_value_error_naming_it(registry: HealthRegistry, kind: object) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(kind))):
        registry.add_check("db", lambda: True, kind=kind)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape(repr(kind))):
        registry.check("db", kind=kind)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape(repr(kind))):
        registry.evaluate(kind)  # type: ignore[arg-type]


def test_non_callable_is_a_value_error_naming_the_check(registry: HealthRegistry) -> None:
    with pytest.raises(ValueError, match=r"'db' must be a callable; got str"):
        registry.add_check("db", "select 1")  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout_s", [0, -1.0, float("nan"), float("inf"), True, "1"])
def test_bad_timeout_is_a_value_error(registry: HealthRegistry, timeout_s: object) -> None:
    with pytest.raises(ValueError, match=r"timeout_s of health check 'db'"):
        registry.add_check("db", lambda: True, timeout_s=timeout_s)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["started", "shutdown", "event_loop", "", 3])
def test_reserved_or_empty_names_are_refused(registry: HealthRegistry, name: object) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        registry.add_check(name, lambda: True)  # type: ignore[arg-type]


def test_bad_settings_are_value_errors() -> None:
    with pytest.raises(ValueError, match="cache_interval_s"):
        HealthRegistry(cache_interval_s=-1)
    with pytest.raises(ValueError, match="liveness_timeout_s"):
        HealthRegistry(liveness_timeout_s=0)
    with pytest.raises(ValueError, match="max_workers"):
        HealthRegistry(max_workers=0)
    with pytest.raises(ValueError, match="redact"):
        HealthRegistry().configure(redact="mask")  # type: ignore[arg-type]


def test_duplicate_name_replaces_within_a_kind_only(registry: HealthRegistry) -> None:
    registry.add_check("db", lambda: False)
    registry.add_check("db", lambda: True)
    registry.add_check("db", lambda: False, kind="startup")
    registry.mark_started()
    ready = registry.evaluate("ready")
    assert ready.status == "pass"
    assert list(ready.checks) == ["db"]
    assert registry.evaluate("startup").checks["db"].status == "fail"


def test_module_level_api_drives_the_default_registry(default_registry: HealthRegistry) -> None:
    @health.check("db", timeout_s=0.5)
    def db() -> bool:
        return True

    health.add_check("warm", lambda: None, kind="startup")
    reg = health.configure(cache_interval_s=0.0, liveness_timeout_s=3.0)
    assert reg is default_registry
    assert health.watchdog() is reg.watchdog
    assert reg.watchdog.timeout_s == 3.0
    assert db() is True  # the decorator returns the function unchanged

    assert reg.evaluate("startup").status == "fail"
    health.mark_started()  # checks registered before init()/startup count now
    assert list(reg.evaluate("startup").checks) == ["started", "warm"]
    assert reg.evaluate("ready").checks["db"].status == "pass"

    health.begin_shutdown()
    assert reg.evaluate("ready").checks.keys() == {"shutdown"}

    health.reset()
    assert not reg.started
    assert not reg.shutting_down
    assert reg.cache_interval_s == 1.0
    assert reg.watchdog.timeout_s == 10.0
    reg.mark_started()
    assert reg.evaluate("ready").checks == {}


def test_stop_keeps_checks_but_starts_a_fresh_life(registry: HealthRegistry) -> None:
    registry.add_check("db", lambda: True)
    registry.mark_started()
    registry.begin_shutdown()
    registry.stop()
    assert not registry.started
    assert not registry.shutting_down
    assert registry.evaluate("ready").checks.keys() == {"started"}
    registry.mark_started()
    assert registry.evaluate("ready").checks["db"].status == "pass"


# -- the body ------------------------------------------------------------------------------------


def test_body_is_compact_json_in_the_documented_shape(registry: HealthRegistry) -> None:
    registry.add_check("db", lambda: True)
    registry.add_check("cache", raising(ConnectionError("refused"), False))  # type: ignore[arg-type]
    registry.mark_started()
    result = registry.evaluate("ready")
    body = result.body()
    doc = orjson.loads(body)
    assert body == orjson.dumps(doc)  # compact
    assert result.http_status == 503
    assert doc == {
        "status": "fail",
        "checks": {
            "db": {"status": "pass", "duration_ms": doc["checks"]["db"]["duration_ms"]},
            "cache": {
                "status": "fail",
                "duration_ms": doc["checks"]["cache"]["duration_ms"],
                "error": "ConnectionError: refused",
            },
        },
    }
    for check in doc["checks"].values():
        assert isinstance(check["duration_ms"], int | float)
        assert check["duration_ms"] >= 0

    passing = ProbeResult.of({"db": CheckResult("pass", 1.5)})
    assert passing.http_status == 200
    assert orjson.loads(passing.body()) == {
        "status": "pass",
        "checks": {"db": {"status": "pass", "duration_ms": 1.5}},
    }


def test_importing_health_starts_nothing() -> None:
    code = (
        "import threading\n"
        "import devkit.health as h\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "assert not h._fork_hook_installed\n"
        "assert h.get_registry()._pool is None\n"
        "print('clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "clean"
