"""A thread that writes what waits when no request comes to write it.

A WSGI request's access record waits to be written with those of the next requests
(:meth:`devkit.http._core.Core.finish_copied`); the request that fills the batch writes
them all. When requests stop, the ones that wait must not wait for the next request:
:class:`FlushTimer`'s thread looks every ``delay_s`` and writes them once the oldest has
waited that long: between one and two ``delay_s`` after it ended (plus the moment a
busy process takes to let another thread in).

The thread sleeps between rounds rather than waiting to be notified: a thread woken while
the request thread runs waits for the GIL and is woken again by each of the request
thread's system calls (docs/benchmarks.md#export-and-the-gil). While requests fill
batches it finds nothing old enough and goes back to sleep. After ``idle_after_s`` with
nothing waiting it ends; the next record that waits starts a new one, so an idle process
has no thread of it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from devkit import _errors
from devkit._threads import start_daemon

__all__ = ["FlushTimer"]


class FlushTimer:
    """Calls ``flush`` every ``delay_s`` while something waits.

    ``flush`` writes what waited longer than ``delay_s``; ``waiting`` counts what waits.
    The request path reads :attr:`running` after it left something to wait and calls
    :meth:`start` only when it is false: nothing else of this class runs per request.
    """

    def __init__(
        self,
        flush: Callable[[], None],
        waiting: Callable[[], int],
        *,
        delay_s: float,
        idle_after_s: float,
    ) -> None:
        self._flush = flush
        self._waiting = waiting
        self._delay_s = delay_s
        self._idle_rounds = max(1, round(idle_after_s / delay_s))
        #: True while a thread runs rounds (read without the lock by the request path).
        self.running = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Something waits: have a thread write it within ``delay_s``."""
        with self._lock:
            if self.running or self._stop.is_set():
                return
            self.running = True
            self._thread = start_daemon(self._run, "devkit-records")

    def stop(self, timeout_s: float = 1.0) -> None:
        """No more rounds (shutdown): the thread ends, waited for up to ``timeout_s``."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def _run(self) -> None:
        idle = 0
        while not self._stop.wait(self._delay_s):
            try:
                self._flush()
            except Exception as exc:  # the thread must go on: records still wait
                _errors.report("logs", "write_failed", exc)
            if self._waiting():
                idle = 0
                continue
            idle += 1
            if idle < self._idle_rounds:
                continue
            with self._lock:
                # Cleared before the last look: a record left after that look sees it
                # cleared and starts a new thread; one left before is seen here.
                self.running = False
                if not self._waiting():
                    return
                self.running = True
                idle = 0
        with self._lock:
            self.running = False
