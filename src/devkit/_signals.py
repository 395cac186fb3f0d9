"""SIGTERM chaining: readiness turns 503 the moment the orchestrator asks us to stop.

devkit never replaces a server's signal handling: it wraps the handler in place (the
server's, or Python's default) and calls it right after marking the process as
draining. Nothing else happens inside the handler (no logging, no locks): flushing is done
by the server's own shutdown path (ASGI lifespan, gunicorn worker exit, atexit).
uvicorn installs its handlers when it starts serving, after ``init()``, so the ASGI
middleware chains again at lifespan startup.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["chain_sigterm"]

_MARK = "_devkit_sigterm_chain"


def chain_sigterm(on_term: Callable[[], None]) -> Callable[[], None] | None:
    """Wrap the current SIGTERM handler so ``on_term`` runs first; returns an undo.

    Only possible from the main thread; elsewhere (or when already chained) returns None.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    previous: Any = signal.getsignal(signal.SIGTERM)
    if getattr(previous, _MARK, False):
        return None

    def handler(signum: int, frame: FrameType | None) -> None:
        try:
            on_term()
        except Exception:  # never let telemetry stop the server from stopping
            pass
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            # Python's default for SIGTERM is to die: restore it and re-deliver.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    setattr(handler, _MARK, True)
    try:
        signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):
        return None

    def undo() -> None:
        if signal.getsignal(signal.SIGTERM) is handler:
            signal.signal(signal.SIGTERM, previous)

    return undo
