"""The value scanner as it was before it was rewritten for speed (issue 24), frozen.

``Redactor.redact_str`` must give the same output as this reference on every text that
only holds what the reference knew (e-mail, card, JWT, Bearer, SSN, cloud keys, IPv4):
``test_redaction_reference.py`` checks that on generated text. Do not "fix" this copy;
it is the behaviour the faster code is held to.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable

__all__ = ["ReferenceRedactor"]

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

_MIN_SCAN_LEN = 6
_CARD_FIRST_DIGITS = frozenset("23456")
_KINDS = ("email", "card", "jwt", "bearer", "ssn", "cloud_key", "ipv4", "secret")
_MASKS = {kind: f"[REDACTED:{kind}]" for kind in _KINDS}


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i & 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


class ReferenceRedactor:
    """``redact_str`` of devkit's ``Redactor`` before the rewrite (mask or hash mode)."""

    def __init__(self, *, mode: str = "mask", salt: bytes | None = None, redact_ip: bool = False):
        self._hmac = hmac.new(salt, digestmod=hashlib.sha256) if mode == "hash" and salt else None
        self._redact_ip = redact_ip
        self._repl = {kind: self._replacer(kind) for kind in _KINDS}

    def _marker(self, kind: str, value: str) -> str:
        mac = self._hmac
        if mac is None:
            return _MASKS[kind]
        mac = mac.copy()
        mac.update(value.encode("utf-8", "surrogatepass"))
        return f"{kind}:{mac.hexdigest()[:12]}"

    def _replacer(self, kind: str) -> Callable[[re.Match[str]], str]:
        return lambda m: self._marker(kind, m.group())

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
