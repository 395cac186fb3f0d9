"""PII and secret redaction for log events and span attributes.

Two independent rules decide what is removed:

* **By key.** A key is split into lower-case segments (on ``_``, ``-``, ``.``, spaces,
  any other punctuation, camelCase and digit runs: ``clientSecret`` -> ``client secret``,
  ``APIKey`` -> ``api key``, ``password2`` -> ``password 2``). It is sensitive when its
  segments contain one of the sensitive words or phrases (``password``, ``token``,
  ``api key``, ``credit card``...) or a user-supplied extra key, as whole segments
  only: ``tokens_used``, ``author`` and ``passage`` stay readable. The value of a
  sensitive key is replaced whole, whatever its type. The decision is cached per key
  (bounded) because log keys repeat endlessly.
* **By value.** Every string is scanned for e-mail addresses, payment card numbers,
  JWTs, ``Bearer`` tokens (the word is kept), US SSNs, well-known cloud credential shapes
  (AWS, GitHub, Google, Slack, Stripe), the password of a URL's user info
  (``scheme://user:password@host``) and, when enabled, IPv4 addresses.

  Card numbers are 13-19 digits, optionally grouped by single blanks or dashes, with a
  valid Luhn checksum and a first digit of 2-6 (the major networks). The first-digit rule
  is what lets 13-digit millisecond Unix timestamps (``1764160000000``, first digit 1)
  through. Card numbers and SSNs must be standalone: not touching a letter, digit or
  ``_``, nor joined by ``-`` to one, so ids such as ``ORD-2024-000123`` or UUIDs whose
  digit groups happen to pass Luhn are never cut into "numbers".
* **Key-value pairs in text.** The key rule also applies inside strings: in
  ``password=hunter2``, ``token: abc``, ``"client_secret": "x"``, ``?api_key=...`` or an
  ``Authorization: Basic ...`` header line the key is judged by the same segments, and
  the value after it is replaced. Keys are one token of letters, digits, ``_``, ``.`` and
  ``-`` (quoted or not), or two words when together they form a phrase (``API key: x``).
  The value is a quoted string, a bracketed JSON-like value, or an unquoted token ending
  at a blank, a quote, ``&``, ``,``, ``;`` or a closing bracket. ``Authorization`` and
  ``Cookie`` header values (``Name: value``) run to the end of the line, and the scheme
  word of an authorization value (``Basic``, ``Bearer``...) is kept, like ``Bearer``'s.

Kinds and markers: each rule has a *kind* (``email``, ``card``, ``jwt``, ``bearer``,
``ssn``, ``cloud_key``, ``url_password``, ``ipv4``, and ``secret`` for key-based
redaction, in mappings and in text alike). ``mask`` mode writes ``[REDACTED:<kind>]``;
``hash`` mode writes ``<kind>:<12 hex>``, the start of an HMAC-SHA256 of the value under
a secret salt, so equal values stay correlatable across lines without being recoverable
(``password=x`` in a message and ``{"password": "x"}`` give the same marker). Markers
never contain any part of the secret, and a marker is never redacted again.

Speed: almost every string in a log line contains no PII, so each pattern is guarded by a
C-level pre-check that is far cheaper than the scan (``'@' in s`` before the e-mail
regex, ``'eyJ' in s`` before the JWT regex, one digit search before all digit-based
patterns, a separator and a key word before the key-value scan, minimum lengths, ...).
Strings shorter than the shortest pattern are not scanned at all, and a string in which
nothing matched is returned as the *same object*, so callers can detect "unchanged" with
``is``. Results for short strings are remembered (bounded: a random eighth of the new
strings get in, all are forgotten when the cache is full), since log messages and many
field values repeat from record to record. Hostile input stays linear: repetitions are
bounded or possessive, most patterns may only start where a token starts, and every text
scanned for a pair's key or value is consumed once (docs/benchmarks.md#redaction).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import random
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from devkit import _errors

__all__ = ["Mode", "Redactor"]

Mode = Literal["mask", "hash"]

# -- keys ------------------------------------------------------------------------------

# Segments of a key: "APIKey" -> API, Key; "clientSecret" -> client, Secret;
# "X-Api-Key" -> X, Api, Key. Anything that is not an ASCII letter or digit separates.
_KEY_SEGMENT = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")

_SENSITIVE_PHRASES: tuple[tuple[str, ...], ...] = (
    ("password",),
    ("passwd",),
    ("secret",),
    ("token",),
    ("apikey",),
    ("api", "key"),
    ("authorization",),
    ("auth",),
    ("cookie",),
    ("session",),
    ("ssn",),
    ("cvv",),
    ("credit", "card"),
    ("card", "number"),
    ("private", "key"),
)

# Every sensitive phrase has a word containing one of these, so a text whose lower-cased
# form contains none of them holds no sensitive key and skips the key-value scan. The
# rarer word of each phrase is the hint ("api", not "key": KeyError, monkey, keyboard).
# Extra keys add a hint of their own when none of these covers them.
_KEY_HINTS = (
    "passw",
    "secret",
    "token",
    "api",
    "auth",
    "cookie",
    "session",
    "ssn",
    "cvv",
    "card",
    "private",
)

_KEY_CACHE_MAX = 4096
# What redact_fields() does with a top-level field, decided once per key and skip set
# (one dict lookup per field instead of a skip check, a type check and a key lookup).
_SCAN, _SECRET, _SKIP = 0, 1, 2
_MAX_SKIP_SETS = 8


def _segments(key: str) -> tuple[str, ...]:
    return tuple(s.lower() for s in _KEY_SEGMENT.findall(key))


# -- values ----------------------------------------------------------------------------

# Each regex starts with a literal or a small character class and only then looks
# behind (``X(?<!...X)``): the engine then skips ahead in C to candidate positions
# instead of evaluating a look-behind at every character (docs/benchmarks.md#redaction).
#
# Standalone: a neighbour in _W makes a digit part of a larger token; so does a "-"
# glued to one (ids such as UUIDs or ORD-2024-000123 are never cut into numbers).
_W = "A-Za-z0-9_"
_NOT_AFTER_TOKEN = rf"(?<![{_W}].)(?<![{_W}]-.)"  # placed after the first character
_NOT_BEFORE_TOKEN = rf"(?![{_W}]|-[{_W}])"

# Local part and labels are bounded so a hostile run of characters stays linear.
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}+@(?:[A-Za-z0-9-]{1,63}+\.){1,8}[A-Za-z]{2,63}")
# Starts only at the start of a base64url run: a run with many "eyJ" stays linear.
_JWT = re.compile(r"e(?<![A-Za-z0-9_-]e)yJ[A-Za-z0-9_-]++\.eyJ[A-Za-z0-9_-]++\.[A-Za-z0-9_-]*+")
# RFC 6750 b64token; group 1 (the word and the blank after it) is kept.
_BEARER = re.compile(rf"([Bb](?<![{_W}].)(?i:earer)[ \t]+)([A-Za-z0-9._~+/-]++=*+)", re.ASCII)
# Cloud credentials, one regex per cheap hint that guards it.
_CLOUD_A = re.compile(
    r"A(?<![A-Za-z0-9].)"
    r"(?:(?:KIA|SIA|BIA|CCA|GPA|IDA|ROA|NPA|NVA|IPA)[A-Z0-9]{16}|Iza[0-9A-Za-z_-]{35})"
)
_CLOUD_GITHUB = re.compile(
    r"g(?<![A-Za-z0-9].)(?:h[pousr]_[A-Za-z0-9]{36,}+|ithub_pat_[A-Za-z0-9_]{22,}+)"
)
_CLOUD_STRIPE = re.compile(r"[sr](?<![A-Za-z0-9].)k_(?:live|test)_[A-Za-z0-9]{16,}+")
_CLOUD_SLACK = re.compile(r"x(?<![A-Za-z0-9].)ox[abposr]-[A-Za-z0-9-]{10,}+")
# A maximal standalone run of digits with single blanks/dashes between them, at least as
# long as an SSN: the card numbers and SSNs inside it are found in Python (_digit_run), in
# one scan for both. Ending inside a group is never standalone, so only whole groups are
# given back to satisfy the look-ahead.
_DIGIT_RUN = re.compile(
    rf"[0-9]{_NOT_AFTER_TOKEN}(?=[0-9 -]{{10}})[0-9]*+(?:[ -][0-9]++)*{_NOT_BEFORE_TOKEN}"
)
# A string that is one such run from end to end, whatever its length.
_NUMBER = re.compile(r"[0-9]++(?:[ -][0-9]++)*+").fullmatch
_ASCII_DIGITS = frozenset("0123456789")
# One blank-separated group of a digit run that is an SSN. Area 000, 666 and 9xx, group 00
# and serial 0000 are never issued.
_SSN = re.compile(r"[0-8][0-9]{2}(?<!000)(?<!666)-(?!00)[0-9]{2}-(?!0000)[0-9]{4}")
# Octet values are checked in Python (_ipv4); a dotted neighbour means a longer token.
_IPV4 = re.compile(rf"[0-9](?<![{_W}.].)[0-9]{{0,2}}(?:\.[0-9]{{1,3}}){{3}}(?![{_W}]|\.[0-9])")
# scheme://user:password@host. The authority ends at "/", "?", "#", a blank, a quote or a
# backslash; user info ends at its last "@" and the password at the first ":" (urllib's
# split), so an unencoded "@" in the password is still removed. The literal start lets the
# engine jump between "://"; each authority is scanned a bounded number of times.
_URL_PASSWORD = re.compile(r"://([^\s/?#:\"'<>\\]*):([^\s/?#\"'<>\\]+)@")

# -- key-value pairs in text -----------------------------------------------------------

# Key tokens are at most this long; a longer run of key characters is not a key.
_MAX_KEY_LEN = 128
_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_KEY_RUN = re.compile(r"[A-Za-z0-9_.-]*+")
# What follows a key: maybe a second word ("API key"), the key's closing quote (also an
# escaped one inside a JSON string), then the separator and blanks.
_KV_SEP = re.compile(r"(?: ([A-Za-z0-9_.-]{1,128}+))?(\\?[\"'])?[ \t]*+(=>|:=|[=:])[ \t]*+")
# An unquoted value: up to a blank, a quote, a separator of query strings, lists and
# cookies, a closing bracket or an escape sequence of a quoted text (\n, \"); a marker
# already in it stays one piece.
_VALUE = re.compile(r"(?:\[REDACTED(?::[a-z_]+)?\]|[^\s\"'&,;)\]}<>\\]|\\(?![nrt\"'\\]))++")
# A header value runs to the end of its line (a written \r or \n too).
_LINE_VALUE = re.compile(r"(?:[^\r\n\\]|\\(?![rn]))*+")
_QUOTED_VALUE = {
    '"': re.compile(r'(?:[^"\\\r\n]|\\.)*+'),
    "'": re.compile(r"(?:[^'\\\r\n]|\\.)*+"),
}
# HTTP authentication schemes: the word is kept before an authorization value.
_AUTH_SCHEME = re.compile(
    r"(?i:basic|bearer|digest|negotiate|ntlm|token|hoba|mutual|aws4-hmac-sha256)[ \t]++(?=\S)"
)
_NESTING = re.compile(r"[\[\]{}\"'\\]")
# Header names whose value is the rest of the line (it holds several parts: "Basic x",
# "Digest a=..., b=...", "a=1; b=2"), and segments that mark an authorization value.
_LINE_HEADERS = frozenset({"authorization", "cookie"})
_AUTH_SEGMENTS = frozenset({"auth", "authorization"})
_AUTHORIZATION, _LINE_HEADER = 1, 2  # flags of a key met in text
# What may follow a key token when a separator comes: the separator itself, a blank, a
# closing quote (also escaped) or a second word.
_AFTER_KEY = frozenset({"=", ":", " ", "\t", '"', "'", "\\"})
# Characters of every marker; a value without any cannot be one.
_MAY_BE_MARKER = frozenset("]:")

_MIN_SCAN_LEN = 6  # "a@b.cc"; nothing shorter can match any pattern
# Results of redact_str() for strings up to this long are remembered, at most this many
# (then forgotten all at once): log messages and many field values repeat from record to
# record, and a dict lookup costs a fraction of a scan. Longer strings rarely repeat.
_STR_CACHE_MAX_LEN = 256
_STR_CACHE_SIZE = 1024
# A private generator: redaction must not move the application's random sequence.
_admit = random.Random().getrandbits
_CARD_FIRST_DIGITS = frozenset("23456")

# Types whose str() cannot carry PII and which the JSON renderer formats natively.
_PASSTHROUGH = (int, float, datetime.date, datetime.time, datetime.timedelta, uuid.UUID)
_KINDS = (
    "email",
    "card",
    "jwt",
    "bearer",
    "ssn",
    "cloud_key",
    "url_password",
    "ipv4",
    "secret",
)
_MASKS = {kind: f"[REDACTED:{kind}]" for kind in _KINDS}
# A value that is already one marker is left alone (redacting twice changes nothing);
# the access log's query redaction writes a bare ``[REDACTED]``.
_IS_MARKER = re.compile(r"\[REDACTED(?::[a-z_]+)?\]|[a-z_]+:[0-9a-f]{12}").fullmatch
_PORT = re.compile(r"[0-9]{1,5}(?![A-Za-z0-9_.-])")
_MAX_DEPTH = 32

# Luhn: the sum of the digits in odd positions from the right, plus the digit sums of
# the doubled ones, is a multiple of 10. Digits are handled as bytes of their values so
# that deleting separators, picking every other digit and summing all stay in C.
_DIGIT_VALUES = bytes.maketrans(b"0123456789", bytes(range(10)))
_LUHN_DOUBLED = bytes.maketrans(bytes(range(10)), bytes((0, 2, 4, 6, 8, 1, 3, 5, 7, 9)))
_CARD_FIRST_VALUES = range(2, 7)  # first digit 2-6, the major networks


def _luhn_ok(digits: str) -> bool:
    values = digits.encode("ascii").translate(_DIGIT_VALUES)
    return (sum(values[-1::-2]) + sum(values[-2::-2].translate(_LUHN_DOUBLED))) % 10 == 0


def _match_end(pattern: re.Pattern[str], s: str, pos: int = 0) -> int:
    """Where ``pattern`` (which may match the empty string) stops matching at ``pos``."""
    m = pattern.match(s, pos)
    return pos if m is None else m.end()


def _lower_aligned(s: str) -> str:
    """``s.lower()`` with one character per character of ``s``, so positions agree
    (U+0130 is the only character whose lower case is two)."""
    low = s.lower()
    if len(low) != len(s):
        low = s.replace("\u0130", "I").lower()
    return low


def _nested_end(s: str, start: int) -> int:
    """The end of the bracketed value at ``start``: after its closing bracket (quotes and
    backslash escapes honoured), else the end of ``s`` (a value cut short is still all
    secret). Whatever is scanned is consumed, so the scan stays linear."""
    limit = len(s)
    depth = 0
    quote = ""
    escaped_at = -1
    for m in _NESTING.finditer(s, start, limit):
        i = m.start()
        if i == escaped_at:
            continue
        c = m.group()
        if c == "\\":
            escaped_at = i + 1
        elif quote:
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c in "[{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return i + 1
    return limit


class Redactor:
    """Removes secrets and PII from log events and span attributes.

    ``mode="mask"`` replaces each finding with ``[REDACTED:<kind>]``; ``mode="hash"``
    with ``<kind>:<first 12 hex of HMAC-SHA256(salt, value)>`` so equal values can still
    be correlated. ``extra_keys`` adds sensitive key phrases (``"user_email"``,
    ``"iban"``); ``redact_ip`` also removes IPv4 addresses. Instances are immutable apart
    from their caches (of key decisions and of recent results) and safe to share between
    threads.
    """

    __slots__ = (
        "_field_actions",
        "_hints",
        "_hmac",
        "_key_cache",
        "_key_flags",
        "_mode",
        "_phrase_words",
        "_phrases",
        "_redact_ip",
        "_repl",
        "_str_cache",
        "_sub_repl",
    )

    def __init__(
        self,
        *,
        mode: Mode = "mask",
        salt: bytes | None = None,
        extra_keys: Iterable[str] = (),
        redact_ip: bool = False,
    ) -> None:
        if mode not in ("mask", "hash"):
            raise ValueError(f"redaction mode must be 'mask' or 'hash', not {mode!r}")
        if mode == "hash" and not salt:
            raise ValueError("hash redaction needs a non-empty salt")
        self._mode: Mode = mode
        # Keyed once here (a str salt fails now, not on the first log line).
        self._hmac = hmac.new(salt, digestmod=hashlib.sha256) if mode == "hash" and salt else None
        self._redact_ip = redact_ip
        if isinstance(extra_keys, str):  # a lone key, not its characters
            extra_keys = (extra_keys,)
        extras = [self._extra_phrase(k) for k in extra_keys]
        phrases: dict[int, set[tuple[str, ...]]] = {}
        for phrase in (*_SENSITIVE_PHRASES, *extras):
            phrases.setdefault(len(phrase), set()).add(phrase)
        self._phrases = tuple((n, frozenset(p)) for n, p in sorted(phrases.items()))
        self._phrase_words = frozenset(w for group in phrases.values() for p in group for w in p)
        hints = list(_KEY_HINTS)
        for phrase in extras:
            if not any(h in word for word in phrase for h in hints):
                hints.append(max(phrase, key=len))
        self._hints = tuple(hints)
        self._key_flags: dict[str, int] = {}
        # kind by key; "" for "not sensitive" so a plain .get() tells hit from miss.
        self._key_cache: dict[str, str] = {}
        self._field_actions: dict[frozenset[str], dict[Any, int]] = {}
        # redact_str() results by string; "" stands for "unchanged" (no output is empty).
        self._str_cache: dict[str, str] = {}
        self._repl = {kind: self._replacer(kind) for kind in _KINDS}
        # What re.sub() takes: the marker itself when it does not depend on the value
        # (no backslash in it, so it is used literally), else the callback.
        self._sub_repl: dict[str, str | Callable[[re.Match[str]], str]] = {
            kind: _MASKS[kind] if self._hmac is None else self._repl[kind] for kind in _KINDS
        }

    @staticmethod
    def _extra_phrase(key: str) -> tuple[str, ...]:
        phrase = _segments(key)
        if not phrase:
            raise ValueError(f"extra redaction key {key!r} has no letters or digits")
        return phrase

    def __repr__(self) -> str:
        return f"Redactor(mode={self._mode!r}, redact_ip={self._redact_ip!r})"

    # -- keys ------------------------------------------------------------------------

    def key_kind(self, key: str) -> str | None:
        """``"secret"`` when the value under ``key`` must be redacted whole, else None."""
        kind = self._key_cache.get(key)
        if kind is None:
            kind = self._classify_key(key)
        return kind or None

    def _classify_key(self, key: str) -> str:
        segments = _segments(key)
        kind = ""
        for n, phrases in self._phrases:
            if any(segments[i : i + n] in phrases for i in range(len(segments) - n + 1)):
                kind = "secret"
                break
        cache = self._key_cache
        if len(cache) < _KEY_CACHE_MAX:  # full: keep answering, stop remembering
            cache[key] = kind
        return kind

    # -- markers ---------------------------------------------------------------------

    def _marker(self, kind: str, value: str) -> str:
        mac = self._hmac
        if mac is None:
            return _MASKS[kind]
        mac = mac.copy()
        mac.update(value.encode("utf-8", "surrogatepass"))
        return f"{kind}:{mac.hexdigest()[:12]}"

    def _secret_marker(self, value: Any) -> str:
        if self._hmac is None:
            return self._marker("secret", "")
        try:
            text = value if isinstance(value, str) else str(value)
        except Exception as exc:
            _errors.report("redaction", "unrepresentable_value", exc)
            return _MASKS["secret"]
        return self._marker("secret", text)

    def _replacer(self, kind: str) -> Callable[[re.Match[str]], str]:
        return lambda m: self._marker(kind, m.group())

    # -- values ----------------------------------------------------------------------

    def redact_str(self, value: str) -> str:
        """``value`` with every PII pattern replaced; the same object if none matched."""
        # Exact str only: a subclass may define its own hashing and equality.
        if len(value) <= _STR_CACHE_MAX_LEN and type(value) is str:
            hit = self._str_cache.get(value)
            if hit is not None:
                return hit or value  # "": unchanged
        return self._scan(value)

    def _scan(self, value: str) -> str:
        """:meth:`redact_str` without reading its cache (the caller just missed it)."""
        n = len(value)
        if n < _MIN_SCAN_LEN:
            return value
        out = value
        repl = self._sub_repl
        low = value.lower()
        # Substitutions are written out, not behind a helper: this runs for every string
        # of every record, and a Python call costs as much as a substring check.
        # Bearer first: its token may itself look like a JWT or a cloud key.
        if "bearer" in low:
            out = self._sub(_BEARER, out, self._bearer)
        if "eyJ" in out:
            new, count = _JWT.subn(repl["jwt"], out)
            if count:
                out = new
        if n >= 15:
            if "A" in out:
                new, count = _CLOUD_A.subn(repl["cloud_key"], out)
                if count:
                    out = new
            if "_" in out:  # GitHub and Stripe shapes have one
                if "gh" in out or "hub_pat_" in out:
                    new, count = _CLOUD_GITHUB.subn(repl["cloud_key"], out)
                    if count:
                        out = new
                if "k_" in out:
                    new, count = _CLOUD_STRIPE.subn(repl["cloud_key"], out)
                    if count:
                        out = new
            if "xox" in out:
                new, count = _CLOUD_SLACK.subn(repl["cloud_key"], out)
                if count:
                    out = new
        if "@" in out:
            # Before e-mail addresses, which would take "password@host" for one.
            if "://" in out:
                out = self._sub(_URL_PASSWORD, out, self._url_password)
            new, count = _EMAIL.subn(repl["email"], out)
            if count:
                out = new
        # One ASCII word with a letter (a hex id) holds no standalone number.
        if n >= 7 and not (out.isalnum() and out.isascii() and not out.isdigit()):
            if n >= 11:
                if out[0] in _ASCII_DIGITS and _NUMBER(out) is not None:
                    # The whole string is one digit run (a card field, a phone number):
                    # what _DIGIT_RUN would find, without the search.
                    out = self._digit_run(out)
                else:
                    m = _DIGIT_RUN.search(out)
                    if m is not None:
                        out = self._digit_runs(out, m)
            if self._redact_ip and "." in out:
                out = self._sub(_IPV4, out, self._ipv4)
        # Pairs last, so a value that a pattern recognised keeps its kind (token=eyJ...
        # stays a JWT). The gate reads the original: separators that markers brought in
        # cannot start a pair.
        if "=" in value or ":" in value:
            present: list[str] | None = None
            for hint in self._hints:
                if hint in low:
                    if present is None:
                        present = [hint]
                    else:
                        present.append(hint)
            if present is not None:
                aligned = out is value and len(low) == n
                out = self._pairs(out, low if aligned else _lower_aligned(out), present)
        if n <= _STR_CACHE_MAX_LEN and type(value) is str and not _admit(3):
            # One miss in eight is remembered: a string that repeats gets in within a few
            # records, while strings that never repeat seldom fill (and empty) the cache.
            cache = self._str_cache
            if len(cache) >= _STR_CACHE_SIZE:
                cache.clear()  # a dict lookup and insert are atomic: safe between threads
            cache[value] = "" if out is value else out
        return out

    @staticmethod
    def _sub(pattern: re.Pattern[str], s: str, repl: Callable[[re.Match[str]], str]) -> str:
        """``pattern.sub(repl, s)``, or ``s`` itself when every match was declined (the
        callback returned the match's text)."""
        out = pattern.sub(repl, s)
        return s if out == s else out

    def _bearer(self, m: re.Match[str]) -> str:
        return m.group(1) + self._marker("bearer", m.group(2))

    def _url_password(self, m: re.Match[str]) -> str:
        return f"://{m.group(1)}:{self._marker('url_password', m.group(2))}@"

    def _ipv4(self, m: re.Match[str]) -> str:
        text = m.group()
        for octet in text.split("."):
            if int(octet) > 255 or (len(octet) > 1 and octet[0] == "0"):
                return text
        return self._marker("ipv4", text)

    def _digit_runs(self, s: str, m: re.Match[str] | None) -> str:
        """``s`` with the digit runs from ``m`` on rewritten by :meth:`_digit_run`."""
        if m is not None and m.end() - m.start() == len(s):  # a field that is one number
            return self._digit_run(s)
        parts: list[str] = []
        last = 0
        while m is not None:
            text = m.group()
            new = self._digit_run(text)
            end = m.end()
            if new is not text:
                parts.append(s[last : m.start()])
                parts.append(new)
                last = end
            # a run is at least 11 characters long: no search in a shorter rest
            m = _DIGIT_RUN.search(s, end) if len(s) - end >= 11 else None
        if not parts:
            return s
        parts.append(s[last:])
        return "".join(parts)

    def _digit_run(self, text: str) -> str:
        """Card numbers and SSNs inside one digit run, or the run itself.

        Cards: whole blank-separated groups, 13-19 digits, first digit 2-6 (the major
        networks; a 13-digit ms timestamp starts with 1) and a valid Luhn checksum;
        longest candidate first, left to right. SSNs: a whole group ``ddd-dd-dddd`` that
        is not part of a card.
        """
        values = text.encode("ascii").translate(_DIGIT_VALUES, b" -")
        count = len(values)
        words: list[str] | None = None
        if count >= 13:
            # The usual run is one number: the whole run is then the longest candidate at
            # the first group, which the walk over the groups would try first too.
            if (
                count <= 19
                and values[0] in _CARD_FIRST_VALUES
                and (sum(values[-1::-2]) + sum(values[-2::-2].translate(_LUHN_DOUBLED))) % 10 == 0
            ):
                return _MASKS["card"] if self._hmac is None else self._marker("card", text)
            if " " in text:
                words = self._cards(text.split(" "))  # None: no card among them
        if count >= 9 and "-" in text:
            groups = text.split(" ") if words is None else words
            for i, word in enumerate(groups):
                if len(word) == 11 and word[3] == "-" and _SSN.fullmatch(word):
                    groups[i] = self._marker("ssn", word)
                    words = groups
        return text if words is None else " ".join(words)

    def _cards(self, words: list[str]) -> list[str] | None:
        """The groups of a run with each card number among them replaced by one marker;
        None when there is none."""
        digits = [w.replace("-", "") for w in words]
        out: list[str] = []
        changed = False
        i = 0
        while i < len(words):
            end = self._card_end(digits, i)
            if end is None:
                out.append(words[i])
                i += 1
            else:
                out.append(self._marker("card", " ".join(words[i:end])))
                changed = True
                i = end
        return out if changed else None

    @staticmethod
    def _card_end(digits: list[str], start: int) -> int | None:
        if digits[start][0] not in _CARD_FIRST_DIGITS:
            return None
        total = 0
        ends: list[int] = []
        for j in range(start, len(digits)):
            total += len(digits[j])
            if total > 19:
                break
            if total >= 13:
                ends.append(j + 1)
        for end in reversed(ends):
            if _luhn_ok("".join(digits[start:end])):
                return end
        return None

    # -- key-value pairs in text -------------------------------------------------------

    def _pairs(self, s: str, low: str, hints: list[str]) -> str:
        """``s`` with the value of every sensitive ``key=value`` / ``key: value`` replaced.

        Only places where a key hint occurs are looked at: the key token around it, what
        follows (separator, value) and, for two-word phrases, the word before. Each piece
        of text is consumed once, so the scan is linear in ``len(s)``.
        """
        found_at: list[tuple[int, int]] = []  # (start, end) of each hint occurrence
        for hint in hints:  # the hints seen in the text (before a pattern rewrote it)
            i = low.find(hint)
            while i >= 0:
                found_at.append((i, i + len(hint)))
                i = low.find(hint, i + len(hint))
        if len(hints) > 1:
            found_at.sort()
        n = len(s)
        parts: list[str] = []
        last = 0  # s[:last] is in parts already
        done = 0  # no key starts before this
        for p, hint_end in found_at:
            if p < done:
                continue
            # The key token around the hint, walked in Python: keys are short, and a
            # regex call costs more than a few steps (the bound keeps a run linear).
            start = p
            floor = max(done, p - _MAX_KEY_LEN)
            while start > floor and s[start - 1] in _KEY_CHARS:
                start -= 1
            end = hint_end
            ceiling = min(n, start + _MAX_KEY_LEN + 1)
            while end < ceiling and s[end] in _KEY_CHARS:
                end += 1
            if end - start > _MAX_KEY_LEN or (
                start == floor and floor > done and s[floor - 1] in _KEY_CHARS
            ):
                done = _match_end(_KEY_RUN, s, end)  # longer than any key: skip the run
                continue
            found = self._pair_at(s, start, end) if s[end : end + 1] in _AFTER_KEY else None
            if found is None:
                done = end  # later hints in this token would find the same
                continue
            value_start, value_end, consumed, kind = found
            if value_end > value_start:
                content = s[value_start:value_end]
                # a marker already (a pattern matched the whole value): leave it
                if _MAY_BE_MARKER.isdisjoint(content) or _IS_MARKER(content) is None:
                    parts.append(s[last:value_start])
                    parts.append(self._marker(kind, content))
                    last = value_end
            done = consumed
        if not parts:
            return s
        parts.append(s[last:])
        return "".join(parts)

    def _pair_at(self, s: str, start: int, end: int) -> tuple[int, int, int, str] | None:
        """For the key token ``s[start:end]``: (value start, value end, end of the pair,
        kind) when it is a sensitive key followed by a separator, else None."""
        if s[start - 2 : start] == "//":
            return None  # scheme://user:...: a URL's user name, not a key
        m = _KV_SEP.match(s, end)
        if m is None:
            return None
        key = s[start:end]
        second = m.group(1)
        if second is not None:
            # "API key: x": sensitive as a phrase only ("password check: ok" is prose).
            if self.key_kind(key) or self.key_kind(second):
                return None
            key = f"{key} {second}"
            if not self.key_kind(key):
                return None
        elif not self.key_kind(key):
            # "credit card: x": the hint may sit in the second word of a phrase.
            if start < 2 or s[start - 1] != " ":
                return None
            first_start = start - 1
            floor = max(0, first_start - _MAX_KEY_LEN)
            while first_start > floor and s[first_start - 1] in _KEY_CHARS:
                first_start -= 1
            first = s[first_start : start - 1]
            if not first or self.key_kind(first) or not self.key_kind(f"{first} {key}"):
                return None
            key = f"{first} {key}"
        sep = m.group(3)
        if m.group() == ":" and self._host_port(key, s, end + 1):
            return None
        flags = self._key_flags.get(key)
        if flags is None:
            flags = self._classify_text_key(key)
        authorization = bool(flags & _AUTHORIZATION)
        v = m.end()
        opening = s[v : v + 1]
        if opening == "\\" and s[v + 1 : v + 2] in ('"', "'"):
            quote = s[v : v + 2]
            value_start = v + 2
            value_end = s.find(quote, value_start)
            if value_end < 0:
                value_end = _match_end(_VALUE, s, value_start)
                consumed = value_end
            else:
                consumed = value_end + 2
        elif opening in ('"', "'"):
            value_start = v + 1
            value_end = _match_end(_QUOTED_VALUE[opening], s, value_start)
            consumed = value_end + 1 if s[value_end : value_end + 1] == opening else value_end
        elif opening == "{" or (opening == "[" and not s.startswith("[REDACTED", v)):
            value_start = v
            value_end = consumed = _nested_end(s, v)
        else:
            value_start = v
            if authorization:
                scheme = _AUTH_SCHEME.match(s, v)
                if scheme is not None:
                    value_start = scheme.end()
            line = sep == ":" and bool(flags & _LINE_HEADER)
            value_end = _match_end(_LINE_VALUE if line else _VALUE, s, value_start)
            return value_start, value_end, value_end, self._pair_kind(s, v, value_start)
        if authorization:
            scheme = _AUTH_SCHEME.match(s, value_start, value_end)
            if scheme is not None:
                kind = self._pair_kind(s, value_start, scheme.end())
                return scheme.end(), value_end, consumed, kind
        return value_start, value_end, consumed, "secret"

    def _host_port(self, key: str, s: str, value_start: int) -> bool:
        """``auth.example.com:443``: a host name and a port, not a key and its value. The
        last label must not be a word of a sensitive phrase (``db.password:1234`` is a
        pair), and host names have no ``_``."""
        if "." not in key or "_" in key or _PORT.match(s, value_start) is None:
            return False
        label = key.rpartition(".")[2]
        return label.isalpha() and label.lower() not in self._phrase_words

    def _classify_text_key(self, key: str) -> int:
        """Flags of a sensitive key met in text: how its value is read (cached)."""
        segments = _segments(key)
        flags = _AUTHORIZATION if not _AUTH_SEGMENTS.isdisjoint(segments) else 0
        if segments and segments[-1] in _LINE_HEADERS:
            flags |= _LINE_HEADER
        if len(self._key_flags) < _KEY_CACHE_MAX:
            self._key_flags[key] = flags
        return flags

    @staticmethod
    def _pair_kind(s: str, scheme_start: int, value_start: int) -> str:
        """``bearer`` after a kept ``Bearer`` scheme word (as the Bearer rule marks it)."""
        if (
            value_start - scheme_start > 6
            and s[scheme_start : scheme_start + 6].lower() == "bearer"
        ):
            return "bearer"
        return "secret"

    # -- containers ----------------------------------------------------------------------

    def redact(self, value: Any) -> Any:
        """``value`` with PII removed, recursively; unchanged objects are returned as is.

        Strings are scanned; dicts are checked by key and recursed; lists, tuples and
        sets are recursed (a new container only when something changed). Numbers, None,
        dates and UUIDs are never touched; bytes become their ``repr``; anything else
        its ``str()``, both then scanned.
        """
        return self._redact(value, 0)

    def _redact(self, value: Any, depth: int) -> Any:
        if isinstance(value, str):
            return self.redact_str(value)
        if value is None or isinstance(value, _PASSTHROUGH):
            return value
        if isinstance(value, bytes | bytearray):  # repr, not str(): no BytesWarning
            return self.redact_str(repr(value))
        if depth >= _MAX_DEPTH:  # also ends reference cycles
            _errors.report("redaction", "too_deep")
            return "<too deep>"
        if isinstance(value, dict):
            return self._redact_dict(value, depth + 1)
        if isinstance(value, list | tuple | set | frozenset):
            items = [self._redact(v, depth + 1) for v in value]
            if all(a is b for a, b in zip(items, value, strict=True)):
                return value
            if isinstance(value, list):
                return items
            if isinstance(value, tuple):  # subclasses (namedtuples) become plain tuples
                return tuple(items)
            return frozenset(items) if isinstance(value, frozenset) else set(items)
        try:
            text = str(value)
        except Exception as exc:
            _errors.report("redaction", "unrepresentable_value", exc)
            return f"<unrepresentable {type(value).__name__}>"
        return self.redact_str(text)

    def _redact_dict(self, value: dict[Any, Any], depth: int) -> dict[Any, Any]:
        cache = self._key_cache
        out: dict[Any, Any] | None = None
        for k, v in value.items():
            kind: str | None = ""
            if isinstance(k, str):
                kind = cache.get(k)
                if kind is None:
                    kind = self._classify_key(k)
            new = self._secret_marker(v) if kind else self._redact(v, depth)
            if new is not v:
                if out is None:
                    out = dict(value)
                out[k] = new
        return value if out is None else out

    def redact_fields(
        self, event: dict[str, Any], skip: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        """Redact the top-level fields of a log event in place; keys in ``skip`` (devkit's
        own fields such as ``timestamp`` or ``trace_id``) are left alone. Returns ``event``.
        """
        actions = self._field_actions.get(skip)
        if actions is None:
            actions = self._new_field_actions(skip)
        scan = self._scan
        cached = self._str_cache.get
        for key, value in event.items():
            try:  # a subscript, not .get(): no method call per field
                action = actions[key]
            except KeyError:
                action = self._field_action(key, actions)
            if action:
                if action == _SECRET:
                    event[key] = self._secret_marker(value)
                continue
            cls = type(value)
            if cls is str:
                # redact_str(), its cache read here: a repeated message costs no call
                new = cached(value) if len(value) <= _STR_CACHE_MAX_LEN else None
                if new is None:
                    new = scan(value)
                elif not new:
                    continue  # unchanged
            elif cls is int or cls is float or cls is bool or value is None:
                continue
            else:
                new = self._redact(value, 0)
            if new is not value:
                event[key] = new  # same key: safe while iterating
        return event

    def _new_field_actions(self, skip: frozenset[str]) -> dict[Any, int]:
        actions: dict[Any, int] = dict.fromkeys(skip, _SKIP)
        if len(self._field_actions) < _MAX_SKIP_SETS:  # callers pass one or two sets
            self._field_actions[skip] = actions
        return actions

    def _field_action(self, key: Any, actions: dict[Any, int]) -> int:
        action = _SECRET if isinstance(key, str) and self.key_kind(key) else _SCAN
        if len(actions) < _KEY_CACHE_MAX:  # full: keep answering, stop remembering
            actions[key] = action
        return action

    def redact_attributes(self, attrs: Mapping[str, Any]) -> dict[str, Any]:
        """A redacted copy of OpenTelemetry span attributes (scalars or sequences of
        them); sequences keep their type, a sensitive key's value becomes one marker."""
        out: dict[str, Any] = {}
        # key_kind() and redact_str() with their caches read here: every kept span's
        # attributes come through, and a call costs as much as the lookup it wraps.
        kinds = self._key_cache
        cached = self._str_cache.get
        for key, value in attrs.items():
            kind = kinds.get(key)
            if kind is None:
                kind = self._classify_key(key)
            if kind:
                out[key] = self._secret_marker(value)
            elif type(value) is str:
                new = cached(value) if len(value) <= _STR_CACHE_MAX_LEN else None
                if new is None:
                    new = self._scan(value)
                out[key] = new or value  # "": cached as unchanged
            elif isinstance(value, str):
                out[key] = self.redact_str(value)
            elif isinstance(value, bool | int | float):
                out[key] = value
            else:
                out[key] = self._redact(value, 0)
        return out
