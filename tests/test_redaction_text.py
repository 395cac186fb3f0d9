"""Secrets where they really hide: key-value pairs, URLs and headers inside free text, in
messages, exception texts, bytes values, span attributes and probe bodies (issue 22)."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Link, Status, StatusCode

import devkit
from devkit import health
from devkit.health import HealthRegistry
from devkit.redaction import Redactor
from devkit.testing import CapturedLogs
from devkit.tracing._export import BatchExporter

SALT = b"text-salt"
MASK = Redactor()
HASH = Redactor(mode="hash", salt=SALT)
S = "[REDACTED:secret]"


# -- key=value and key: value ----------------------------------------------------------------

PAIRS = [
    # separators, blanks, case
    ("login failed: password=hunter2 user=ada", f"login failed: password={S} user=ada"),
    ("password = hunter2", f"password = {S}"),
    ("token: abc123", f"token: {S}"),
    ("Token: abc123 and more", f"Token: {S} and more"),
    ("PASSWORD=hunter2", f"PASSWORD={S}"),
    ("passwd:=x1", f"passwd:={S}"),
    ('"password" => "hunter2"', f'"password" => "{S}"'),
    # keys by the key rules: segments, camelCase, prefixes
    ("client_secret=s3cr3t", f"client_secret={S}"),
    ("clientSecret: s3cr3t", f"clientSecret: {S}"),
    ("db.password=pg-pass", f"db.password={S}"),
    ("X-Api-Key: k-123", f"X-Api-Key: {S}"),
    ("refresh_token=r1.r2", f"refresh_token={S}"),
    ("sessionId=8f3a2b", f"sessionId={S}"),
    ("--password=hunter2 --user ada", f"--password={S} --user ada"),
    ("cvv=123 exp=12/27", f"cvv={S} exp=12/27"),
    # two-word phrases
    ("API key: abc123", f"API key: {S}"),
    ("private key: MIIEvQ", f"private key: {S}"),
    ("credit card: 4111-1111-1111-1112", f"credit card: {S}"),
    # value forms: quotes, escapes, lists, reprs, brackets
    ('client_secret="s3cr3t value" next=1', f'client_secret="{S}" next=1'),
    ("refresh_token: 'abc def'", f"refresh_token: '{S}'"),
    ('password="a\\"b" user=ada', f'password="{S}" user=ada'),
    ('{"password": "hunter2", "user": "ada"}', f'{{"password": "{S}", "user": "ada"}}'),
    ('{"password":"hunter2","user":"ada"}', f'{{"password":"{S}","user":"ada"}}'),
    ('{\\"password\\": \\"hunter2\\"}', f'{{\\"password\\": \\"{S}\\"}}'),
    ("{'password': 'hunter2'}", f"{{'password': '{S}'}}"),
    ("User(name=ada, password=hunter2)", f"User(name=ada, password={S})"),
    ("User{name=ada, token=t0k}", f"User{{name=ada, token={S}}}"),
    ("token=abc;user=ada", f"token={S};user=ada"),
    ("password=p@ss=w0rd! ok", f"password={S} ok"),
    ('"auth": {"user": "ada", "pass": "x"}, "n": 1', f'"auth": {S}, "n": 1'),
    ('"session": [1, 2, {"a": "]"}], "n": 1', f'"session": {S}, "n": 1'),
    ("b'password=hunter2\\nnext'", f"b'password={S}\\nnext'"),
    # query strings
    ("/cb?access_token=abc.def&state=xyz#f", f"/cb?access_token={S}&state=xyz#f"),
    ("GET /items?api_key=abc&token=def HTTP/1.1", f"GET /items?api_key={S}&token={S} HTTP/1.1"),
    ("?page=2&session_id=9f8e&sort=asc", f"?page=2&session_id={S}&sort=asc"),
]


@pytest.mark.parametrize(("text", "expected"), PAIRS)
def test_sensitive_pairs_in_text(text: str, expected: str) -> None:
    assert MASK.redact_str(text) == expected


HEADERS = [
    ("Authorization: Bearer abc123.def-456", "Authorization: Bearer [REDACTED:bearer]"),
    ("Authorization: Basic dXNlcjpwYXNz\r\nHost: x", f"Authorization: Basic {S}\r\nHost: x"),
    (
        'Authorization: Digest username="Mufasa", realm="x", response="6629fae4"',
        f"Authorization: Digest {S}",
    ),
    ("proxy-authorization: NTLM TlRMTVNTUAAB", f"proxy-authorization: NTLM {S}"),
    ("authorization: sk-abc123", f"authorization: {S}"),
    ("Cookie: session=abc; theme=dark", f"Cookie: {S}"),
    ("Set-Cookie: sid=abc123; Path=/; HttpOnly", f"Set-Cookie: {S}"),
    (
        "GET / HTTP/1.1\\r\\nCookie: a=1; b=2\\r\\nHost: x",
        f"GET / HTTP/1.1\\r\\nCookie: {S}\\r\\nHost: x",
    ),
    (
        "{'Authorization': 'Basic abc', 'Accept': 'json'}",
        f"{{'Authorization': 'Basic {S}', 'Accept': 'json'}}",
    ),
    ('{"authorization": "Bearer abc"}', '{"authorization": "Bearer [REDACTED:bearer]"}'),
    ("auth=Basic abc&x=1", f"auth=Basic {S}&x=1"),
]


@pytest.mark.parametrize(("text", "expected"), HEADERS)
def test_authorization_and_cookie_headers_in_text(text: str, expected: str) -> None:
    assert MASK.redact_str(text) == expected


URLS = [
    (
        "postgres://app:s3cr3t@db.internal:5432/orders",
        "postgres://app:[REDACTED:url_password]@db.internal:5432/orders",
    ),
    ("redis://:pw@cache:6379/0", "redis://:[REDACTED:url_password]@cache:6379/0"),
    ("https://ada:p@ss@example.com/x", "https://ada:[REDACTED:url_password]@example.com/x"),
    ("amqp://guest:gu%40st@mq/", "amqp://guest:[REDACTED:url_password]@mq/"),
    ("dsn='mysql://u:p:w@h/db'", "dsn='mysql://u:[REDACTED:url_password]@h/db'"),
    (
        "https://u:pw@example.com/cb?token=abc",
        f"https://u:[REDACTED:url_password]@example.com/cb?token={S}",
    ),
]


@pytest.mark.parametrize(("text", "expected"), URLS)
def test_url_passwords_keep_scheme_user_and_host(text: str, expected: str) -> None:
    assert MASK.redact_str(text) == expected


ORDINARY_TEXT = [
    "tokens_used=512 duration_ms=1.23",
    "author=ada authority=eu",
    "author: Ada Lovelace",
    "password check: ok",  # a phrase with a sensitive word is prose, not a key
    "session timeout: 30s",
    "token expired: true",
    "the password is wrong",  # no separator: prose
    "https://example.com/items/42?page=2&sort=asc",
    "https://api.example.com:8443/v1/users",
    "http://api:8080/health",
    "connect auth.example.com:443 failed",  # a host name and its port
    "session.example.org:8443",
    "KeyError: 'api_key'",
    "api_version=2 card_type=visa primary_key=7",
    "private_ip=10.0.0.1 passwords_count=3",
    "sort=api&page=2",
    "oauth_provider=google",
    "secret santa list",
]


@pytest.mark.parametrize("text", ORDINARY_TEXT)
def test_ordinary_text_survives_as_the_same_object(text: str) -> None:
    assert MASK.redact_str(text) is text
    assert HASH.redact_str(text) is text


def test_value_patterns_keep_their_kind_inside_a_pair() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"
    assert MASK.redact_str(f"token={jwt} end") == "token=[REDACTED:jwt] end"
    assert MASK.redact_str("password=ada@example.com") == "password=[REDACTED:email]"
    assert MASK.redact_str("password=ada@example.com!x") == f"password={S}"  # the tail too


def test_hash_mode_pairs_in_text_hash_like_keys_in_mappings() -> None:
    mac = HASH.redact({"password": "hunter2"})["password"]
    assert HASH.redact_str("password=hunter2") == f"password={mac}"
    assert HASH.redact_str('{"password": "hunter2"}') == f'{{"password": "{mac}"}}'
    out = HASH.redact_str("postgres://app:s3cr3t@db/x")
    assert re.fullmatch(r"postgres://app:url_password:[0-9a-f]{12}@db/x", out)
    assert "s3cr3t" not in out


def test_redacting_twice_changes_nothing_in_mask_mode() -> None:
    # In hash mode the Bearer rule takes the "bearer" of "Bearer bearer:<hex>" for a
    # token again, as it always did; nothing of the secret comes back either way.
    for text, expected in PAIRS + HEADERS + URLS:
        assert MASK.redact_str(expected) == expected, text
        assert MASK.redact_str(MASK.redact_str(text)) == expected, text


def test_extra_keys_apply_in_text() -> None:
    redactor = Redactor(extra_keys=["iban", "user_email"])
    assert redactor.redact_str("iban=DE89370400440532013000 ok") == f"iban={S} ok"
    assert redactor.redact_str("user email: x@y") == f"user email: {S}"
    assert redactor.redact_str("userEmail='x'") == f"userEmail='{S}'"
    assert MASK.redact_str("iban=DE89370400440532013000 ok") == "iban=DE89370400440532013000 ok"


def test_non_ascii_text_keeps_its_positions() -> None:
    # U+0130 lower-cases to two characters: the hint positions must still line up.
    assert MASK.redact_str("İİİ password=hunter2 İ") == f"İİİ password={S} İ"
    assert MASK.redact_str("naïve token: t0k ✓") == f"naïve token: {S} ✓"


def test_bytes_values_are_scanned_as_their_repr() -> None:
    out = MASK.redact({"body": b"user=ada&password=hunter2&next=/", "raw": bytearray(b"token: x")})
    assert out == {
        "body": f"b'user=ada&password={S}&next=/'",
        "raw": f"bytearray(b'token: {S}')",
    }


# -- log records: message, fields, exception message and stack --------------------------------


def test_log_records_redact_pairs_in_messages_fields_and_exceptions(
    devkit_logs: CapturedLogs,
) -> None:
    devkit.init()
    log = devkit.get_logger("a")
    log.info("connecting with password=hunter2", dsn="postgres://app:s3cr3t@db/x")
    try:
        raise PermissionError("rejected Authorization: Basic dXNlcjpwYXNz for api_key=k-987")
    except PermissionError:
        logging.getLogger("b").exception("upstream said Cookie: sid=c00k1e")
    first, second = devkit_logs.records
    for secret in ("hunter2", "s3cr3t", "dXNlcjpwYXNz", "k-987", "c00k1e"):
        assert secret not in str(first) + str(second)
    assert first["message"] == f"connecting with password={S}"
    assert first["dsn"] == "postgres://app:[REDACTED:url_password]@db/x"
    assert second["message"] == f"upstream said Cookie: {S}"
    assert second["error"]["message"] == f"rejected Authorization: Basic {S}"
    assert f"PermissionError: rejected Authorization: Basic {S}" in second["error"]["stack"]


# -- spans: what the export path redacts, and what it does not (yet) -----------------------------


class _Recording(SpanExporter):
    takes_export_spans = True

    def __init__(self) -> None:
        self.got: list[Any] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.got.extend(spans)
        return SpanExportResult.SUCCESS


def _exported_span(name: str, **attributes: Any) -> Any:
    target = _Recording()
    exporter = BatchExporter(target, redact=Redactor().redact_attributes)
    tracer = TracerProvider().get_tracer("t")
    other = tracer.start_span("other")
    with tracer.start_as_current_span(
        name, links=[Link(other.get_span_context(), {"note": "token=l1nk"})]
    ) as span:
        span.set_attributes(attributes)
        span.add_event("retry password=ev3nt", {"detail": "api_key=ev4ttr"})
        span.set_status(Status(StatusCode.ERROR, "denied for password=st4tus"))
    exporter([span])  # type: ignore[list-item]
    assert exporter.force_flush(5)
    exporter.shutdown(1)
    (exported,) = target.got
    return exported


def test_span_attributes_and_event_attributes_are_redacted_in_text() -> None:
    exported = _exported_span(
        "GET /items",
        **{
            "db.statement": "SELECT 1 -- password=hunter2",
            "url.full": "https://u:pw@example.com/cb?token=abc",
            "http.request.header.cookie": "sid=1",
            "tokens_used": 512,
        },
    )
    attrs = dict(exported.attributes)
    assert attrs["db.statement"] == f"SELECT 1 -- password={S}"
    assert attrs["url.full"] == f"https://u:[REDACTED:url_password]@example.com/cb?token={S}"
    assert attrs["http.request.header.cookie"] == S
    assert attrs["tokens_used"] == 512
    assert dict(exported.events[0].attributes) == {"detail": f"api_key={S}"}


def test_span_names_events_status_and_links_are_redacted() -> None:
    exported = _exported_span("login password=n4me")
    text = repr(
        (
            exported.name,
            exported.events[0].name,
            exported.status.description,
            [dict(link.attributes or {}) for link in exported.links],
        )
    )
    for secret in ("n4me", "ev3nt", "st4tus", "l1nk"):
        assert secret not in text


# -- readiness probes ----------------------------------------------------------------------------


def test_probe_bodies_show_check_errors_redacted() -> None:
    registry = HealthRegistry(redact=Redactor().redact_str)

    def db() -> None:
        raise ConnectionError("postgres://app:s3cr3t@db:5432/x refused, password=hunter2")

    def api() -> None:
        raise PermissionError("401 for Authorization: Basic dXNlcjpwYXNz")

    registry.add_check("db", db)
    registry.add_check("api", api)
    registry.mark_started()
    try:
        result = registry.evaluate("ready")
        body = result.body()
        for secret in (b"s3cr3t", b"hunter2", b"dXNlcjpwYXNz"):
            assert secret not in body
        assert result.checks["db"].error == (
            "ConnectionError: postgres://app:[REDACTED:url_password]@db:5432/x refused, "
            f"password={S}"
        )
        assert result.checks["api"].error == f"PermissionError: 401 for Authorization: Basic {S}"
    finally:
        registry.reset()


def test_init_wires_the_redactor_into_probe_bodies() -> None:
    devkit.init()
    registry = health.get_registry()

    def cache() -> None:
        raise TimeoutError("redis://:sup3r@cache:6379 token: t0k3n")

    registry.add_check("cache", cache)
    registry.mark_started()
    error = registry.evaluate("ready").checks["cache"].error
    assert error == f"TimeoutError: redis://:[REDACTED:url_password]@cache:6379 token: {S}"
