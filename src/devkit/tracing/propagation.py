"""W3C Trace Context (Level 1 and 2) and W3C Baggage, parsed strictly and cheaply.

This runs on every inbound request, so the common case (one valid ``traceparent``, no
``tracestate``) is one precompiled ``fullmatch`` (cheaper than the equivalent ``str``
checks, docs/benchmarks.md#trace-context-parsing), three ``int()`` calls and the
``SpanContext``: no logging, no exception,
no work on headers that are absent. Nothing here raises on hostile input and nothing
here logs: a malformed header simply yields "no parent" (a new trace starts),
an empty ``TraceState`` or fewer baggage entries. Anything unexpected (a getter that
raises, a value that is not a ``str``) goes through :func:`devkit._errors.report`.

Specifications, with the decisions taken where they leave room:

*Trace Context Level 1* (W3C Recommendation, 23 November 2021) and *Level 2* (Candidate
Recommendation Draft, 28 March 2024):

- ``traceparent`` (§3.2.2): version ``00`` is exactly ``2HEXDIGLC "-" 32HEXDIGLC "-"
  16HEXDIGLC "-" 2HEXDIGLC``; upper-case hex is not ``HEXDIGLC`` and is rejected; an
  all-zero trace-id or parent-id, or version ``ff``, invalidates the header (§3.2.2.1,
  §3.2.2.3, §3.2.2.4). Leading and trailing OWS (space, tab) around the field value is
  not part of it (RFC 7230 §3.2.4) and is ignored, as the W3C test suite requires.
- Higher versions ``01``-``fe`` (§3.2.4): at least 55 characters, the first 55 parsed
  with the version-00 layout, followed by the end of the value or a ``-``; everything after
  is ignored and never interpreted (version ``00`` is re-emitted on the way out).
- More than one ``traceparent``: the field is single-valued (its grammar has no list
  form) and RFC 7230 §3.2.2 forbids repeating such a field, so two header lines, or one
  value holding a comma-joined list, are treated as invalid and the trace restarts (the
  W3C test suite's ``test_traceparent_duplicated`` expects exactly that).
- ``trace-flags`` (§3.2.2.5): bit 0 is *sampled*; Level 2 defines bit 1 as
  *random-trace-id* (the right-most 7 bytes of the trace-id are random). Both are kept,
  because the random flag describes the trace-id this service continues. Every other bit
  is reserved: "Vendors MUST set those to zero" (§3.2.2.5.2 "Other Flags"; §4.3: unknown
  flags are set to 0 on outgoing requests), so they are masked off on the way in and on
  the way out (``trace_flags = flags & 0x03``). Unknown bits never invalidate a header.
- ``tracestate`` (§3.3): parsed only when ``traceparent`` is valid (§3.3 "MUST NOT
  attempt to parse tracestate"); multiple fields are joined per RFC 7230; empty and
  whitespace-only members are skipped and do not count; OWS around members is ignored.
  Keys follow the Level 1 grammar (``simple-key`` up to 256 characters, or
  ``tenant-id@system-id`` with at most 241 and 14 characters) and values the
  ``0*255(chr) nblk-chr`` grammar (1-256 printable ASCII characters except ``,`` and
  ``=``; leading spaces are part of the value). Level 2 relaxes the key to
  ``(lcalpha / DIGIT) 0*255(keychar)`` with ``@`` anywhere; those extra keys (a leading
  digit without ``@``, several ``@``, long system-ids) are rejected here because
  OpenTelemetry's ``TraceState`` cannot hold them (it logs and drops them). A key that
  appears twice (§3.3.1.4 "Only one entry per key is allowed"), more than 32 members
  (the ``list`` ABNF allows ``0*31`` after the first), or any invalid member make the
  whole header invalid; §4.3 allows discarding an unparseable ``tracestate`` and that is
  what the W3C test suite expects. An invalid ``tracestate`` never affects
  ``traceparent`` (§3.3 "MUST NOT affect the parsing of traceparent").

*Baggage* (W3C Candidate Recommendation, 30 May 2024):

- §3.3.1: ``key OWS "=" OWS value *(OWS ";" OWS property)``; the key is an RFC 7230
  ``token`` and is not percent-decoded; the value is ``*baggage-octet`` (may be empty) and
  is percent-decoded as UTF-8, invalid UTF-8 becoming U+FFFD (§3.3.1.3). A ``%`` that is
  not followed by two hex digits breaks "the percent code point MUST be percent-encoded"
  and the member is dropped (§3.5 allows removing entries not in the specified format),
  as is a member whose key, value or any property is malformed. Properties are validated
  but not returned. Later duplicates of a key win, like ``opentelemetry.baggage``.
- §3.3.2 limits: all headers together; at most 64 list-members and 8192 bytes (the kept
  members as received plus one comma between them) are kept, and a member that would
  break a limit is dropped whole, never truncated, while the others are still read.
  The same limits apply to :func:`format_baggage`, so what devkit sends it also accepts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import quote

from opentelemetry import baggage as otel_baggage
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators import textmap
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from devkit import _context, _errors

__all__ = [
    "BAGGAGE_HEADER",
    "MAX_BAGGAGE_BYTES",
    "MAX_BAGGAGE_MEMBERS",
    "MAX_TRACESTATE_MEMBERS",
    "TRACEPARENT_HEADER",
    "TRACESTATE_HEADER",
    "W3CPropagator",
    "extract",
    "format_baggage",
    "format_traceparent",
    "format_tracestate",
    "parse_baggage",
    "parse_traceparent",
    "parse_tracestate",
]

TRACEPARENT_HEADER = "traceparent"
TRACESTATE_HEADER = "tracestate"
BAGGAGE_HEADER = "baggage"
MAX_TRACESTATE_MEMBERS = 32
MAX_BAGGAGE_MEMBERS = 64
MAX_BAGGAGE_BYTES = 8192

_COMPONENT = "propagation"
_OWS = " \t"
#: sampled (bit 0) and Level 2 random-trace-id (bit 1); every other bit is reserved.
_KNOWN_FLAGS = 0x03
_FLAGS = tuple(TraceFlags(bits) for bits in range(_KNOWN_FLAGS + 1))
_EMPTY_TRACE_STATE = TraceState()
_NO_VALUES: tuple[str, ...] = ()

# §3.2.2: version "-" trace-id "-" parent-id "-" trace-flags, HEXDIGLC only, in one
# compiled fullmatch (see the module docstring).
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})").fullmatch

# Trace Context Level 1 §3.3.1.3.1 (key) and §3.3.1.3.2 (value), which is also exactly what
# opentelemetry.trace.TraceState accepts, so building one from a validated list never logs.
_TS_KEY = (
    r"(?:[a-z][_0-9a-z\-*/]{0,255}"
    r"|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
)
_TS_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_TS_MEMBER = re.compile(f"({_TS_KEY})=({_TS_VALUE})").fullmatch

# Baggage §3.3.1: key = token (RFC 7230 §3.2.6 tchar), value = *baggage-octet.
_TCHARS = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_BAGGAGE_OCTETS = r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*"
_TOKEN = re.compile(_TCHARS).fullmatch
_BAGGAGE_VALUE = re.compile(_BAGGAGE_OCTETS).fullmatch
_BAGGAGE_PAIR = re.compile(rf"({_TCHARS})[ \t]*=[ \t]*({_BAGGAGE_OCTETS})").fullmatch
_HEX_DIGITS = "0123456789abcdefABCDEF"
#: Every baggage-octet except "%" is sent as is; everything else is percent-encoded.
_BAGGAGE_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '",;\\%')


# -- traceparent -----------------------------------------------------------------------------


def _traceparent_fields(values: Sequence[str]) -> tuple[int, int, int] | None:
    """``(trace_id, span_id, known_flags)`` from the received values, or None if invalid."""
    if len(values) != 1:
        if not isinstance(values, str):
            return None  # absent, or sent more than once
        values = (values,)  # a bare value rather than a list of them
    value = values[0]
    if len(value) != 55:
        value = value.strip(_OWS)
        size = len(value)
        if size < 55:
            return None
        if size > 55:
            # A future version: 55 known characters, then "-" and fields never looked at.
            # A comma means a joined list of several traceparent values.
            if value[55] != "-" or "," in value or value.startswith("00"):
                return None
            value = value[:55]
    match = _TRACEPARENT(value)
    if match is None:
        return None
    version, trace_hex, span_hex, flags_hex = match.groups()
    if version == "ff":
        return None
    trace_id = int(trace_hex, 16)
    span_id = int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, int(flags_hex, 16) & _KNOWN_FLAGS


def parse_traceparent(values: Sequence[str]) -> SpanContext | None:
    """The remote parent described by the received ``traceparent`` value(s), or None.

    ``values`` holds every ``traceparent`` field value received; more than one (or one
    holding a comma-joined list) is invalid. The result has an empty ``trace_state``:
    :func:`extract` attaches the parsed ``tracestate``.
    """
    try:
        fields = _traceparent_fields(values)
    except Exception as exc:  # not a str, or a bug: never break the request
        _errors.report(_COMPONENT, "traceparent_unreadable", exc)
        return None
    if fields is None:
        return None
    return SpanContext(fields[0], fields[1], True, _FLAGS[fields[2]], _EMPTY_TRACE_STATE)


def format_traceparent(span_context: SpanContext) -> str:
    """A version-00 ``traceparent`` for ``span_context`` ("" when it is not valid).

    Only the sampled and random-trace-id flags are written; reserved bits are always 0.
    """
    if not span_context.is_valid:
        return ""
    flags = span_context.trace_flags & _KNOWN_FLAGS
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{flags:02x}"


# -- tracestate ------------------------------------------------------------------------------


def _tracestate_pairs(values: Sequence[str]) -> dict[str, str] | None:
    if isinstance(values, str):
        values = (values,)
    pairs: dict[str, str] = {}
    for field_value in values:
        for member in field_value.split(","):
            member = member.strip(_OWS)
            if not member:
                continue  # empty and whitespace-only members are allowed
            match = _TS_MEMBER(member)
            if match is None:
                return None
            key, value = match.groups()
            if key in pairs or len(pairs) == MAX_TRACESTATE_MEMBERS:
                return None
            pairs[key] = value
    return pairs


def parse_tracestate(values: Sequence[str]) -> TraceState:
    """The ``tracestate`` from every received field value; empty when it is invalid."""
    try:
        pairs = _tracestate_pairs(values)
    except Exception as exc:
        _errors.report(_COMPONENT, "tracestate_unreadable", exc)
        return _EMPTY_TRACE_STATE
    if not pairs:
        return _EMPTY_TRACE_STATE
    return TraceState(list(pairs.items()))


def format_tracestate(trace_state: TraceState) -> str:
    """``key=value`` members joined by commas, in order ("" for an empty state)."""
    return ",".join(f"{key}={value}" for key, value in trace_state.items())


# -- baggage ---------------------------------------------------------------------------------


def _percent_decode(value: str) -> str | None:
    """RFC 3986 §2.1 decoding of an ASCII value; None for a "%" without two hex digits.

    Octets that are not UTF-8 become U+FFFD (Baggage §3.3.1.3). Hand-rolled: cheaper
    than ``urllib.parse.unquote`` (docs/benchmarks.md#trace-context-parsing) and
    stricter.
    """
    parts = value.split("%")
    octets = bytearray(parts[0], "ascii")
    for part in parts[1:]:
        if len(part) < 2 or part[0] not in _HEX_DIGITS or part[1] not in _HEX_DIGITS:
            return None
        octets.append(int(part[:2], 16))
        octets += part[2:].encode("ascii")
    return octets.decode("utf-8", "replace")


def _baggage_member(member: str) -> tuple[str, str] | None:
    """``(key, decoded value)`` of one OWS-trimmed list-member, or None if malformed."""
    head, has_properties, properties = member.partition(";")
    if has_properties:
        for prop in properties.split(";"):
            prop_key, prop_equals, prop_value = prop.partition("=")
            if _TOKEN(prop_key.strip(_OWS)) is None:
                return None
            if prop_equals and _BAGGAGE_VALUE(prop_value.strip(_OWS)) is None:
                return None
        head = head.rstrip(_OWS)
    match = _BAGGAGE_PAIR(head)
    if match is None:
        return None
    key, value = match.groups()
    if "%" in value:
        decoded = _percent_decode(value)
        if decoded is None:
            return None
        return key, decoded
    return key, value


def _baggage_entries(values: Sequence[str]) -> dict[str, str]:
    if isinstance(values, str):
        values = (values,)
    entries: dict[str, str] = {}
    kept = 0
    size = 0
    for field_value in values:
        for member in field_value.split(","):
            member = member.strip(_OWS)
            if not member:
                continue
            entry = _baggage_member(member)
            if entry is None:
                continue
            grown = size + len(member) + (1 if kept else 0)
            if grown > MAX_BAGGAGE_BYTES:
                continue  # never a partial member; smaller ones may still fit
            size = grown
            kept += 1
            entries[entry[0]] = entry[1]
            if kept == MAX_BAGGAGE_MEMBERS:
                return entries
    return entries


def parse_baggage(values: Sequence[str]) -> dict[str, str]:
    """Baggage entries (percent-decoded values) from every received ``baggage`` value."""
    try:
        return _baggage_entries(values)
    except Exception as exc:
        _errors.report(_COMPONENT, "baggage_unreadable", exc)
        return {}


def format_baggage(entries: Mapping[str, object]) -> str:
    """A ``baggage`` value: token keys, percent-encoded values, within the limits.

    Entries whose key is not an RFC 7230 token are left out (keys are never encoded), and
    so is any entry that would take the header past 64 members or 8192 bytes.
    """
    members: list[str] = []
    size = 0
    for key, value in entries.items():
        if not isinstance(key, str) or _TOKEN(key) is None:
            continue
        try:
            text = value if isinstance(value, str) else str(value)
        except Exception:  # a value whose __str__ raises is not sent
            continue
        member = f"{key}={quote(text, safe=_BAGGAGE_SAFE, errors='replace')}"
        grown = size + len(member) + (1 if members else 0)
        if grown > MAX_BAGGAGE_BYTES:
            continue
        size = grown
        members.append(member)
        if len(members) == MAX_BAGGAGE_MEMBERS:
            break
    return ",".join(members)


# -- context ---------------------------------------------------------------------------------


def _extract(get_all: Callable[[str], Sequence[str] | None], context: Context) -> Context:
    fields = _traceparent_fields(get_all(TRACEPARENT_HEADER) or _NO_VALUES)
    if fields is not None:
        state_values = get_all(TRACESTATE_HEADER)
        state = parse_tracestate(state_values) if state_values else _EMPTY_TRACE_STATE
        span_context = SpanContext(fields[0], fields[1], True, _FLAGS[fields[2]], state)
        context = trace.set_span_in_context(NonRecordingSpan(span_context), context)
    baggage_values = get_all(BAGGAGE_HEADER)
    if baggage_values:
        for key, value in _baggage_entries(baggage_values).items():
            context = otel_baggage.set_baggage(key, value, context)
    return context


def extract(get_all: Callable[[str], Sequence[str]], context: Context | None = None) -> Context:
    """``context`` (default: a new root) plus the remote parent span and the baggage.

    ``get_all(name)`` returns every value received for the lower-case header ``name``.
    Without a valid ``traceparent`` no span is set, so the server span starts a new trace.
    """
    if context is None:
        context = Context()
    try:
        return _extract(get_all, context)
    except Exception as exc:
        _errors.report(_COMPONENT, "extract_failed", exc)
        return context


class W3CPropagator(textmap.TextMapPropagator):
    """``traceparent`` + ``tracestate`` + ``baggage`` in one propagator.

    Install it with ``opentelemetry.propagate.set_global_textmap(W3CPropagator())`` so that
    outbound instrumentations (httpx, requests, ...) inject the same strict headers.
    """

    _FIELDS = frozenset((TRACEPARENT_HEADER, TRACESTATE_HEADER, BAGGAGE_HEADER))

    def extract(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        getter: textmap.Getter[textmap.CarrierT] = textmap.default_getter,
    ) -> Context:
        """Like :func:`extract`: ``context`` defaults to a new root, not the current one."""
        if context is None:
            context = Context()
        try:
            return _extract(lambda name: getter.get(carrier, name), context)
        except Exception as exc:
            _errors.report(_COMPONENT, "extract_failed", exc)
            return context

    def inject(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        setter: textmap.Setter[textmap.CarrierT] = textmap.default_setter,
    ) -> None:
        """Write ``traceparent`` (and a non-empty ``tracestate``) for a valid span context,
        and ``baggage`` when ``context`` (default: the current one) carries entries."""
        try:
            span_context = trace.get_current_span(context).get_span_context()
            if span_context.is_valid:
                setter.set(carrier, TRACEPARENT_HEADER, format_traceparent(span_context))
                if span_context.trace_state:
                    state = format_tracestate(span_context.trace_state)
                    setter.set(carrier, TRACESTATE_HEADER, state)
            entries: Mapping[str, object] = otel_baggage.get_all(context)
            # The request's correlation id travels as baggage without a per-request
            # baggage context: it is added here, only when a call actually goes out.
            cid = _context.correlation_id.get()
            if cid is not None and _context.BAGGAGE_KEY not in entries:
                entries = {**entries, _context.BAGGAGE_KEY: cid}
            if entries:
                value = format_baggage(entries)
                if value:
                    setter.set(carrier, BAGGAGE_HEADER, value)
        except Exception as exc:
            _errors.report(_COMPONENT, "inject_failed", exc)

    @property
    def fields(self) -> set[str]:
        return set(self._FIELDS)
