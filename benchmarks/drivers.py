"""Drive an ASGI or WSGI app in-process: no sockets, no server, no HTTP parsing.

A server and a network would add tens of microseconds of noise per request around a
middleware cost we want to see to the microsecond, so the app is called directly with a
prepared ``scope``/``environ``. Requests run back to back (one event loop for ASGI) and
are timed in batches with ``perf_counter_ns``. The telemetry flush after the last batch
is timed too: spans still queued at the end were produced by the timed requests.

The process's CPU time over the same region is recorded as well. It counts every thread
of the worker (the span export thread included) but not other tenants of a shared
machine, so it is the steadier number when the machine is busy.

CPU time still moves with the machine's speed: on a shared host the same code runs up
to twice as slow while a neighbour keeps the sibling hardware thread busy, and that state
flips within seconds. So before every batch and after the last one the worker times a
fixed reference workload (:func:`calibrate`, about a millisecond of dictionary and string
work) on its own thread, and each batch's CPU time is also expressed in units of the
reference timed around it. A ratio of such normalised costs no longer depends on which
speed each worker happened to get.
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

__all__ = ["ASGIApp", "Timing", "WSGIApp", "calibrate", "normalised", "time_asgi", "time_wsgi"]

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
Flush = Callable[[], None]

_BATCHES = 10
_REFERENCE_ITERATIONS = 3000
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


def _reference_work(n: int) -> int:
    table: dict[str, tuple[int, str]] = {}
    for i in range(n):
        table[str(i)] = (i, f"k{i}")
    return sum(len(value[1]) for value in table.values())


def calibrate() -> int:
    """CPU nanoseconds this thread takes for the fixed reference workload."""
    start = time.thread_time_ns()
    _reference_work(_REFERENCE_ITERATIONS)
    return max(1, time.thread_time_ns() - start)


def normalised(cpu_ns: list[int], calibration_ns: list[int]) -> float:
    """Total cost in reference units: each part's CPU time over the mean of the
    calibrations taken right before and right after it (``len(cpu_ns) + 1`` of them)."""
    if len(calibration_ns) != len(cpu_ns) + 1:
        raise ValueError("need one calibration before each part and one after the last")
    return sum(ns * 2 / (calibration_ns[i] + calibration_ns[i + 1]) for i, ns in enumerate(cpu_ns))


@dataclass(frozen=True)
class Timing:
    """Nanoseconds of each batch and of the final flush (wall and process CPU), the
    reference calibrations around them, and the number of operations timed."""

    batch_ns: list[int]
    flush_ns: int
    cpu_ns: int
    operations: int
    #: Process CPU per batch, the final flush last (``len(batch_ns) + 1`` entries).
    part_cpu_ns: list[int]
    #: Reference workload CPU before each part and after the last.
    calibration_ns: list[int]

    @property
    def us_per_op(self) -> float:
        return (sum(self.batch_ns) + self.flush_ns) / self.operations / 1000.0

    @property
    def cpu_us_per_op(self) -> float:
        return self.cpu_ns / self.operations / 1000.0

    @property
    def norm_per_op(self) -> float:
        """CPU cost per operation in units of the reference workload (x 1000)."""
        return normalised(self.part_cpu_ns, self.calibration_ns) / self.operations * 1000.0


def batch_sizes(total: int, batches: int = _BATCHES) -> list[int]:
    """Split ``total`` operations into at most ``batches`` near-equal non-empty batches."""
    batches = max(1, min(batches, total))
    return [total // batches + (1 if i < total % batches else 0) for i in range(batches)]


def _flush_all(flushers: list[Flush]) -> tuple[int, int]:
    """(wall ns, process CPU ns) of flushing every exporter."""
    cpu, start = time.process_time_ns(), time.perf_counter_ns()
    for flush in flushers:
        flush()
    return time.perf_counter_ns() - start, time.process_time_ns() - cpu


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


@dataclass
class _Parts:
    """Per batch: wall ns and process CPU ns; calibrations before each batch (when kept)."""

    wall: list[int]
    cpu: list[int]
    calibration: list[int]


async def _asgi_batches(app: ASGIApp, sizes: list[int], calibrated: bool = False) -> _Parts:
    scope, headers, receive, send = _SCOPE, _HEADERS, _receive, _discard
    clock, cpu_clock = time.perf_counter_ns, time.process_time_ns
    parts = _Parts([], [], [])
    for size in sizes:
        if calibrated:
            parts.calibration.append(calibrate())
        cpu, start = cpu_clock(), clock()
        for _ in range(size):
            # A fresh scope per request: frameworks and middleware write into it.
            await app({**scope, "headers": list(headers)}, receive, send)
        parts.wall.append(clock() - start)
        parts.cpu.append(cpu_clock() - cpu)
    return parts


def time_asgi(app: ASGIApp, requests: int, warmup: int, flushers: list[Flush]) -> Timing:
    """Check the app answers 200, warm it up, then time ``requests`` sequential calls."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_check_asgi(app))
        loop.run_until_complete(_asgi_batches(app, [warmup]))
        _flush_all(flushers)
        gc.collect()
        parts = loop.run_until_complete(_asgi_batches(app, batch_sizes(requests), True))
        parts.calibration.append(calibrate())
        flush_ns, flush_cpu_ns = _flush_all(flushers)
        parts.calibration.append(calibrate())
    finally:
        _close(loop)
    return _timing(parts, flush_ns, flush_cpu_ns, requests)


def _timing(parts: _Parts, flush_ns: int, flush_cpu_ns: int, operations: int) -> Timing:
    # The calibrations between batches are not part of the cost: only the batches' and
    # the flush's own CPU time is summed.
    part_cpu = [*parts.cpu, flush_cpu_ns]
    return Timing(
        batch_ns=parts.wall,
        flush_ns=flush_ns,
        cpu_ns=sum(part_cpu),
        operations=operations,
        part_cpu_ns=part_cpu,
        calibration_ns=parts.calibration,
    )


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


def _wsgi_batches(app: WSGIApp, sizes: list[int], calibrated: bool = False) -> _Parts:
    clock, cpu_clock = time.perf_counter_ns, time.process_time_ns
    call, start_response = _call_wsgi, _start_response
    parts = _Parts([], [], [])
    for size in sizes:
        if calibrated:
            parts.calibration.append(calibrate())
        cpu, start = cpu_clock(), clock()
        for _ in range(size):
            call(app, start_response)
        parts.wall.append(clock() - start)
        parts.cpu.append(cpu_clock() - cpu)
    return parts


def time_wsgi(app: WSGIApp, requests: int, warmup: int, flushers: list[Flush]) -> Timing:
    """Check the app answers 200, warm it up, then time ``requests`` sequential calls."""
    _check_wsgi(app)
    _wsgi_batches(app, [warmup])
    _flush_all(flushers)
    gc.collect()
    parts = _wsgi_batches(app, batch_sizes(requests), True)
    parts.calibration.append(calibrate())
    flush_ns, flush_cpu_ns = _flush_all(flushers)
    parts.calibration.append(calibrate())
    return _timing(parts, flush_ns, flush_cpu_ns, requests)
