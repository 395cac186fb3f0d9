"""The cache of recent results and the whole-number shortcut change no output.

``Redactor.redact_str`` remembers what it returned for short strings (a random eighth of
the misses get in, the cache is emptied when full); a field value that is one digit run
skips the search. Both must give, for every string and every call, exactly what a fresh
scan gives, in mask and in hash mode, through ``redact_str`` and ``redact_fields``.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devkit import redaction
from devkit.redaction import Redactor
from redaction_reference import ReferenceRedactor

SALT = b"cache-salt"

TEXTS = [
    "login for ada@example.com",
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "card 4111111111111111 declined",
    "password=hunter2 retry",
    "Authorization: Basic dXNlcjpwYXNz",
    "https://ada:s3cret@db.example.com/x",
    "order placed",
    "ORD-2024-000123",
    "1764160000000",
    "123-45-6789",
]

# Long enough that each text is admitted with near certainty (1 - (7/8) ** 200).
REPEATS = 200


def _fresh(mode: str) -> Redactor:
    return Redactor() if mode == "mask" else Redactor(mode="hash", salt=SALT)


@pytest.mark.parametrize("mode", ["mask", "hash"])
def test_repeated_strings_give_the_first_answer_every_time(mode: str) -> None:
    redactor = _fresh(mode)
    for text in TEXTS:
        expected = _fresh(mode).redact_str(text)
        for _ in range(REPEATS):
            assert redactor.redact_str(text) == expected
            # a new but equal string object: answered from the cache too
            assert redactor.redact_str("".join(list(text))) == expected
        assert text in redactor._str_cache  # the test did exercise the cache


@pytest.mark.parametrize("mode", ["mask", "hash"])
def test_redact_fields_reads_the_same_cache(mode: str) -> None:
    redactor = _fresh(mode)
    skip = frozenset({"timestamp"})
    for _ in range(REPEATS):
        event = {
            "timestamp": "2024-05-17T12:34:56Z",
            "message": "login for ada@example.com",
            "card": "4111 1111 1111 1111",
            "note": "order placed",
        }
        note = event["note"]
        redactor.redact_fields(event, skip)
        expected = _fresh(mode).redact_str("login for ada@example.com")
        assert event["message"] == expected
        assert event["card"] == _fresh(mode).redact_str("4111 1111 1111 1111")
        assert event["note"] is note  # unchanged: the very same object
        assert event["timestamp"] == "2024-05-17T12:34:56Z"


def test_unchanged_strings_come_back_as_the_same_object_from_the_cache() -> None:
    redactor = Redactor()
    for _ in range(REPEATS):
        text = "".join(["order ", "placed"])  # a new object each time
        assert redactor.redact_str(text) is text
    assert redactor._str_cache.get("order placed") == ""


def test_hash_markers_are_per_salt_not_shared_between_redactors() -> None:
    one, other = Redactor(mode="hash", salt=b"one"), Redactor(mode="hash", salt=b"two")
    for _ in range(REPEATS):
        a, b = one.redact_str("mail ada@example.com"), other.redact_str("mail ada@example.com")
    assert a.startswith("mail email:") and b.startswith("mail email:")
    assert a != b
    assert a == Redactor(mode="hash", salt=b"one").redact_str("mail ada@example.com")


def test_the_cache_is_bounded_and_skips_long_strings() -> None:
    redactor = Redactor()
    for i in range(redaction._STR_CACHE_SIZE * 20):
        redactor.redact_str(f"user {i} wrote to user.{i}@example.com")
    assert 0 < len(redactor._str_cache) <= redaction._STR_CACHE_SIZE
    long = "x" * redaction._STR_CACHE_MAX_LEN + " ada@example.com"
    for _ in range(REPEATS):
        assert redactor.redact_str(long).endswith(" [REDACTED:email]")
    assert long not in redactor._str_cache


def test_str_subclasses_are_not_cached_but_still_redacted() -> None:
    class Text(str):
        __slots__ = ()

    redactor = Redactor()
    for _ in range(REPEATS):
        assert redactor.redact_str(Text("login for ada@example.com")) == (
            "login for [REDACTED:email]"
        )
    assert not redactor._str_cache


def test_redaction_leaves_the_applications_random_sequence_alone() -> None:
    random.seed(1234)
    expected = [random.random() for _ in range(3)]
    random.seed(1234)
    redactor = Redactor()
    for i in range(REPEATS):
        redactor.redact_str(f"login for user.{i}@example.com")
    assert [random.random() for _ in range(3)] == expected


# A string that is one run of digits, blanks and dashes takes a shortcut; inside text it
# is found by the search. Both must agree with each other and with the reference.
_RUN_PIECES = st.lists(st.text(alphabet="0123456789", min_size=1, max_size=8), min_size=1)
_NUMBERS = st.tuples(_RUN_PIECES, st.lists(st.sampled_from(" -"), min_size=30, max_size=30)).map(
    lambda parts: (
        "".join(d + sep for d, sep in zip(parts[0], parts[1], strict=False))[:-1]
        if len(parts[0]) > 1
        else parts[0][0]
    )
)


@settings(max_examples=500, deadline=None)
@given(number=_NUMBERS, mode=st.sampled_from(["mask", "hash"]))
def test_a_whole_number_is_redacted_as_inside_text(number: str, mode: str) -> None:
    redactor = _fresh(mode)
    alone = redactor._scan(number)
    framed = redactor._scan(f"({number})")
    assert f"({alone})" == framed
    reference = ReferenceRedactor() if mode == "mask" else ReferenceRedactor(mode="hash", salt=SALT)
    assert alone == reference.redact_str(number)
