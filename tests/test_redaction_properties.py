"""Generated secrets inside realistic text: no leaks, in mask and in hash mode.

Each property builds a secret, puts it where secrets turn up in logs (prose, logfmt,
JSON and Python-repr fragments, query strings, URLs, header lines, exception texts),
surrounded by ordinary words and punctuation, and asserts that the secret is gone. The
secrets are random enough (8+ characters) not to occur in the surrounding words, so
"not in the output" means "removed".
"""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from devkit.redaction import Redactor

REDACTORS = (Redactor(), Redactor(mode="hash", salt=b"property-salt"))

WORDS = [
    "request",
    "failed",
    "for",
    "user",
    "ada",
    "retrying",
    "order",
    "ORD-2024-000123",
    "status=500",
    "took",
    "12.5ms",
    "region=eu-west-1",
    "v1.2.3",
    "ok",
    "the",
    "upstream",
    "2024-05-17T12:34:56Z",
    "id=42",
]
FILLER = st.lists(st.sampled_from(WORDS), max_size=4).map(" ".join)
# Ends a key token: anything that is not a letter, digit, "_", "." or "-".
BEFORE = st.sampled_from([" ", "\n", "(", "[", "{", ",", ";", "?", "&", "'", '"', " -- "])
AFTER = st.sampled_from([" ", "", ",", ";", "\n", ")", "}", "]", " end", ". next"])

# Characters a secret may hold in an unquoted value: a blank, a quote, "&", ",", ";",
# a closing bracket, "<", ">" and "\" end such a value (docs/logs.md#redaction).
SECRET_CHARS = string.ascii_letters + string.digits + "!#$%*+-./=?@^_~:"
SECRETS = st.text(alphabet=SECRET_CHARS, min_size=8, max_size=32).filter(
    lambda s: s[0] not in "{["  # a bracket would start a nested value (also redacted)
)
URL_PASSWORDS = st.text(
    alphabet=string.ascii_letters + string.digits + "-._~!$*+=%@:", min_size=8, max_size=24
)

KEYS = st.sampled_from(
    [
        "password",
        "PASSWORD",
        "passwd",
        "db_password",
        "db.password",
        "password2",
        "client_secret",
        "clientSecret",
        "secret",
        "X-Api-Key",
        "api_key",
        "apiKey",
        "APIKey",
        "access_token",
        "refresh_token",
        "authToken",
        "token",
        "auth",
        "session_id",
        "sessionId",
        "cookie",
        "ssn",
        "cvv",
        "private_key",
        "credit_card",
        "cardNumber",
        "--password",
    ]
)


def _assert_gone(text: str, secret: str) -> None:
    for redactor in REDACTORS:
        out = redactor.redact_str(text)
        assert secret not in out, (redactor, text, out)


@settings(max_examples=400, deadline=None)
@given(
    key=KEYS,
    secret=SECRETS,
    sep=st.sampled_from(["=", ": ", ":", " = ", "="]),
    before=FILLER,
    after=FILLER,
    left=BEFORE,
    right=AFTER,
)
def test_unquoted_pairs_in_prose(
    key: str, secret: str, sep: str, before: str, after: str, left: str, right: str
) -> None:
    _assert_gone(f"{before}{left}{key}{sep}{secret}{right}{after}", secret)


@settings(max_examples=300, deadline=None)
@given(
    key=KEYS,
    secret=st.text(alphabet=SECRET_CHARS + " ,;&)}]'", min_size=8, max_size=32),
    quote=st.sampled_from(['"', "'"]),
    sep=st.sampled_from(["=", ": ", ":", "="]),
    before=FILLER,
    after=FILLER,
)
def test_quoted_pairs_may_hold_any_character(
    key: str, secret: str, quote: str, sep: str, before: str, after: str
) -> None:
    secret = secret.replace(quote, "")
    if len(secret) < 8:
        return
    _assert_gone(f"{before} {key}{sep}{quote}{secret}{quote} {after}", secret)


@settings(max_examples=300, deadline=None)
@given(
    key=KEYS,
    secret=st.text(alphabet=SECRET_CHARS + " ,;&)}]'", min_size=8, max_size=32),
    others=st.dictionaries(
        st.sampled_from(["user", "id", "region", "count", "note"]),
        st.one_of(st.integers(), st.sampled_from(["ada", "eu", "x y"])),
        max_size=3,
    ),
    style=st.sampled_from(["json", "compact", "repr", "escaped"]),
    before=FILLER,
)
def test_json_and_repr_fragments(
    key: str, secret: str, others: dict[str, object], style: str, before: str
) -> None:
    items = [*others.items(), (key, secret)]
    if style == "json":
        body = ", ".join(f'"{k}": "{v}"' if isinstance(v, str) else f'"{k}": {v}' for k, v in items)
        fragment = "{" + body + "}"
    elif style == "compact":
        fragment = "{" + ",".join(f'"{k}":"{v}"' for k, v in items) + "}"
    elif style == "repr":
        secret = secret.replace("'", "")
        fragment = repr({k: (secret if k == key else v) for k, v in items})
    else:  # a JSON document inside a JSON string
        fragment = "{" + ", ".join(f'\\"{k}\\": \\"{v}\\"' for k, v in items) + "}"
    if len(secret) < 8:
        return
    _assert_gone(f"{before} body={fragment} done", secret)


@settings(max_examples=300, deadline=None)
@given(
    key=KEYS,
    secret=SECRETS.map(lambda s: s.replace("&", "").replace("#", "")).filter(lambda s: len(s) >= 8),
    path=st.sampled_from(["/cb", "/api/v1/items", "", "/"]),
    params=st.lists(st.sampled_from(["page=2", "sort=asc", "q=shoes", "lang=en"]), max_size=3),
    position=st.integers(0, 3),
    scheme=st.sampled_from(["https", "http"]),
)
def test_sensitive_query_parameters(
    key: str, secret: str, path: str, params: list[str], position: int, scheme: str
) -> None:
    query = [*params]
    query.insert(min(position, len(query)), f"{key}={secret}")
    url = f"{scheme}://example.com{path}?{'&'.join(query)}"
    _assert_gone(f"GET {url} HTTP/1.1", secret)
    _assert_gone(f"redirecting to '{url}'", secret)


@settings(max_examples=300, deadline=None)
@given(
    password=URL_PASSWORDS,
    user=st.sampled_from(["app", "ada", "", "svc-orders", "u.ser"]),
    scheme=st.sampled_from(
        ["postgres", "postgresql+psycopg", "redis", "amqp", "https", "mongodb+srv"]
    ),
    host=st.sampled_from(["db", "db.internal:5432", "10.0.0.5", "cache.example.com"]),
    tail=st.sampled_from(["", "/orders", "/0?ssl=true", "/x#f"]),
    wrap=st.sampled_from(["{}", "dsn={}", "'{}'", '"{}"', "connect({}) failed", "url: {}"]),
)
def test_url_passwords(
    password: str, user: str, scheme: str, host: str, tail: str, wrap: str
) -> None:
    text = wrap.format(f"{scheme}://{user}:{password}@{host}{tail}")
    _assert_gone(text, password)


@settings(max_examples=300, deadline=None)
@given(
    header=st.sampled_from(
        ["Authorization", "authorization", "Proxy-Authorization", "Cookie", "Set-Cookie"]
    ),
    scheme=st.sampled_from(["Basic ", "Bearer ", "Digest ", "Token ", "", "Negotiate "]),
    secret=SECRETS,
    extra=st.sampled_from(["", "; theme=dark", ", realm=x", "; Path=/; HttpOnly"]),
    framing=st.sampled_from(
        ["{h}: {v}", "{h}: {v}\r\nHost: x", "{h}: {v}\\r\\nHost: x", "'{h}': '{v}'", '"{h}":"{v}"']
    ),
    before=FILLER,
)
def test_authorization_and_cookie_headers(
    header: str, scheme: str, secret: str, extra: str, framing: str, before: str
) -> None:
    if "'" in framing or '"' in framing:
        secret = secret.replace("'", "").replace('"', "")
    value = f"{scheme}{secret}{extra}"
    _assert_gone(f"{before} " + framing.format(h=header, v=value), secret)


_B64URL = string.ascii_letters + string.digits + "-_"


@settings(max_examples=300, deadline=None)
@given(
    secret=st.one_of(
        st.builds(
            lambda a, b, c: f"eyJ{a}.eyJ{b}.{c}",
            *(st.text(alphabet=_B64URL, min_size=6, max_size=30) for _ in range(3)),
        ),
        st.text(alphabet=string.ascii_uppercase + string.digits, min_size=16, max_size=16).map(
            lambda t: "AKIA" + t
        ),
        st.text(alphabet=string.ascii_letters + string.digits, min_size=36, max_size=40).map(
            lambda t: "ghp_" + t
        ),
        st.text(alphabet=string.ascii_letters + string.digits, min_size=16, max_size=30).map(
            lambda t: "sk_live_" + t
        ),
        st.builds(
            lambda a, g, s: f"{a}-{g}-{s}",
            st.integers(1, 899).filter(lambda a: a != 666).map(lambda a: f"{a:03d}"),
            st.integers(1, 99).map(lambda g: f"{g:02d}"),
            st.integers(1, 9999).map(lambda s: f"{s:04d}"),
        ),
    ),
    left=st.sampled_from([" ", "(", "'", '"', "[", ": ", "=", ",", "\n", "<"]),
    right=st.sampled_from([" ", ")", "'", '"', "]", ".", ",", "\n", ">", ""]),
    before=FILLER,
    after=FILLER,
)
def test_value_patterns_in_context(
    secret: str, left: str, right: str, before: str, after: str
) -> None:
    _assert_gone(f"{before}{left}{secret}{right} {after}", secret)


@settings(max_examples=200, deadline=None)
@given(
    token=st.text(
        alphabet=string.ascii_letters + string.digits + "-._~+/", min_size=8, max_size=40
    ),
    word=st.sampled_from(["Bearer", "bearer", "BEARER"]),
    before=FILLER,
)
def test_bearer_tokens_anywhere(token: str, word: str, before: str) -> None:
    _assert_gone(f"{before} {word} {token} rejected", token)


ORDINARY = st.one_of(
    st.uuids().map(str),
    st.integers(0, 10**12).map(lambda n: f"ORD-{n:012d}"),
    st.builds(lambda a, b, c: f"{a}.{b}.{c}", *(st.integers(0, 99) for _ in range(3))),
    st.datetimes().map(lambda d: d.isoformat()),
    st.integers(0, 10**6).map(lambda c: f"{c / 100:.2f} EUR"),
    st.binary(min_size=16, max_size=32).map(bytes.hex),
    st.sampled_from(WORDS),
    st.sampled_from(["tokens_used=512", "author=ada", "card_type=visa", "api_version=2"]),
)


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(ORDINARY, min_size=1, max_size=5), glue=st.sampled_from([" ", ", ", " | "]))
def test_ordinary_values_are_left_alone(parts: list[str], glue: str) -> None:
    text = glue.join(parts)
    for redactor in REDACTORS:
        assert redactor.redact_str(text) is text
