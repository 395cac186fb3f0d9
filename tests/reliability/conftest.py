"""Fixtures of the reliability suite: real servers (uvicorn; gunicorn with two workers) on
127.0.0.1 exporting to an OTLP receiver, and a collector that fails on demand.

The server fixtures are factories: a test starts as many servers as it needs, each with
its own environment, and every one is stopped (SIGTERM) at the end of the test.

``slow`` marks the long runs (RSS over 100k requests): ``make reliability`` runs them
(``DEVKIT_RELIABILITY_FULL=1``); the default run (``make test``, CI) deselects them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Protocol

import pytest

HERE = Path(__file__).resolve().parent
# The integration suite's server helpers (tests/integration/servers.py), imported as its own
# tests import them.
sys.path.insert(0, str(HERE.parent / "integration"))

from harness import FaultyCollector  # noqa: E402
from servers import BIN, ROOT, OTLPReceiver, Server, clean_env, free_port, serve  # noqa: E402

#: The example apps the servers run unless a test names another.
ASGI_APP = "examples.fastapi_app:app"
WSGI_APP = "examples.flask_app:app"
FULL = "DEVKIT_RELIABILITY_FULL"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"slow: a long reliability run, selected by {FULL}=1 (make reliability)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(FULL):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


class HasEndpoint(Protocol):
    @property
    def endpoint(self) -> str: ...


def _environment(receiver: HasEndpoint | None, env: dict[str, str]) -> dict[str, str]:
    base = {"DEVKIT_SERVICE_NAME": "reliability"}
    if receiver is not None:
        base["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
    environ = clean_env(**{**base, **env})
    # The suite's own apps (tests/reliability/*_app.py) beside the examples.
    environ["PYTHONPATH"] = f"{HERE}{os.pathsep}{ROOT}"
    return environ


#: ``uvicorn_server(app=..., receiver=..., args=(...), ready_path=..., **env) -> Server``
UvicornFactory = Callable[..., Server]
#: ``gunicorn_server(app=..., receiver=..., workers=2, preload=False, multiproc_dir=...,
#: args=(...), ready_path=..., **env) -> Server``
GunicornFactory = Callable[..., Server]


@pytest.fixture
def receiver() -> Iterator[OTLPReceiver]:
    """devkit's OTLP/HTTP receiver, healthy, for one test."""
    with OTLPReceiver() as r:
        yield r


@pytest.fixture
def collector() -> Iterator[FaultyCollector]:
    """A collector whose failure the test switches while it runs (``collector.set``)."""
    with FaultyCollector() as c:
        yield c


@pytest.fixture
def uvicorn_server(tmp_path: Path) -> Iterator[UvicornFactory]:
    """Start uvicorn serving ``app`` (default: the FastAPI example) on a free port;
    ``receiver`` (anything with an ``endpoint``) becomes ``OTEL_EXPORTER_OTLP_ENDPOINT``;
    keyword arguments are environment variables. Returns once the server answers
    ``ready_path``."""
    with ExitStack() as stack:

        def start(
            app: str = ASGI_APP,
            *,
            receiver: HasEndpoint | None = None,
            args: tuple[str, ...] = (),
            ready_path: str = "/healthz/startup",
            **env: str,
        ) -> Server:
            port = free_port()
            argv = [str(BIN / "uvicorn"), app, "--host", "127.0.0.1", "--port", str(port), *args]
            environ = _environment(receiver, env)
            return stack.enter_context(serve(argv, environ, tmp_path, port, ready_path))

        yield start


def gunicorn_control_socket_off() -> list[str]:
    # gunicorn >= 25 opens a control socket at a fixed path in $HOME; parallel servers clash.
    from gunicorn.config import KNOWN_SETTINGS

    names = {setting.name for setting in KNOWN_SETTINGS}
    return ["--no-control-socket"] if "control_socket_disable" in names else []


@pytest.fixture
def gunicorn_server(tmp_path: Path) -> Iterator[GunicornFactory]:
    """Start gunicorn (``examples/gunicorn_conf.py``: sync workers, ``mark_process_dead`` on
    a worker's exit) with ``workers`` workers serving ``app`` (default: the Flask example),
    on a fresh ``PROMETHEUS_MULTIPROC_DIR`` unless ``multiproc_dir`` names one; the other
    arguments as :func:`uvicorn_server`'s."""
    with ExitStack() as stack:

        def start(
            app: str = WSGI_APP,
            *,
            receiver: HasEndpoint | None = None,
            workers: int = 2,
            preload: bool = False,
            multiproc_dir: Path | None = None,
            args: tuple[str, ...] = (),
            ready_path: str = "/healthz/startup",
            **env: Any,
        ) -> Server:
            port = free_port()
            if multiproc_dir is None:
                multiproc_dir = tmp_path / f"multiproc-{port}"
                multiproc_dir.mkdir()
            argv = [
                str(BIN / "gunicorn"),
                "-c",
                "examples/gunicorn_conf.py",
                *gunicorn_control_socket_off(),
                *(["--preload"] if preload else []),
                *args,
                app,
            ]
            environ = _environment(
                receiver,
                {
                    "PORT": str(port),
                    "WEB_CONCURRENCY": str(workers),
                    "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir),
                    **env,
                },
            )
            return stack.enter_context(serve(argv, environ, tmp_path, port, ready_path))

        yield start
