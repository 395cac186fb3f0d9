"""Exposure (issue #22, item 9): what ``/metrics``, the probes, the logs and the exported
telemetry of a real server reveal.

The server runs with secrets in its environment that an application really has
(``DATABASE_URL`` with a password, ``OTEL_EXPORTER_OTLP_HEADERS`` with a bearer token,
a cloud key it never reads, ``DEVKIT_METRICS_TOKEN``), and an application that puts
secrets and file paths where they really end up: readiness checks whose exceptions
carry the connection string, a password and file paths; a request that fails with the
connection string and a bearer token in its exception; a span whose name, event and
status description carry a password. Against uvicorn (the recommended production
exposure: ``/metrics`` and the probes on ``DEVKIT_METRICS_PORT`` only, ``/metrics``
behind the token) and gunicorn with two workers (everything on the application's port,
``/metrics`` behind the token), the test reads every answer and stream and asserts:

- no secret value appears anywhere: not in ``/metrics`` (classic and OpenMetrics), the
  probe bodies, the 401 and 404 pages, the server's stdout and stderr, nor in what
  reached the OTLP receiver (which did receive the bearer token as its header: the
  secret was live in the process);
- no file system path of the host (the checkout, the virtualenv, the multiprocess
  directory, the paths in the checks' exceptions) in ``/metrics`` or a probe body;
- the checks' errors are shown redacted (their type and what is not secret), not hidden;
- a kept span's name, event name, event attributes and status description reach the
  receiver redacted;
- (uvicorn) the real Prometheus scraping the metrics port with the token gets the
  series (``up == 1``); without it, or with a wrong one, the target is down (``up == 0``)
  with the 401 as its last error.
"""

from __future__ import annotations

import os
import secrets
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest
import rows
from servers import ROOT, OTLPReceiver, Server, free_port
from test_metrics_token_prometheus import jobs_for, prometheus, scrape_with_and_without

from conftest import GunicornFactory, UvicornFactory

pytestmark = pytest.mark.integration

SECTION = "Exposure"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
PROBES = ("/healthz/startup", "/healthz/ready", "/healthz/live")


@dataclass(frozen=True)
class Secrets:
    """Fresh values for one run: a hit can only come from this run's server."""

    db_password: str = field(default_factory=lambda: "dbpw" + secrets.token_hex(8))
    otlp_token: str = field(default_factory=lambda: "otlptok" + secrets.token_hex(8))
    metrics_token: str = field(default_factory=lambda: "metricstok" + secrets.token_hex(12))
    cloud_key: str = field(default_factory=lambda: "cloudkey" + secrets.token_hex(16))
    check_password: str = field(default_factory=lambda: "checkpw" + secrets.token_hex(8))
    span_password: str = field(default_factory=lambda: "spanpw" + secrets.token_hex(8))

    @property
    def values(self) -> dict[str, str]:
        return dict(vars(self))

    def env(self) -> dict[str, str]:
        return {
            "DATABASE_URL": f"postgres://app:{self.db_password}@db.internal:5432/app",
            "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer {self.otlp_token}",
            "CLOUD_SECRET_ACCESS_KEY": self.cloud_key,
            "DEVKIT_METRICS_TOKEN": self.metrics_token,
            "EXPOSURE_CHECK_PASSWORD": self.check_password,
            "EXPOSURE_SPAN_PASSWORD": self.span_password,
            # Every trace kept: the spans with secrets in them are exported.
            "DEVKIT_SAMPLE_SUCCESS_RATIO": "1.0",
        }


#: File paths the checks' exceptions name (absolute, as a driver's error would).
CHECK_PATHS = ("/etc/app/secrets/client.key", "/srv/app/config/database.yaml")

#: The application, written to the test's directory: one module for uvicorn, one for
#: gunicorn, the same checks and routes.
COMMON = textwrap.dedent(
    """
    import os

    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    import devkit

    devkit.init()
    log = devkit.get_logger("exposure")
    tracer = trace.get_tracer("exposure")


    def db_check():
        raise ConnectionError(
            f"could not connect to {os.environ['DATABASE_URL']}: "
            f"password={os.environ['EXPOSURE_CHECK_PASSWORD']} rejected, "
            "client key /etc/app/secrets/client.key"
        )


    def config_check():
        open("/srv/app/config/database.yaml")


    devkit.health.add_check("db", db_check, kind="ready")
    devkit.health.add_check("config", config_check, kind="ready")


    def work():
        password = os.environ["EXPOSURE_SPAN_PASSWORD"]
        with tracer.start_as_current_span(f"query password={password}") as span:
            span.add_event(f"retry token={password}", {"detail": f"api_key={password}"})
            span.set_status(Status(StatusCode.ERROR, f"denied: password={password}"))
        log.info("connected", dsn=os.environ["DATABASE_URL"])
        return "done"


    def boom():
        raise RuntimeError(
            f"cannot reach {os.environ['DATABASE_URL']} with "
            f"authorization: Bearer {os.environ['OTEL_EXPORTER_OTLP_HEADERS'].split()[-1]}"
        )
    """
)
ASGI_MODULE = COMMON + textwrap.dedent(
    """
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route


    async def work_route(request):
        return PlainTextResponse(work())


    async def boom_route(request):
        boom()


    app = Starlette(routes=[Route("/work", work_route), Route("/boom", boom_route)])
    """
)
WSGI_MODULE = COMMON + textwrap.dedent(
    """
    from flask import Flask

    app = Flask("exposure")
    app.add_url_rule("/work", "work", work)
    app.add_url_rule("/boom", "boom", boom)
    devkit.health.mark_started()
    """
)


@dataclass
class Seen:
    """Every answer and stream the run collected, by where it came from."""

    places: dict[str, bytes] = field(default_factory=dict)

    def add(self, place: str, data: bytes) -> None:
        self.places[place] = data

    def leaks(self, needles: dict[str, str]) -> list[tuple[str, str]]:
        return [
            (name, place)
            for name, needle in needles.items()
            for place, data in self.places.items()
            if needle.encode() in data
        ]


def internal_paths(tmp_path: Path) -> dict[str, str]:
    paths = {
        "checkout": str(ROOT),
        "virtualenv": sys.prefix,
        "test directory": str(tmp_path),
        **{f"check path {n}": p for n, p in enumerate(CHECK_PATHS)},
    }
    home = os.environ.get("HOME")
    if home and home != "/":
        paths["home"] = home
    return paths


def fetch(url: str, **headers: str) -> httpx.Response:
    return httpx.get(url, headers=headers, timeout=10)


def exercise(
    app: Server, admin_url: str, secret: Secrets, receiver: OTLPReceiver, seen: Seen
) -> None:
    """Requests that put the secrets to work, then every devkit answer, kept in ``seen``."""
    for path in ("/work", "/boom", "/nowhere"):
        fetch(app.url + path)
    bearer = {"Authorization": f"Bearer {secret.metrics_token}"}
    unauthorized = fetch(admin_url + "/metrics")
    assert unauthorized.status_code == 401, unauthorized.text
    seen.add("401 page", unauthorized.content + str(unauthorized.headers).encode())
    classic = fetch(admin_url + "/metrics", **bearer)
    assert classic.status_code == 200 and b"http_requests_total" in classic.content
    seen.add("/metrics", classic.content)
    om = fetch(admin_url + "/metrics", Accept=OPENMETRICS, **bearer)
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    seen.add("/metrics (OpenMetrics)", om.content)
    for probe in PROBES:
        seen.add(probe, fetch(admin_url + probe).content)
    assert receiver.wait_for(
        lambda r: any(s.name.startswith("query ") for _, s in r.spans()), timeout=20
    ), "the span of /work did not arrive"


def check_probe_errors(seen: Seen) -> int:
    """The checks' errors are shown, redacted: their type and the non-secret rest. The
    number of errors shown with a redaction marker in them."""
    ready = orjson.loads(seen.places["/healthz/ready"])
    assert ready["status"] == "fail"
    errors = {name: check.get("error", "") for name, check in ready["checks"].items()}
    db, config = errors["db"], errors["config"]
    assert db.startswith("ConnectionError: could not connect to postgres://app:"), db
    assert "db.internal" in db, db
    assert config.startswith("FileNotFoundError: [Errno 2]"), config
    redacted = [name for name, error in errors.items() if "[REDACTED:" in error]
    assert sorted(redacted) == ["config", "db"], errors
    return len(redacted)


def check_span_texts(receiver: OTLPReceiver, secret: Secrets) -> dict[str, str]:
    """The /work span's texts, as the receiver got them."""
    (span,) = [s for _, s in receiver.spans() if s.name.startswith("query ")]
    texts = {
        "name": span.name,
        "event": span.events[0].name,
        "event attribute": span.events[0].attributes[0].value.string_value,
        "status": span.status.message,
    }
    for text in texts.values():
        assert secret.span_password not in text
        assert "[REDACTED:secret]" in text, texts
    assert texts["name"] == "query password=[REDACTED:secret]"
    return texts


def collect_streams(app: Server, receiver: OTLPReceiver, seen: Seen) -> None:
    app.stop()  # the shutdown record and every flushed line are in the output now
    seen.add("stdout and stderr", app.output().encode())
    for n, received in enumerate(receiver.received()):
        seen.add(f"OTLP body {n}", received.body)


def assert_nothing_leaks(
    seen: Seen, secret: Secrets, receiver: OTLPReceiver, tmp_path: Path
) -> tuple[int, int]:
    sent = {r.headers.get("authorization") for r in receiver.received()}
    # The token was live in the process: the exporter sent it, as configured.
    assert sent == {f"Bearer {secret.otlp_token}"}, sent
    leaks = seen.leaks(secret.values)
    assert leaks == [], leaks
    answers = Seen({k: v for k, v in seen.places.items() if k.startswith(("/", "401"))})
    paths = answers.leaks(internal_paths(tmp_path))
    assert paths == [], paths
    return len(leaks), len(paths)


def write_app(tmp_path: Path, name: str, source: str) -> Path:
    directory = tmp_path / "app"
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.py").write_text(source)
    return directory


def test_exposure_metrics_port_only_uvicorn(
    uvicorn_server: UvicornFactory, receiver: OTLPReceiver, tmp_path: Path
) -> None:
    """The recommended production exposure: nothing of devkit's on the application port."""
    secret = Secrets()
    admin_port = free_port()
    app_dir = write_app(tmp_path, "exposure_asgi", ASGI_MODULE)
    server = uvicorn_server(
        "exposure_asgi:app",
        receiver=receiver,
        args=("--app-dir", str(app_dir)),
        DEVKIT_METRICS_PORT=str(admin_port),
        DEVKIT_HEALTH_ON_APP_PORT="false",
        **secret.env(),
    )
    seen = Seen()
    admin_url = f"http://127.0.0.1:{admin_port}"
    exercise(server, admin_url, secret, receiver, seen)
    answered = []  # devkit's paths the application's port answered other than with 404
    for path in ("/metrics", *PROBES):
        response = fetch(server.url + path, Authorization=f"Bearer {secret.metrics_token}")
        if response.status_code != 404:
            answered.append((path, response.status_code))
        seen.add(f"{path} on the app port", response.content)
    assert answered == [], answered
    checks_redacted = check_probe_errors(seen)
    texts = check_span_texts(receiver, secret)
    # The real Prometheus scrapes the metrics port with the token, without, and wrong.
    jobs = jobs_for(secret.metrics_token)
    (tmp_path / "prometheus").mkdir()
    with prometheus(tmp_path / "prometheus", admin_port, jobs) as prom:
        ups = scrape_with_and_without(prom, jobs)
    collect_streams(server, receiver, seen)
    leaks, paths = assert_nothing_leaks(seen, secret, receiver, tmp_path)
    rows.record(
        SECTION,
        "metrics port only, token (uvicorn)",
        "6 secrets in the environment, checks and a span; every answer, stream and OTLP "
        "body read; the real Prometheus scraping with, without and with a wrong token",
        secrets=len(secret.values),
        places_read=len(seen.places),
        secrets_leaked=leaks,
        paths_shown=paths,
        check_errors_shown_redacted=checks_redacted,
        span_texts_redacted=len(texts),
        devkit_paths_on_app_port=len(answered),
        prometheus_up_with_token=ups["with_token"],
        prometheus_up_without_token=ups["without_token"],
        prometheus_up_wrong_token=ups["wrong_token"],
    )


def test_exposure_app_port_gunicorn(
    gunicorn_server: GunicornFactory, receiver: OTLPReceiver, tmp_path: Path
) -> None:
    """Everything on the application's port (the default), ``/metrics`` behind the token."""
    secret = Secrets()
    app_dir = write_app(tmp_path, "exposure_wsgi", WSGI_MODULE)
    server = gunicorn_server(
        "exposure_wsgi:app",
        receiver=receiver,
        args=("--pythonpath", str(app_dir)),
        **secret.env(),
    )
    seen = Seen()
    exercise(server, server.url, secret, receiver, seen)
    checks_redacted = check_probe_errors(seen)
    texts = check_span_texts(receiver, secret)
    collect_streams(server, receiver, seen)
    leaks, paths = assert_nothing_leaks(seen, secret, receiver, tmp_path)
    rows.record(
        SECTION,
        "app port, token (gunicorn, 2 workers)",
        "6 secrets in the environment, checks and a span; every answer, stream and OTLP body read",
        secrets=len(secret.values),
        places_read=len(seen.places),
        secrets_leaked=leaks,
        paths_shown=paths,
        check_errors_shown_redacted=checks_redacted,
        span_texts_redacted=len(texts),
        devkit_paths_on_app_port=None,
        prometheus_up_with_token=None,
        prometheus_up_without_token=None,
        prometheus_up_wrong_token=None,
    )
