"""The fast value scanner against the one it replaced: same output on the old kinds.

``redaction_reference.ReferenceRedactor`` is the scanner before it was rewritten for speed
(one scan for card numbers and SSNs, substitutions without a pre-search, a Luhn check in
C). On any text made of what the reference knew (e-mail addresses, card numbers, JWTs,
Bearer tokens, SSNs, cloud keys, IPv4 addresses, their look-alikes and ordinary ids) the
two must agree character for character, in mask and in hash mode: recall and precision
of the old kinds are unchanged by construction. The texts hold no ``://`` and no key
word before ``=`` or ``:``, where the newer rules (URL passwords, key-value pairs) apply.
"""

from __future__ import annotations

import itertools
import random
import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from devkit.redaction import Redactor, _luhn_ok
from redaction_reference import ReferenceRedactor

SALT = b"reference-salt"
PAIRS = [
    (Redactor(), ReferenceRedactor()),
    (Redactor(mode="hash", salt=SALT), ReferenceRedactor(mode="hash", salt=SALT)),
    (Redactor(redact_ip=True), ReferenceRedactor(redact_ip=True)),
]


def _luhn_reference(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _with_check_digit(body: str, valid: bool) -> str:
    for d in "0123456789":
        if _luhn_reference(body + d) == valid:
            return body + d
    raise AssertionError("unreachable")


@st.composite
def card_like(draw: st.DrawFn) -> str:
    size = draw(st.integers(9, 21))
    body = draw(st.text(alphabet=string.digits, min_size=size - 1, max_size=size - 1))
    digits = _with_check_digit(body, draw(st.booleans()))
    cuts = sorted(draw(st.sets(st.integers(1, len(digits) - 1), max_size=5)))
    bounds = [0, *cuts, len(digits)]
    out = digits[: bounds[1]]
    for a, b in itertools.pairwise(bounds[1:]):
        out += draw(st.sampled_from([" ", "-", " ", "  ", "--"])) + digits[a:b]
    return out


@st.composite
def ssn_like(draw: st.DrawFn) -> str:
    area = draw(st.sampled_from(["000", "666", "900", "078", "123", "899", "001"]))
    group = draw(st.sampled_from(["00", "05", "45", "99"]))
    serial = draw(st.sampled_from(["0000", "1120", "6789", "0001"]))
    return f"{area}-{group}-{serial}"


_B64 = string.ascii_letters + string.digits + "-_"
FRAGMENTS = st.one_of(
    st.sampled_from(
        [
            "ada@example.com",
            "a.b+tag@mail.example.co.uk",
            "user@localhost",
            "@handle",
            "x@y.z",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "378282246310005",
            "1764160000000",
            "ORD-2024-000123",
            "123e4567-e89b-12d3-a456-426614174000",
            "41111111-1111-4008-8abc-123456789abc",
            "2024-05-17T12:34:56.789Z",
            "2024-05-17 12:34:56+02:00",
            "v1.2.3",
            "10.0.0.1",
            "256.1.1.1",
            "192.168.001.1",
            "AKIAIOSFODNN7EXAMPLE",
            "ASIA1234567890ABCDEF",
            "AIzaSy-_0123456789abcdefghijklmnopqrstu",
            "ghp_" + "a1B2" * 9,
            "github_pat_" + "11ABC_def" * 3,
            "xoxb-1234567890-abcdef",
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            "Bearer",
            "bearer x",
            "BEARER\tdG9rZW4=",
            "forbearer",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
            "eyJhbGciOiJIUzI1NiJ9",
            "keyJar.eyJ.x",
            "Ada Lovelace",
            "paid 12.50 EUR",
            "phone +1 555 0100",
            "request completed",
        ]
    ),
    card_like(),
    ssn_like(),
    st.text(alphabet=string.digits + " -", min_size=1, max_size=30),
    st.text(alphabet=string.ascii_letters + string.digits + "._%+-@", min_size=1, max_size=20),
    st.text(alphabet=_B64, min_size=1, max_size=24).map(lambda t: "eyJ" + t),
    st.builds(
        lambda a, b, c: f"eyJ{a}.eyJ{b}.{c}",
        *(st.text(alphabet=_B64, max_size=12) for _ in range(3)),
    ),
    st.text(alphabet=string.ascii_uppercase + string.digits, min_size=12, max_size=20).map(
        lambda t: "AKIA" + t
    ),
    st.builds(lambda a, b, c, d: f"{a}.{b}.{c}.{d}", *(st.integers(0, 300) for _ in range(4))),
)
GLUE = st.sampled_from([" ", " ", "", "-", ".", ",", "@", "\t", "\n", "(", ")", "_", "/", "'"])


@st.composite
def texts(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.tuples(FRAGMENTS, GLUE), min_size=1, max_size=6))
    return "".join(f + g for f, g in parts)


@settings(max_examples=1500, deadline=None)
@given(text=texts())
@example(text="4111 1111 1111 1111 123-45-6789")
@example(text="12 123-45-6789 4111111111111111 5")
@example(text="4111111111111111 123-45-6789a")
@example(text="a@b.cc.dd.x@e.ff")
@example(text="Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig and ada@example.com")
def test_same_output_as_the_reference(text: str) -> None:
    for fast, reference in PAIRS:
        expected = reference.redact_str(text)
        assert fast.redact_str(text) == expected
        if expected is text:  # unchanged: the very same object, as before
            assert fast.redact_str(text) is text


def test_luhn_check_agrees_with_the_textbook_one() -> None:
    rng = random.Random(24)
    for _ in range(20_000):
        digits = str(rng.randrange(10**11, 10**20))
        assert _luhn_ok(digits) == _luhn_reference(digits), digits
    for digits in ("0", "00", "18", "4111111111111111", "4111111111111112", "79927398713"):
        assert _luhn_ok(digits) == _luhn_reference(digits), digits


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1111",
        "login for ada@example.com",
        "n 3 4111 1111 1111 1111 x",
        "amex 3782 822463 10005 and ssn 123-45-6789 from 10.0.0.1",
        "12 4111111111111111 34 5555555555554444",
        "ts=1764160000000 id=ORD-2024-000123",
    ],
)
def test_known_texts_match_the_reference(text: str) -> None:
    for fast, reference in PAIRS:
        assert fast.redact_str(text) == reference.redact_str(text)
