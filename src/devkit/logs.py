"""Structured logs: one JSON object per line, the same for structlog and stdlib ``logging``.

The pipeline is a short chain of plain processors (structlog's contextvars merge, then
devkit's :meth:`LogPipeline.finalize`) and a renderer. ``finalize`` does in one pass what
a hand-built chain does in five: level name, RFC 3339 timestamp, service and logger,
trace and correlation ids, the exception as ``error``, and redaction *before* rendering,
so nothing unredacted ever reaches the stream.

stdlib records (uvicorn, gunicorn, libraries) enter through :class:`StdlibHandler`, which
builds the same event dict and calls the same pipeline, so the process speaks one format.

Hostile arguments never raise into the caller and never cost the record: a value whose
``__str__`` or ``__repr__`` raises, a container that cannot be iterated, a lone surrogate
or a bad ``%`` argument becomes a placeholder (``<unrepresentable T>``) or a degraded
message, counted in ``devkit_internal_errors_total``. Records are bounded: a field longer
than ``DEVKIT_LOG_MAX_FIELD_BYTES`` (16 KB by default) is cut after redaction, with a
marker that gives its size (``…[truncated: 2097152 bytes]``), so one large value cannot
become a line that log shippers split or drop. Checking the bound costs one length
comparison per rendered line; fields are only looked at when the line is that long.
"""

from __future__ import annotations

import binascii
import io
import logging
import os
import stat
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from contextvars import ContextVar
from types import TracebackType
from typing import IO, Any, Protocol, cast

import orjson
import structlog
from opentelemetry import trace as otel_trace
from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger

from devkit import _batch, _context, _errors
from devkit.config import LEVEL_ALIASES, LEVEL_NUMBERS, LEVELS, Settings
from devkit.redaction import Redactor

__all__ = [
    "ACCESS_LOGGER",
    "MAX_LOGGED_PATH",
    "AccessRequest",
    "Installation",
    "LogPipeline",
    "StdlibHandler",
    "add_tap",
    "get_logger",
    "install",
    "redact_query",
    "remove_tap",
]

# structlog method names -> the SPEC's five level names.
_LEVEL_OF_METHOD = {
    **{level: level for level in LEVELS},
    **LEVEL_ALIASES,
    "msg": "info",
    "exception": "error",
}
# Fields devkit writes; never redacted (their values are devkit's own) nor overwritten.
_RESERVED = frozenset(
    {
        "timestamp",
        "level",
        "service",
        "logger",
        "message",
        "trace_id",
        "span_id",
        "correlation_id",
        "error",
    }
)
_NOT_REDACTED = frozenset(
    {"timestamp", "level", "service", "logger", "trace_id", "span_id", "correlation_id"}
)
_JSON_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS

#: The logger name of the middleware's ``request completed`` records.
ACCESS_LOGGER = "devkit.access"
_MAX_CACHED_ROUTES = 4096
#: The longest path an access record carries (query included); longer ones are cut.
MAX_LOGGED_PATH = 2048
# What ends a value cut to the field limit (or, in a stack, takes its middle's place):
# its size in bytes.
_CUT_TAIL = "…[truncated: %d bytes]"
_CUT_MIDDLE = "\n…[truncated: %d bytes]…\n"
# Containers deeper than this are not walked for the bound (redaction stops at 32).
_MAX_DEPTH = 64
# The access record: timestamp second, milliseconds, the part its kind shares (level ...
# status code), duration in ms, [trace id, span id,] correlation id.
_ACCESS_TRACED = (
    b'{"timestamp":"%s.%03dZ%s,"duration_ms":%.3f,'
    b'"trace_id":"%s","span_id":"%s","correlation_id":"%s"}\n'
)
_ACCESS_UNTRACED = b'{"timestamp":"%s.%03dZ%s,"duration_ms":%.3f,"correlation_id":"%s"}\n'
_hexlify = binascii.hexlify
#: Access record kinds remembered (see ``LogPipeline._access_line``), and the longest path
#: and query (together, in characters) of a kind remembered: the memory stays bounded.
_MAX_CACHED_ACCESS_KINDS = 4096
_MAX_CACHED_ACCESS_PATH = 256


# Renders of the captured records go to every tap as well (devkit.testing).
_TAPS: list[Callable[[bytes], None]] = []
#: How long a line may wait while an export thread works (see ``LogPipeline.write``),
#: and how many bytes may wait.
MAX_HOLD_S = 0.02
MAX_HOLD_BYTES = 65536
#: The most bytes of waiting lines one write to a pipe or socket carries: POSIX's
#: ``PIPE_BUF``, so that the write is never split and the lines of processes sharing one
#: (gunicorn's workers writing to a container's stdout) never mix. A longer line goes
#: alone. A file or terminal takes them in one write.
MAX_WRITE_BYTES = 4096
_busy_exports = _batch.BUSY
_monotonic = time.monotonic
# Set while a record is being processed: a record logged *by* the pipeline (a library
# warning raised while rendering) is dropped instead of recursing.
_IN_PIPELINE: ContextVar[bool] = ContextVar("devkit_in_log_pipeline", default=False)


def _write_lines(binary: IO[bytes], lines: list[bytes], limit: int | None) -> None:
    """Write ``lines`` in order, whole, in writes of at most ``limit`` bytes (a longer line
    alone), or in one write without a limit.

    Each write lets go of the GIL: where no limit is needed, one write keeps a thread
    waiting for it from being woken once per piece."""
    if limit is None:
        binary.write(b"".join(lines))
        binary.flush()
        return
    chunk: list[bytes] = []
    size = 0
    for line in lines:
        if chunk and size + len(line) > limit:
            binary.write(b"".join(chunk))
            binary.flush()
            chunk, size = [], 0
        chunk.append(line)
        size += len(line)
    if chunk:
        binary.write(b"".join(chunk))
        binary.flush()


def _has_fileno(stream: IO[bytes]) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return False
    return True


def _write_limit(stream: IO[bytes]) -> int | None:
    """``MAX_WRITE_BYTES`` for a pipe or socket, which may split a longer write among its
    writers; None for anything else."""
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (AttributeError, OSError, ValueError):
        return None
    return MAX_WRITE_BYTES if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) else None


def add_tap(tap: Callable[[bytes], None]) -> None:
    """Also send every rendered line to ``tap`` (used by ``devkit.testing``)."""
    _TAPS.append(tap)


def remove_tap(tap: Callable[[bytes], None]) -> None:
    if tap in _TAPS:
        _TAPS.remove(tap)


class AccessRequest(Protocol):
    """What :meth:`LogPipeline.access` reads of a finished request (``devkit.http``'s
    request record)."""

    method_label: str
    route: str
    path: str
    query: str
    status: int
    duration: float
    error: bool
    exc: BaseException | None
    #: The trace's ids (0 without a trace) and the correlation id.
    trace_id: int
    span_id: int
    cid: str
    #: When the request ended (wall clock), or None for now.
    created: float | None


def redact_query(query: str) -> str:
    """``a=1&b=2`` -> ``a=[REDACTED]&b=[REDACTED]``: names stay, values never reach logs."""
    parts = []
    for item in query.split("&"):
        if not item:
            continue
        name, sep, _value = item.partition("=")
        parts.append(f"{name}=[REDACTED]" if sep else name)
    return "&".join(parts)


class _Clock:
    """RFC 3339 UTC timestamps with milliseconds; the seconds part is cached."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: tuple[int, str, bytes] = (-1, "", b"")

    def _second(self, sec: int) -> tuple[int, str, bytes]:
        cache = self._cache
        if sec != cache[0]:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            cache = self._cache = (sec, prefix, prefix.encode())
        return cache

    def format(self, t: float) -> str:
        sec = int(t)
        return f"{self._second(sec)[1]}.{int((t - sec) * 1000):03d}Z"


class LogPipeline:
    """Turns event dicts into redacted, rendered lines and writes them to one stream."""

    def __init__(
        self,
        settings: Settings,
        redactor: Redactor | None,
        stream: IO[str] | IO[bytes] | None = None,
    ) -> None:
        self.service = settings.service_name
        self.level_number = settings.level_number
        #: The longest field value written, in bytes (``DEVKIT_LOG_MAX_FIELD_BYTES``).
        self.max_field = settings.log_max_field_bytes
        self._max_path = min(MAX_LOGGED_PATH, self.max_field)
        self.redactor = redactor
        self._clock = _Clock()
        self._lock = threading.Lock()
        #: Lines waiting while an export thread works, their size, the first one's time.
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._held_since = 0.0
        #: When the last line went through ``_hold``.
        self._last_line = 0.0
        out: Any = stream if stream is not None else sys.stdout
        self._binary: IO[bytes] | None = getattr(out, "buffer", None)
        if self._binary is None and isinstance(out, io.BufferedIOBase | io.RawIOBase):
            self._binary = cast(IO[bytes], out)
        self._text: IO[str] | None = None if self._binary is not None else cast(IO[str], out)
        #: Whether lines may wait for an export thread: only a file descriptor's write
        #: lets go of the GIL (a test's in-memory stream does not).
        self._may_hold = self._binary is not None and _has_fileno(self._binary)
        #: How many bytes of waiting lines one write may carry (see ``_write_lines``).
        self._write_limit = _write_limit(self._binary) if self._binary is not None else None
        if self._may_hold:
            _batch.add_idle_listener(self)
        self._console = settings.log_format == "console"
        #: Write the lines to the stream (``DEVKIT_LOGS_STDOUT``); taps get them anyway.
        self._stdout = settings.logs_stdout
        #: Called with each record's JSON line (``DEVKIT_LOGS_EXPORTER=otlp``).
        self.export: Callable[[bytes], None] | None = None
        self._colors = self._console and bool(getattr(out, "isatty", lambda: False)())
        # The access record's constant parts, rendered once (see ``access``).
        self._service_json = orjson.dumps(self.service)
        self._access_heads: dict[tuple[str, str], bytes] = {}
        self._route_json: dict[str, bytes] = {}
        self._access_kinds: dict[tuple[Any, ...], bytes] = {}
        # Access records below DEVKIT_LOG_LEVEL are not even built.
        self._access_levels = {
            level: LEVEL_NUMBERS[level] >= self.level_number for level in ("info", "warn", "error")
        }

    # -- processing -------------------------------------------------------------------

    def finalize(
        self,
        level: str,
        event: EventDict,
        created: float | None = None,
        redact: bool = True,
        ids: tuple[int, int, str] | None = None,
    ) -> dict[str, Any]:
        """Build the output record: SPEC fields first, caller fields, context, error.

        ``ids`` (trace id, span id, correlation id) stand for the current context's when
        the record is written after its request's context was left (the access record).
        """
        message = event.pop("event", "")
        logger_name = event.pop("logger", None) or "root"
        exc_info = event.pop("exc_info", None)
        event.pop("_record", None)
        event.pop("_from_structlog", None)
        record: dict[str, Any] = {
            "timestamp": self._clock.format(time.time() if created is None else created),
            "level": level,
            "service": self.service,
            "logger": logger_name,
            "message": message,
        }
        for key, value in event.items():
            if key in _RESERVED:
                key = "extra_" + key
            record[key] = value
        cid: str | None
        if ids is None:
            ctx = otel_trace.get_current_span().get_span_context()
            trace_id, span_id = (ctx.trace_id, ctx.span_id) if ctx.is_valid else (0, 0)
            cid = _context.correlation_id.get()
        else:
            trace_id, span_id, cid = ids
        if trace_id:
            record["trace_id"] = format(trace_id, "032x")
            record["span_id"] = format(span_id, "016x")
        if cid is not None:
            record["correlation_id"] = cid
        if exc_info:
            error = _format_exception(exc_info)
            if error is not None:
                record["error"] = error
        if self.redactor is not None:
            if redact:
                try:
                    self.redactor.redact_fields(record, _NOT_REDACTED)
                except Exception as exc:  # e.g. a container whose iteration raises
                    _errors.report("logs", "unredactable_field", exc)
                    self._redact_each(record)
            elif "error" in record:
                record["error"] = self.redactor.redact(record["error"])
        return record

    def _redact_each(self, record: dict[str, Any]) -> None:
        """Redact field by field: one that cannot be redacted becomes a placeholder
        (never its unredacted value)."""
        assert self.redactor is not None
        for key, value in list(record.items()):
            if key in _NOT_REDACTED:
                continue
            one = {key: value}
            try:
                self.redactor.redact_fields(one)
                record[key] = one[key]
            except Exception:
                record[key] = _placeholder(value)

    def render(self, record: dict[str, Any]) -> bytes:
        if self._console:
            self.bound(record)
            return _render_console(record, self._colors).encode("utf-8", "replace")
        return self._render_json(record)

    def _render_json(self, record: dict[str, Any]) -> bytes:
        try:
            line = orjson.dumps(record, default=_json_default, option=_JSON_OPTIONS)
        except Exception as exc:
            # e.g. an int beyond 64 bits, a lone surrogate: degrade that record, keep the line.
            _errors.report("logs", "unserialisable_record", exc)
            sanitized = _sanitize(record, 0)
            assert isinstance(sanitized, dict)
            record.clear()
            record.update(sanitized)
            line = orjson.dumps(record, default=_json_default, option=_JSON_OPTIONS)
        # No field can be longer than the whole line: the common record stops here.
        if len(line) > self.max_field and self.bound(record):
            line = orjson.dumps(record, default=_json_default, option=_JSON_OPTIONS)
        return line

    def bound(self, record: dict[str, Any]) -> bool:
        """Cut, in place, every field of ``record`` longer than :attr:`max_field` bytes;
        whether one was.

        A string is measured in UTF-8 and keeps its start (a stack, ``error.stack``,
        keeps its first third and its end, where the innermost frames and the exception
        are); a list or mapping is measured as its JSON and keeps the items that fit
        (see :func:`_bound`). The marker says how long the value was. Runs after
        redaction, so a secret is never cut into a piece the patterns no longer
        recognise.
        """
        limit = self.max_field
        changed = False
        for key, value in record.items():
            if key == "error" and type(value) is dict:
                new: Any = {k: _bound(v, limit, 1, k == "stack") for k, v in value.items()}
                if all(new[k] is v for k, v in value.items()):
                    new = value
            else:
                new = _bound(value, limit, 0, False)
            if new is not value:
                record[key] = new  # same key: safe while iterating
                changed = True
        return changed

    def _export(self, record: dict[str, Any], line: bytes) -> None:
        """Hand ``record`` to the OTLP log export as its JSON line (the console format's
        lines are not JSON)."""
        assert self.export is not None
        self.export(self._render_json(record) if self._console else line)

    def write(self, line: bytes) -> None:
        """One whole line per call: a buffered binary stream keeps concurrent lines whole
        by itself (its own lock); a text stream is written under the pipeline's lock.

        While one of devkit's export threads works on a batch, lines to a binary stream
        wait (at most ``MAX_HOLD_S`` and ``MAX_HOLD_BYTES``) and go out together when it
        is done (to a pipe or socket in writes of at most ``MAX_WRITE_BYTES``, which it
        never splits among processes): each write lets go of the GIL for a moment, which
        wakes a thread waiting for it without letting it in, so a busy request thread
        writing once per request would wake the export thread once per request and
        starve it.
        """
        binary = self._binary
        try:
            if not self._stdout:
                pass
            elif binary is not None:
                if (_busy_exports or self._held) and self._may_hold:
                    self._hold(line, binary)
                else:
                    binary.write(line)
                    binary.flush()
            else:
                assert self._text is not None
                with self._lock:
                    self._text.write(line.decode("utf-8"))
                    self._text.flush()
        except (OSError, ValueError) as exc:  # closed or broken stream
            _errors.report("logs", "write_failed", exc)
        if _TAPS:
            for tap in _TAPS:
                tap(line)

    def _hold(self, line: bytes, binary: IO[bytes]) -> None:
        """Keep ``line`` back while lines come close together (a busy process: a line
        alone is written, so a quiet process never waits for a slow collector), or write
        it with the ones that wait."""
        with self._lock:
            held = self._held
            now = _monotonic()
            previous, self._last_line = self._last_line, now
            if (
                _busy_exports
                and now - previous < MAX_HOLD_S
                and (not held or now - self._held_since < MAX_HOLD_S)
                and self._held_bytes + len(line) <= MAX_HOLD_BYTES
            ):
                if not held:
                    self._held_since = now
                held.append(line)
                self._held_bytes += len(line)
                return
            held.append(line)
            # Emptied once written: until then another thread's line queues behind these.
            try:
                _write_lines(binary, held, self._write_limit)
            finally:
                self._held, self._held_bytes = [], 0

    def release_held(self) -> None:
        """Write the lines that wait (an export thread is done, or devkit flushes)."""
        if not self._held or self._binary is None:
            return
        with self._lock:
            held = self._held
            if not held:
                return
            try:
                _write_lines(self._binary, held, self._write_limit)
            except (OSError, ValueError) as exc:  # closed or broken stream
                _errors.report("logs", "write_failed", exc)
            finally:
                # Emptied once written: until then another thread's line queues behind these.
                self._held, self._held_bytes = [], 0

    def drop_held_after_fork(self) -> None:
        """In a forked child: the waiting lines are the parent's, which writes them."""
        self._held, self._held_bytes = [], 0
        self._lock = threading.Lock()

    # -- the access record ------------------------------------------------------------

    def access(self, request: AccessRequest) -> None:
        """Write the ``request completed`` record of one finished request; never raises.

        info below 400, warn for 4xx, error for 5xx and unhandled exceptions (with the
        exception). The path's query values are replaced and the rest of the path goes
        through the redactor; every other field is devkit's own (a method label, a route
        template, numbers, ids it validated). The record is rendered from parts cached
        at the first request, in one format operation (docs/benchmarks.md#access-records);
        the console format and a record with an exception take :meth:`emit`.
        """
        line = self._access_line(request)
        if line is None:
            return
        self.write(line)
        if self.export is not None:
            self.export(line)

    def access_many(self, requests: Iterable[AccessRequest]) -> None:
        """:meth:`access` for requests in a row: their lines go out together, in as few
        writes as the stream takes whole (one, or ``MAX_WRITE_BYTES`` each to a pipe), as
        held lines do. Each write lets go of the GIL and is a system call. Never raises."""
        lines: list[bytes] = []
        render = self._access_line
        for request in requests:
            line = render(request, lines)
            if line is not None:
                lines.append(line)
        if lines:
            self._write_many(lines)

    def _write_many(self, lines: list[bytes]) -> None:
        """:meth:`write` for ``lines``, in order."""
        binary = self._binary
        if binary is None or not self._stdout or ((_busy_exports or self._held) and self._may_hold):
            for line in lines:  # one at a time: held, written as text, or not at all
                self.write(line)
        else:
            try:
                _write_lines(binary, lines, self._write_limit)
            except (OSError, ValueError) as exc:  # closed or broken stream
                _errors.report("logs", "write_failed", exc)
            if _TAPS:
                for line in lines:
                    for tap in _TAPS:
                        tap(line)
        if self.export is not None:
            for line in lines:
                self.export(line)

    def _access_line(
        self, request: AccessRequest, waiting: list[bytes] | None = None
    ) -> bytes | None:
        """The access record's JSON line, or None: its level is off, or it was written
        through :meth:`emit` (the console format, an exception, a path orjson refuses),
        after the ``waiting`` lines of the requests before it.

        All but the time stamp, the duration and the ids are the same for requests of
        the same kind (outcome, status, method, route, path and query): rendered once
        and remembered for up to ``_MAX_CACHED_ACCESS_KINDS`` kinds of short paths.
        """
        error = request.error
        if self._console or (error and request.exc is not None):
            self._access_slow(request, waiting)
            return None
        path, query = request.path, request.query
        kind = (error, request.status, request.method_label, request.route, path, query)
        middle = self._access_kinds.get(kind)
        if middle is None:
            middle = self._access_middle(request)
            if middle is None:  # a path orjson refuses: the generic path copes
                self._access_slow(request, waiting)
                return None
            kinds = self._access_kinds
            if len(path) + len(query) <= _MAX_CACHED_ACCESS_PATH:
                if len(kinds) >= _MAX_CACHED_ACCESS_KINDS:
                    kinds.clear()
                kinds[kind] = middle
        if not middle:  # the level is off
            return None
        created = request.created
        now = time.time() if created is None else created
        sec = int(now)
        cached = self._clock._cache  # the clock's parts(), inlined: once per request
        if cached[0] != sec:
            cached = self._clock._second(sec)
        trace_id = request.trace_id
        if trace_id:
            return _ACCESS_TRACED % (
                cached[2],
                int((now - sec) * 1000),
                middle,
                request.duration * 1000.0,
                # The ids as hex: cheaper through to_bytes than with %032x.
                _hexlify(trace_id.to_bytes(16, "big")),
                _hexlify(request.span_id.to_bytes(8, "big")),
                request.cid.encode(),
            )
        return _ACCESS_UNTRACED % (
            cached[2],
            int((now - sec) * 1000),
            middle,
            request.duration * 1000.0,
            request.cid.encode(),
        )

    def _access_level(self, request: AccessRequest) -> str:
        if request.error:
            return "error"
        return "warn" if request.status >= 400 else "info"

    def _access_path(self, request: AccessRequest) -> str:
        """The path as the record shows it: query values replaced, redacted, cut."""
        path = request.path
        if request.query:
            path = f"{path}?{redact_query(request.query)}"
        if self.redactor is not None:
            path = self.redactor.redact_str(path)
        if len(path) > self._max_path:  # cut after redaction: no half secret is left
            path = _cut_path(path, self._max_path)
        return path

    def _access_middle(self, request: AccessRequest) -> bytes | None:
        """The part of the JSON line of ``request``'s kind from the level to the status
        code (b"" when its level is off), or None when orjson refuses the path."""
        level = self._access_level(request)
        if not self._access_levels[level]:
            return b""
        method, route = request.method_label, request.route
        head = self._access_heads.get((level, method))
        if head is None:
            head = self._access_head(level, method)
        route_json = self._route_json.get(route)
        if route_json is None:
            route_json = orjson.dumps(route)
            if len(self._route_json) < _MAX_CACHED_ROUTES:
                self._route_json[route] = route_json
        try:
            path_json = orjson.dumps(self._access_path(request))
        except Exception:  # lone surrogates
            return None
        return b'%s%s,"path":%s,"status_code":%d' % (head, route_json, path_json, request.status)

    def _access_slow(self, request: AccessRequest, waiting: list[bytes] | None) -> None:
        """The record through :meth:`_access_generic`, if its level is on."""
        level = self._access_level(request)
        if self._access_levels[level]:
            exc = request.exc if request.error else None
            self._access_generic(level, request, self._access_path(request), exc, waiting)

    def _access_generic(
        self,
        level: str,
        request: AccessRequest,
        path: str,
        exc: BaseException | None,
        waiting: list[bytes] | None = None,
    ) -> None:
        """The access record through :meth:`emit`, with the request's own ids (the record
        may be written after the request's context was left), after the ``waiting`` lines
        (written, then emptied): the log stays in order."""
        if waiting:
            self._write_many(waiting)
            waiting.clear()
        event: dict[str, Any] = {
            "event": "request completed",
            "logger": ACCESS_LOGGER,
            "method": request.method_label,
            "route": request.route,
            "path": path,
            "status_code": request.status,
            "duration_ms": round(request.duration * 1000.0, 3),
        }
        if exc is not None:
            event["exc_info"] = exc
        ids = (request.trace_id, request.span_id, request.cid)
        # Every field is devkit's own or redacted by the caller; an exception still is.
        self.emit(level, event, request.created, redact=False, ids=ids)

    def _access_head(self, level: str, method: str) -> bytes:
        head = (
            b'","level":"%s","service":%s,"logger":"%s","message":"request completed",'
            b'"method":%s,"route":'
        ) % (level.encode(), self._service_json, ACCESS_LOGGER.encode(), orjson.dumps(method))
        self._access_heads[(level, method)] = head
        return head

    def emit(
        self,
        level: str,
        event: EventDict,
        created: float | None = None,
        redact: bool = True,
        ids: tuple[int, int, str] | None = None,
    ) -> None:
        """Process, render and write one record; never raises into the caller.

        ``redact=False`` is for devkit's own records whose fields it already redacted
        (the access record: only its path can carry PII); an exception is still redacted.
        """
        if _IN_PIPELINE.get():
            return
        token = _IN_PIPELINE.set(True)
        try:
            try:
                record = self.finalize(level, event, created, redact, ids)
                line = self.render(record)
            except Exception as exc:
                _errors.report("logs", "emit_failed", exc)
                record = self._unrenderable(level, event, exc)
                line = self.render(record)
            self.write(line)
            if self.export is not None:
                self._export(record, line)
        except Exception as exc:
            _errors.report("logs", "emit_failed", exc)
        finally:
            _IN_PIPELINE.reset(token)

    def _unrenderable(
        self, level: str, event: MutableMapping[str, Any], exc: BaseException
    ) -> dict[str, Any]:
        """The record written when a record could not be built: devkit's own fields and
        the failure's type, nothing of the caller's values (they may hold secrets)."""
        logger_name = event.get("logger")
        return {
            "timestamp": self._clock.format(time.time()),
            "level": level,
            "service": self.service,
            "logger": logger_name if type(logger_name) is str else "root",
            "message": f"<unrenderable record: {type(exc).__name__}>",
        }

    # -- structlog glue ------------------------------------------------------------------

    def structlog_processor(
        self, logger: WrappedLogger, method_name: str, event: EventDict
    ) -> bytes:
        """The final structlog processor: returns the rendered line for :class:`_Writer`."""
        if _IN_PIPELINE.get():
            raise structlog.DropEvent
        token = _IN_PIPELINE.set(True)
        try:
            if "logger" not in event:
                event["logger"] = getattr(logger, "name", None)
            level = _LEVEL_OF_METHOD.get(method_name, "info")
            try:
                record = self.finalize(level, event)
                line = self.render(record)
            except Exception as exc:
                _errors.report("logs", "emit_failed", exc)
                record = self._unrenderable(level, event, exc)
                line = self.render(record)
            if self.export is not None:
                self._export(record, line)
            return line
        except Exception as exc:
            _errors.report("logs", "emit_failed", exc)
            raise structlog.DropEvent from None
        finally:
            _IN_PIPELINE.reset(token)

    def structlog_config(self) -> dict[str, Any]:
        """Keyword arguments for ``structlog.configure`` routing records here."""
        return {
            "processors": [structlog.contextvars.merge_contextvars, self.structlog_processor],
            "wrapper_class": _bound_logger_class(self.level_number),
            "logger_factory": _WriterFactory(self),
            "cache_logger_on_first_use": False,
        }


def _interpolate(event: object, args: tuple[Any, ...]) -> object:
    """structlog's ``log.info("a %s", x)``: ``event % args`` (one mapping argument is used
    as the mapping), or a degraded message when the arguments do not fit."""
    try:
        if len(args) == 1 and isinstance(args[0], Mapping) and args[0]:
            return event % args[0]  # type: ignore[operator]
        return event % args  # type: ignore[operator]
    except Exception as exc:
        _errors.report("logs", "bad_format_args", exc)
        return _unformattable(event, args)


def _bound_logger_class(min_level: int) -> type[FilteringBoundLogger]:
    """structlog's filtering bound logger, whose ``%`` interpolation of positional
    arguments cannot raise into the caller.

    structlog interpolates in the logger method, before any processor runs, so a bad
    argument (``log.info("%d", "x")``, an object whose ``__str__`` raises) would escape
    from the call. The enabled level methods are replaced by ones that interpolate
    safely and then do what structlog's do (``_proxy_to_logger``, the documented hook of
    custom bound loggers): no extra call on the common path. Disabled levels keep
    structlog's no-op.
    """
    base = structlog.make_filtering_bound_logger(min_level)
    methods: dict[str, Any] = {}

    def sync_method(name: str) -> Callable[..., Any]:
        def method(self: Any, event: Any, *args: Any, **kw: Any) -> Any:
            if args:
                event = _interpolate(event, args)
            return self._proxy_to_logger(name, event, **kw)

        method.__name__ = name
        return method

    def async_method(base_method: Callable[..., Any]) -> Callable[..., Any]:
        async def method(self: Any, event: Any, *args: Any, **kw: Any) -> Any:
            if args:
                event = _interpolate(event, args)
            return await base_method(self, event, **kw)

        method.__name__ = base_method.__name__
        return method

    # method names -> (the name structlog's processors see, its level number)
    for method_name, (name, number) in {
        "debug": ("debug", 10),
        "info": ("info", 20),
        "msg": ("info", 20),
        "warning": ("warning", 30),
        "warn": ("warning", 30),
        "error": ("error", 40),
        "critical": ("critical", 50),
        "fatal": ("critical", 50),
    }.items():
        if number >= min_level:
            methods[method_name] = sync_method(name)
            methods["a" + method_name] = async_method(getattr(base, "a" + method_name))
    base_log, base_alog = base.log, base.alog

    def log(self: Any, level: int, event: Any, *args: Any, **kw: Any) -> Any:
        if args:
            event = _interpolate(event, args)
        return base_log(self, level, event, **kw)

    async def alog(self: Any, level: int, event: Any, *args: Any, **kw: Any) -> Any:
        if args:
            event = _interpolate(event, args)
        return await base_alog(self, level, event, **kw)

    methods["log"], methods["alog"] = log, alog
    return cast(type[FilteringBoundLogger], type(base.__name__, (base,), methods))


class _Writer:
    """The structlog "wrapped logger": writes already-rendered lines."""

    __slots__ = ("name", "_pipeline")

    def __init__(self, pipeline: LogPipeline, name: str | None) -> None:
        self._pipeline = pipeline
        self.name = name

    def msg(self, line: bytes) -> None:
        self._pipeline.write(line)

    debug = info = warning = warn = error = critical = fatal = exception = log = msg


class _WriterFactory:
    __slots__ = ("_pipeline",)

    def __init__(self, pipeline: LogPipeline) -> None:
        self._pipeline = pipeline

    def __call__(self, *args: Any) -> _Writer:
        name = args[0] if args and isinstance(args[0], str) else None
        return _Writer(self._pipeline, name)


# Attributes every LogRecord has; anything else came from ``extra=`` and is a field.
_STD_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
_STD_LEVELS = {number: level for level, number in LEVEL_NUMBERS.items()}


def _stdlib_level(levelno: int) -> str:
    level = _STD_LEVELS.get(levelno)
    if level is not None:
        return level
    if levelno < 20:
        return "debug"
    if levelno < 30:
        return "info"
    if levelno < 40:
        return "warn"
    return "error" if levelno < 50 else "fatal"


class StdlibHandler(logging.Handler):
    """A ``logging`` handler that sends records through the devkit pipeline."""

    def __init__(self, pipeline: LogPipeline) -> None:
        super().__init__(pipeline.level_number)
        self.pipeline = pipeline

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception as exc:  # bad %-args must not lose the record
            _errors.report("logs", "bad_format_args", exc)
            message = _unformattable(record.msg, record.args)
        event: dict[str, Any] = {"event": message, "logger": record.name}
        for key, value in record.__dict__.items():
            if key not in _STD_RECORD_ATTRS and key not in _DROPPED_EXTRAS and key[:1] != "_":
                event[key] = value
        structlog.contextvars.merge_contextvars(None, "", event)
        if record.exc_info and record.exc_info[0] is not None:
            event["exc_info"] = record.exc_info
        self.pipeline.emit(_stdlib_level(record.levelno), event, record.created)


# Loggers that servers configure with their own handlers; devkit routes them to root.
_SERVER_LOGGERS = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "gunicorn",
    "gunicorn.error",
    "gunicorn.access",
)
# Servers' own access logs duplicate devkit's ``request completed`` record (and would log
# probes and scrapes): silenced while devkit is installed. They also stop propagating, so
# ``hasHandlers()`` is False: uvicorn reads it to skip building the access line (client
# address, quoted path) on every response.
_ACCESS_LOGGERS = ("uvicorn.access", "gunicorn.access")
# Extras servers add for their own formatters; noise in JSON.
_DROPPED_EXTRAS = frozenset({"color_message"})


class Installation:
    """What :func:`install` changed in global state, so :meth:`undo` can restore it."""

    def __init__(self, pipeline: LogPipeline) -> None:
        self.pipeline = pipeline
        self.handler = StdlibHandler(pipeline)
        root = logging.getLogger()
        self._root_state = (list(root.handlers), root.level)
        self._server_state = {
            name: (list(lg.handlers), lg.propagate, lg.disabled)
            for name in _SERVER_LOGGERS
            for lg in [logging.getLogger(name)]
        }
        self._showwarning = warnings.showwarning

    def apply(self) -> None:
        structlog.configure(**self.pipeline.structlog_config())
        root = logging.getLogger()
        root.handlers = [self.handler]
        root.setLevel(self.pipeline.level_number)
        for name in _SERVER_LOGGERS:
            lg = logging.getLogger(name)
            silenced = name in _ACCESS_LOGGERS
            lg.handlers = []
            lg.propagate = not silenced
            lg.disabled = silenced
        logging.captureWarnings(True)

    def undo(self) -> None:
        logging.captureWarnings(False)
        warnings.showwarning = self._showwarning
        root = logging.getLogger()
        handlers, level = self._root_state
        root.handlers = handlers
        root.setLevel(level)
        for name, (server_handlers, propagate, disabled) in self._server_state.items():
            lg = logging.getLogger(name)
            lg.handlers = server_handlers
            lg.propagate = propagate
            lg.disabled = disabled
        structlog.reset_defaults()
        self.handler.close()


def install(pipeline: LogPipeline) -> Installation:
    """Route structlog and the stdlib root logger through ``pipeline``."""
    installation = Installation(pipeline)
    installation.apply()
    return installation


def get_logger(name: str | None = None, **initial_values: Any) -> FilteringBoundLogger:
    """A structlog logger writing through devkit's pipeline (configured by ``init()``).

    Safe to call at import time, before ``init()``: the logger binds lazily on use.
    """
    return cast(FilteringBoundLogger, structlog.get_logger(name, **initial_values))


# -- helpers ------------------------------------------------------------------------------

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def _format_exception(exc_info: object) -> dict[str, str] | None:
    info: tuple[Any, Any, Any]
    if isinstance(exc_info, BaseException):
        info = (type(exc_info), exc_info, exc_info.__traceback__)
    elif isinstance(exc_info, tuple) and len(exc_info) == 3:
        info = exc_info
    else:
        info = sys.exc_info()
    exc_type, exc, tb = info
    if not isinstance(exc, BaseException):
        return None
    exc_type = type(exc)
    type_name = _errors.type_name(exc)
    try:
        text = str(exc)
        if type(text) is not str:
            raise TypeError("__str__ returned a non-string")
    except Exception:
        text = f"<unprintable {type_name}>"
    try:
        stack = "".join(traceback.format_exception(exc_type, exc, tb))
    except Exception:  # a traceback that cannot be formatted: the rest still is
        stack = f"<unformattable traceback of {type_name}>"
    # Cut to DEVKIT_LOG_MAX_FIELD_BYTES after redaction (LogPipeline.bound), not here.
    return {"type": type_name, "message": text, "stack": stack}


def _placeholder(value: object) -> str:
    """What stands for a value that cannot be shown: its type, never its content."""
    return f"<unrepresentable {type(value).__name__}>"


def _safe_str(value: object) -> str:
    try:
        text = value if type(value) is str else str(value)
        if type(text) is str:
            return text
    except Exception:
        pass
    return _placeholder(value)


def _safe_repr(value: object) -> str:
    try:
        text = repr(value)
        if type(text) is str:
            return text
    except Exception:
        pass
    if type(value) is tuple:  # the arguments of a call: each one that can be shown is
        items = [_safe_repr(v) for v in value]
        return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
    return _placeholder(value)


def _unformattable(msg: object, args: object) -> str:
    """The message of a record whose ``%`` arguments do not fit its format (or whose
    message cannot be shown at all)."""
    if not args:
        return _safe_str(msg)
    return f"{_safe_str(msg)} (unformattable arguments {_safe_repr(args)})"


def _utf8(text: str) -> bytes:
    # surrogatepass: a lone surrogate (from os.fsdecode, say) is measured, never raises.
    return text.encode("utf-8", "surrogatepass")


def _sanitize(value: object, depth: int) -> object:
    """A JSON-safe copy: integers beyond 64 bits and keys that are not strings become
    strings, lone surrogates are escaped, containers are walked; what cannot be read
    becomes a placeholder."""
    try:
        if type(value) is str:
            try:
                value.encode("utf-8")
                return value
            except UnicodeEncodeError:
                return value.encode("utf-8", "backslashreplace").decode("utf-8")
        if value is None or isinstance(value, bool | float):
            return value
        if isinstance(value, int):
            return value if -(2**63) <= value < 2**64 else str(value)
        if depth >= _MAX_DEPTH:
            return "<too deep>"
        if isinstance(value, dict):
            return {
                _sanitize(_safe_str(k), depth + 1): _sanitize(v, depth + 1)
                for k, v in list(value.items())
            }
        if isinstance(value, list | tuple):
            return [_sanitize(v, depth + 1) for v in list(value)]
        if isinstance(value, bytes | bytearray):
            return repr(value)
        return _sanitize(_safe_str(value), depth + 1)
    except Exception:
        return _placeholder(value)


def _cut(text: str, size: int, limit: int, middle: bool) -> str:
    """``text`` (``size`` bytes of UTF-8) cut to ``limit`` bytes, marker included: its
    start kept, or (``middle``) its first third and its end."""
    marker = (_CUT_MIDDLE if middle else _CUT_TAIL) % size
    room = max(limit - len(_utf8(marker)), 0)
    raw = _utf8(text)
    # A character cut in two is dropped whole ("ignore" on its remaining bytes).
    if middle:
        head = room // 3
        tail = raw[len(raw) - (room - head) :]
        return raw[:head].decode("utf-8", "ignore") + marker + tail.decode("utf-8", "ignore")
    return raw[:room].decode("utf-8", "ignore") + marker


def _render(value: Any) -> bytes:
    try:
        return orjson.dumps(value, default=_json_default, option=orjson.OPT_NON_STR_KEYS)
    except Exception:  # the console format shows what JSON cannot (a tuple as a key)
        return orjson.dumps(_sanitize(value, 0), default=_json_default)


def _bound(value: Any, limit: int, depth: int, middle: bool) -> Any:
    """``value`` at most ``limit`` bytes long, of the same type where it can be.

    A string is measured in UTF-8 and cut; a list or mapping is measured as its JSON and
    keeps its first items that fit (a long string among them cut to the room left), with
    a last item saying how long it was; anything else becomes its JSON text, cut.
    """
    cls = type(value)
    if cls is str:
        if len(value) * 4 <= limit:  # at most 4 bytes a character: surely short enough
            return value
        size = len(_utf8(value))
        return value if size <= limit else _cut(value, size, limit, middle)
    if value is None or cls is int or cls is float or cls is bool:
        return value
    if depth >= _MAX_DEPTH:
        return "<too deep>"
    rendered = _render(value)
    if len(rendered) <= limit:
        return value
    if isinstance(value, dict | list | tuple):
        kept = _bound_items(value, len(rendered), limit, depth)
        if kept is not None:
            return kept
    text = rendered.decode("utf-8")
    return _cut(text, len(rendered), limit, False)


#: Below this many bytes of room, a container takes no further item.
_MIN_ROOM = 32


def _bound_items(
    value: dict[Any, Any] | list[Any] | tuple[Any, ...], size: int, limit: int, depth: int
) -> dict[Any, Any] | list[Any] | None:
    """The first items of ``value`` (``size`` bytes of JSON) that fit in ``limit`` bytes,
    and a marker item when some were left out; None when even that does not fit."""
    marker = _CUT_TAIL % size
    room = limit - len(_utf8(marker)) - 8  # brackets, quotes, separators of the marker
    used = 2
    if isinstance(value, dict):
        out: Any = {}
        for key, item in value.items():
            key_size = len(_render(key if type(key) is str else _safe_str(key))) + 2
            if room - used - key_size < _MIN_ROOM:
                break
            # Two bytes fewer: a string's measure does not count its quotes.
            item = _bound(item, room - used - key_size - 2, depth + 1, False)
            used += key_size + len(_render(item))
            if used > room:
                break
            out[key] = item
        else:
            return out if len(_render(out)) <= limit else None
        out["…"] = marker[1:]
    else:
        out = []
        for item in value:
            if room - used - 1 < _MIN_ROOM:
                break
            item = _bound(item, room - used - 3, depth + 1, False)
            used += len(_render(item)) + 1
            if used > room:
                break
            out.append(item)
        else:
            return out if len(_render(out)) <= limit else None
        out.append(marker)
    return out if len(_render(out)) <= limit else None


def _cut_path(path: str, limit: int) -> str:
    """An access record's path cut to ``limit`` characters, marker included."""
    marker = _CUT_TAIL % len(_utf8(path))
    return path[: max(limit - len(marker), 0)] + marker


def _json_default(value: object) -> object:
    # Redaction already turned unknown objects into strings; this is the last resort.
    try:
        return str(value)
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"


_COLORS = {
    "debug": "\x1b[2m",
    "info": "\x1b[32m",
    "warn": "\x1b[33m",
    "error": "\x1b[31m",
    "fatal": "\x1b[1;31m",
}


def _render_console(record: MutableMapping[str, Any], colors: bool) -> str:
    """A compact human format for a developer's terminal."""
    level = str(record.get("level", "info"))
    head = f"{str(record.get('timestamp', ''))[11:23]} {level.upper():5} "
    if colors:
        head = f"\x1b[2m{head[:13]}\x1b[0m{_COLORS.get(level, '')}{head[13:]}\x1b[0m"
    parts = [f"{head}[{record.get('logger')}] {record.get('message')}"]
    for key, value in record.items():
        if key in ("timestamp", "level", "service", "logger", "message", "error"):
            continue
        parts.append(f"{key}={value}")
    line = " ".join(parts)
    error = record.get("error")
    if isinstance(error, dict):
        line += "\n" + str(error.get("stack", "")).rstrip("\n")
    return line + "\n"
