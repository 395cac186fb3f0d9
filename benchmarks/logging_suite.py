"""Logging throughput: records per second through each JSON logging setup.

Two records are logged: a typical one without personal data and one whose message and
fields contain an email address and a card number, which redaction must rewrite. Every
setup writes one line per record (flushed, as the stdlib handler does) to the same sink,
``/dev/null`` opened in binary mode, so what differs is the work done per record.
"""

from __future__ import annotations

import importlib
import io
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

from benchmarks.variants import Context, Unavailable, configure_structlog

__all__ = ["CASES", "LOGGING_VARIANTS", "Emitters"]

#: Case name -> (message, fields).
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "plain": ("order placed", {"order_id": "ORD-1", "amount": 12.5, "user_id": 42}),
    "pii": ("login for ada@example.com", {"card": "4111 1111 1111 1111"}),
}
_SECRETS = (b"ada@example.com", b"4111 1111 1111 1111")


@dataclass
class Emitters:
    """One zero-argument callable per case, and an optional check of devkit's output.

    ``check`` gets the line each case wrote (captured through devkit's tap) once before
    timing, so a benchmark of "redaction on" cannot silently measure redaction off.
    """

    emit: Mapping[str, Callable[[], object]]
    check: Callable[[dict[str, bytes]], None] | None = None


def _json_formatter() -> type[logging.Formatter]:
    # python-json-logger 3+ has ``pythonjsonlogger.json``; older releases only ``jsonlogger``.
    for module in ("pythonjsonlogger.json", "pythonjsonlogger.jsonlogger"):
        try:
            return cast(type[logging.Formatter], importlib.import_module(module).JsonFormatter)
        except (ImportError, AttributeError):
            continue
    raise Unavailable("python-json-logger is not installed")


def stdlib_json(ctx: Context) -> Emitters:
    """stdlib ``logging`` with python-json-logger's formatter; no redaction."""
    formatter = _json_formatter()
    stream = io.TextIOWrapper(ctx.sink, encoding="utf-8", write_through=True)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("bench")
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    emit = {
        case: partial(logger.info, message, extra=fields)
        for case, (message, fields) in CASES.items()
    }
    return Emitters(emit)


def structlog_json(ctx: Context) -> Emitters:
    """Plain structlog with the orjson JSON renderer; no redaction."""
    configure_structlog(ctx.sink)
    import structlog

    log = structlog.get_logger("bench")
    emit = {case: partial(log.info, message, **fields) for case, (message, fields) in CASES.items()}
    return Emitters(emit)


def devkit_redacted(ctx: Context) -> Emitters:
    """devkit as users get it: ``init()`` (redaction on), ``get_logger``, logs to stdout."""
    import devkit

    devkit.init(service_name="bench")
    log = devkit.get_logger("bench")
    emit = {case: partial(log.info, message, **fields) for case, (message, fields) in CASES.items()}
    return Emitters(emit, check=_expect_redacted(True))


def devkit_unredacted(ctx: Context) -> Emitters:
    """devkit's pipeline without a redactor, through structlog like ``init()`` wires it.

    ``init()`` has no switch to turn redaction off, so the pipeline is built directly
    with ``redactor=None``; the only difference from ``devkit`` is the redaction step.
    """
    import structlog

    import devkit
    from devkit.logs import LogPipeline

    pipeline = LogPipeline(devkit.Settings(service_name="bench"), None, ctx.sink)
    structlog.configure(**pipeline.structlog_config())
    log = devkit.get_logger("bench")
    emit = {case: partial(log.info, message, **fields) for case, (message, fields) in CASES.items()}
    return Emitters(emit, check=_expect_redacted(False))


def _expect_redacted(redacted: bool) -> Callable[[dict[str, bytes]], None]:
    def check(lines: dict[str, bytes]) -> None:
        if not lines.get("plain", b"").startswith(b"{"):
            raise RuntimeError(f"expected one JSON line, got {lines.get('plain')!r}")
        leaked = [s for s in _SECRETS if s in lines["pii"]]
        if redacted and leaked:
            raise RuntimeError(f"redaction did not happen: {lines['pii']!r}")
        if not redacted and len(leaked) != len(_SECRETS):
            raise RuntimeError(f"unexpected redaction: {lines['pii']!r}")

    return check


#: Variants in report order; the first is the baseline for ratios.
LOGGING_VARIANTS: dict[str, Callable[[Context], Emitters]] = {
    "stdlib+python-json-logger": stdlib_json,
    "structlog+orjson": structlog_json,
    "devkit": devkit_redacted,
    "devkit-no-redaction": devkit_unredacted,
}
BASELINE = "stdlib+python-json-logger"
