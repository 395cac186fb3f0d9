"""Request-scoped context shared by the middleware (writer) and the log pipeline (reader).

Context variables, not thread locals: they follow ``asyncio`` tasks and Starlette's
``run_in_threadpool`` (which copies the context), and each request starts from a copy
of the server's context, so nothing bound in one request is seen by the next.
"""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["BAGGAGE_KEY", "correlation_id"]

#: The baggage entry that carries the correlation id to downstream services.
BAGGAGE_KEY = "correlation_id"

#: The correlation id of the request being served, or ``None`` outside a request.
correlation_id: ContextVar[str | None] = ContextVar("devkit_correlation_id", default=None)
