"""``DEVKIT_METRICS_TOKEN`` and ``DEVKIT_HEALTH_ON_APP_PORT`` on every way devkit answers:
the ASGI and WSGI middleware, Django's middleware and the ``DEVKIT_METRICS_PORT`` server.

With a token, ``/metrics`` answers 401 with an RFC 6750 challenge unless the request
carries ``Authorization: Bearer <token>`` (the scheme in any case); a request with no
credentials gets the bare challenge, one with a wrong token ``error="invalid_token"``.
The probes stay open (kubelet cannot send the token).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import flask
import httpx
import pytest
from asgi_client import call
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import devkit

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "scrape-token-0123456789abcdef"
PROBES = ("/healthz/live", "/healthz/ready", "/healthz/startup")
CHALLENGE = 'Bearer realm="metrics"'
INVALID = 'Bearer realm="metrics", error="invalid_token"'
WRONG = "Bearer wrong-token-0123456789"


class Case(NamedTuple):
    authorization: str | None
    status: int
    #: The ``WWW-Authenticate`` value of a 401, None for a 200.
    challenge: str | None


CASES = [
    Case(None, 401, CHALLENGE),  # no credentials: no error code (RFC 6750 section 3)
    Case(f"Basic {TOKEN}", 401, CHALLENGE),  # another scheme: not a bearer credential
    Case(WRONG, 401, INVALID),
    Case(f"Bearer {TOKEN}x", 401, INVALID),  # a longer token is not a prefix match
    Case(f"Bearer {TOKEN[:-1]}", 401, INVALID),
    Case(f"Bearer {TOKEN.upper()}", 401, INVALID),  # the token itself is case-sensitive
    Case(f"Bearer {TOKEN}", 200, None),
    Case(f"bearer {TOKEN}", 200, None),  # the scheme is not (RFC 7235 section 2.1)
    Case(f"BEARER {TOKEN}", 200, None),
    Case(f"Bearer  {TOKEN}", 200, None),
]


class Got(NamedTuple):
    status: int
    challenge: str | None
    content_type: str
    body: bytes


def check(case: Case, got: Got) -> None:
    assert got.status == case.status, (case, got)
    assert got.challenge == case.challenge, (case, got)
    if case.status == 401:
        # The refusal tells nothing: not the metrics, not the token it expected.
        assert got.body == b"unauthorized\n"
        assert TOKEN.encode() not in got.body
    else:
        assert got.content_type.startswith("text/plain")
        assert b"http_requests_total" in got.body


def requests(metrics_path: str = "/metrics") -> list[tuple[str, str | None]]:
    """What :func:`check_all` asks, in its order."""
    return [(metrics_path, case.authorization) for case in CASES] + [
        (probe, authorization) for probe in PROBES for authorization in (None, WRONG)
    ]


def check_all(fetch: Callable[[str, str | None], Got], metrics_path: str = "/metrics") -> None:
    for case in CASES:
        check(case, fetch(metrics_path, case.authorization))
    for probe in PROBES:  # open without a token, and a wrong one changes nothing
        for authorization in (None, WRONG):
            got = fetch(probe, authorization)
            assert got.status == 200, (probe, got)
            assert got.challenge is None
            assert json.loads(got.body)["status"] == "pass"


def _headers(authorization: str | None) -> dict[str, str]:
    return {} if authorization is None else {"Authorization": authorization}


# -- ASGI ------------------------------------------------------------------------------------


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello")


def asgi_app() -> Starlette:
    return Starlette(routes=[Route("/hello", hello)])


def asgi_fetch(path: str, authorization: str | None) -> Got:
    (response,) = call(asgi_app(), path, headers=_headers(authorization))
    return Got(
        response.status_code,
        response.headers.get("www-authenticate"),
        response.headers.get("content-type", ""),
        response.content,
    )


def test_asgi_metrics_need_the_token_and_probes_stay_open() -> None:
    devkit.init(metrics_token=TOKEN)
    devkit.health.mark_started()
    check_all(asgi_fetch)


def test_asgi_without_a_token_metrics_stay_open() -> None:
    devkit.init()
    got = asgi_fetch("/metrics", None)
    assert got.status == 200 and got.challenge is None
    assert asgi_fetch("/metrics", "Bearer anything-at-all-123").status == 200


def test_the_token_guards_a_custom_metrics_path_only() -> None:
    devkit.init(metrics_token=TOKEN, metrics_path="/internal/metrics")
    devkit.health.mark_started()
    check_all(asgi_fetch, "/internal/metrics")
    assert asgi_fetch("/hello", None).body == b"hello"  # the application is not guarded
    assert asgi_fetch("/metrics", None).status == 404  # an application path now


# -- WSGI ------------------------------------------------------------------------------------


def wsgi_fetch(path: str, authorization: str | None) -> Got:
    app = flask.Flask("token")

    @app.get("/hello")
    def _hello() -> str:
        return "hello"

    response = app.test_client().get(path, headers=_headers(authorization), buffered=True)
    return Got(
        response.status_code,
        response.headers.get("WWW-Authenticate"),
        response.headers.get("Content-Type", ""),
        response.data,
    )


def test_wsgi_metrics_need_the_token_and_probes_stay_open() -> None:
    devkit.init(metrics_token=TOKEN)
    devkit.health.mark_started()
    check_all(wsgi_fetch)


def test_a_plain_wsgi_app_wrapped_explicitly() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"app"]

    devkit.init(metrics_token=TOKEN)
    devkit.health.mark_started()
    from werkzeug.test import Client

    client = Client(devkit.wsgi(app))

    def fetch(path: str, authorization: str | None) -> Got:
        response = client.get(path, headers=_headers(authorization), buffered=True)
        return Got(
            response.status_code,
            response.headers.get("WWW-Authenticate"),
            response.headers.get("Content-Type", ""),
            response.data,
        )

    check_all(fetch)


# -- the metrics port ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_fetch(port: int) -> Callable[[str, str | None], Got]:
    def fetch(path: str, authorization: str | None) -> Got:
        response = httpx.get(
            f"http://127.0.0.1:{port}{path}", headers=_headers(authorization), timeout=10
        )
        return Got(
            response.status_code,
            response.headers.get("www-authenticate"),
            response.headers.get("content-type", ""),
            response.content,
        )

    return fetch


def test_metrics_port_needs_the_token_and_its_probes_stay_open() -> None:
    port = free_port()
    devkit.init(metrics_token=TOKEN, metrics_port=port)
    devkit.health.mark_started()
    check_all(port_fetch(port))
    # The application's port leaves /metrics to the application (here: 404), token or not.
    assert asgi_fetch("/metrics", f"Bearer {TOKEN}").status == 404
    assert asgi_fetch("/healthz/live", None).status == 200  # probes on both ports by default


@pytest.mark.parametrize("fetch", [asgi_fetch, wsgi_fetch], ids=["asgi", "wsgi"])
def test_probes_on_the_metrics_port_only(fetch: Callable[[str, str | None], Got]) -> None:
    port = free_port()
    devkit.init(metrics_token=TOKEN, metrics_port=port, health_on_app_port=False)
    devkit.health.mark_started()
    check_all(port_fetch(port))
    for path in (*PROBES, "/metrics"):  # the application's port answers none of them
        assert fetch(path, f"Bearer {TOKEN}").status == 404, path
    assert fetch("/hello", None).body == b"hello"


def test_probes_on_the_metrics_port_only_need_the_metrics_port() -> None:
    with pytest.raises(devkit.ConfigError, match="DEVKIT_HEALTH_ON_APP_PORT"):
        devkit.init(health_on_app_port=False)


# -- Django ----------------------------------------------------------------------------------

DJANGO_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["DJANGO_SETTINGS_MODULE"] = "examples.django_app.settings"
    import devkit, django
    devkit.init(service_name="token", metrics_token=sys.argv[1])
    django.setup()
    devkit.health.mark_started()
    from django.test import Client

    client = Client(raise_request_exception=False)
    out = []
    for path, authorization in json.loads(sys.argv[2]):
        extra = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}
        r = client.get(path, **extra)
        out.append([r.status_code, r.headers.get("WWW-Authenticate"),
                    r.headers.get("Content-Type", ""), r.content.decode("latin-1")])
    devkit.shutdown()
    print("RESULT " + json.dumps(out), flush=True)
    """
)


def test_django_metrics_need_the_token_and_probes_stay_open() -> None:
    """In a subprocess: Django's settings are process-global."""
    asked = requests()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEVKIT_", "OTEL_"))}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", DJANGO_SCRIPT, TOKEN, json.dumps(asked)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    answers = {
        request: Got(status, challenge, content_type, body.encode("latin-1"))
        for request, (status, challenge, content_type, body) in zip(
            asked, json.loads(line.removeprefix("RESULT ")), strict=True
        )
    }
    check_all(lambda path, authorization: answers[(path, authorization)])


@pytest.mark.parametrize("bad", ["short-token", "with space 0123456789", "x" * 4097, "tök" * 8])
def test_a_malformed_token_stops_init_without_repeating_it(bad: str) -> None:
    with pytest.raises(devkit.ConfigError) as raised:
        devkit.init(metrics_token=bad)
    assert "DEVKIT_METRICS_TOKEN" in str(raised.value)
    assert bad not in str(raised.value) and bad[:8] not in str(raised.value)
