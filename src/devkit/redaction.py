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
  (AWS, GitHub, Google, Slack, Stripe) and, when enabled, IPv4 addresses.

  Card numbers are 13-19 digits, optionally grouped by single blanks or dashes, with a
  valid Luhn checksum and a first digit of 2-6 (the major networks). The first-digit rule
  is what lets 13-digit millisecond Unix timestamps (``1764160000000``, first digit 1)
  through. Card numbers and SSNs must be standalone: not touching a letter, digit or
  ``_``, nor joined by ``-`` to one, so ids such as ``ORD-2024-000123`` or UUIDs whose
  digit groups happen to pass Luhn are never cut into "numbers".

Kinds and markers: each rule has a *kind* (``email``, ``card``, ``jwt``, ``bearer``,
``ssn``, ``cloud_key``, ``ipv4``, and ``secret`` for key-based redaction). ``mask`` mode
writes ``[REDACTED:<kind>]``; ``hash`` mode writes ``<kind>:<12 hex>``, the start of an
HMAC-SHA256 of the value under a secret salt, so equal values stay correlatable across
lines without being recoverable. Markers never contain any part of the secret.

Speed: almost every string in a log line contains no PII, so each regex is guarded by a
C-level pre-check that is far cheaper than the scan (``'@' in s`` before the e-mail
regex, ``'eyJ' in s`` before the JWT regex, one digit search before all digit-based
patterns, minimum lengths, ...). Strings shorter than the shortest pattern are not
scanned at all, and a string in which nothing matched is returned as the *same object*,
so callers can detect "unchanged" with ``is``. Hostile input stays linear: repetitions are
bounded or possessive and most patterns may only start where a token starts.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
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

_KEY_CACHE_MAX = 4096


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
_HAS_DIGIT = re.compile(r"[0-9]").search
# A maximal standalone run of >= 13 digits with single blanks/dashes between them; the
# card candidates inside it are checked in Python (first digit, length, Luhn).
_DIGIT_RUN = re.compile(rf"[0-9]{_NOT_AFTER_TOKEN}(?:[ -]?[0-9]){{12,}}{_NOT_BEFORE_TOKEN}")
# Area 000, 666 and 9xx, group 00 and serial 0000 are never issued.
_SSN = re.compile(
    rf"[0-8]{_NOT_AFTER_TOKEN}[0-9]{{2}}(?<!000)(?<!666)-(?!00)[0-9]{{2}}-(?!0000)[0-9]{{4}}"
    rf"{_NOT_BEFORE_TOKEN}"
)
# Octet values are checked in Python (_ipv4); a dotted neighbour means a longer token.
_IPV4 = re.compile(rf"[0-9](?<![{_W}.].)[0-9]{{0,2}}(?:\.[0-9]{{1,3}}){{3}}(?![{_W}]|\.[0-9])")

_MIN_SCAN_LEN = 6  # "a@b.cc"; nothing shorter can match any pattern
_CARD_FIRST_DIGITS = frozenset("23456")

# Types whose str() cannot carry PII and which the JSON renderer formats natively.
_PASSTHROUGH = (int, float, datetime.date, datetime.time, datetime.timedelta, uuid.UUID)
_KINDS = ("email", "card", "jwt", "bearer", "ssn", "cloud_key", "ipv4", "secret")
_MASKS = {kind: f"[REDACTED:{kind}]" for kind in _KINDS}
_MAX_DEPTH = 32


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i & 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


class Redactor:
    """Removes secrets and PII from log events and span attributes.

    ``mode="mask"`` replaces each finding with ``[REDACTED:<kind>]``; ``mode="hash"``
    with ``<kind>:<first 12 hex of HMAC-SHA256(salt, value)>`` so equal values can still
    be correlated. ``extra_keys`` adds sensitive key phrases (``"user_email"``,
    ``"iban"``); ``redact_ip`` also removes IPv4 addresses. Instances are immutable apart
    from the key cache and safe to share between threads.
    """

    __slots__ = ("_hmac", "_key_cache", "_mode", "_phrases", "_redact_ip", "_repl")

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
        phrases: dict[int, set[tuple[str, ...]]] = {}
        for phrase in (*_SENSITIVE_PHRASES, *(self._extra_phrase(k) for k in extra_keys)):
            phrases.setdefault(len(phrase), set()).add(phrase)
        self._phrases = tuple((n, frozenset(p)) for n, p in sorted(phrases.items()))
        # kind by key; "" for "not sensitive" so a plain .get() tells hit from miss.
        self._key_cache: dict[str, str] = {}
        self._repl = {kind: self._replacer(kind) for kind in _KINDS}

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
        n = len(value)
        if n < _MIN_SCAN_LEN:
            return value
        out = value
        repl = self._repl
        # Bearer first: its token may itself look like a JWT or a cloud key.
        if n >= 8 and "bearer" in out.lower():
            out = self._sub(_BEARER, out, self._bearer)
        if "eyJ" in out:
            out = self._sub(_JWT, out, repl["jwt"])
        if n >= 15:
            if "A" in out:
                out = self._sub(_CLOUD_A, out, repl["cloud_key"])
            if "gh" in out or "hub_pat_" in out:
                out = self._sub(_CLOUD_GITHUB, out, repl["cloud_key"])
            if "k_" in out:
                out = self._sub(_CLOUD_STRIPE, out, repl["cloud_key"])
            if "xox" in out:
                out = self._sub(_CLOUD_SLACK, out, repl["cloud_key"])
        if "@" in out:
            out = self._sub(_EMAIL, out, repl["email"])
        if (
            (n >= 11 or (self._redact_ip and n >= 7))
            # one ASCII word with a letter (a hex id): no standalone number inside it
            and not (out.isalnum() and out.isascii() and not out.isdigit())
            and _HAS_DIGIT(out)
        ):
            if n >= 13:
                out = self._sub(_DIGIT_RUN, out, self._cards)
            if "-" in out:
                out = self._sub(_SSN, out, repl["ssn"])
            if self._redact_ip and "." in out:
                out = self._sub(_IPV4, out, self._ipv4)
        return out

    @staticmethod
    def _sub(pattern: re.Pattern[str], s: str, repl: Callable[[re.Match[str]], str]) -> str:
        if pattern.search(s) is None:  # cheaper than sub() when, as usual, nothing matches
            return s
        out = pattern.sub(repl, s)
        # A callback may decline (returning the match): keep the caller's object then.
        return s if out == s else out

    def _bearer(self, m: re.Match[str]) -> str:
        return m.group(1) + self._marker("bearer", m.group(2))

    def _ipv4(self, m: re.Match[str]) -> str:
        text = m.group()
        for octet in text.split("."):
            if int(octet) > 255 or (len(octet) > 1 and octet[0] == "0"):
                return text
        return self._marker("ipv4", text)

    def _cards(self, m: re.Match[str]) -> str:
        """Card numbers inside one digit run: whole blank-separated groups, 13-19 digits,
        first digit 2-6 (the major networks; a 13-digit ms timestamp starts with 1) and a
        valid Luhn checksum. Longest candidate first, left to right."""
        words = m.group().split(" ")
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
        return " ".join(out) if changed else m.group()

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
        cache = self._key_cache
        redact_str = self.redact_str
        for key, value in event.items():
            if key in skip:
                continue
            if isinstance(key, str):
                kind = cache.get(key)
                if kind is None:
                    kind = self._classify_key(key)
                if kind:
                    event[key] = self._secret_marker(value)
                    continue
            cls = type(value)
            if cls is str:
                new = redact_str(value)
            elif cls is int or cls is float or cls is bool or value is None:
                continue
            else:
                new = self._redact(value, 0)
            if new is not value:
                event[key] = new  # same key: safe while iterating
        return event

    def redact_attributes(self, attrs: Mapping[str, Any]) -> dict[str, Any]:
        """A redacted copy of OpenTelemetry span attributes (scalars or sequences of
        them); sequences keep their type, a sensitive key's value becomes one marker."""
        out: dict[str, Any] = {}
        for key, value in attrs.items():
            if self.key_kind(key):
                out[key] = self._secret_marker(value)
            elif isinstance(value, str):
                out[key] = self.redact_str(value)
            elif isinstance(value, bool | int | float):
                out[key] = value
            else:
                out[key] = self._redact(value, 0)
        return out
