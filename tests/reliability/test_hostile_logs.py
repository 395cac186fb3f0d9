"""Hostile log arguments and the record bound (issue #22, item 7).

Whatever a caller hands a logger (structlog or stdlib), the call returns normally and
exactly one JSON line is written: objects whose ``__str__`` or ``__repr__`` raise,
recursive containers, bytes, lone surrogates, keys that are not strings, containers that
cannot be iterated, bad ``%`` arguments, very large strings and collections. Every field
of a line is at most ``DEVKIT_LOG_MAX_FIELD_BYTES`` (16 KB by default) long: a longer one
is cut after redaction with a marker giving its size.

The suite's strict mode (guarded failures re-raise) is off here: a degraded record is
devkit's documented behaviour for these inputs, counted in
``devkit_internal_errors_total``, not a bug to surface.
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import devkit
from devkit import _errors
from devkit.config import Settings
from devkit.exceptions import ConfigError
from devkit.logs import MAX_LOGGED_PATH, LogPipeline
from devkit.redaction import Redactor
from devkit.testing import CapturedLogs

SECTION = "Hostile input"
LIMIT = 16384
GENERATED_CASES = 2_000
MARKER = re.compile(r"…\[truncated: (\d+) bytes\]$")


@pytest.fixture(autouse=True)
def _not_strict() -> None:
    _errors.set_strict(False)


# -- hostile objects -----------------------------------------------------------------------


class RaisingStr:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    __repr__ = __str__


class RaisingRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __str__(self) -> str:
        return "fine as str"


class NonStrStr:
    def __str__(self) -> str:
        return 42  # type: ignore[return-value]

    __repr__ = __str__


class RaisingKey:
    def __hash__(self) -> int:
        return 1

    def __str__(self) -> str:
        raise RuntimeError("no key")


class Unlistable(list[int]):
    def __iter__(self) -> Iterator[int]:
        raise RuntimeError("no iteration")


class Unmappable(dict[str, int]):
    def items(self) -> Any:
        raise RuntimeError("no items")


class BadException(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


def _recursive_dict() -> dict[str, Any]:
    d: dict[str, Any] = {"name": "loop"}
    d["self"] = d
    return d


def _recursive_list() -> list[Any]:
    items: list[Any] = [1]
    items.append(items)
    return items


def _deep(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = [value]
    return value


#: name -> the fields of one ``log.info("hostile", **fields)`` call.
HOSTILE_FIELDS: dict[str, Callable[[], dict[str, Any]]] = {
    "__str__ raises": lambda: {"v": RaisingStr()},
    "__repr__ raises": lambda: {"v": RaisingRepr()},
    "__str__ returns a non-string": lambda: {"v": NonStrStr()},
    "recursive dict": lambda: {"v": _recursive_dict()},
    "recursive list": lambda: {"v": _recursive_list()},
    "1,000-deep list": lambda: {"v": _deep(1000)},
    "bytes, not UTF-8": lambda: {"v": b"\xff\xfe\x00raw"},
    "bytearray": lambda: {"v": bytearray(b"\x80abc")},
    "lone surrogate": lambda: {"v": "bad \udcff value"},
    "lone surrogate in a nested key": lambda: {"v": {"k\ud800": 1}},
    "int, tuple, None keys": lambda: {"v": {1: "a", (2, 3): "b", None: "c"}},
    "key whose __str__ raises": lambda: {"v": {RaisingKey(): 1}},
    "list whose iteration raises": lambda: {"v": Unlistable([1])},
    "dict whose items() raises": lambda: {"v": Unmappable(a=1)},
    "integer of 300 bits": lambda: {"v": 2**300},
    "nan and infinity": lambda: {"v": [float("nan"), float("inf")]},
    "set and frozenset": lambda: {"v": {1, 2}, "w": frozenset({"x"})},
    "2 MB string": lambda: {"v": "x" * 2_000_000},
    "1,000,000-element list": lambda: {"v": list(range(1_000_000))},
    "100,000-key dict": lambda: {"v": {f"k{i}": i for i in range(100_000)}},
    "exception whose __str__ raises": lambda: {"exc_info": BadException()},
    "2 MB exception message": lambda: {"exc_info": ValueError("m" * 2_000_000)},
}


def _lines(captured: CapturedLogs) -> list[dict[str, Any]]:
    return captured.records


def _assert_bounded(line: dict[str, Any], limit: int = LIMIT) -> None:
    for key, value in line.items():
        if key == "error":
            for part in value.values():
                assert len(str(part).encode()) <= limit, key
        else:
            size = len(value.encode()) if isinstance(value, str) else len(orjson.dumps(value))
            assert size <= limit, (key, size)


@pytest.mark.parametrize("name", list(HOSTILE_FIELDS))
def test_a_hostile_field_never_raises_and_is_written(devkit_logs: CapturedLogs, name: str) -> None:
    devkit.init()
    fields = HOSTILE_FIELDS[name]()
    devkit.get_logger("hostile").info("structlog", **fields)
    stdlib_fields = {k: v for k, v in fields.items() if k != "exc_info"}
    logging.getLogger("hostile").info(
        "stdlib", extra=stdlib_fields, exc_info=fields.get("exc_info")
    )
    records = _lines(devkit_logs)
    assert [r["message"] for r in records] == ["structlog", "stdlib"]
    for record in records:
        _assert_bounded(record)


def test_hostile_objects_in_messages_and_format_arguments(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    log = devkit.get_logger("hostile")
    std = logging.getLogger("hostile")
    calls: list[Callable[[], object]] = [
        lambda: log.info(RaisingStr()),
        lambda: log.info("value %s", RaisingStr()),
        lambda: log.info("two %s %s", "only one"),
        lambda: log.info("%(a)s and %(b)s", {"a": 1}),
        lambda: log.warning("%d", "not a number"),
        lambda: log.log(logging.ERROR, "%s", RaisingStr()),
        lambda: std.info(RaisingStr()),
        lambda: std.info("%r", RaisingRepr()),
        lambda: std.info("%s", RaisingStr()),
        lambda: std.info("%d %d", 1),
        lambda: std.error("failed %s", RaisingStr(), exc_info=BadException()),
    ]
    for call in calls:
        call()
    records = _lines(devkit_logs)
    assert len(records) == len(calls)
    messages = [r["message"] for r in records]
    assert messages[0] == "<unrepresentable RaisingStr>"
    assert messages[1] == "value %s (unformattable arguments (<unrepresentable RaisingStr>,))"
    assert messages[2] == "two %s %s (unformattable arguments ('only one',))"
    assert messages[7] == "%r (unformattable arguments (<unrepresentable RaisingRepr>,))"
    assert records[10]["error"]["message"] == "<unprintable test_hostile_logs.BadException>"
    assert ("logs", "bad_format_args") in _errors.counts()
    rows.record(
        SECTION,
        "Log calls: hostile messages and % arguments",
        "structlog and stdlib calls whose message or arguments raise in __str__/__repr__, "
        "or do not fit the format",
        calls=len(calls),
        records_written=len(records),
        exceptions_in_caller=0,
    )


def test_every_hostile_argument_is_one_bounded_record(devkit_logs: CapturedLogs) -> None:
    """The row of docs/reliability.md: every case above through both APIs."""
    devkit.init()
    log = devkit.get_logger("hostile")
    slowest = 0.0
    raised = 0
    for name, make in HOSTILE_FIELDS.items():
        fields = make()
        start = time.perf_counter()
        try:
            log.info(name, **fields)
            std_fields = {k: v for k, v in fields.items() if k != "exc_info"}
            logging.getLogger("hostile").info(name, extra=std_fields)
        except Exception:  # counted, then failed below
            raised += 1
        slowest = max(slowest, (time.perf_counter() - start) / 2)
    records = _lines(devkit_logs)
    assert raised == 0
    assert len(records) == 2 * len(HOSTILE_FIELDS)
    longest = max(len(orjson.dumps(r)) for r in records)
    for record in records:
        _assert_bounded(record)
    rows.record(
        SECTION,
        "Log arguments: hostile objects",
        ", ".join(HOSTILE_FIELDS) + "; through structlog and stdlib logging",
        calls=2 * len(HOSTILE_FIELDS),
        records_written=len(records),
        exceptions_in_caller=raised,
        longest_line_bytes=longest,
        slowest_record_ms=round(slowest * 1000, 1),
    )


# -- generated arguments ---------------------------------------------------------------------


class Stand:
    """Stands for a hostile object in generated data: Hypothesis prints the examples it
    reports, and a hostile object's own ``repr`` would raise there. :func:`_real` puts
    the objects in place inside the test."""

    def __init__(self, make: Callable[[], object], name: str) -> None:
        self.make = make
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


_STANDS = [
    Stand(RaisingStr, "RaisingStr"),
    Stand(RaisingRepr, "RaisingRepr"),
    Stand(NonStrStr, "NonStrStr"),
    Stand(BadException, "BadException"),
    Stand(object, "object"),
]


def _real(value: Any) -> Any:
    if isinstance(value, Stand):
        return value.make()
    if isinstance(value, dict):
        return {_real(k): _real(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_real(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_real(v) for v in value)
    return value


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(),
    st.binary(),
    st.characters(codec=None).map(lambda c: f"x{c}y"),  # surrogates included
    st.sampled_from(_STANDS),
)
_KEYS = st.one_of(
    st.text(),
    st.integers(),
    st.none(),
    st.tuples(st.integers()),
    st.just(Stand(RaisingKey, "RaisingKey")),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(_KEYS, inner, max_size=4),
        st.frozensets(st.integers(), max_size=3),
    ),
    max_leaves=12,
)
_FIELD_NAMES = st.text(min_size=1, max_size=12).filter(lambda k: k not in ("event", "exc_info"))


def test_generated_arguments_always_give_one_bounded_record(devkit_logs: CapturedLogs) -> None:
    devkit.init(log_max_field_bytes=1024)
    log = devkit.get_logger("gen")
    std = logging.getLogger("gen")
    calls = 0

    @settings(
        max_examples=GENERATED_CASES // 2,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        st.dictionaries(_FIELD_NAMES, _VALUES, max_size=4), _SCALARS, st.lists(_SCALARS, max_size=3)
    )
    def run(fields: dict[str, Any], message: Any, args: list[Any]) -> None:
        nonlocal calls
        fields, message, args = _real(fields), _real(message), _real(args)
        devkit_logs.clear()
        log.info(message, *args, **fields)
        std.warning(message, *args, extra={"f_" + k: v for k, v in fields.items()})
        calls += 2
        records = devkit_logs.records
        assert len(records) == 2
        for record in records:
            _assert_bounded(record, 1024)

    run()
    rows.record(
        SECTION,
        "Log arguments: generated",
        "Hypothesis: nested lists, tuples, dicts (any keys), sets, bytes, floats, surrogates "
        "and raising objects as fields, message and % arguments; limit set to 1 KB",
        calls=calls,
        records_written=calls,
        exceptions_in_caller=0,
    )


# -- the record bound --------------------------------------------------------------------------


def _pipeline(**settings: Any) -> tuple[LogPipeline, io.BytesIO]:
    stream = io.BytesIO()
    return LogPipeline(Settings.from_env({}, **settings), Redactor(), stream), stream


def _emit(pipeline: LogPipeline, stream: io.BytesIO, **fields: Any) -> tuple[bytes, dict[str, Any]]:
    stream.seek(0)
    stream.truncate()
    pipeline.emit("info", {"event": fields.pop("event", "m"), "logger": "t", **fields})
    line = stream.getvalue()
    assert line.count(b"\n") == 1
    return line, orjson.loads(line)


def test_a_2_mb_field_is_cut_with_its_size() -> None:
    pipeline, stream = _pipeline()
    start = time.perf_counter()
    line, record = _emit(pipeline, stream, payload="a" * 2_000_000)
    elapsed = time.perf_counter() - start
    value = record["payload"]
    assert len(value.encode()) == LIMIT
    assert value.startswith("a" * 16000) and value.endswith("…[truncated: 2000000 bytes]")
    assert len(line) < LIMIT + 300
    rows.record(
        SECTION,
        "Log record bound: one 2 MB field",
        "log.info with a 2,000,000-byte string field (DEVKIT_LOG_MAX_FIELD_BYTES default)",
        field_bytes_in=2_000_000,
        field_bytes_out=len(value.encode()),
        line_bytes=len(line),
        marker="…[truncated: 2000000 bytes]",
        record_ms=round(elapsed * 1000, 1),
    )


def test_the_limit_is_configurable_and_counts_utf8_bytes() -> None:
    pipeline, stream = _pipeline(log_max_field_bytes=1024)
    _, record = _emit(pipeline, stream, text="é" * 1000)  # 2,000 bytes
    value = record["text"]
    assert len(value.encode()) <= 1024
    assert MARKER.search(value) and MARKER.search(value).group(1) == "2000"  # type: ignore[union-attr]
    assert set(value[: value.index("…")]) == {"é"}  # never half a character
    _, record = _emit(pipeline, stream, text="é" * 512)  # exactly 1,024 bytes: kept whole
    assert record["text"] == "é" * 512


def test_short_fields_are_left_alone() -> None:
    pipeline, stream = _pipeline()
    fields = {"a": "x" * LIMIT, "b": "y" * LIMIT, "n": 12, "nested": {"k": ["v"] * 10}}
    _, record = _emit(pipeline, stream, **fields)
    assert {k: record[k] for k in fields} == fields  # a line over the limit, no field over


def test_message_nested_values_and_collections_are_bounded() -> None:
    pipeline, stream = _pipeline(log_max_field_bytes=2048)
    _, record = _emit(
        pipeline,
        stream,
        event="m" * 5000,
        nested={"keep": 1, "html": "<p>" * 2000, "after": 2},
        many=list(range(5000)),
        keys={f"k{i}": i for i in range(1000)},
        odd={1, 2, 3},
    )
    assert record["message"].endswith("…[truncated: 5000 bytes]")
    # Lists and mappings stay lists and mappings (a log index keeps its field types): the
    # items that fit, a long string among them cut, and a last item saying how long it was.
    nested = record["nested"]
    assert nested["keep"] == 1 and nested["html"].endswith("…[truncated: 6000 bytes]")
    assert nested["…"].startswith("[truncated: ")  # "after" had no room left
    many = record["many"]
    assert many[:5] == [0, 1, 2, 3, 4] and MARKER.search(many[-1])
    assert all(isinstance(n, int) for n in many[:-1])
    assert record["keys"]["k0"] == 0 and "…" in record["keys"]
    _assert_bounded(record, 2048)
    assert record["odd"] == "{1, 2, 3}"


def test_the_stack_keeps_both_ends_and_the_message_its_start(devkit_logs: CapturedLogs) -> None:
    devkit.init(log_max_field_bytes=4096)

    def ping(n: int) -> None:  # two functions in turn: traceback folds no repetition
        if n == 0:
            raise ValueError("the end")
        pong(n - 1)

    def pong(n: int) -> None:
        ping(n)

    try:
        ping(100)
    except ValueError:
        devkit.get_logger("t").exception("x" * 10_000)
    (record,) = devkit_logs.records
    assert record["message"].startswith("xxx") and MARKER.search(record["message"])
    stack = record["error"]["stack"]
    assert len(stack.encode()) <= 4096
    assert stack.startswith("Traceback (most recent call last):")  # the outermost frames
    assert re.search(r"\n…\[truncated: \d+ bytes\]…\n", stack)
    assert stack.rstrip().endswith("ValueError: the end")  # the innermost ones and the error


def test_a_secret_is_redacted_before_the_cut() -> None:
    """Cutting first could leave half a secret the patterns no longer recognise."""
    pipeline, stream = _pipeline(log_max_field_bytes=1024)
    secret = "ada.lovelace@example.com"
    text = "p" * (1024 - len("…[truncated: 2048 bytes]") - 10) + secret + "q" * 1000
    line, _ = _emit(pipeline, stream, text=text)
    assert b"ada.lovelace" not in line and b"ada." not in line


def test_console_format_and_otlp_export_get_the_bounded_record() -> None:
    stream = io.StringIO()
    pipeline = LogPipeline(Settings.from_env({}, log_format="console"), Redactor(), stream)
    exported: list[bytes] = []
    pipeline.export = exported.append
    pipeline.emit("info", {"event": "big", "logger": "t", "blob": "z" * 100_000})
    assert "…[truncated: 100000 bytes]" in stream.getvalue()
    assert len(stream.getvalue()) < LIMIT + 500
    (line,) = exported
    assert orjson.loads(line)["blob"].endswith("…[truncated: 100000 bytes]")


def test_access_record_path_stays_bounded(devkit_logs: CapturedLogs) -> None:
    from hostile import AsgiDriver, raw_echo_app

    devkit.init()
    driver = AsgiDriver(devkit.asgi(raw_echo_app))
    try:
        driver.request([], path="/" + "p" * 10_000, query=b"q=" + b"v" * 5000 + b"&name")
    finally:
        driver.close()
    (record,) = devkit_logs.find(message="request completed")
    path = record["path"]
    assert len(path) <= MAX_LOGGED_PATH and path.endswith("…[truncated: 10019 bytes]")


def test_the_limit_is_validated() -> None:
    assert Settings.from_env({}).log_max_field_bytes == LIMIT
    assert Settings.from_env({"DEVKIT_LOG_MAX_FIELD_BYTES": "65536"}).log_max_field_bytes == 65536
    for bad in ("0", "1023", "lots", str(1 << 30)):
        with pytest.raises(ConfigError, match="DEVKIT_LOG_MAX_FIELD_BYTES"):
            Settings.from_env({"DEVKIT_LOG_MAX_FIELD_BYTES": bad})
