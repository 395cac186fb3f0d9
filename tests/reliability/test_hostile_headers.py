"""Hostile request headers (issue #22, item 5): generated ``traceparent``, ``tracestate``,
``baggage`` and ``X-Correlation-ID`` values, non-UTF-8 bytes, 8 KB values and repeated
headers.

10,000 generated cases per header go through devkit's ASGI middleware in-process
(hostile.AsgiDriver: the middleware called as a server calls it, with any bytes); the
WSGI middleware gets 2,000 of each; real uvicorn and gunicorn servers get a sample over
real HTTP. Every case checks, against oracles written from the W3C specifications and
devkit's documented choices (docs/tracing.md#propagation, SPEC section 6):

- the request succeeds and devkit reports no internal error (the suite runs devkit in
  strict mode: an internal failure would raise here);
- a valid ``traceparent`` is continued, an invalid one starts a new trace whose id is
  not the one received;
- ``tracestate`` is kept exactly when valid, discarded whole when invalid, cut to 512
  characters by whole entries (the large ones first, then from the end) when long;
- ``baggage`` keeps at most 64 members and 8,192 bytes (W3C Baggage section 3.3.2),
  nothing more is dropped from a valid header, and what goes out obeys the same limits;
- a valid correlation id is echoed, an invalid one never: not in a response header,
  not in the access record, not in the outbound baggage.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import rows
from hostile import (
    AsgiDriver,
    Reply,
    Sink,
    WsgiDriver,
    devkit_logging_to,
    internal_errors,
    raw_echo_app,
    raw_echo_wsgi,
    raw_request,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import Server

import devkit
from conftest import GunicornFactory, UvicornFactory
from devkit import _errors, _state

SECTION = "Hostile input"
CASES = 10_000
WSGI_CASES = 10_000
SERVER_CASES = 150
#: Cases drawn by one Hypothesis example: its fixed cost per example, spread over ten
#: requests, is what keeps 10,000 cases a header within seconds.
BATCH = 10

_SETTINGS: dict[str, Any] = {
    "deadline": None,
    "database": None,
    "suppress_health_check": list(HealthCheck),
}

# -- alphabets of the specifications ----------------------------------------------------------

HEX = "0123456789abcdef"
LCALPHA = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"
# RFC 7230 tchar: baggage keys.
TCHARS = "!#$%&'*+-.^_`|~" + DIGITS + LCALPHA + LCALPHA.upper()
# W3C Baggage baggage-octet, less "%" (written only as a percent-encoding).
BAGGAGE_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '",;\\%')
# tracestate "keychar" and "chr" (W3C Trace Context Level 2 / Editor's Draft).
TS_KEYCHARS = LCALPHA + DIGITS + "_-*/@"
TS_CHARS = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in ",=")
CID_CHARS = LCALPHA + LCALPHA.upper() + DIGITS + "._:-"

TS_MEMBER = re.compile(
    r"([a-z0-9][a-z0-9_\-*/@]{0,255})=([\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}"
    r"[\x21-\x2b\x2d-\x3c\x3e-\x7e])"
)
CID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
FRESH_CID = re.compile(r"[0-9a-f]{32}")
TRACE_HEX = re.compile(r"[0-9a-f]{32}")


# -- strategies -------------------------------------------------------------------------------


def _hex(n: int) -> st.SearchStrategy[str]:
    return st.text(HEX, min_size=n, max_size=n)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


#: Bytes no specification allows: anything (non-UTF-8 included), any text, 8 KB runs.
JUNK: st.SearchStrategy[bytes] = st.one_of(
    st.binary(max_size=48),
    st.text(max_size=48).map(_utf8),
    st.sampled_from([b"", b" ", b"\t", b"\xff\xfe\xfd", b"\x00", b"\xc3\x28", b"%", b","]),
    st.builds(lambda unit, n: (unit * n)[:n], st.binary(min_size=1, max_size=4), st.just(8192)),
)


def _one_or_more(value: st.SearchStrategy[bytes]) -> st.SearchStrategy[list[bytes]]:
    """Mostly one header line, sometimes the same header repeated."""
    return st.one_of(value.map(lambda v: [v]), st.lists(value, min_size=2, max_size=3))


_TRACE_ID = st.one_of(_hex(32), _hex(32), st.just("0" * 32))
_SPAN_ID = st.one_of(_hex(16), _hex(16), st.just("0" * 16))
_VERSION = st.one_of(
    st.just("00"), st.just("00"), st.sampled_from(["01", "cc", "fe", "ff"]), _hex(2)
)
VALID_SHAPED_TRACEPARENT = st.builds(
    lambda v, t, s, f: f"{v}-{t}-{s}-{f}", _VERSION, _TRACE_ID, _SPAN_ID, _hex(2)
)


def _mutate(value: str, at: int, char: str) -> str:
    at %= len(value)
    return value[:at] + char + value[at + 1 :]


TRACEPARENT: st.SearchStrategy[bytes] = st.one_of(
    VALID_SHAPED_TRACEPARENT.map(str.encode),
    VALID_SHAPED_TRACEPARENT.map(str.encode),
    # later versions' extra fields, commas, truncations
    st.builds(
        lambda base, tail: _utf8(base + tail),
        VALID_SHAPED_TRACEPARENT,
        st.one_of(
            st.sampled_from(["-", "-00", "-x,y", ",00", "0", "-" + "f" * 8000]), st.text(max_size=8)
        ),
    ),
    st.builds(lambda base, n: base[:n].encode(), VALID_SHAPED_TRACEPARENT, st.integers(0, 54)),
    # one character replaced (any code point), upper case, OWS around
    st.builds(
        lambda b, at, c: _utf8(_mutate(b, at, c)),
        VALID_SHAPED_TRACEPARENT,
        st.integers(0, 54),
        st.characters(),
    ),
    VALID_SHAPED_TRACEPARENT.map(lambda v: v.upper().encode()),
    st.builds(
        lambda a, v, b: (a + v + b).encode(),
        st.sampled_from(["", " ", "\t", " \t "]),
        VALID_SHAPED_TRACEPARENT,
        st.sampled_from(["", " ", "\t", "\r"]),
    ),
    JUNK,
)

_TS_KEY = st.one_of(
    st.builds(
        lambda a, b: a + b, st.sampled_from(LCALPHA + DIGITS), st.text(TS_KEYCHARS, max_size=12)
    ),
    st.builds(lambda a, n: a + "k" * n, st.sampled_from(LCALPHA), st.integers(100, 260)),
)
_TS_VALUE = st.one_of(
    st.text(TS_CHARS, min_size=1, max_size=16),
    st.builds(lambda n: "v" * n, st.integers(100, 260)),
)
_TS_VALID_MEMBER = st.builds(lambda k, v: f"{k}={v}", _TS_KEY, _TS_VALUE)
_TS_MEMBER = st.one_of(
    _TS_VALID_MEMBER,
    _TS_VALID_MEMBER,
    _TS_VALID_MEMBER,
    st.builds(lambda k, v: f"{k}={v}", st.text(max_size=8), st.text(max_size=8)),
    st.text(max_size=12),
    st.sampled_from(["", " ", "@foo=bar", "Foo=bar", "a=", "a=b=c", "a= b", "a=b "]),
)


def _tracestate(members: list[str], filler: int, size: int, at: int, sep: str) -> bytes:
    """Generated members with ``filler`` valid ones of about ``size`` characters spliced
    in at ``at``: long lists (past 32 keys, past 512 characters) at the cost of a few
    draws."""
    extra = [f"f{i}={'x' * size}" for i in range(filler)]
    at %= len(members) + 1
    return _utf8(sep.join(members[:at] + extra + members[at:]))


TRACESTATE: st.SearchStrategy[bytes] = st.one_of(
    st.builds(
        _tracestate,
        st.lists(_TS_MEMBER, max_size=6),
        st.one_of(st.just(0), st.integers(0, 40)),
        st.integers(1, 140),
        st.integers(0, 6),
        st.sampled_from([",", ", ", " ,\t"]),
    ),
    JUNK,
)


@dataclass(frozen=True)
class BaggageMember:
    """One generated list-member: its text as sent, and (key, decoded value) when valid."""

    raw: str
    entry: tuple[str, str] | None


def _baggage_member(key: str, text: str, before: str, after: str, props: str) -> BaggageMember:
    value = quote(text, safe=BAGGAGE_SAFE, errors="surrogatepass")
    return BaggageMember(f"{key}{before}={after}{value}{props}", (key, text))


_BAGGAGE_VALID = st.builds(
    _baggage_member,
    st.one_of(st.text(TCHARS, min_size=1, max_size=10), st.just("correlation_id")),
    st.one_of(st.text(max_size=12), st.builds(lambda n: "v" * n, st.integers(8000, 8200))),
    st.sampled_from(["", " ", "\t"]),
    st.sampled_from(["", " "]),
    st.sampled_from(["", ";p", ";p=1", " ; q = x"]),
)
_BAGGAGE_JUNK = st.one_of(
    st.text(max_size=16), st.sampled_from(["=v", "k=%zz", "k=%4", 'k="q"', "k v=1", "k=a b"])
).map(lambda raw: BaggageMember(raw, None))


def _baggage(members: list[BaggageMember], filler: int, size: int, at: int) -> list[BaggageMember]:
    """Generated members with ``filler`` valid ones of ``size`` bytes of value spliced in
    at ``at``: headers past 64 members and 8,192 bytes at the cost of a few draws."""
    extra = [BaggageMember(f"f{i}={'x' * size}", (f"f{i}", "x" * size)) for i in range(filler)]
    at %= len(members) + 1
    return members[:at] + extra + members[at:]


BAGGAGE_MEMBERS = st.builds(
    _baggage,
    st.one_of(
        st.lists(_BAGGAGE_VALID, max_size=6),
        st.lists(st.one_of(_BAGGAGE_VALID, _BAGGAGE_VALID, _BAGGAGE_JUNK), max_size=6),
    ),
    st.one_of(st.just(0), st.integers(0, 90)),
    st.integers(0, 200),
    st.integers(0, 6),
)

_CID_VALID = st.text(CID_CHARS, min_size=1, max_size=128)
CORRELATION_ID: st.SearchStrategy[bytes] = st.one_of(
    _CID_VALID.map(str.encode),
    _CID_VALID.map(str.encode),
    st.text(CID_CHARS, min_size=129, max_size=300).map(str.encode),
    st.builds(
        lambda v, at, c: _utf8(_mutate(v, at, c)), _CID_VALID, st.integers(0, 127), st.characters()
    ),
    JUNK,
)


# -- oracles (the specifications, devkit's documented choices) ---------------------------------


def _text(values: Sequence[bytes]) -> list[str]:
    """What a server hands over: header bytes as latin-1 text (ASGI and PEP 3333)."""
    return [v.decode("latin-1") for v in values]


def expected_parent(values: Sequence[bytes]) -> int | None:
    """The trace id a ``traceparent`` continues, or None (a new trace).

    W3C Trace Context section 3.2: one header (the field has no list form); OWS around it
    is not part of the value; version 00 is exactly 55 characters, ``ff`` is invalid,
    later versions may append ``-`` and fields that are ignored (a comma means a list of
    values); lower-case hex only; all-zero ids are invalid.
    """
    if len(values) != 1:
        return None
    value = _text(values)[0].strip(" \t")
    m = re.fullmatch(
        r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", value, re.S
    )
    if m is None:
        return None
    version, trace_hex, span_hex, _flags, rest = m.groups()
    if version == "ff" or (rest is not None and (version == "00" or "," in value)):
        return None
    if int(trace_hex, 16) == 0 or int(span_hex, 16) == 0:
        return None
    return int(trace_hex, 16)


def expected_tracestate(values: Sequence[bytes]) -> dict[str, str] | None:
    """The members a ``tracestate`` keeps, in order, or None when it is discarded.

    Fields joined as a list; empty members skipped; OWS around members ignored; an
    invalid member or more than 32 distinct keys discards the header; a repeated key
    keeps its first entry.
    """
    members: dict[str, str] = {}
    for field_value in _text(values):
        for member in field_value.split(","):
            member = member.strip(" \t")
            if not member:
                continue
            m = TS_MEMBER.fullmatch(member)
            if m is None:
                return None
            key, value = m.groups()
            if key in members:
                continue
            if len(members) == 32:
                return None
            members[key] = value
    return members


def expected_baggage(members: Sequence[BaggageMember]) -> tuple[dict[str, str], list[str]]:
    """For a header of valid members: the entries kept and the members kept as sent.

    W3C Baggage section 3.3.2: at most 64 list-members and 8,192 bytes; devkit drops a
    member that would break a limit whole and still reads the others; a later duplicate
    key wins.
    """
    entries: dict[str, str] = {}
    kept: list[str] = []
    size = 0
    for member in members:
        raw = member.raw.strip(" \t")
        assert member.entry is not None
        grown = size + len(raw) + (1 if kept else 0)
        if grown > 8192:
            continue
        size = grown
        kept.append(raw)
        entries[member.entry[0]] = member.entry[1]
        if len(kept) == 64:
            break
    return entries, kept


def expected_cid(xcid: Sequence[bytes], xrid: Sequence[bytes], joined: bool) -> str | None:
    """The correlation id a request keeps, or None for a fresh one (SPEC section 6).

    ``X-Correlation-ID``, else ``X-Request-ID``: 1-128 characters of ``[A-Za-z0-9._:-]``.
    ASGI servers hand over each header line (one value expected); WSGI servers join
    repeated lines with commas (``joined``), which no valid id contains.
    """
    if joined:
        inbound = ",".join(_text(xcid)) or ",".join(_text(xrid))
    else:
        chosen = _text(xcid) if xcid else _text(xrid)
        inbound = chosen[0] if len(chosen) == 1 else ""
    return inbound if CID.fullmatch(inbound) else None


# -- the targets --------------------------------------------------------------------------------


@dataclass
class Target:
    """One way of sending a request to devkit, and the counts of what it got."""

    name: str
    send: Callable[[list[tuple[bytes, bytes]]], Reply]
    joined: bool  # repeated headers arrive joined by commas (WSGI)
    sink: Sink | None = None  # devkit's log lines, in-process
    close: Callable[[], None] = lambda: None
    #: What a header value becomes on its way to devkit (a real server strips OWS).
    prepare: Callable[[bytes], bytes] = lambda value: value
    requests: int = 0
    failed: int = 0
    rejected_by_server: int = 0
    echoed: int = 0
    seconds: float = 0.0
    notes: dict[str, int] = field(default_factory=dict)

    def request(self, headers: list[tuple[bytes, bytes]]) -> Reply | None:
        """The reply, or None when the server itself refused the request (400/431
        before devkit saw it: only real servers do)."""
        start = time.perf_counter()
        reply = self.send(headers)
        self.seconds += time.perf_counter() - start
        self.requests += 1
        if reply.status in (400, 431) and self.sink is None:
            self.rejected_by_server += 1
            return None
        if reply.status != 200:
            self.failed += 1
        assert reply.status == 200, (reply.status, reply.body[:500])
        return reply

    def log_line(self) -> bytes | None:
        return self.sink.lines[-1] if self.sink is not None and self.sink.lines else None


def _in_process(name: str, wsgi: bool) -> Target:
    sink = Sink()
    with devkit_logging_to(sink):
        devkit.init(service_name="hostile")
    core = _state.core()
    assert core is not None
    if wsgi:
        driver = WsgiDriver(devkit.wsgi(raw_echo_wsgi))

        def send(headers: list[tuple[bytes, bytes]]) -> Reply:
            reply = driver.request(headers)
            core.flush_pending()  # the access record that waits for the next ones
            return reply

    else:
        asgi = AsgiDriver(devkit.asgi(raw_echo_app))

        def send(headers: list[tuple[bytes, bytes]]) -> Reply:
            reply = asgi.request(headers)
            core.flush_pending()  # the access record of a deferred finish, written now
            return reply

    target = Target(name, send, wsgi, sink)
    if not wsgi:
        target.close = asgi.close
    return target


@pytest.fixture
def asgi() -> Iterator[Target]:
    target = _in_process("ASGI middleware, in-process", wsgi=False)
    yield target
    target.close()
    _check_no_internal_errors()


@pytest.fixture
def wsgi() -> Iterator[Target]:
    target = _in_process("WSGI middleware, in-process", wsgi=True)
    yield target
    _check_no_internal_errors()


def _check_no_internal_errors() -> None:
    counts = _errors.counts()
    assert not counts, counts


# -- the checks of one request --------------------------------------------------------------------


def _sent_ids(values: Sequence[bytes]) -> set[str]:
    return {m for text in _text(values) for m in TRACE_HEX.findall(text)}


def _devkit_output(target: Target, reply: Reply) -> list[str]:
    """What devkit itself writes of a request: its response headers and the ids of the
    access record."""
    out = [
        v.decode("latin-1")
        for k, v in reply.headers
        if k in (b"x-correlation-id", b"server-timing")
    ]
    line = target.log_line()
    if line is not None:
        record = orjson.loads(line)
        out += [str(record.get(k, "")) for k in ("trace_id", "span_id", "correlation_id")]
    return out


def _no_echo(target: Target, reply: Reply, values: Sequence[bytes]) -> None:
    """No invalid value in what devkit writes (a value long enough not to occur there by
    chance inside another)."""
    written = _devkit_output(target, reply)
    for value in _text(values):
        if value and any(value == w or (len(value) >= 12 and value in w) for w in written):
            target.echoed += 1
            raise AssertionError(f"invalid value echoed: {value[:80]!r}")


def _cid_of(reply: Reply) -> str:
    (cid,) = reply.header(b"x-correlation-id")
    return cid.decode("ascii")


def check_traceparent(target: Target, values: list[bytes]) -> None:
    values = [target.prepare(v) for v in values]
    reply = target.request([(b"traceparent", v) for v in values])
    if reply is None:
        return
    out = reply.json()
    parent = expected_parent(values)
    timing = reply.header(b"server-timing")
    assert len(timing) == 1 and timing[0].startswith(f"trace;desc=00-{out['trace_id']}-".encode())
    assert out["outbound"]["traceparent"].startswith(f"00-{out['trace_id']}-")
    if parent is not None:
        assert out["trace_id"] == f"{parent:032x}", values
    else:
        assert out["trace_id"] not in _sent_ids(values), values
        _no_echo(target, reply, values)
    line = target.log_line()
    if line is not None:
        assert f'"trace_id":"{out["trace_id"]}"'.encode() in line


def check_tracestate(target: Target, parent: str, values: list[bytes]) -> None:
    values = [target.prepare(v) for v in values]
    reply = target.request(
        [(b"traceparent", parent.encode())] + [(b"tracestate", v) for v in values]
    )
    if reply is None:
        return
    out = reply.json()
    sent = out["outbound"].get("tracestate")
    expected = expected_tracestate(values) if expected_parent([parent.encode()]) else None
    if not expected:
        assert sent is None, (values, sent)
        return
    whole = ",".join(f"{k}={v}" for k, v in expected.items())
    if len(whole) <= 512:
        assert sent == whole, (values, sent)
        return
    # "tracestate Limits": whole entries only, those over 128 characters first, then from
    # the end, only as many as needed.
    assert sent is not None and len(sent) <= 512
    kept = sent.split(",")
    members = [f"{k}={v}" for k, v in expected.items()]
    it = iter(members)
    assert all(m in it for m in kept), (members, kept)  # in order, a subsequence
    dropped = [m for m in members if m not in kept]
    small_dropped = [m for m in dropped if len(m) <= 128]
    if small_dropped:
        assert all(len(m) <= 128 for m in kept), (members, kept)
        small = [m for m in members if len(m) <= 128]
        assert small[len(small) - len(small_dropped) :] == small_dropped, (members, kept)
    target.notes["tracestate_cut_to_512"] = target.notes.get("tracestate_cut_to_512", 0) + 1


def check_baggage(target: Target, members: list[BaggageMember], sep: str) -> None:
    header = target.prepare(_utf8(sep.join(m.raw for m in members)))
    reply = target.request([(b"baggage", header)] if header else [])
    if reply is None:
        return
    out = reply.json()
    entries: dict[str, str] = out["baggage"]
    assert len(entries) <= 64
    assert all(re.fullmatch(f"[{re.escape(TCHARS)}]+", k) for k in entries)
    if all(m.entry is not None for m in members):
        expected, kept = expected_baggage(members)
        assert entries == expected
        if len(members) > len(kept):
            target.notes["baggage_over_limits"] = target.notes.get("baggage_over_limits", 0) + 1
    outbound = out["outbound"].get("baggage", "")
    outbound_members = outbound.split(",") if outbound else []
    assert len(outbound.encode()) <= 8192 and len(outbound_members) <= 64
    cid = _cid_of(reply)
    cid_member = f"correlation_id={cid}"
    room = len(outbound_members) < 64 and len(outbound) + 1 + len(cid_member) <= 8192
    if "correlation_id" not in entries and room:
        assert cid_member in outbound_members, outbound


def check_correlation(target: Target, xcid: list[bytes], xrid: list[bytes]) -> None:
    xcid = [target.prepare(v) for v in xcid]
    xrid = [target.prepare(v) for v in xrid]
    headers = [(b"x-correlation-id", v) for v in xcid] + [(b"x-request-id", v) for v in xrid]
    reply = target.request(headers)
    if reply is None:
        return
    cid = _cid_of(reply)
    expected = expected_cid(xcid, xrid, target.joined)
    if expected is not None:
        assert cid == expected, (xcid, xrid, cid)
    else:
        assert FRESH_CID.fullmatch(cid) and cid not in _text(xcid + xrid), (xcid, xrid, cid)
        _no_echo(target, reply, [v for v in xcid + xrid if not CID.fullmatch(v.decode("latin-1"))])
        outbound = reply.json()["outbound"].get("baggage", "")
        assert f"correlation_id={cid}" in outbound.split(","), outbound
    assert reply.json()["cid"] == cid
    line = target.log_line()
    if line is not None:
        assert f'"correlation_id":"{cid}"'.encode() in line


def _record(target: Target, fault: str, done: str, internal_errors: float) -> None:
    rows.record(
        SECTION,
        fault,
        done,
        requests=target.requests,
        requests_failed=target.failed,
        rejected_by_server=target.rejected_by_server if target.sink is None else None,
        internal_errors=internal_errors,
        invalid_ids_echoed=target.echoed,
        us_per_request=round(target.seconds / max(target.requests, 1) * 1e6, 1),
        **target.notes,
    )


# -- in-process: 10,000 cases per header through ASGI, 2,000 through WSGI -----------------------


def _batches(case: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(case, min_size=BATCH, max_size=BATCH)


def _examples(cases: int) -> int:
    return max(cases // BATCH, 1)


def _run_traceparent(target: Target, cases: int) -> None:
    @settings(max_examples=_examples(cases), **_SETTINGS)
    @given(_batches(_one_or_more(TRACEPARENT)))
    def run(batch: list[list[bytes]]) -> None:
        for values in batch:
            check_traceparent(target, values)

    run()


#: Mostly a valid parent (tracestate is read only then), sometimes not.
_PARENTS = st.one_of(
    st.builds(lambda t, s, f: f"00-{t}-{s}-{f}", _hex(32), _hex(16), _hex(2)).filter(
        lambda p: expected_parent([p.encode()]) is not None
    ),
    VALID_SHAPED_TRACEPARENT,
)


def _run_tracestate(target: Target, cases: int) -> None:
    @settings(max_examples=_examples(cases), **_SETTINGS)
    @given(_batches(st.tuples(_PARENTS, _one_or_more(TRACESTATE))))
    def run(batch: list[tuple[str, list[bytes]]]) -> None:
        for parent, values in batch:
            check_tracestate(target, parent, values)

    run()


def _run_baggage(target: Target, cases: int) -> None:
    @settings(max_examples=_examples(cases), **_SETTINGS)
    @given(_batches(st.tuples(BAGGAGE_MEMBERS, st.sampled_from([",", ", ", " , "]))))
    def run(batch: list[tuple[list[BaggageMember], str]]) -> None:
        for members, sep in batch:
            check_baggage(target, members, sep)

    run()


_CID_HEADERS = st.tuples(
    st.lists(CORRELATION_ID, max_size=3),
    st.one_of(st.just([]), st.lists(CORRELATION_ID, max_size=2)),
)


def _run_correlation(target: Target, cases: int) -> None:
    @settings(max_examples=_examples(cases), **_SETTINGS)
    @given(_batches(_CID_HEADERS))
    def run(batch: list[tuple[list[bytes], list[bytes]]]) -> None:
        for xcid, xrid in batch:
            check_correlation(target, xcid, xrid)

    run()


HEADERS = {
    "traceparent": (
        _run_traceparent,
        "valid, mutated, upper-case, future-version, 8 KB and non-UTF-8 values, repeated",
    ),
    "tracestate": (
        _run_tracestate,
        "valid and invalid members, up to 46 of them, 260-character entries, repeated",
    ),
    "baggage": (
        _run_baggage,
        "up to 96 members, any text percent-encoded, properties, 8 KB members, invalid ones",
    ),
    "X-Correlation-ID": (
        _run_correlation,
        "valid, too long, mutated and non-UTF-8 ids, with X-Request-ID, repeated",
    ),
}


@pytest.mark.parametrize("header", list(HEADERS))
def test_generated_headers_through_the_asgi_middleware(asgi: Target, header: str) -> None:
    run, what = HEADERS[header]
    run(asgi, CASES)
    assert asgi.requests >= CASES and asgi.failed == 0 and asgi.echoed == 0
    _record(asgi, f"{header}, generated (ASGI)", f"{CASES:,} cases: {what}; {asgi.name}", 0)


@pytest.mark.parametrize("header", list(HEADERS))
def test_generated_headers_through_the_wsgi_middleware(wsgi: Target, header: str) -> None:
    run, what = HEADERS[header]
    run(wsgi, WSGI_CASES)
    assert wsgi.requests >= WSGI_CASES and wsgi.failed == 0 and wsgi.echoed == 0
    _record(wsgi, f"{header}, generated (WSGI)", f"{WSGI_CASES:,} cases: {what}; {wsgi.name}", 0)


# -- real servers over real HTTP --------------------------------------------------------------


def _as_sent(value: bytes) -> bytes:
    """A header value as a server hands it to the app: CR and LF cannot be sent inside
    one (they end the line), and the OWS around it is not part of it (RFC 9110 5.5)."""
    return value.replace(b"\r", b"").replace(b"\n", b"").strip(b" \t")


def _over_http(name: str, server: Server, joined: bool) -> Target:
    def send(headers: list[tuple[bytes, bytes]]) -> Reply:
        return raw_request(server.port, b"GET", b"/echo", headers)

    return Target(name, send, joined, prepare=_as_sent)


def _server_sample(target: Target, server: Server, fault: str) -> None:
    for run, _ in HEADERS.values():
        run(target, SERVER_CASES)
    assert target.failed == 0 and target.echoed == 0
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    errors = internal_errors(metrics)
    assert errors == 0, metrics
    assert "devkit: internal error" not in server.output()
    # Access records carry the kept or fresh ids only.
    for record in server.json_lines():
        if record.get("message") == "request completed":
            cid = record["correlation_id"]
            assert CID.fullmatch(cid), record
    done = (
        f"{SERVER_CASES} generated cases of each header over real HTTP (raw sockets, any "
        f"byte but CR/LF): {target.name}"
    )
    _record(target, fault, done, errors)


def test_generated_headers_over_http_uvicorn(uvicorn_server: UvicornFactory) -> None:
    server = uvicorn_server("hostile:create_asgi_app", args=("--factory",))
    target = _over_http("uvicorn", server, joined=False)
    _server_sample(target, server, "all four headers, generated (uvicorn)")


def test_generated_headers_over_http_gunicorn(gunicorn_server: GunicornFactory) -> None:
    server = gunicorn_server("hostile:create_wsgi_app()")
    target = _over_http("gunicorn, 2 workers", server, joined=True)
    _server_sample(target, server, "all four headers, generated (gunicorn)")
