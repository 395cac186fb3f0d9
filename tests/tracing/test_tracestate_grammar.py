"""tracestate from its grammar: generated keys, values and lists, checked against a model.

The strategies are the ABNF of the current Trace Context draft ("tracestate Header Field
Values"; Level 2 has the same), written out rule by rule:

    list        = list-member 0*31( OWS "," OWS list-member )
    list-member = (key "=" value) / OWS
    key         = ( lcalpha / DIGIT ) 0*255 ( keychar )
    keychar     = lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@"
    value       = 0*255(chr) nblk-chr
    nblk-chr    = %x21-2B / %x2D-3C / %x3E-7E
    chr         = %x20 / nblk-chr

``_model`` is an independent reading of what devkit does with a received list (see the
propagation module docstring): an invalid member or more than 32 distinct keys discards
the header, a repeated key keeps its first entry, and a list longer than 512 characters
loses whole entries, those over 128 characters first, each time the right-most.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace

from devkit.tracing.propagation import (
    W3CPropagator,
    extract,
    format_tracestate,
    parse_tracestate,
)

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

LCALPHA = "abcdefghijklmnopqrstuvwxyz"
DIGIT = "0123456789"
KEYCHAR = LCALPHA + DIGIT + "_-*/@"
NBLK_CHR = "".join(chr(c) for c in [*range(0x21, 0x2C), *range(0x2D, 0x3D), *range(0x3E, 0x7F)])
CHR = " " + NBLK_CHR

_KEY = re.compile(r"[a-z0-9][a-z0-9_\-*/@]{0,255}")
_VALUE = re.compile(r"[ -+\--<>-~]{0,255}[!-+\--<>-~]")


def _sized_text(alphabet: str, most: int) -> st.SearchStrategy[str]:
    """Text of up to ``most`` characters, long ones as likely as short ones."""
    return st.one_of(
        st.text(alphabet, max_size=8),
        st.integers(0, most).flatmap(lambda n: st.text(alphabet, min_size=n, max_size=n)),
    )


a_key = st.builds(str.__add__, st.sampled_from(LCALPHA + DIGIT), _sized_text(KEYCHAR, 255))
a_value = st.builds(str.__add__, _sized_text(CHR, 255), st.sampled_from(NBLK_CHR))
a_short_value = st.builds(str.__add__, st.text(CHR, max_size=6), st.sampled_from(NBLK_CHR))
ows = st.text(" \t", max_size=2)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def _no_logs() -> Iterator[None]:
    """Fail if anything (OpenTelemetry's TraceState included) logs in the block."""
    handler = _Records()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert [r.getMessage() for r in handler.records] == []


def _model(fields: Sequence[str]) -> list[tuple[str, str]]:
    members: list[tuple[str, str]] = []
    for field in fields:
        for raw in field.split(","):
            member = raw.strip(" \t")
            if not member:
                continue
            key, equals, value = member.partition("=")
            if not (equals and _KEY.fullmatch(key) and _VALUE.fullmatch(value)):
                return []
            if key not in dict(members):
                members.append((key, value))
    if len(members) > 32:
        return []

    def length(kept: list[tuple[str, str]]) -> int:
        return len(",".join(f"{k}={v}" for k, v in kept))

    while length(members) > 512:
        large = [i for i, (k, v) in enumerate(members) if len(k) + 1 + len(v) > 128]
        del members[large[-1] if large else -1]
    return members


def _header(members: list[tuple[str, str]]) -> str:
    return ",".join(f"{key}={value}" for key, value in members)


@st.composite
def fields(draw: st.DrawFn, pairs: st.SearchStrategy[list[tuple[str, str]]]) -> list[str]:
    """``pairs`` written as a list with OWS and empty members, split into header fields."""
    pieces: list[str] = []
    for key, value in draw(pairs):
        pieces += [draw(ows)] * draw(st.integers(0, 1))  # an empty member before it
        pieces.append(f"{draw(ows)}{key}={value}{draw(ows)}")
    if draw(st.booleans()):
        pieces.append(draw(ows))
    cuts = sorted(draw(st.sets(st.integers(1, max(len(pieces) - 1, 1)), max_size=3)))
    bounds = [0, *[c for c in cuts if c < len(pieces)], len(pieces)]
    return [",".join(pieces[a:b]) for a, b in pairwise(bounds)]


def _round_trip(values: list[str]) -> tuple[dict[str, str], str | None]:
    """(the carrier inject writes, its tracestate) after extracting ``values``."""
    received = {"traceparent": [VALID], "tracestate": values}
    context = extract(lambda name: received.get(name, ()))
    carrier: dict[str, str] = {}
    W3CPropagator().inject(carrier, context)
    return carrier, carrier.get("tracestate")


# -- keys and values ---------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(a_key, a_value)
def test_every_key_and_value_of_the_grammar_is_kept(key: str, value: str) -> None:
    member = f"{key}={value}"
    with _no_logs():
        state = parse_tracestate([member])
        header = format_tracestate(state)
    if len(member) <= 512:
        assert dict(state) == {key: value}
        assert header == member
    else:  # 256 + 1 + 256: the one member longer than devkit's 512-character maximum
        assert len(state) == 0
        assert header == ""


@settings(max_examples=200, deadline=None)
@given(a_key, a_short_value, ows, ows)
def test_ows_around_a_member_is_not_part_of_it(key: str, value: str, a: str, b: str) -> None:
    # "Spaces and horizontal tabs surrounding list-members are ignored"; a value's leading
    # spaces are its own ("All leading spaces MUST be preserved as part of the value").
    assert dict(parse_tracestate([f"{a}{key}={value}{b}"])) == {key: value}
    assert dict(parse_tracestate([f"{a}{key}= {value}{b}"])) == {key: f" {value}"}


def _near_miss_keys() -> st.SearchStrategy[str]:
    """Strings one step outside the key rule."""
    return st.one_of(
        # first character not lcalpha / DIGIT
        st.builds(str.__add__, st.sampled_from("_-*/@A.Z"), st.text(KEYCHAR, max_size=8)),
        # a character that is not a keychar
        st.builds(
            lambda k, c, i: k[:i] + c + k[i:],
            a_key.filter(lambda k: len(k) < 256),
            st.sampled_from("ABZ.:;!#~%é\t"),
            st.integers(1, 256),
        ),
        # 257 characters or more
        st.integers(257, 300).map(lambda n: "k" * n),
        st.just(""),
    )


def _near_miss_values() -> st.SearchStrategy[str]:
    return st.one_of(
        st.just(""),
        st.integers(257, 300).map(lambda n: "v" * n),
        st.builds(lambda v, c: v + c + v, a_short_value, st.sampled_from("=\x7f\x00é\u2028")),
        st.builds(lambda v, c: f"{v}{c}x", a_short_value, st.sampled_from("\t\r\n")),
    )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(a_key, a_short_value), min_size=1, max_size=5),
    st.one_of(
        st.builds(lambda k, v: f"{k}={v}", _near_miss_keys(), a_short_value),
        st.builds(lambda k, v: f"{k}={v}", a_key, _near_miss_values()),
        st.builds(str.__add__, a_key, a_short_value),  # no "="
    ),
    st.integers(0, 5),
)
def test_one_invalid_member_discards_the_header(
    pairs: list[tuple[str, str]], bad: str, at: int
) -> None:
    # An unparseable tracestate MAY be discarded whole (Processing Model, "A traceparent is
    # Received", step 3); the W3C suite expects it (test_tracestate_key_illegal_characters,
    # test_tracestate_value_illegal_characters, test_tracestate_key_length_limit).
    members = [f"{k}={v}" for k, v in pairs]
    members.insert(min(at, len(members)), bad)
    with _no_logs():
        assert len(parse_tracestate([",".join(members)])) == 0


# -- lists: OWS, empty members, several fields, duplicates, limits -----------------------------


@settings(max_examples=300, deadline=None)
@given(fields(st.lists(st.tuples(a_key, a_short_value), max_size=32, unique_by=lambda p: p[0])))
def test_lists_of_distinct_keys_are_kept_whole_and_in_order(values: list[str]) -> None:
    with _no_logs():
        state = parse_tracestate(values)
    assert list(state.items()) == _model(values)
    received = [m.strip(" \t") for f in values for m in f.split(",") if m.strip(" \t")]
    if len(",".join(received)) <= 512:
        assert _header(list(state.items())) == ",".join(received)


pool = st.lists(a_key, min_size=1, max_size=6, unique=True)
#: 31 to 40 members with small values: around the 32-member limit, within 512 characters
#: only when the keys are short.
crowded = st.lists(
    st.tuples(st.text(LCALPHA, min_size=1, max_size=3), st.sampled_from(["1", "x"])),
    min_size=31,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(pool.flatmap(lambda ks: fields(st.lists(st.tuples(st.sampled_from(ks), a_short_value)))))
def test_duplicate_keys_keep_their_first_entry(values: list[str]) -> None:
    with _no_logs():
        state = parse_tracestate(values)
    assert list(state.items()) == _model(values)
    for key in state:  # the first occurrence, as written
        first = next(
            m.strip(" \t").partition("=")[2]
            for f in values
            for m in f.split(",")
            if m.strip(" \t").partition("=")[0] == key
        )
        assert state[key] == first


@settings(max_examples=300, deadline=None)
@given(fields(st.one_of(st.lists(st.tuples(a_key, a_value), min_size=1, max_size=36), crowded)))
def test_long_and_crowded_lists_follow_the_limits(values: list[str]) -> None:
    # "list": at most 32 members, more is not a list (test_tracestate_member_count_limit);
    # "tracestate Limits": whole entries, those over 128 characters first, then from the end.
    with _no_logs():
        state = parse_tracestate(values)
    kept = list(state.items())
    assert kept == _model(values)
    assert len(_header(kept)) <= 512
    received = [p.strip(" \t").partition("=") for f in values for p in f.split(",")]
    written: dict[str, str] = {}
    for key, _, value in received:
        if key:
            written.setdefault(key, value)  # the first entry of each key
    if len(written) > 32:
        assert kept == []
        return
    order = list(written)
    # in the received order, never split
    assert [order.index(k) for k, _ in kept] == sorted(order.index(k) for k, _ in kept)
    assert all(written[k] == v for k, v in kept)
    dropped = [(k, written[k]) for k in order if k not in state]
    if any(len(k) + len(v) + 1 <= 128 for k, v in dropped):
        assert all(len(k) + len(v) + 1 <= 128 for k, v in kept)


def test_the_size_limit_boundaries() -> None:
    def member(key: str, size: int) -> str:
        return f"{key}={'v' * (size - len(key) - 1)}"

    exactly = [member("a", 128), member("b", 128), member("c", 128), member("d", 125)]
    assert len(",".join(exactly)) == 512
    assert format_tracestate(parse_tracestate(exactly)) == ",".join(exactly)
    # One more character: "d" is the right-most, but none is over 128, so it goes.
    longer = [*exactly[:3], member("d", 126)]
    assert list(parse_tracestate(longer)) == ["a", "b", "c"]
    # An entry over 128 characters goes first, even on the left, and only one of two.
    large = [member("big", 129), member("a", 100), member("huge", 200), member("b", 100)]
    assert list(parse_tracestate(large)) == ["big", "a", "b"]
    # A single member can exceed 512 characters (256 + 1 + 256): nothing of it is kept.
    assert len(parse_tracestate(["k" * 256 + "=" + "v" * 256])) == 0
    # The limit is on what devkit writes, so received OWS does not count.
    padded = [" \t " + m + " \t " for m in exactly]
    assert format_tracestate(parse_tracestate([",,".join(padded)])) == ",".join(exactly)


# -- extract then inject -----------------------------------------------------------------------


any_list = st.one_of(
    fields(st.lists(st.tuples(a_key, a_short_value), max_size=32, unique_by=lambda p: p[0])),
    pool.flatmap(lambda ks: fields(st.lists(st.tuples(st.sampled_from(ks), a_short_value)))),
    fields(st.lists(st.tuples(a_key, a_value), max_size=34)),
    fields(crowded),
)


@settings(max_examples=400, deadline=None)
@given(any_list)
def test_extract_then_inject_gives_back_the_valid_members_in_order(values: list[str]) -> None:
    with _no_logs():
        carrier, header = _round_trip(values)
    expected = _model(values)
    assert header == (_header(expected) if expected else None)
    assert carrier["traceparent"] == VALID
    if header is not None:  # and what devkit sends, it reads back unchanged
        _, same = _round_trip([header])
        assert same == header


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(a_key, a_short_value), min_size=1, max_size=32, unique_by=lambda p: p[0]))
def test_the_remote_span_context_holds_every_member(pairs: list[tuple[str, str]]) -> None:
    header = _header(pairs)
    received: dict[str, list[str]] = {"traceparent": [VALID], "tracestate": [header]}

    def getter(name: str) -> Sequence[str]:
        return received.get(name, ())

    with _no_logs():
        span_context = trace.get_current_span(extract(getter)).get_span_context()
    assert list(span_context.trace_state.items()) == _model([header])
