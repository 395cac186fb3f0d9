"""Hostile input stays linear: a megabyte built to make a backtracking scanner explode.

Every case is 1 MiB and must be redacted in well under the bound; a super-linear scan
(quadratic in 1 MiB is ~10^12 steps) would take hours. Each case aims at one rule: runs
that look like the start of a pattern but never finish one, separators without values,
unterminated quotes and brackets, and the shapes each rule's bounds exist for.
"""

from __future__ import annotations

import time

import pytest

from devkit.redaction import Redactor

M = 1 << 20
#: Generous for a shared, noisy machine: the slowest case takes a fraction of it.
BOUND_S = 5.0

CASES = {
    # key-value pairs
    "a=": "a=" * (M // 2),
    "password=": "password=" * (M // 9),
    "password: ": "password: " * (M // 10),
    "token, no separator": "token " * (M // 6),
    "one endless key": "token" * (M // 5),
    "api key: ": "api key: " * (M // 9),
    "credit card: ": "credit card: " * (M // 13),
    "unterminated quote": 'password="' + "a" * M,
    "quotes": 'password="' * (M // 10),
    "escaped quotes": 'password=\\"' * (M // 11),
    "unclosed braces": "password={" * (M // 10),
    "unclosed brackets": "password=[" * (M // 10),
    "JSON keys": '{"password": ' * (M // 13),
    "header lines": "Authorization: Basic " * (M // 21),
    "backslashes": "token=" + "\\" * M,
    "host ports": "auth.example.com:443 " * (M // 21),
    # digits: cards, SSNs, IPv4
    "digits": "1" * M,
    "digits and blanks": "1 " * (M // 2),
    "digits and dashes, glued end": "1-" * (M // 2) + "1a",
    "card groups": "4111 " * (M // 5),
    "SSN halves": "123-45-" * (M // 7),
    "dotted octets": "1.1.1." * (M // 6),
    # e-mail, URL, tokens
    "@": "@" * M,
    "a@": "a@" * (M // 2),
    "a@b.": "a@b." * (M // 4),
    "long local part": "a" * M + "@b.cc",
    "labels": "a@" + "b." * (M // 2),
    "://": "://" * (M // 3),
    "user info without @": "://u:" + "a" * M,
    "user info of @": "://u:" + "@" * M,
    "eyJ": "eyJ" * (M // 3),
    "Bearer": "Bearer " * (M // 7),
    "bearer and blanks": "bearer" + " " * M,
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_megabyte_of_hostile_input_takes_linear_time(name: str) -> None:
    text = CASES[name]
    redactor = Redactor(mode="hash", salt=b"hostile", redact_ip=True)
    started = time.perf_counter()
    out = redactor.redact_str(text)
    elapsed = time.perf_counter() - started
    assert elapsed < BOUND_S, f"{name}: {elapsed:.2f} s"
    assert isinstance(out, str)


def test_hostile_pairs_still_lose_their_values() -> None:
    out = Redactor().redact_str('password="' + "a" * M)
    assert out == 'password="[REDACTED:secret]'
    out = Redactor().redact_str('{"session": {"id": "' + "x" * M)  # cut short
    assert out == '{"session": [REDACTED:secret]'
