"""Structured logs: one JSON object per line, the same for structlog and stdlib ``logging``.

The pipeline is a short chain of plain processors (structlog's contextvars merge, then
devkit's :meth:`LogPipeline.finalize`) and a renderer. ``finalize`` does in one pass what
a hand-built chain does in five: level name, RFC 3339 timestamp, service and logger,
trace and correlation ids, the exception as ``error``, and redaction *before* rendering,
so nothing unredacted ever reaches the stream.

stdlib records (uvicorn, gunicorn, libraries) enter through :class:`StdlibHandler`, which
builds the same event dict and calls the same pipeline, so the process speaks one format.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, MutableMapping
from contextvars import ContextVar
from types import TracebackType
from typing import IO, Any, Protocol, cast

import orjson
import structlog
from opentelemetry import trace as otel_trace
from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger

from devkit import _context, _errors
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
_MAX_STACK_CHARS = 32_768
_JSON_OPTIONS = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS

#: The logger name of the middleware's ``request completed`` records.
ACCESS_LOGGER = "devkit.access"
_MAX_CACHED_ROUTES = 4096
#: The longest path an access record carries; longer ones are cut.
MAX_LOGGED_PATH = 2048
# The access record: timestamp second, milliseconds, head (level ... method), route JSON,
# path JSON, status, duration in ms, [trace id, span id,] correlation id.
_ACCESS_TRACED = (
    b'{"timestamp":"%s.%03dZ%s%s,"path":%s,"status_code":%d,"duration_ms":%.3f,'
    b'"trace_id":"%032x","span_id":"%016x","correlation_id":"%s"}\n'
)
_ACCESS_UNTRACED = (
    b'{"timestamp":"%s.%03dZ%s%s,"path":%s,"status_code":%d,"duration_ms":%.3f,'
    b'"correlation_id":"%s"}\n'
)


# Renders of the captured records go to every tap as well (devkit.testing).
_TAPS: list[Callable[[bytes], None]] = []
# Set while a record is being processed: a record logged *by* the pipeline (a library
# warning raised while rendering) is dropped instead of recursing.
_IN_PIPELINE: ContextVar[bool] = ContextVar("devkit_in_log_pipeline", default=False)


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
        self.redactor = redactor
        self._clock = _Clock()
        self._lock = threading.Lock()
        out: Any = stream if stream is not None else sys.stdout
        self._binary: IO[bytes] | None = getattr(out, "buffer", None)
        if self._binary is None and isinstance(out, io.BufferedIOBase | io.RawIOBase):
            self._binary = cast(IO[bytes], out)
        self._text: IO[str] | None = None if self._binary is not None else cast(IO[str], out)
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
                self.redactor.redact_fields(record, _NOT_REDACTED)
            elif "error" in record:
                record["error"] = self.redactor.redact(record["error"])
        return record

    def render(self, record: dict[str, Any]) -> bytes:
        if self._console:
            return _render_console(record, self._colors).encode("utf-8", "replace")
        return self._render_json(record)

    def _render_json(self, record: dict[str, Any]) -> bytes:
        try:
            return orjson.dumps(record, default=_json_default, option=_JSON_OPTIONS)
        except (TypeError, orjson.JSONEncodeError) as exc:
            # e.g. an int beyond 64 bits: degrade that record, keep the line.
            _errors.report("logs", "unserialisable_record", exc)
            return orjson.dumps(_sanitize(record), default=str, option=_JSON_OPTIONS)

    def _export(self, record: dict[str, Any], line: bytes) -> None:
        """Hand ``record`` to the OTLP log export as its JSON line (the console format's
        lines are not JSON)."""
        assert self.export is not None
        self.export(self._render_json(record) if self._console else line)

    def write(self, line: bytes) -> None:
        """One whole line per call: a buffered binary stream keeps concurrent lines whole
        by itself (its own lock); a text stream is written under the pipeline's lock."""
        binary = self._binary
        try:
            if not self._stdout:
                pass
            elif binary is not None:
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
        if request.error:
            level = "error"
        elif request.status >= 400:
            level = "warn"
        else:
            level = "info"
        if not self._access_levels[level]:
            return
        path = request.path
        if len(path) > MAX_LOGGED_PATH:
            path = path[:MAX_LOGGED_PATH]
        if request.query:
            path = f"{path}?{redact_query(request.query)}"
        if self.redactor is not None:
            path = self.redactor.redact_str(path)
        exc = request.exc if request.error else None
        if self._console or exc is not None:
            self._access_generic(level, request, path, exc)
            return
        method, route, created = request.method_label, request.route, request.created
        trace_id = request.trace_id
        try:
            head = self._access_heads.get((level, method))
            if head is None:
                head = self._access_head(level, method)
            route_json = self._route_json.get(route)
            if route_json is None:
                route_json = orjson.dumps(route)
                if len(self._route_json) < _MAX_CACHED_ROUTES:
                    self._route_json[route] = route_json
            now = time.time() if created is None else created
            sec = int(now)
            cached = self._clock._cache  # the clock's parts(), inlined: once per request
            if cached[0] != sec:
                cached = self._clock._second(sec)
            fields = (
                cached[2],
                int((now - sec) * 1000),
                head,
                route_json,
                orjson.dumps(path),
                request.status,
                request.duration * 1000.0,
            )
            if trace_id:
                line = _ACCESS_TRACED % (*fields, trace_id, request.span_id, request.cid.encode())
            else:
                line = _ACCESS_UNTRACED % (*fields, request.cid.encode())
        except Exception:  # a path orjson refuses (lone surrogates): the generic path copes
            self._access_generic(level, request, path, None)
            return
        self.write(line)
        if self.export is not None:
            self.export(line)

    def _access_generic(
        self, level: str, request: AccessRequest, path: str, exc: BaseException | None
    ) -> None:
        """The access record through :meth:`emit`, with the request's own ids (the record
        may be written after the request's context was left)."""
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
            record = self.finalize(level, event, created, redact, ids)
            line = self.render(record)
            self.write(line)
            if self.export is not None:
                self._export(record, line)
        except Exception as exc:
            _errors.report("logs", "emit_failed", exc)
        finally:
            _IN_PIPELINE.reset(token)

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
            record = self.finalize(level, event)
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
            "wrapper_class": structlog.make_filtering_bound_logger(self.level_number),
            "logger_factory": _WriterFactory(self),
            "cache_logger_on_first_use": False,
        }


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
            message = f"{record.msg!s} (unformattable arguments {record.args!r})"
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
    except Exception:
        text = f"<unprintable {type_name}>"
    stack = "".join(traceback.format_exception(exc_type, exc, tb))
    if len(stack) > _MAX_STACK_CHARS:
        stack = "...(truncated)\n" + stack[-_MAX_STACK_CHARS:]
    return {"type": type_name, "message": text, "stack": stack}


def _sanitize(value: object) -> object:
    """A JSON-safe copy: integers beyond 64 bits become strings, containers are walked."""
    if isinstance(value, dict):
        return {str(k): _sanitize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_sanitize(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return str(value)
    return value


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
