"""Fixtures shared by the integration tests that drive the FastAPI example."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from servers import OTLPReceiver, Server, clean_env, free_port, serve, uvicorn_argv


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    """An OTLP/HTTP receiver for the module (a test file may define its own per test)."""
    r = OTLPReceiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, receiver: OTLPReceiver) -> Iterator[Server]:
    """uvicorn serving ``examples/fastapi_app.py`` with every trace kept and exported, so
    every request carries an exemplar."""
    port = free_port()
    env = clean_env(
        DEVKIT_SERVICE_NAME="shop",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        DEVKIT_SAMPLE_SUCCESS_RATIO="1.0",
    )
    with serve(
        uvicorn_argv("examples.fastapi_app:app", port),
        env,
        tmp_path_factory.mktemp("uvicorn"),
        port,
    ) as s:
        yield s
