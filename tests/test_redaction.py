"""Redaction: key rules, value patterns, mask/hash markers, containers and properties."""

from __future__ import annotations

import datetime
import decimal
import hashlib
import hmac
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devkit import _errors
from devkit.redaction import Redactor

SALT = b"unit-test-salt"
MASK = Redactor()
HASH = Redactor(mode="hash", salt=SALT)
IP = Redactor(redact_ip=True)


def _mac(value: str, salt: bytes = SALT) -> str:
    return hmac.new(salt, value.encode(), hashlib.sha256).hexdigest()[:12]


@pytest.fixture
def lenient() -> Iterator[None]:
    """Guarded failures are counted instead of re-raised (conftest turns strict mode on)."""
    _errors.set_strict(False)
    try:
        yield
    finally:
        _errors.set_strict(True)


# -- keys ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "PASSWORD",
        "db.password",
        "password2",
        "passwd",
        "client_secret",
        "clientSecret",
        "X-Api-Key",
        "api_key",
        "apiKey",
        "APIKey",
        "apikey",
        "refresh_token",
        "authToken",
        "Authorization",
        "http.request.header.authorization",
        "auth",
        "basic-auth",
        "set-cookie",
        "Cookie",
        "sessionId",
        "session_id",
        "ssn",
        "userSSN",
        "cvv",
        "cvv2",
        "credit_card",
        "creditCardNumber",
        "card_number",
        "cardNumber",
        "private_key",
        "privateKey",
        "private key",
    ],
)
def test_sensitive_keys(key: str) -> None:
    assert MASK.key_kind(key) == "secret"
    event = {key: "value-1", "other": "value-2"}
    assert MASK.redact(event) == {key: "[REDACTED:secret]", "other": "value-2"}


@pytest.mark.parametrize(
    "key",
    [
        "tokens_used",
        "author",
        "authority",
        "passage",
        "passwords_count",
        "secretary",
        "oauth_provider",
        "keyboard",
        "api_version",
        "primary_key",
        "card_type",
        "credit_limit",
        "private_ip",
    ],
)
def test_ordinary_keys(key: str) -> None:
    assert MASK.key_kind(key) is None
    event = {key: "value"}
    assert MASK.redact(event) is event


def test_key_decision_is_cached_with_a_bound() -> None:
    redactor = Redactor()
    for i in range(5000):
        assert redactor.key_kind(f"field_{i}") is None
    assert redactor.key_kind("field_secret_9999") == "secret"
    assert len(redactor._key_cache) == 4096  # stops remembering, keeps answering
    assert redactor.key_kind("field_0") is None
    assert redactor.key_kind("field_4999") is None


@pytest.mark.parametrize(
    "value",
    ["hunter2", 1234, 12.5, True, None, {"nested": "dict"}, ["a", "list"], ("t",), b"raw"],
)
def test_sensitive_key_value_is_replaced_whole_whatever_its_type(value: Any) -> None:
    assert MASK.redact({"password": value}) == {"password": "[REDACTED:secret]"}


def test_extra_keys_are_matched_as_phrases() -> None:
    redactor = Redactor(extra_keys=["user_email", "iban"])
    assert redactor.key_kind("user_email") == "secret"
    assert redactor.key_kind("userEmail") == "secret"
    assert redactor.key_kind("billing.user-email.primary") == "secret"
    assert redactor.key_kind("IBAN") == "secret"
    assert redactor.key_kind("email_user") is None  # not the consecutive phrase
    assert redactor.key_kind("user") is None
    assert redactor.key_kind("email") is None
    assert redactor.key_kind("password") == "secret"  # built-ins still apply
    assert MASK.key_kind("iban") is None
    out = redactor.redact({"iban": "DE89370400440532013000", "user_email": "x"})
    assert out == {"iban": "[REDACTED:secret]", "user_email": "[REDACTED:secret]"}


def test_extra_keys_as_a_lone_string_and_invalid_keys() -> None:
    assert Redactor(extra_keys="iban").key_kind("iban") == "secret"
    assert Redactor(extra_keys="iban").key_kind("i") is None
    with pytest.raises(ValueError, match="no letters"):
        Redactor(extra_keys=["--"])


# -- value patterns ----------------------------------------------------------------------

POSITIVE = [
    # e-mail
    ("contact ada@example.com now", "contact [REDACTED:email] now"),
    ("a.b+tag@mail.example.co.uk.", "[REDACTED:email]."),
    ("mailto:X_Y-1@Example.ORG", "mailto:[REDACTED:email]"),
    # payment cards (Visa, Mastercard 5 and 2 series, Amex, Discover, 13-digit Visa)
    ("card 4111 1111 1111 1111 ok", "card [REDACTED:card] ok"),
    ("4111-1111-1111-1111", "[REDACTED:card]"),
    ("pan=4012888888881881;", "pan=[REDACTED:card];"),
    ("(5500000000000004)", "([REDACTED:card])"),
    ("2223 0031 2200 3222", "[REDACTED:card]"),
    ("amex 3782 822463 10005", "amex [REDACTED:card]"),
    ("6011111111111117", "[REDACTED:card]"),
    ("4222222222222", "[REDACTED:card]"),
    ("n 3 4111 1111 1111 1111 x", "n 3 [REDACTED:card] x"),
    ("4111111111111111 5 items", "[REDACTED:card] 5 items"),
    # JWT
    (
        "token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl end",
        "token=[REDACTED:jwt] end",
    ),
    ("eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.", "[REDACTED:jwt]"),
    # Bearer: the word and its blank are kept
    ("Authorization: Bearer abc123.def-456", "Authorization: Bearer [REDACTED:bearer]"),
    ("bearer  dG9rZW4=", "bearer  [REDACTED:bearer]"),
    ("BEARER\tx", "BEARER\t[REDACTED:bearer]"),
    ("BeArEr eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", "BeArEr [REDACTED:bearer]"),
    # SSN
    ("ssn 123-45-6789", "ssn [REDACTED:ssn]"),
    ("(078-05-1120)", "([REDACTED:ssn])"),
    ("899-99-9999", "[REDACTED:ssn]"),
    # cloud keys
    ("key AKIAIOSFODNN7EXAMPLE", "key [REDACTED:cloud_key]"),
    ("ASIA1234567890ABCDEF,", "[REDACTED:cloud_key],"),
    ("t=ghp_" + "a1B2" * 9, "t=[REDACTED:cloud_key]"),
    ("gho_" + "Z" * 40, "[REDACTED:cloud_key]"),
    ("github_pat_" + "11ABC_def" * 3, "[REDACTED:cloud_key]"),
    ("AIza" + "Sy-_0123456789abcdefghijklmnopqrstu", "[REDACTED:cloud_key]"),
    ("xoxb-1234567890-abcdef", "[REDACTED:cloud_key]"),
    ("stripe sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc", "stripe [REDACTED:cloud_key]"),
    ("rk_test_" + "a" * 16, "[REDACTED:cloud_key]"),
]


@pytest.mark.parametrize(("text", "expected"), POSITIVE)
def test_value_patterns_are_masked(text: str, expected: str) -> None:
    assert MASK.redact_str(text) == expected


NEGATIVE = [
    # e-mail look-alikes
    "user@localhost",
    "price @ 5.00",
    "@handle",
    "a@b",
    # cards: Luhn-invalid, ms timestamps, glued, too long, wrong network digit, UUIDs
    "4111111111111112",
    "1764160000000",
    "ts=1764160000000",
    "x4111111111111111",
    "4111111111111111abc",
    "41111111111111111111",
    "7111111111111114",  # Luhn-valid, but no major network starts with 7
    "4111  1111 1111 1111",  # double blank: not one number
    "41111111-1111-4008-8abc-123456789abc",  # digits of groups 1-3 are Luhn-valid
    "123e4567-e89b-12d3-4111-111111111111",  # so are those of groups 4-5
    "1764160000006",  # a Luhn-valid 13-digit ms timestamp: starts with 1
    "1234567812345670",  # Luhn-valid, but starts with 1
    # JWT look-alikes
    "eyJhbGciOiJIUzI1NiJ9",
    "eyJhbGciOiJIUzI1NiJ9.abc.def",
    "keyJar.eyJ.x",
    # bearer look-alikes
    "Bearer",
    "bearers of news",
    "forbearer abc",
    # SSN look-alikes and never-issued numbers
    "000-12-3456",
    "666-12-3456",
    "900-12-3456",
    "123-00-4567",
    "123-45-0000",
    "1123-45-6789",
    "123-45-67890",
    "123-45-6789a",
    "123456789",
    # cloud key look-alikes
    "AKIAIOSFODNN7EXAMPL",
    "AKIAiosfodnn7example",
    "EURASIAPACIFICREGION12",
    "ghp_" + "a" * 35,
    "ghx_" + "a" * 40,
    "AIza" + "b" * 34,
    "xoxz-1234567890",
    "xoxb-12345",
    "sk_live_short",
    "pk_live_" + "a" * 24,
    "task_live_" + "a" * 20,
    # IPv4 while disabled
    "10.0.0.1",
]


@pytest.mark.parametrize("text", NEGATIVE)
def test_look_alikes_survive_as_the_same_object(text: str) -> None:
    assert MASK.redact_str(text) is text
    assert HASH.redact_str(text) is text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("from 10.0.0.1:8080", "from [REDACTED:ipv4]:8080"),
        ("255.255.255.255", "[REDACTED:ipv4]"),
        ("hosts 192.168.1.254, 8.8.8.8.", "hosts [REDACTED:ipv4], [REDACTED:ipv4]."),
    ],
)
def test_ipv4_when_enabled(text: str, expected: str) -> None:
    assert IP.redact_str(text) == expected
    assert MASK.redact_str(text) is text


@pytest.mark.parametrize(
    "text", ["1.2.3", "256.1.1.1", "1.2.3.4.5", "01.2.3.4", "v1.2.3.4", "1.2.3.4a", "10.0.0"]
)
def test_ipv4_look_alikes_survive_even_when_enabled(text: str) -> None:
    assert IP.redact_str(text) is text


ORDINARY = [
    "request completed",
    "ORD-2024-000123",
    "123e4567-e89b-12d3-a456-426614174000",
    str(uuid.UUID(int=0x4111_1111_1111_4111_8111_1111_1111_1111)),
    "4bf92f3577b34da6a3ce929d0e0e4736",
    "00f067aa0ba902b7",
    "b1a2c3d4e5f60718",
    "1.2.3",
    "2024-05-17",
    "2024-05-17T12:34:56.789Z",
    "2024-05-17 12:34:56+02:00",
    "1234567812345678",
    "1764160000000",
    "https://example.com/items/42?page=2&sort=asc",
    "/items/{item_id}",
    "GET",
    "",
    "tokens_used=512 duration_ms=1.23",
    "Ada Lovelace",
    "paid 12.50 EUR for 3 items",
    "phone +1 555 0100",
    "SELECT * FROM t WHERE id = 42",
]


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_values_survive_byte_for_byte(text: str) -> None:
    for redactor in (MASK, HASH, IP):
        assert redactor.redact_str(text) is text
        assert redactor.redact(text) is text


@pytest.mark.parametrize(
    "value",
    [
        4111111111111111,
        1764160000000,
        1.5,
        True,
        None,
        decimal.Decimal("1.5"),
        datetime.datetime(2024, 5, 17, 12, 0, tzinfo=datetime.UTC),
        datetime.date(2024, 5, 17),
        uuid.UUID("123e4567-e89b-12d3-a456-426614174000"),
    ],
)
def test_scalars_are_never_touched(value: Any) -> None:
    out = MASK.redact(value)
    if isinstance(value, decimal.Decimal):  # any other object: its str(), scanned
        assert out == "1.5"
    else:
        assert out is value


# -- markers -----------------------------------------------------------------------------


def test_hash_mode_marker_format_and_determinism() -> None:
    secret = "ada@example.com"
    first = HASH.redact_str(f"mail {secret}")
    assert first == f"mail email:{_mac(secret)}"
    assert re.fullmatch(r"mail email:[0-9a-f]{12}", first)
    assert HASH.redact_str(f"mail {secret}") == first
    assert Redactor(mode="hash", salt=SALT).redact_str(f"mail {secret}") == first
    other = Redactor(mode="hash", salt=b"another-salt").redact_str(f"mail {secret}")
    assert other != first
    assert other.startswith("mail email:")
    assert HASH.redact_str("mail bob@example.com") != first
    assert "ada" not in first
    assert "example" not in first


@pytest.mark.parametrize(("text", "expected"), POSITIVE)
def test_hash_mode_never_echoes_the_secret(text: str, expected: str) -> None:
    out = HASH.redact_str(text)
    kind = re.search(r"\[REDACTED:(\w+)\]", expected)
    assert kind is not None
    assert re.search(rf"{kind[1]}:[0-9a-f]{{12}}", out)
    assert "[REDACTED" not in out
    # what mask mode removed is absent from the hash output too
    mask_parts = expected.split(f"[REDACTED:{kind[1]}]")
    removed = text.removeprefix(mask_parts[0]).removesuffix(mask_parts[-1])
    assert removed
    assert removed not in out


def test_hash_mode_hashes_the_matched_substring() -> None:
    assert HASH.redact_str("Bearer tok3n") == f"Bearer bearer:{_mac('tok3n')}"
    assert HASH.redact_str("4111 1111 1111 1111") == f"card:{_mac('4111 1111 1111 1111')}"


def test_hash_mode_for_keys_hashes_str_of_the_value() -> None:
    assert HASH.redact({"password": "hunter2"}) == {"password": f"secret:{_mac('hunter2')}"}
    assert HASH.redact({"pin_token": 1234}) == {"pin_token": f"secret:{_mac('1234')}"}
    nested = {"a": 1}
    assert HASH.redact({"session": nested}) == {"session": f"secret:{_mac(str(nested))}"}


def test_hash_mode_needs_a_salt() -> None:
    with pytest.raises(ValueError, match="salt"):
        Redactor(mode="hash")
    with pytest.raises(ValueError, match="salt"):
        Redactor(mode="hash", salt=b"")
    with pytest.raises(ValueError, match="mode"):
        Redactor(mode="scramble")  # type: ignore[arg-type]
    assert Redactor(mode="mask", salt=None).redact_str("a@b.cc") == "[REDACTED:email]"


def test_repr_does_not_show_the_salt() -> None:
    assert "unit-test-salt" not in repr(HASH)
    assert "hash" in repr(HASH)


# -- containers ----------------------------------------------------------------------------


def test_nested_containers_are_redacted_without_mutating_the_input() -> None:
    event: dict[str, Any] = {
        "user": {"name": "Ada", "emails": ["ada@example.com", "ops@example.org"]},
        "pair": ("4111111111111111", 7),
        "tags": {"x", "ssn 123-45-6789"},
        "frozen": frozenset({"a@b.cc"}),
        "clean": ["ok", 1, {"deep": ("fine",)}],
        "credentials": {"api_key": "k-123", "region": "eu"},
    }
    out = MASK.redact(event)
    assert out == {
        "user": {"name": "Ada", "emails": ["[REDACTED:email]", "[REDACTED:email]"]},
        "pair": ("[REDACTED:card]", 7),
        "tags": {"x", "ssn [REDACTED:ssn]"},
        "frozen": frozenset({"[REDACTED:email]"}),
        "clean": ["ok", 1, {"deep": ("fine",)}],
        "credentials": {"api_key": "[REDACTED:secret]", "region": "eu"},
    }
    assert out is not event
    assert out["clean"] is event["clean"]  # untouched branches are shared, not copied
    assert event["user"]["emails"] == ["ada@example.com", "ops@example.org"]
    assert event["credentials"]["api_key"] == "k-123"


def test_clean_containers_are_returned_as_the_same_object() -> None:
    value = {"a": [1, "two", ("three", {"four": 4.0})], "b": {"c", "d"}, "e": None}
    assert MASK.redact(value) is value
    empties: list[Any] = [[], (), set(), frozenset(), {}]
    for container in empties:
        assert MASK.redact(container) is container


def test_sensitive_key_with_a_dict_value() -> None:
    event = {"auth": {"user": "ada", "password": "x", "email": "ada@example.com"}}
    assert MASK.redact(event) == {"auth": "[REDACTED:secret]"}


def test_non_string_keys_are_not_key_checked_but_values_are() -> None:
    assert MASK.redact({1: "ada@example.com", None: "ok"}) == {1: "[REDACTED:email]", None: "ok"}


def test_other_objects_go_through_str() -> None:
    class Customer:
        def __str__(self) -> str:
            return "Customer(ada@example.com)"

    assert MASK.redact(Customer()) == "Customer([REDACTED:email])"
    assert MASK.redact(b"ada@example.com") == "b'[REDACTED:email]'"
    assert MASK.redact(bytearray(b"ok")) == "bytearray(b'ok')"


def test_unrepresentable_object_is_counted(lenient: None) -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no str for you")

    assert MASK.redact(Broken()) == "<unrepresentable Broken>"
    assert MASK.redact([Broken(), "ok"]) == ["<unrepresentable Broken>", "ok"]
    assert _errors.counts()[("redaction", "unrepresentable_value")] == 2


def test_unrepresentable_object_reraises_in_strict_mode() -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no str for you")

    with pytest.raises(RuntimeError, match="no str"):
        MASK.redact(Broken())


def test_reference_cycles_end_at_a_depth_limit() -> None:
    loop: list[Any] = ["ada@example.com"]
    loop.append(loop)
    out = MASK.redact(loop)
    assert out[0] == "[REDACTED:email]"
    assert "<too deep>" in repr(out)
    assert _errors.counts()[("redaction", "too_deep")] == 1


# -- log events and span attributes -------------------------------------------------------


def test_redact_fields_is_in_place_and_honours_skip() -> None:
    event: dict[str, Any] = {
        "timestamp": "2024-05-17T12:00:00.000Z",
        "trace_id": "ada@example.com",  # skipped: devkit's own field
        "message": "login for ada@example.com",
        "password": "hunter2",
        "status_code": 200,
        "user": {"email": "ada@example.com"},
        "route": "/items/{item_id}",
    }
    route = event["route"]
    out = MASK.redact_fields(event, frozenset({"timestamp", "trace_id"}))
    assert out is event
    assert event == {
        "timestamp": "2024-05-17T12:00:00.000Z",
        "trace_id": "ada@example.com",
        "message": "login for [REDACTED:email]",
        "password": "[REDACTED:secret]",
        "status_code": 200,
        "user": {"email": "[REDACTED:email]"},
        "route": "/items/{item_id}",
    }
    assert event["route"] is route


def test_redact_fields_without_skip() -> None:
    event: dict[str, Any] = {"trace_id": "ada@example.com", "n": 1}
    assert MASK.redact_fields(event) == {"trace_id": "[REDACTED:email]", "n": 1}


def test_redact_attributes_returns_a_new_dict_keeping_sequence_types() -> None:
    attrs = {
        "http.request.header.authorization": ("Bearer abc",),
        "enduser.id": "ada@example.com",
        "http.status_code": 200,
        "sampled": True,
        "ratio": 0.5,
        "emails": ["ada@example.com", "ok"],
        "tags": ("a", "b"),
    }
    out = MASK.redact_attributes(attrs)
    assert out == {
        "http.request.header.authorization": "[REDACTED:secret]",
        "enduser.id": "[REDACTED:email]",
        "http.status_code": 200,
        "sampled": True,
        "ratio": 0.5,
        "emails": ["[REDACTED:email]", "ok"],
        "tags": ("a", "b"),
    }
    assert out is not attrs
    assert out["tags"] is attrs["tags"]
    assert attrs["enduser.id"] == "ada@example.com"


# -- properties ------------------------------------------------------------------------------

_TEXT = st.text(alphabet="abcXYZ .,;:!?()", max_size=20)


@st.composite
def emails(draw: st.DrawFn) -> str:
    local = draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._%+-]{0,30}", fullmatch=True))
    labels = draw(
        st.lists(st.from_regex(r"[a-z0-9][a-z0-9-]{0,14}", fullmatch=True), min_size=1, max_size=3)
    )
    tld = draw(st.from_regex(r"[a-zA-Z]{2,6}", fullmatch=True))
    return f"{local}@{'.'.join(labels)}.{tld}"


def _check_digit(body: str) -> str:
    for d in "0123456789":
        if _luhn(body + d):
            return d
    raise AssertionError("unreachable")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


@st.composite
def luhn_digits(draw: st.DrawFn, valid: bool, first: str, sizes: tuple[int, int]) -> str:
    size = draw(st.integers(*sizes))
    body = draw(st.sampled_from(first)) + draw(
        st.text(alphabet="0123456789", min_size=size - 2, max_size=size - 2)
    )
    check = _check_digit(body)
    if not valid:
        check = draw(st.sampled_from([d for d in "0123456789" if d != check]))
    return body + check


@st.composite
def grouped(draw: st.DrawFn, digits: str) -> str:
    cuts = sorted(draw(st.sets(st.integers(1, len(digits) - 1), max_size=6)))
    parts = [digits[a:b] for a, b in zip([0, *cuts], [*cuts, len(digits)], strict=True)]
    out = parts[0]
    for part in parts[1:]:
        out += draw(st.sampled_from(" -")) + part
    return out


@settings(max_examples=200)
@given(email=emails(), before=_TEXT, after=_TEXT)
def test_property_email_never_survives(email: str, before: str, after: str) -> None:
    out = MASK.redact_str(f"{before} {email} {after}")
    assert email not in out
    assert "[REDACTED:email]" in out


@settings(max_examples=200)
@given(
    card=luhn_digits(valid=True, first="23456", sizes=(13, 19)).flatmap(grouped),
    before=_TEXT,
    after=_TEXT,
)
def test_property_luhn_valid_card_never_survives(card: str, before: str, after: str) -> None:
    out = MASK.redact_str(f"{before} {card} {after}")
    assert card not in out
    assert re.sub(r"[ -]", "", card) not in re.sub(r"[ -]", "", out)
    assert out == f"{before} [REDACTED:card] {after}"


@settings(max_examples=200)
@given(number=luhn_digits(valid=False, first="0123456789", sizes=(16, 16)), before=_TEXT)
def test_property_luhn_invalid_number_survives(number: str, before: str) -> None:
    assert not _luhn(number)
    assert MASK.redact_str(number) is number
    text = f"{before} {number} end"
    assert MASK.redact_str(text) is text
