"""Health probes: the check registry, probe evaluation and the liveness watchdog.

The middleware answers ``{prefix}/startup``, ``/ready`` and ``/live`` by calling
:meth:`HealthRegistry.evaluate_async` (ASGI) or :meth:`HealthRegistry.evaluate` (WSGI)
and sending :meth:`ProbeResult.body` with :attr:`ProbeResult.http_status`. This module
knows nothing about HTTP.

- startup passes once the application finished its startup (:func:`mark_started`, called
  by the ASGI middleware on lifespan startup) and every ``kind="startup"`` check passes.
  The probes are served only by the runtime ``devkit.init()`` builds, so "init completed"
  needs no flag here.
- ready fails at once when shutdown begins (:func:`begin_shutdown`) or before startup is
  complete, without calling any check; otherwise it runs the ``kind="ready"`` checks.
- live never calls dependency checks: a database blip must not make Kubernetes restart
  every healthy pod at once and turn an outage into a crash loop. It fails only when the
  process is wedged, as seen by the :class:`LivenessWatchdog` on the server's event loop.

Checks run concurrently, each under its own timeout, and each result is cached for
``cache_interval_s``; probe calls that arrive while a check runs share that call (single
flight), so a probe storm cannot hammer a dependency.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import functools
import inspect
import math
import os
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, Literal, Protocol, TypeVar

import orjson

from devkit import _errors
from devkit._threads import start_daemon, with_signals
from devkit.config import PROBE_KINDS

__all__ = [
    "CheckFn",
    "CheckResult",
    "HealthRegistry",
    "Kind",
    "LivenessWatchdog",
    "ProbeResult",
    "add_check",
    "begin_shutdown",
    "check",
    "circuit_breaker",
    "configure",
    "get_registry",
    "mark_started",
    "reset",
    "watchdog",
]

Kind = Literal["startup", "ready", "live"]
Status = Literal["pass", "fail"]
#: A check: a sync or async callable without arguments. ``None`` or a true value passes,
#: a false value fails, an exception fails with its type and message.
CheckFn = Callable[[], "bool | Awaitable[bool | None] | None"]
_F = TypeVar("_F", bound=CheckFn)
_T = TypeVar("_T")

KINDS: Final[tuple[Kind, ...]] = PROBE_KINDS
DEFAULT_TIMEOUT_S: Final = 1.0
DEFAULT_CACHE_INTERVAL_S: Final = 1.0
DEFAULT_LIVENESS_TIMEOUT_S: Final = 10.0
MAX_WORKERS: Final = 4
MAX_ERROR_CHARS: Final = 200
#: Circuit breakers a process may report (the ``dependency`` label's bound).
MAX_CIRCUIT_BREAKERS: Final = 64
MAX_LABEL_CHARS: Final = 128
#: Names of the checks devkit adds itself; user checks cannot take them.
RESERVED_NAMES: Final = frozenset({"started", "shutdown", "event_loop", "devkit"})

#: A file system path in a check's error text: the probe body is served to anyone who
#: can reach the port, and a path tells them how the pod is laid out (install prefix,
#: mounted secrets, user names). An absolute POSIX path of two or more parts (not one
#: inside a URL or a word: ``host/db``, ``a/b``, ``scheme://``), a home-relative one, or
#: a Windows drive path.
_PATH = re.compile(
    r"""(?<![\w.:/~\\-])~?(?:/[^\s/'"`<>|:;,()\[\]{}]+){2,}/?"""
    r"""|~/[^\s'"`<>|:;,()\[\]{}]+"""
    r"""|(?<![\w])[A-Za-z]:\\[^\s'"`<>|;,()\[\]{}]*"""
)
_PATH_MARKER: Final = "[REDACTED:path]"

_NOT_STARTED = "application startup not complete"
_SHUTTING_DOWN = "shutting down"
_TIMEOUT = "timeout"


class _Unset(Enum):
    UNSET = "UNSET"


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one check, as shown in the probe body."""

    status: Status
    duration_ms: float
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"status": self.status, "duration_ms": self.duration_ms}
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one probe: ``fail`` when any check failed."""

    status: Status
    checks: dict[str, CheckResult]

    @classmethod
    def of(cls, checks: dict[str, CheckResult]) -> ProbeResult:
        failed = any(r.status == "fail" for r in checks.values())
        return cls("fail" if failed else "pass", checks)

    @property
    def http_status(self) -> int:
        """200 when passing, 503 when failing (what Kubernetes probes act on)."""
        return 200 if self.status == "pass" else 503

    def to_dict(self) -> dict[str, object]:
        return {
            "status": self.status,
            "checks": {name: r.to_dict() for name, r in self.checks.items()},
        }

    def body(self) -> bytes:
        """The compact JSON response body."""
        return orjson.dumps(self.to_dict())


def _pass(ms: float = 0.0) -> CheckResult:
    return CheckResult("pass", ms)


def _fail(error: str, ms: float = 0.0) -> CheckResult:
    return CheckResult("fail", ms, error)


_INTERNAL_FAILURE: Final = ProbeResult("fail", {"devkit": _fail("internal error")})


# -- internals: checks, flights, the worker pool ---------------------------------------------


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What a check call produced, before redaction (done once, by the first reader)."""

    passed: bool
    duration_s: float
    error: str | None = None  # devkit's own text ("timeout"), shown as is
    user_error: str | None = None  # from the user's exception: redacted before shown
    internal: BaseException | None = None  # devkit's own failure: reported


class _Flight:
    """One call of a check, shared by every probe that asks while it runs or is cached."""

    __slots__ = ("deadline", "finished_at", "future", "result", "started", "task")

    def __init__(self, started: float, timeout_s: float) -> None:
        self.started = started
        self.deadline = started + timeout_s
        self.finished_at = 0.0
        self.future: cf.Future[_Outcome] = cf.Future()
        self.result: CheckResult | None = None
        self.task: asyncio.Task[_Outcome] | None = None  # keeps the task referenced

    def finish(self, outcome: _Outcome, now: float) -> None:
        # Only under the registry lock, so the first outcome wins.
        self.finished_at = now
        self.future.set_result(outcome)


class _Check:
    __slots__ = ("busy", "flight", "fn", "is_async", "kind", "name", "timeout_s")

    def __init__(self, name: str, fn: CheckFn, kind: Kind, timeout_s: float) -> None:
        self.name = name
        self.fn = fn
        self.kind = kind
        self.timeout_s = timeout_s
        self.is_async = _is_async(fn)
        #: The latest flight (in progress, or finished and possibly still cached).
        self.flight: _Flight | None = None
        #: The flight whose call is still executing, even after it timed out: a hung
        #: check is not called again until it returns, so it pins at most one thread.
        self.busy: _Flight | None = None


class _DaemonPool:
    """At most ``max_workers`` daemon threads running sync check calls.

    Not ``ThreadPoolExecutor``: its workers are joined at interpreter exit, so one hung
    check would keep a terminating pod alive until SIGKILL.
    """

    def __init__(self, max_workers: int, name: str) -> None:
        self._max = max_workers
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._tasks: deque[tuple[cf.Future[Any], Callable[[], Any]]] = deque()
        self._threads: set[threading.Thread] = set()
        self._idle = 0
        self._spawned = 0
        self._closed = False

    def submit(self, fn: Callable[[], _T]) -> cf.Future[_T]:
        future: cf.Future[_T] = cf.Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("the health check pool is stopped")
            self._tasks.append((future, fn))
            if self._idle < len(self._tasks) and len(self._threads) < self._max:
                self._spawned += 1
                # Checks are the application's code: the process's signals unblocked,
                # whichever thread submits (devkit._threads).
                thread = threading.Thread(
                    target=with_signals,
                    args=(self._work,),
                    name=f"{self._name}-{self._spawned}",
                    daemon=True,
                )
                self._threads.add(thread)
                thread.start()
            self._cond.notify()
        return future

    def _work(self) -> None:
        while True:
            with self._cond:
                self._idle += 1
                while not self._tasks and not self._closed:
                    self._cond.wait()
                self._idle -= 1
                if self._closed:
                    self._threads.discard(threading.current_thread())
                    return
                future, fn = self._tasks.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn()
            except BaseException as exc:  # delivered to the waiter, never kills the worker
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self) -> None:
        """Cancel queued calls and let idle workers exit; running calls finish on their own."""
        with self._cond:
            self._closed = True
            pending = list(self._tasks)
            self._tasks.clear()
            self._cond.notify_all()
        for future, _ in pending:
            future.cancel()


def _is_async(fn: object) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return not inspect.isroutine(fn) and inspect.iscoroutinefunction(call)


def _describe(exc: BaseException) -> str:
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not break the probe
        message = ""
    name = type(exc).__name__
    return f"{name}: {message}" if message else name


def _judge(value: object, duration_s: float) -> _Outcome:
    if value is None or value is True:
        return _Outcome(True, duration_s)
    if value is False:
        return _Outcome(False, duration_s, error="check returned False")
    try:
        truthy = bool(value)
    except Exception as exc:
        return _Outcome(False, duration_s, user_error=_describe(exc))
    if truthy:
        return _Outcome(True, duration_s)
    return _Outcome(False, duration_s, error=f"check returned a false {type(value).__name__}")


def _hide_paths(text: str) -> str:
    """``text`` with every file system path replaced by :data:`_PATH_MARKER`."""
    return _PATH.sub(_PATH_MARKER, text) if ("/" in text or "\\" in text) else text


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def _kind(kind: object) -> Kind:
    for k in KINDS:
        if kind == k:
            return k
    raise ValueError(f"health check kind must be one of 'startup', 'ready', 'live'; got {kind!r}")


def _positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        if math.isfinite(number) and (number > 0 or (allow_zero and number == 0)):
            return number
    accepted = "a finite number >= 0" if allow_zero else "a finite number > 0"
    raise ValueError(f"{name} must be {accepted}; got {value!r}")


# -- fork handling ---------------------------------------------------------------------------


class _ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


_fork_lock = threading.Lock()
_fork_hook_installed = False
_fork_aware: weakref.WeakSet[_ForkAware] = weakref.WeakSet()


def _track_for_fork(obj: _ForkAware) -> None:
    """Reset ``obj`` in forked children. The hook is registered at the first thread start."""
    global _fork_hook_installed
    with _fork_lock:
        _fork_aware.add(obj)
        if not _fork_hook_installed and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _fork_hook_installed = True


def _after_fork_in_child() -> None:
    # Threads do not survive fork and their locks may have been held: start afresh.
    global _fork_lock
    _fork_lock = threading.Lock()
    for obj in list(_fork_aware):
        obj._after_fork_in_child()


# -- the liveness watchdog -------------------------------------------------------------------


class LivenessWatchdog:
    """Tells whether an asyncio event loop still runs its callbacks.

    A daemon thread posts a heartbeat callback to the loop every :attr:`interval_s`; the
    loop records when it ran it. When the loop is blocked, a probe request cannot be served
    by that loop, so the state is plain attributes readable from any thread without the
    loop's help: :meth:`is_wedged` and :meth:`blocked_for` are cheap and synchronous.

    Attach from the running loop (e.g. at ASGI lifespan startup): a loop that never runs
    would be reported wedged. In a forked child the watchdog is detached (its thread did
    not survive the fork) and can be attached again.
    """

    def __init__(
        self, timeout_s: float = DEFAULT_LIVENESS_TIMEOUT_S, *, interval_s: float | None = None
    ) -> None:
        self._timeout_s = _positive("liveness_timeout_s", timeout_s)
        self._interval_s = None if interval_s is None else _positive("interval_s", interval_s)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop_event: threading.Event | None = None
        self._last_beat = 0.0
        self._pending = False  # a heartbeat is queued on the loop and has not run yet

    @property
    def timeout_s(self) -> float:
        """How long the loop may miss heartbeats before it counts as wedged."""
        return self._timeout_s

    @timeout_s.setter
    def timeout_s(self, value: float) -> None:
        self._timeout_s = _positive("liveness_timeout_s", value)

    @property
    def interval_s(self) -> float:
        """Heartbeat period: ``min(1.0, timeout_s / 4)`` unless given."""
        if self._interval_s is not None:
            return self._interval_s
        return min(1.0, self._timeout_s / 4)

    @property
    def attached(self) -> bool:
        return self._loop is not None

    def attach(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Watch ``loop`` (default: the running loop); starts the heartbeat thread if needed.

        Attaching again re-points the watchdog (e.g. a new loop in tests); it is idempotent.
        """
        if loop is None:
            loop = asyncio.get_running_loop()
        _track_for_fork(self)
        with self._lock:
            if loop is not self._loop:
                self._loop = loop
                self._last_beat = time.monotonic()
                self._pending = False
            if self._thread is None:
                stop = threading.Event()
                self._stop_event = stop
                self._thread = start_daemon(self._run, "devkit-liveness-watchdog", stop)

    def stop(self) -> None:
        """Detach and stop the heartbeat thread. :meth:`attach` starts it again."""
        with self._lock:
            stop, thread = self._stop_event, self._thread
            self._loop = self._thread = self._stop_event = None
            self._pending = False
        if stop is not None:
            stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)

    def blocked_for(self) -> float:
        """Seconds since the loop last ran a heartbeat (0.0 when detached).

        Up to one :attr:`interval_s` of this is normal idle time between heartbeats.
        """
        if self._loop is None:
            return 0.0
        return max(0.0, time.monotonic() - self._last_beat)

    def is_wedged(self) -> bool:
        """Whether the watched loop missed its heartbeats for longer than :attr:`timeout_s`."""
        return self._loop is not None and self.blocked_for() > self._timeout_s

    def _beat(self, loop: asyncio.AbstractEventLoop) -> None:
        # Runs on the loop: two attribute stores, no lock, so it costs the loop nothing.
        if loop is self._loop:
            self._last_beat = time.monotonic()
            self._pending = False

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            with self._lock:
                loop = self._loop
                if loop is None or stop is not self._stop_event:
                    return
                closed = loop.is_closed()
                if self._pending and not closed:  # the last one has not run: do not pile up
                    continue
                self._pending = True
            if not closed:
                try:
                    loop.call_soon_threadsafe(self._beat, loop)
                    continue
                except RuntimeError:  # closed in the meantime
                    pass
            # A closed loop is finished, not wedged: detach and end the thread.
            with self._lock:
                if self._loop is loop and self._stop_event is stop:
                    self._loop = self._thread = self._stop_event = None
                    self._pending = False
                    return

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._loop = self._thread = self._stop_event = None
        self._pending = False


# -- the registry ----------------------------------------------------------------------------


class HealthRegistry:
    """Checks, lifecycle state (started, shutting down), result cache and worker pool.

    Threads are created lazily (first sync check call, first :meth:`LivenessWatchdog.attach`),
    never at construction.
    """

    def __init__(
        self,
        *,
        cache_interval_s: float = DEFAULT_CACHE_INTERVAL_S,
        liveness_timeout_s: float = DEFAULT_LIVENESS_TIMEOUT_S,
        max_workers: int = MAX_WORKERS,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self._cache_interval_s = _positive("cache_interval_s", cache_interval_s, allow_zero=True)
        if not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < 1:
            raise ValueError(f"max_workers must be an integer >= 1; got {max_workers!r}")
        self._max_workers = max_workers
        self._redact = redact
        self._defaults = (self._cache_interval_s, liveness_timeout_s, redact)
        self._lock = threading.Lock()
        self._checks: dict[Kind, dict[str, _Check]] = {k: {} for k in KINDS}
        self._pool: _DaemonPool | None = None
        self._started = False
        self._shutting_down = False
        #: The outcome of the last readiness evaluation (None: not probed yet).
        self._last_ready: bool | None = None
        #: Circuit breakers the service reports (name -> open), for the canary's rollback.
        self._circuits: dict[str, bool] = {}
        #: Watches the server's event loop for ``/live``; the ASGI middleware attaches it.
        self.watchdog = LivenessWatchdog(liveness_timeout_s)

    # -- configuration and registration ----------------------------------------------------

    @property
    def cache_interval_s(self) -> float:
        return self._cache_interval_s

    @property
    def started(self) -> bool:
        return self._started

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def configure(
        self,
        *,
        liveness_timeout_s: float | None = None,
        cache_interval_s: float | None = None,
        redact: Callable[[str], str] | _Unset | None = _Unset.UNSET,
    ) -> HealthRegistry:
        """Apply settings (``init()`` calls this); arguments left out keep their value.

        ``redact`` filters every error text taken from a check's exception before it is
        shown, so a secret in an exception message never reaches the probe body.
        """
        timeout = (
            None
            if liveness_timeout_s is None
            else _positive("liveness_timeout_s", liveness_timeout_s)
        )
        interval = (
            None
            if cache_interval_s is None
            else _positive("cache_interval_s", cache_interval_s, allow_zero=True)
        )
        if redact is not _Unset.UNSET and redact is not None and not callable(redact):
            raise ValueError(f"redact must be callable or None; got {type(redact).__name__}")
        if timeout is not None:
            self.watchdog.timeout_s = timeout
        if interval is not None:
            self._cache_interval_s = interval
        if redact is not _Unset.UNSET:
            self._redact = redact
        return self

    def add_check(
        self,
        name: str,
        fn: CheckFn,
        *,
        kind: Kind = "ready",
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        """Register ``fn`` as a ``kind`` check; a check of the same name and kind is replaced.

        ``kind="live"`` checks must be cheap and local (no database, no network): a failing
        liveness probe restarts the pod, which cures a wedged process but not a dependency.
        """
        k = _kind(kind)
        if not isinstance(name, str) or not name:
            raise ValueError(f"health check name must be a non-empty string; got {name!r}")
        if name in RESERVED_NAMES:
            raise ValueError(f"health check name {name!r} is reserved for devkit's own checks")
        if not callable(fn):
            raise ValueError(f"health check {name!r} must be a callable; got {type(fn).__name__}")
        timeout = _positive(f"timeout_s of health check {name!r}", timeout_s)
        new = _Check(name, fn, k, timeout)
        with self._lock:
            checks = self._checks[k]
            checks.pop(name, None)  # a replacement moves to the end, like a new registration
            checks[name] = new

    def check(
        self, name: str, *, kind: Kind = "ready", timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> Callable[[_F], _F]:
        """Decorator form of :meth:`add_check`; returns the function unchanged."""
        _kind(kind)

        def register(fn: _F) -> _F:
            self.add_check(name, fn, kind=kind, timeout_s=timeout_s)
            return fn

        return register

    # -- lifecycle -------------------------------------------------------------------------

    def mark_started(self) -> None:
        """The application finished its startup: startup (and then ready) may pass."""
        self._started = True

    def begin_shutdown(self) -> None:
        """Shutdown began: ready fails from now on, so traffic drains before the exit."""
        self._shutting_down = True

    def stop(self) -> None:
        """Stop the watchdog and the worker pool, drop cached results and lifecycle state.

        Registered checks and settings are kept (``devkit.shutdown()`` calls this; a later
        ``init()`` starts a fresh life with the same checks).
        """
        self.watchdog.stop()
        with self._lock:
            pool, self._pool = self._pool, None
            for checks in self._checks.values():
                for c in checks.values():
                    c.flight = None
            self._started = False
            self._shutting_down = False
            self._last_ready = None
            self._circuits.clear()
        if pool is not None:
            pool.shutdown()

    def reset(self) -> None:
        """:meth:`stop`, forget every check and restore the constructor's settings (tests)."""
        self.stop()
        cache_interval_s, liveness_timeout_s, redact = self._defaults
        with self._lock:
            for checks in self._checks.values():
                checks.clear()
            self._cache_interval_s = cache_interval_s
            self._redact = redact
        self.watchdog.timeout_s = liveness_timeout_s

    # -- evaluation ------------------------------------------------------------------------

    def evaluate(self, kind: str) -> ProbeResult:
        """Evaluate a probe from a thread (WSGI). Blocks at most about the longest timeout.

        Sync checks run in the registry's pool, async ones with ``asyncio.run`` in a pool
        thread. Do not call this on a running event loop: use :meth:`evaluate_async`.
        """
        k = _kind(kind)
        try:
            return self._evaluate(k)
        except Exception as exc:
            _errors.report("health", "evaluate_failed", exc)
            return _INTERNAL_FAILURE

    async def evaluate_async(self, kind: str) -> ProbeResult:
        """Evaluate a probe on the running event loop (ASGI).

        Async checks run as tasks on this loop, sync ones in the registry's pool, so the
        loop is never blocked by a check.
        """
        k = _kind(kind)
        try:
            return await self._evaluate_async(k)
        except Exception as exc:
            _errors.report("health", "evaluate_failed", exc)
            return _INTERNAL_FAILURE

    def _gate(self, kind: Kind) -> tuple[dict[str, CheckResult], bool]:
        """The lifecycle checks of ``kind``, and whether they fail the probe on their own.

        A gated probe calls no check: a pod that is leaving or not yet started must not
        load its dependencies, and ready must turn 503 at once when shutdown begins.
        """
        if kind == "live":
            return {}, False
        if kind == "ready" and self._shutting_down:
            return {"shutdown": _fail(_SHUTTING_DOWN)}, True
        if not self._started:
            return {"started": _fail(_NOT_STARTED)}, True
        return ({"started": _pass()} if kind == "startup" else {}), False

    def _snapshot(self, kind: Kind) -> list[_Check]:
        with self._lock:
            return list(self._checks[kind].values())

    def _evaluate(self, kind: Kind) -> ProbeResult:
        results, gated = self._gate(kind)
        if not gated:
            self._add_event_loop(kind, results)
            flights = [(c.name, self._acquire(c, None)) for c in self._snapshot(kind)]
            for name, flight in flights:
                results[name] = self._wait(flight)
        return self._outcome(kind, results)

    def _outcome(self, kind: Kind, results: dict[str, CheckResult]) -> ProbeResult:
        result = ProbeResult.of(results)
        if kind == "ready":
            self._last_ready = result.status == "pass"
        return result

    # -- what the metrics report -----------------------------------------------------------

    def ready_state(self) -> float:
        """1 when this process is ready (started, not draining, its last readiness probe
        passed or none came yet), else 0: ``devkit_ready``."""
        ready = self._started and not self._shutting_down and self._last_ready is not False
        return 1.0 if ready else 0.0

    def set_circuit_breaker(self, name: str, open: bool) -> None:
        """Report that the circuit breaker in front of dependency ``name`` is open (or
        closed again): ``devkit_circuit_breaker_open{dependency=name}``. At most
        ``MAX_CIRCUIT_BREAKERS`` names; more are counted and ignored."""
        if not isinstance(name, str) or not 0 < len(name) <= MAX_LABEL_CHARS:
            _errors.report("health", "circuit_breaker_name_invalid")
            return
        with self._lock:
            if name not in self._circuits and len(self._circuits) >= MAX_CIRCUIT_BREAKERS:
                overflow = True
            else:
                self._circuits[name] = bool(open)
                overflow = False
        if overflow:
            _errors.report("health", "circuit_breakers_over_limit")

    def circuit_breakers(self) -> dict[str, bool]:
        """Every reported circuit breaker, name -> open."""
        with self._lock:
            return dict(self._circuits)

    async def _evaluate_async(self, kind: Kind) -> ProbeResult:
        results, gated = self._gate(kind)
        if not gated:
            self._add_event_loop(kind, results)
            loop = asyncio.get_running_loop()
            flights = [(c.name, self._acquire(c, loop)) for c in self._snapshot(kind)]
            pending = [f for _, f in flights if not f.future.done()]
            if pending:
                await asyncio.gather(*(self._wait_async(f) for f in pending))
            for name, flight in flights:
                results[name] = self._resolve(flight, flight.future.result())
        return self._outcome(kind, results)

    def _add_event_loop(self, kind: Kind, results: dict[str, CheckResult]) -> None:
        if kind != "live" or not self.watchdog.attached:
            return
        blocked = self.watchdog.blocked_for()
        if blocked > self.watchdog.timeout_s:
            results["event_loop"] = _fail(f"event loop blocked for {blocked:.1f} s")
        else:
            results["event_loop"] = _pass()

    def _acquire(self, check: _Check, loop: asyncio.AbstractEventLoop | None) -> _Flight:
        """The flight answering ``check`` now: cached, in progress, or a new one."""
        now = time.monotonic()
        with self._lock:
            flight = check.flight
            if flight is not None and (
                not flight.future.done() or now < flight.finished_at + self._cache_interval_s
            ):
                return flight
            flight = _Flight(now, check.timeout_s)
            check.flight = flight
            busy = check.busy
            if busy is not None:  # the previous call is still hung: do not pile up threads
                flight.finish(_Outcome(False, now - busy.started, error=_TIMEOUT), now)
                return flight
            check.busy = flight
        try:
            self._start(check, flight, loop)
        except Exception as exc:
            self._finish(check, flight, _Outcome(False, 0.0, internal=exc))
        return flight

    def _start(
        self, check: _Check, flight: _Flight, loop: asyncio.AbstractEventLoop | None
    ) -> None:
        done = functools.partial(self._work_done, check, flight)
        if check.is_async and loop is not None:
            coro = self._call_async(check, None, time.monotonic())
            task = loop.create_task(coro, name=f"devkit-health-check-{check.name}")
            flight.task = task
            task.add_done_callback(done)
            return
        with self._lock:
            if self._pool is None:
                self._pool = _DaemonPool(self._max_workers, "devkit-health")
                _track_for_fork(self)
            pool = self._pool
        pool.submit(functools.partial(self._call_in_thread, check)).add_done_callback(done)

    @staticmethod
    def _call_in_thread(check: _Check) -> _Outcome:
        start = time.monotonic()
        if check.is_async:
            return asyncio.run(HealthRegistry._call_async(check, None, start))
        try:
            value = check.fn()
        except Exception as exc:
            return _Outcome(False, time.monotonic() - start, user_error=_describe(exc))
        if inspect.isawaitable(value):  # a sync callable handing back a coroutine
            return asyncio.run(HealthRegistry._call_async(check, value, start))
        return _judge(value, time.monotonic() - start)

    @staticmethod
    async def _call_async(
        check: _Check, awaitable: Awaitable[object] | None, start: float
    ) -> _Outcome:
        # asyncio.timeout, not wait_for: its expired() tells our timeout from a
        # TimeoutError raised by the check itself.
        scope = asyncio.timeout(max(0.0, start + check.timeout_s - time.monotonic()))
        try:
            async with scope:
                called: object = check.fn() if awaitable is None else awaitable
                value = await called if inspect.isawaitable(called) else called
        except TimeoutError as exc:
            if scope.expired():
                return _Outcome(False, time.monotonic() - start, error=_TIMEOUT)
            return _Outcome(False, time.monotonic() - start, user_error=_describe(exc))
        except Exception as exc:
            return _Outcome(False, time.monotonic() - start, user_error=_describe(exc))
        return _judge(value, time.monotonic() - start)

    def _work_done(
        self, check: _Check, flight: _Flight, work: cf.Future[_Outcome] | asyncio.Future[_Outcome]
    ) -> None:
        now = time.monotonic()
        if work.cancelled():
            outcome = _Outcome(False, now - flight.started, error="cancelled")
        else:
            exc = work.exception()
            outcome = work.result() if exc is None else _Outcome(False, 0.0, internal=exc)
        self._finish(check, flight, outcome)

    def _finish(self, check: _Check, flight: _Flight, outcome: _Outcome) -> None:
        with self._lock:
            if check.busy is flight:
                check.busy = None
            if not flight.future.done():
                flight.finish(outcome, time.monotonic())

    def _expire(self, flight: _Flight) -> None:
        """The deadline passed: answer "timeout" even if the call never returns."""
        with self._lock:
            if not flight.future.done():
                now = time.monotonic()
                flight.finish(_Outcome(False, now - flight.started, error=_TIMEOUT), now)

    def _wait(self, flight: _Flight) -> CheckResult:
        try:
            outcome = flight.future.result(timeout=max(0.0, flight.deadline - time.monotonic()))
        except TimeoutError:
            self._expire(flight)
            outcome = flight.future.result()
        return self._resolve(flight, outcome)

    async def _wait_async(self, flight: _Flight) -> None:
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()

        def settle() -> None:
            if not woken.done():
                woken.set_result(None)

        def wake(_: cf.Future[_Outcome]) -> None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody left to wake
                loop.call_soon_threadsafe(settle)

        # A plain callback rather than asyncio.wrap_future: cancelling one waiter must not
        # cancel the flight that other probes share.
        flight.future.add_done_callback(wake)
        remaining = max(0.0, flight.deadline - time.monotonic())
        done, _ = await asyncio.wait((woken,), timeout=remaining)
        if not done:
            woken.cancel()
            self._expire(flight)

    def _resolve(self, flight: _Flight, outcome: _Outcome) -> CheckResult:
        """The shown result of a finished flight, built once and cached on it."""
        result = flight.result
        if result is None:
            result = self._to_result(outcome)
            flight.result = result
        return result

    def _to_result(self, outcome: _Outcome) -> CheckResult:
        ms = round(outcome.duration_s * 1000.0, 3)
        if outcome.passed:
            return _pass(ms)
        if outcome.internal is not None:
            _errors.report("health", "check_runner_failed", outcome.internal)
            return _fail("internal error", ms)
        if outcome.user_error is None:
            return _fail(outcome.error or "failed", ms)
        text = outcome.user_error
        if self._redact is not None:
            try:
                text = self._redact(text)
            except Exception as exc:
                _errors.report("health", "redact_failed", exc)
                return _fail("error text withheld: redaction failed", ms)
        return _fail(_truncate(_hide_paths(text)), ms)

    def _after_fork_in_child(self) -> None:
        # Pool threads and running calls stayed in the parent.
        self._lock = threading.Lock()
        self._pool = None
        for checks in self._checks.values():
            for c in checks.values():
                c.flight = None
                c.busy = None


# -- the module-level API over the default registry ------------------------------------------

#: The registry the runtime uses; checks registered before ``init()`` live here.
_default = HealthRegistry()


def get_registry() -> HealthRegistry:
    """The process-wide registry that ``devkit.init()`` and the middleware use."""
    return _default


def add_check(
    name: str, fn: CheckFn, *, kind: Kind = "ready", timeout_s: float = DEFAULT_TIMEOUT_S
) -> None:
    """Register a check; see :meth:`HealthRegistry.add_check`."""
    _default.add_check(name, fn, kind=kind, timeout_s=timeout_s)


def check(
    name: str, *, kind: Kind = "ready", timeout_s: float = DEFAULT_TIMEOUT_S
) -> Callable[[_F], _F]:
    """Decorator registering a check: ``@devkit.health.check("db", timeout_s=1.0)``."""
    return _default.check(name, kind=kind, timeout_s=timeout_s)


def mark_started() -> None:
    """Tell the probes the application finished its startup (WSGI apps call this)."""
    _default.mark_started()


def begin_shutdown() -> None:
    """Fail readiness from now on so the load balancer drains this instance."""
    _default.begin_shutdown()


def circuit_breaker(name: str, open: bool) -> None:
    """Report the state of the circuit breaker in front of dependency ``name``::

        devkit.health.circuit_breaker("payments", open=True)

    Exposed as ``devkit_circuit_breaker_open{dependency="payments"} 1``: the canary's
    rollback rules roll back while one is open. Never raises.
    """
    _default.set_circuit_breaker(name, open)


def configure(
    *,
    liveness_timeout_s: float | None = None,
    cache_interval_s: float | None = None,
    redact: Callable[[str], str] | _Unset | None = _Unset.UNSET,
) -> HealthRegistry:
    """Configure the default registry and return it; see :meth:`HealthRegistry.configure`."""
    return _default.configure(
        liveness_timeout_s=liveness_timeout_s, cache_interval_s=cache_interval_s, redact=redact
    )


def watchdog() -> LivenessWatchdog:
    """The default registry's liveness watchdog."""
    return _default.watchdog


def reset() -> None:
    """Forget every check and all state of the default registry (for tests)."""
    _default.reset()
