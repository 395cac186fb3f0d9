"""Drive an ASGI or WSGI app in-process: no sockets, no server, no HTTP parsing.

A server and a network would add tens of microseconds of noise per request around a
middleware cost we want to see to the microsecond, so the app is called directly with a
prepared ``scope``/``environ``. Requests run back to back (one event loop for ASGI) and
are timed in batches with ``perf_counter_ns``. The telemetry flush after the last batch
is timed too: spans still queued at the end were produced by the timed requests.

The process's CPU time over the same region is recorded as well. It counts every thread
of the worker (the span export thread included) but not other tenants of a shared
machine, so it is the steadier number when the machine is busy.
"""

from __future__ import annotations

import asyncio
import gc
import io
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

from benchmarks.apps import PATH

__all__ = ["ASGIApp", "Timing", "WSGIApp", "time_asgi", "time_wsgi"]

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
Flush = Callable[[], None]

_BATCHES = 10
_HEADERS: list[tuple[bytes, bytes]] = [
    (b"host", b"127.0.0.1:8000"),
    (b"user-agent", b"devkit-bench/1"),
    (b"accept", b"application/json"),
    (b"accept-encoding", b"gzip"),
]
_SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.4"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": PATH,
    "raw_path": PATH.encode(),
    "query_string": b"",
    "root_path": "",
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
}
_ENVIRON: dict[str, Any] = {
    "REQUEST_METHOD": "GET",
    "SCRIPT_NAME": "",
    "PATH_INFO": PATH,
    "QUERY_STRING": "",
    "SERVER_NAME": "127.0.0.1",
    "SERVER_PORT": "8000",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REMOTE_ADDR": "127.0.0.1",
    "REMOTE_PORT": "50000",
    "HTTP_HOST": "127.0.0.1:8000",
    "HTTP_USER_AGENT": "devkit-bench/1",
    "HTTP_ACCEPT": "application/json",
    "HTTP_ACCEPT_ENCODING": "gzip",
    "wsgi.version": (1, 0),
    "wsgi.url_scheme": "http",
    "wsgi.errors": sys.stderr,
    "wsgi.multithread": False,
    "wsgi.multiprocess": False,
    "wsgi.run_once": False,
}


@dataclass(frozen=True)
class Timing:
    """Nanoseconds of each batch and of the final flush, CPU time, operations timed."""

    batch_ns: list[int]
    flush_ns: int
    cpu_ns: int
    operations: int

    @property
    def us_per_op(self) -> float:
        return (sum(self.batch_ns) + self.flush_ns) / self.operations / 1000.0

    @property
    def cpu_us_per_op(self) -> float:
        return self.cpu_ns / self.operations / 1000.0


def batch_sizes(total: int, batches: int = _BATCHES) -> list[int]:
    """Split ``total`` operations into at most ``batches`` near-equal non-empty batches."""
    batches = max(1, min(batches, total))
    return [total // batches + (1 if i < total % batches else 0) for i in range(batches)]


def _flush_all(flushers: list[Flush]) -> int:
    start = time.perf_counter_ns()
    for flush in flushers:
        flush()
    return time.perf_counter_ns() - start


# -- ASGI ---------------------------------------------------------------------------------


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _discard(message: Message) -> None:
    pass


async def _check_asgi(app: ASGIApp) -> None:
    sent: list[Message] = []

    async def record(message: Message) -> None:
        sent.append(message)

    await app({**_SCOPE, "headers": list(_HEADERS)}, _receive, record)
    status = next((m["status"] for m in sent if m["type"] == "http.response.start"), None)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    if status != 200 or b"item_id" not in body:
        raise RuntimeError(f"app answered {status} {body[:200]!r}, expected 200 with item_id")


async def _asgi_batches(app: ASGIApp, sizes: list[int]) -> list[int]:
    scope, headers, receive, send = _SCOPE, _HEADERS, _receive, _discard
    clock = time.perf_counter_ns
    out = []
    for size in sizes:
        start = clock()
        for _ in range(size):
            # A fresh scope per request: frameworks and middleware write into it.
            await app({**scope, "headers": list(headers)}, receive, send)
        out.append(clock() - start)
    return out


def time_asgi(app: ASGIApp, requests: int, warmup: int, flushers: list[Flush]) -> Timing:
    """Check the app answers 200, warm it up, then time ``requests`` sequential calls."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_check_asgi(app))
        loop.run_until_complete(_asgi_batches(app, [warmup]))
        _flush_all(flushers)
        gc.collect()
        cpu_start = time.process_time_ns()
        batch_ns = loop.run_until_complete(_asgi_batches(app, batch_sizes(requests)))
        flush_ns = _flush_all(flushers)
        cpu_ns = time.process_time_ns() - cpu_start
    finally:
        _close(loop)
    return Timing(batch_ns, flush_ns, cpu_ns, requests)


def _close(loop: asyncio.AbstractEventLoop) -> None:
    """Close like ``asyncio.run``: cancel what middleware left running (monitors, tasks)."""
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    asyncio.set_event_loop(None)
    loop.close()


# -- WSGI ---------------------------------------------------------------------------------


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return None


def _call_wsgi(app: WSGIApp, start_response: StartResponse) -> bytes:
    environ = dict(_ENVIRON)
    environ["wsgi.input"] = io.BytesIO(b"")
    iterable = app(environ, start_response)
    try:
        return b"".join(iterable)
    finally:
        close = getattr(iterable, "close", None)
        if close is not None:
            close()


def _check_wsgi(app: WSGIApp) -> None:
    statuses: list[str] = []

    def record(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        statuses.append(status)

    body = _call_wsgi(app, record)
    if not statuses or not statuses[0].startswith("200") or b"item_id" not in body:
        raise RuntimeError(f"app answered {statuses} {body[:200]!r}, expected 200 with item_id")


def _wsgi_batches(app: WSGIApp, sizes: list[int]) -> list[int]:
    clock = time.perf_counter_ns
    call, start_response = _call_wsgi, _start_response
    out = []
    for size in sizes:
        start = clock()
        for _ in range(size):
            call(app, start_response)
        out.append(clock() - start)
    return out


def time_wsgi(app: WSGIApp, requests: int, warmup: int, flushers: list[Flush]) -> Timing:
    """Check the app answers 200, warm it up, then time ``requests`` sequential calls."""
    _check_wsgi(app)
    _wsgi_batches(app, [warmup])
    _flush_all(flushers)
    gc.collect()
    cpu_start = time.process_time_ns()
    batch_ns = _wsgi_batches(app, batch_sizes(requests))
    flush_ns = _flush_all(flushers)
    return Timing(batch_ns, flush_ns, time.process_time_ns() - cpu_start, requests)
