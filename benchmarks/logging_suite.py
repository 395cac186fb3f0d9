"""Logging throughput: records per second through each JSON logging setup.

Three cases are logged: a typical record without personal data, one whose message and
fields contain an email address and a card number, which redaction must rewrite, and the
same with a different address and card number in every record (``pii-varied``: 4,096 of
each, in turn), which no cache of recent results can answer. Every setup writes one line
per record (flushed, as the stdlib handler does) to the same sink, ``/dev/null`` opened in
binary mode, so what differs is the work done per record.
"""

from __future__ import annotations

import importlib
import io
import itertools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

from benchmarks.variants import Context, Unavailable, configure_structlog

__all__ = ["CASES", "LOGGING_VARIANTS", "Emitters"]

Record = tuple[str, dict[str, Any]]  # (message, fields)
_VARIED = 4096


def _card(i: int) -> str:
    """A 16-digit Visa-shaped number with a valid Luhn check digit, in groups of four."""
    body = f"4{i:014d}"
    total = 0
    for pos, ch in enumerate(reversed(body)):  # the check digit will sit to the right
        d = int(ch) * (2 if pos % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    digits = body + str(-total % 10)
    return " ".join(digits[k : k + 4] for k in range(0, 16, 4))


def _varied_pii() -> list[Record]:
    return [(f"login for user.{i}@example.com", {"card": _card(i)}) for i in range(_VARIED)]


#: Case name -> the records it logs, in turn.
CASES: dict[str, list[Record]] = {
    "plain": [("order placed", {"order_id": "ORD-1", "amount": 12.5, "user_id": 42})],
    "pii": [("login for ada@example.com", {"card": "4111 1111 1111 1111"})],
    "pii-varied": _varied_pii(),
}
#: Case name -> the secrets in its records, which devkit's line must not contain.
_SECRETS: dict[str, list[bytes]] = {
    case: [
        s.encode()
        for message, fields in records
        for s in (*(w for w in message.split() if "@" in w), fields.get("card", ""))
        if s
    ]
    for case, records in CASES.items()
}
#: Secrets in one record of each case.
_PER_RECORD = {case: len(_SECRETS[case]) // len(CASES[case]) for case in CASES}


def _emitters(call: Callable[[str, dict[str, Any]], Callable[[], object]]) -> dict[str, Any]:
    """One zero-argument callable per case; ``call`` binds one record to the logger."""
    emit: dict[str, Callable[[], object]] = {}
    for case, records in CASES.items():
        calls = [call(message, fields) for message, fields in records]
        if len(calls) == 1:
            emit[case] = calls[0]
        else:
            # the same cycling cost in every variant: one more call and a next()
            emit[case] = partial(_next_call, itertools.cycle(calls).__next__)
    return emit


def _next_call(following: Callable[[], Callable[[], object]]) -> object:
    return following()()


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
    return Emitters(_emitters(lambda message, fields: partial(logger.info, message, extra=fields)))


def structlog_json(ctx: Context) -> Emitters:
    """Plain structlog with the orjson JSON renderer; no redaction."""
    configure_structlog(ctx.sink)
    import structlog

    log = structlog.get_logger("bench")
    return Emitters(_emitters(lambda message, fields: partial(log.info, message, **fields)))


def devkit_redacted(ctx: Context) -> Emitters:
    """devkit as users get it: ``init()`` (redaction on), ``get_logger``, logs to stdout."""
    import devkit

    devkit.init(service_name="bench")
    log = devkit.get_logger("bench")
    emit = _emitters(lambda message, fields: partial(log.info, message, **fields))
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
    emit = _emitters(lambda message, fields: partial(log.info, message, **fields))
    return Emitters(emit, check=_expect_redacted(False))


def _expect_redacted(redacted: bool) -> Callable[[dict[str, bytes]], None]:
    def check(lines: dict[str, bytes]) -> None:
        if not lines.get("plain", b"").startswith(b"{"):
            raise RuntimeError(f"expected one JSON line, got {lines.get('plain')!r}")
        for case, secrets in _SECRETS.items():
            line = lines.get(case, b"")
            leaked = [s for s in secrets if s in line]
            if redacted and leaked:
                raise RuntimeError(f"redaction did not happen in {case!r}: {line!r}")
            if not redacted and len(leaked) != _PER_RECORD[case]:
                raise RuntimeError(f"unexpected redaction in {case!r}: {line!r}")

    return check


#: Variants in report order; the first is the baseline for ratios.
LOGGING_VARIANTS: dict[str, Callable[[Context], Emitters]] = {
    "stdlib+python-json-logger": stdlib_json,
    "structlog+orjson": structlog_json,
    "devkit": devkit_redacted,
    "devkit-no-redaction": devkit_unredacted,
}
BASELINE = "stdlib+python-json-logger"
