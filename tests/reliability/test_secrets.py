"""Secrets where they really hide, and ordinary values that must survive (issue #22, item 8).

Recall: secrets are generated (seeded, so every run measures the same cases) and buried
in realistic text — prose, logfmt, JSON, query strings, URLs, header lines — then written
through devkit's log pipeline the ways applications write them: as the message, as a
field, as a bytes field, as an exception's message (with its stack), and as the name,
attribute and event of an exported span. A leak is any secret that survives anywhere in
the output. Precision: ordinary values that look like numbers, ids or secrets (order ids,
UUIDs, timestamps, versions, prices, hex ids, Luhn-invalid digit runs, prose naming
sensitive words) must come out unchanged.

The unit tests (tests/test_redaction*.py) hold each rule to its exact output; this file
measures the rules together, on the surfaces, and records recall and precision.
"""

from __future__ import annotations

import base64
import io
import json
import random
import string
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import rows

from devkit.config import Settings
from devkit.logs import LogPipeline
from devkit.redaction import Redactor
from devkit.tracing._export import BatchExporter

SECTION = "Secrets"
SEED = 22
CASES = 2_000  # secrets per surface
ORDINARY_CASES = 5_000

FILLER = (
    "user 4711 signed in from the mobile app",
    "retrying upstream call (attempt 3 of 5)",
    "order ORD-2024-000123 shipped to warehouse B",
    "cache miss for key products:page:2",
    "payment declined by issuer, code 05",
    "config loaded in 12.5 ms",
)
KEYS = (
    "password",
    "passwd",
    "api_key",
    "apiKey",
    "X-Api-Key",
    "client_secret",
    "access_token",
    "refresh_token",
    "auth_token",
    "session_id",
    "private_key",
    "db.password",
    "DB_PASSWORD",
    "stripeSecret",
)
# Characters real passwords and tokens use, without the ones that end an unquoted value
# (blanks, quotes, & , ; brackets, backslash): those are generated quoted.
TOKEN_CHARS = string.ascii_letters + string.digits + "-_.~+/!*#$%?@^="


def _token(rng: random.Random, n: int | None = None) -> str:
    size = n if n is not None else rng.randint(10, 40)
    return "".join(rng.choice(TOKEN_CHARS) for _ in range(size))


def _alnum(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(n))


def _luhn_card(rng: random.Random) -> str:
    digits = [rng.choice("2345")] + [str(rng.randint(0, 9)) for _ in range(14)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        v = int(d) * (2 if i % 2 == 0 else 1)
        total += v - 9 if v > 9 else v
    digits.append(str((10 - total % 10) % 10))
    text = "".join(digits)
    sep = rng.choice(["", " ", "-"])
    return sep.join(text[i : i + 4] for i in range(0, 16, 4))


def _jwt(rng: random.Random) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    header = part({"alg": "HS256", "typ": "JWT"})
    body = part({"sub": str(rng.randint(1, 10**6)), "iat": rng.randint(1, 2**31)})
    return f"{header}.{body}.{_alnum(rng, 43)}"


# Each shape: rng -> (text holding the secret, the secret).
Shape = Callable[[random.Random], tuple[str, str]]


def _pair(rng: random.Random) -> tuple[str, str]:
    key, secret = rng.choice(KEYS), _token(rng)
    sep = rng.choice(["=", ": ", " = ", ":"])
    return f"{key}{sep}{secret}", secret


def _quoted_pair(rng: random.Random) -> tuple[str, str]:
    key = rng.choice(KEYS)
    secret = _token(rng) + rng.choice([" with spaces", ";x", ",y", "&z", ""])
    q = rng.choice(['"', "'"])
    return f"{key}={q}{secret}{q}", secret


def _json_pair(rng: random.Random) -> tuple[str, str]:
    key, secret = rng.choice(KEYS), _token(rng)
    return json.dumps({"user": "ada", key: secret, "retries": 3}), secret


def _query(rng: random.Random) -> tuple[str, str]:
    key, secret = rng.choice(("token", "access_token", "api_key", "password")), _alnum(rng, 24)
    return f"GET /oauth/callback?code=abc&{key}={secret}&state=xyz HTTP/1.1", secret


def _url(rng: random.Random) -> tuple[str, str]:
    secret = _token(rng).replace("/", "").replace("@", "").replace("?", "").replace("#", "")
    scheme = rng.choice(("postgres", "mysql", "redis", "amqp", "https"))
    return f"connecting to {scheme}://app_user:{secret}@db.internal:5432/orders", secret


def _header(rng: random.Random) -> tuple[str, str]:
    secret = _alnum(rng, 32)
    return rng.choice(
        (
            (f"Authorization: Basic {secret}", secret),
            (f"authorization: Bearer {secret}", secret),
            (f"Cookie: theme=dark; session={secret}; lang=en", secret),
            (f"X-Api-Key: {secret}", secret),
        )
    )


def _value(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(6)
    if kind == 0:
        secret = f"{_alnum(rng, 8).lower()}@{_alnum(rng, 6).lower()}.example.com"
    elif kind == 1:
        secret = _luhn_card(rng)
    elif kind == 2:
        secret = _jwt(rng)
    elif kind == 3:
        secret = "AKIA" + "".join(
            rng.choice(string.ascii_uppercase + string.digits) for _ in range(16)
        )
    elif kind == 4:
        secret = "ghp_" + _alnum(rng, 36)
    else:
        return f"sending Bearer {(secret := _alnum(rng, 40))} upstream", secret
    return f"value {secret} seen", secret


SHAPES: dict[str, Shape] = {
    "key=value and key: value in prose": _pair,
    "quoted values": _quoted_pair,
    "JSON fragments": _json_pair,
    "query strings": _query,
    "URL credentials": _url,
    "Authorization, Cookie and key headers": _header,
    "e-mail, card, JWT, cloud keys, Bearer": _value,
}


def _texts(rng: random.Random, n: int) -> list[tuple[str, str]]:
    shapes = list(SHAPES.values())
    out = []
    for i in range(n):
        text, secret = shapes[i % len(shapes)](rng)
        out.append((f"{rng.choice(FILLER)}; {text} ({rng.choice(FILLER)})", secret))
    return out


def _pipeline() -> tuple[LogPipeline, io.BytesIO]:
    stream = io.BytesIO()
    return LogPipeline(Settings.from_env({}), Redactor(), stream), stream


def _raise(text: str) -> BaseException:
    try:
        raise RuntimeError(text)
    except RuntimeError as exc:
        return exc


# Surface -> how a text reaches the output (a JSON line, or an exported span's fields).
def _as_message(p: LogPipeline, text: str) -> None:
    p.emit("info", {"event": text, "logger": "app"})


def _as_field(p: LogPipeline, text: str) -> None:
    p.emit("info", {"event": "request failed", "logger": "app", "detail": text})


def _as_bytes(p: LogPipeline, text: str) -> None:
    p.emit("info", {"event": "raw body", "logger": "app", "body": text.encode()})


def _as_exception(p: LogPipeline, text: str) -> None:
    p.emit("error", {"event": "call failed", "logger": "app", "exc_info": _raise(text)})


LOG_SURFACES = {
    "message": _as_message,
    "field": _as_field,
    "bytes field": _as_bytes,
    "exception message and stack": _as_exception,
}


class _Span:
    """The fields of a finished SDK span the exporter reads."""

    def __init__(self, text: str) -> None:
        from opentelemetry.sdk.trace import Event
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self.name = f"query {text}"
        self.context = None
        self.parent = None
        self.kind = SpanKind.INTERNAL
        self.status = Status(StatusCode.ERROR, text)
        self.start_time = 1
        self.end_time = 2
        self.attributes = {"db.statement": text}
        self.events = [Event(f"retry {text}", {"detail": text}, 1)]
        self.links: list[Any] = []
        self.resource = None
        self.instrumentation_scope = None


class _NullExporter:
    takes_export_spans = True

    def export(self, spans: Any) -> Any:
        raise AssertionError("not exported in this test")

    def shutdown(self) -> None:
        pass


def _exported_span_text(exporter: BatchExporter, text: str) -> str:
    span = exporter._prepared(_Span(text))
    assert span is not None
    return repr(
        (
            span.name,
            dict(span.attributes),
            [(e.name, dict(e.attributes or {})) for e in span.events],
            span.status.description,
        )
    )


def test_no_generated_secret_survives_on_any_surface() -> None:
    rng = random.Random(SEED)
    cases = _texts(rng, CASES)
    pipeline, stream = _pipeline()
    for surface, write in LOG_SURFACES.items():
        leaks = []
        for text, secret in cases:
            stream.seek(0)
            stream.truncate()
            write(pipeline, text)
            line = stream.getvalue()
            assert line.count(b"\n") == 1
            record = orjson.loads(line)
            if secret in json.dumps(record, ensure_ascii=False) or secret.encode() in line:
                leaks.append(text)
        assert not leaks, (surface, leaks[:5])
        rows.record(
            SECTION,
            f"secrets in a log {surface}",
            f"{CASES:,} generated secrets in 7 shapes, buried in prose, written as the {surface}",
            secrets=CASES,
            leaked=len(leaks),
            recall=1 - len(leaks) / CASES,
        )
    exporter = BatchExporter(_NullExporter(), redact=Redactor().redact_attributes)
    try:
        leaks = [t for t, s in cases if s in _exported_span_text(exporter, t)]
    finally:
        exporter.shutdown()
    assert not leaks, leaks[:5]
    rows.record(
        SECTION,
        "secrets in span name, attribute, event, status",
        f"{CASES:,} generated secrets, each in all four places of one exported span",
        secrets=CASES,
        leaked=len(leaks),
        recall=1 - len(leaks) / CASES,
    )


def _ordinary(rng: random.Random) -> str:
    kind = rng.randrange(10)
    if kind == 0:
        return f"ORD-{rng.randint(2000, 2030)}-{rng.randint(0, 999999):06d}"
    if kind == 1:
        return str(uuid.UUID(int=rng.getrandbits(128)))
    if kind == 2:
        day = f"{rng.randint(2020, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        time = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
        return f"{day}T{time}.{rng.randint(0, 999):03d}Z"
    if kind == 3:
        return str(rng.randint(1_600_000_000_000, 1_900_000_000_000))  # ms since the epoch
    if kind == 4:
        return f"v{rng.randint(0, 20)}.{rng.randint(0, 99)}.{rng.randint(0, 999)}"
    if kind == 5:
        return f"{rng.randint(0, 99999)}.{rng.randint(0, 99):02d} EUR"
    if kind == 6:
        return "%032x" % rng.getrandbits(128)
    if kind == 7:
        return f"{rng.randint(10**9, 10**10)} items in {rng.randint(1, 500)} ms"
    if kind == 8:
        return rng.choice(
            (
                "password reset requested",
                "token bucket refilled",
                "session expired, please sign in again",
                "the api key rotation runs at midnight",
                "auth service healthy",
                "credit card form rendered",
            )
        )
    return f"GET /items/{rng.randint(1, 10**6)}?page={rng.randint(1, 50)}&sort=price"


def test_ordinary_values_are_left_alone() -> None:
    rng = random.Random(SEED)
    redactor = Redactor()
    values = [_ordinary(rng) for _ in range(ORDINARY_CASES)]
    changed = [v for v in values if redactor.redact_str(v) != v]
    changed += [v for v in values if redactor.redact_fields({"value": v})["value"] != v]
    assert not changed, changed[:10]
    rows.record(
        SECTION,
        "ordinary values",
        f"{ORDINARY_CASES:,} generated order ids, UUIDs, timestamps, versions, prices, hex ids, "
        "digit runs, prose naming sensitive words, query strings; as text and as fields",
        values=ORDINARY_CASES,
        changed=len(changed),
        left_alone=1 - len(changed) / ORDINARY_CASES,
    )
