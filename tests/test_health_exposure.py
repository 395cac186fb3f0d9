"""What a probe body may reveal: a check's error text is shown redacted (secrets in
``key=value`` text, URL credentials, bearer tokens) and without file system paths, and
ordinary text is left as it was."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.health import HealthRegistry
from devkit.redaction import Redactor

SECRET_ERROR = RuntimeError("db password=hunter2 at postgres://u:pw@h/db")


@pytest.fixture
def registry() -> Iterator[HealthRegistry]:
    reg = HealthRegistry(redact=Redactor().redact_str)
    reg.mark_started()
    yield reg
    reg.reset()


def _raises(exc: BaseException) -> object:
    def check() -> None:
        raise exc

    return check


def _error(registry: HealthRegistry, exc: BaseException) -> tuple[str, bytes]:
    registry.add_check("dep", _raises(exc))  # type: ignore[arg-type]
    result = registry.evaluate("ready")
    error = result.checks["dep"].error
    assert error is not None
    return error, result.body()


def test_secrets_in_a_check_error_never_reach_the_probe_body(registry: HealthRegistry) -> None:
    error, body = _error(registry, SECRET_ERROR)
    for secret in (b"hunter2", b":pw@", b"u:pw"):
        assert secret not in body
    assert error.startswith("RuntimeError: db password=[REDACTED")
    assert "postgres://u:[REDACTED" in error


def test_the_async_probe_path_redacts_as_well(registry: HealthRegistry) -> None:
    async def dep() -> None:
        raise SECRET_ERROR

    registry.add_check("dep", dep)
    body = asyncio.run(registry.evaluate_async("ready")).body()
    assert b"hunter2" not in body and b":pw@" not in body
    assert b"RuntimeError" in body


def test_a_missing_file_shows_no_path(registry: HealthRegistry, tmp_path: Path) -> None:
    secret_dir = tmp_path / "mounted-secrets" / "db"

    def read_key() -> None:
        (secret_dir / "client.key").read_bytes()

    registry.add_check("key", read_key)
    result = registry.evaluate("ready")
    error = result.checks["key"].error
    assert error is not None
    assert error.startswith("FileNotFoundError: [Errno 2] No such file or directory: ")
    assert "[REDACTED:path]" in error
    assert b"mounted-secrets" not in result.body() and str(tmp_path).encode() not in result.body()


@pytest.mark.parametrize(
    "message",
    [
        'File "/usr/lib/python3/site-packages/app/db.py", line 12, in connect',
        "cannot open /var/run/secrets/kubernetes.io/serviceaccount/token",
        "config at ~/.aws/credentials is unreadable",
        r"C:\Users\ada\app\settings.ini missing",
        "socket path=/run/app/db.sock: connection refused",
    ],
)
def test_paths_are_hidden_even_without_a_redactor(message: str) -> None:
    # A registry built without devkit's redactor still hides paths.
    reg = HealthRegistry()
    reg.mark_started()
    try:
        error, body = _error(reg, OSError(message))
    finally:
        reg.reset()
    assert "[REDACTED:path]" in error
    for part in ("site-packages", "serviceaccount", ".aws", "Users", "db.sock"):
        assert part.encode() not in body


@pytest.mark.parametrize(
    "message",
    [
        "connection refused by db.internal:5432",
        "GET http://payments.internal/api/v1/health answered 503",
        "1/2 replicas ready, read/write quorum lost",
        "GET /health timed out",
        "order 8f14e45f-ceea-467f-a0e6-3a1f0b6d4c11 stuck since 2026-12-04T07:51:48Z",
    ],
)
def test_ordinary_text_is_left_alone(registry: HealthRegistry, message: str) -> None:
    error, _ = _error(registry, ConnectionError(message))
    assert error == f"ConnectionError: {message}"


def test_path_hiding_comes_before_the_cut() -> None:
    # The cut must not leave a path's head in the body.
    reg = HealthRegistry()
    reg.mark_started()
    path = "/srv/" + "deep/" * 60 + "secret.key"
    try:
        error, body = _error(reg, FileNotFoundError(f"missing {path}"))
    finally:
        reg.reset()
    assert error == "FileNotFoundError: missing [REDACTED:path]"
    assert b"/srv/" not in body
