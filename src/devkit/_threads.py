"""devkit's own background threads leave the process's signals to the main thread.

The kernel hands a signal sent to a process (a server's SIGTERM, SIGHUP, SIGINT...) to
any of its threads that does not block it, and Python runs the handler only when the
main thread next runs bytecode. A gunicorn sync worker asleep in a slow request would
then run its SIGTERM handler, and devkit's readiness flip, only when the request ends.
devkit's threads that run none of the application's code block those signals, so the
main thread takes them and is woken from its blocking call. The metrics server's
threads block them too: a readiness probe every few milliseconds means a thread of its
own is often running when SIGTERM comes. Threads that run the application's code
(health checks) unblock them whichever thread started them: a process they start
inherits the mask.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["PROCESS_SIGNALS", "start_daemon", "with_signals", "without_signals"]

#: Signals sent to the process as a whole (stop, reload, children, terminal).
PROCESS_SIGNALS = frozenset(
    getattr(signal, name)
    for name in (
        "SIGTERM",
        "SIGINT",
        "SIGHUP",
        "SIGQUIT",
        "SIGUSR1",
        "SIGUSR2",
        "SIGWINCH",
        "SIGCHLD",
        "SIGALRM",
        "SIGABRT",
        "SIGTTIN",
        "SIGTTOU",
    )
    if hasattr(signal, name)
)


def start_daemon(target: Callable[..., Any], name: str, *args: Any) -> threading.Thread:
    """Start a daemon thread running ``target(*args)`` with :data:`PROCESS_SIGNALS` blocked."""
    thread = threading.Thread(target=without_signals, args=(target, *args), name=name, daemon=True)
    thread.start()
    return thread


def without_signals(target: Callable[..., Any], *args: Any) -> None:
    """``target(*args)`` in the calling thread, :data:`PROCESS_SIGNALS` blocked first (a
    thread's entry point; the threads it starts inherit the mask)."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, PROCESS_SIGNALS)
    target(*args)


def with_signals(target: Callable[..., Any], *args: Any) -> None:
    """``target(*args)`` in the calling thread, :data:`PROCESS_SIGNALS` unblocked first
    (the entry point of a thread that runs the application's code)."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, PROCESS_SIGNALS)
    target(*args)
