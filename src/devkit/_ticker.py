"""A background thread that does a piece of work every few milliseconds while a process
is busy, and sleeps while it is quiet.

devkit's log pipeline keeps lines that come close together back, to write them in one
system call (:meth:`devkit.logs.LogPipeline.write`); the lines before a quiet spell
must still go out within a bound. :class:`Ticker` is what writes them. It sleeps between
rounds rather than waiting to be notified: a thread woken while the request thread runs
waits for the GIL and is woken again by each of the request thread's system calls
(docs/benchmarks.md#export-and-the-gil), and being notified at each held line would do
that all the time. After a quiet spell it stops waking up until it is woken again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from devkit import _errors

__all__ = ["IDLE_AFTER_S", "Ticker"]

#: With nothing new for this long, the thread stops waking up until :meth:`Ticker.wake`.
IDLE_AFTER_S = 1.0


class Ticker:
    """Calls ``work`` every ``every_s`` seconds from a thread of its own while
    ``activity()`` (a value that changes with each piece of work offered) changes, and
    sleeps until :meth:`wake` after ``idle_after_s`` without a change.

    The hot path reads :attr:`sleeping` and calls :meth:`wake` only when it is set:
    nothing else of this class runs there.
    """

    def __init__(
        self,
        work: Callable[[], None],
        activity: Callable[[], object],
        *,
        every_s: float,
        idle_after_s: float = IDLE_AFTER_S,
        name: str = "devkit-ticker",
    ) -> None:
        self._work = work
        self._activity = activity
        self._every_s = every_s
        self._idle_rounds = max(1, round(idle_after_s / every_s))
        self._name = name
        #: True while no thread runs rounds (none started yet, or idle): wake() it.
        self.sleeping = True
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def wake(self) -> None:
        """Work was offered: run rounds again (the first call starts the thread)."""
        with self._lock:
            if self._stop.is_set():
                return
            self.sleeping = False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._wake.set()

    def stop(self) -> None:
        """No more rounds; the thread ends at once."""
        with self._lock:
            self._stop.set()
            self.sleeping = False  # nothing to wake any more
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            seen, quiet = self._activity(), 0
            while quiet < self._idle_rounds:
                if self._stop.wait(self._every_s):
                    return
                self._run_work()
                now = self._activity()
                quiet = quiet + 1 if now == seen else 0
                seen = now
            self.sleeping = True
            # Work offered by a caller that read ``sleeping`` just before it was set did
            # not wake the thread: it is done here.
            self._run_work()

    def _run_work(self) -> None:
        try:
            self._work()
        except Exception as exc:  # the thread must go on
            _errors.report("ticker", "work_failed", exc)
