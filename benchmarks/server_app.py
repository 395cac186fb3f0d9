"""The apps the server-level suites serve: ``benchmarks.server_app:create_app`` (uvicorn)
and ``benchmarks.server_app:create_wsgi_app()`` (gunicorn).

uvicorn calls :func:`create_app` (``--factory``) in the server process, gunicorn
:func:`create_wsgi_app` in its worker. The variant comes
from ``BENCH_SERVER_VARIANT`` and the receiver's base URL from ``BENCH_OTLP_ENDPOINT``,
both set by the harness. The variants are the in-process suites' (``benchmarks.variants``)
wrapped around the same minimal Starlette or Flask app, so the server-level numbers measure
the same instrumentation, with a real server, sockets and HTTP parsing around it.
``BENCH_DEVKIT_OFF`` (comma-separated parts) switches parts of devkit off, for the
paired run's ``--without``.

Spans still queued when the server stops are flushed at lifespan shutdown (uvicorn) or
when the worker exits (gunicorn's sync worker exits normally on SIGTERM, running
``atexit``), so the receiver's span count covers every request the variant answered.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, BinaryIO

from benchmarks import apps
from benchmarks.variants import (
    ASGI_VARIANTS,
    WSGI_VARIANTS,
    Context,
    Unavailable,
    switch_off_devkit,
)

__all__ = [
    "ENDPOINT_ENV",
    "OFF_ENV",
    "UNAVAILABLE_MARK",
    "VARIANT_ENV",
    "build",
    "build_wsgi",
    "create_app",
    "create_wsgi_app",
]

VARIANT_ENV = "BENCH_SERVER_VARIANT"
ENDPOINT_ENV = "BENCH_OTLP_ENDPOINT"
OFF_ENV = "BENCH_DEVKIT_OFF"
#: Printed on stderr when the variant cannot run here; the harness reports the rest of
#: the line as the reason instead of a failure.
UNAVAILABLE_MARK = "benchmark variant unavailable: "
UNAVAILABLE_EXIT = 3


def build(variant: str, endpoint: str, sink: BinaryIO, off: Sequence[str] = ()) -> Any:
    """The instrumented app for ``variant``; raises :class:`Unavailable` like the workers.

    ``sink`` takes the structlog access log of the OTel stack; devkit writes its records
    to stdout, which the harness sends to /dev/null. ``off`` names devkit parts to switch
    off (:func:`benchmarks.variants.switch_off_devkit`).
    """
    try:
        make_variant = ASGI_VARIANTS[variant]
    except KeyError:
        raise ValueError(f"unknown ASGI variant {variant!r}") from None
    ctx = Context(otlp_endpoint=endpoint, sink=sink)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        for flush in ctx.flushers:
            flush()

    def make_app() -> Any:
        app = apps.starlette_app()
        app.router.lifespan_context = lifespan
        return app

    app = make_variant(make_app, ctx)
    if off:
        switch_off_devkit(off)
    return app


def create_app() -> Any:
    """uvicorn's factory: build the variant named in the environment."""
    sink = open(os.devnull, "wb")  # noqa: SIM115 - lives as long as the server
    try:
        off = [part for part in os.environ.get(OFF_ENV, "").split(",") if part]
        return build(os.environ[VARIANT_ENV], os.environ[ENDPOINT_ENV], sink, off)
    except Unavailable as exc:
        print(UNAVAILABLE_MARK + str(exc), file=sys.stderr, flush=True)
        raise SystemExit(UNAVAILABLE_EXIT) from None


def build_wsgi(variant: str, endpoint: str, sink: BinaryIO, off: Sequence[str] = ()) -> Any:
    """The instrumented Flask app for WSGI ``variant``; its telemetry is flushed when the
    process exits. Raises :class:`Unavailable` like the workers."""
    try:
        make_variant = WSGI_VARIANTS[variant]
    except KeyError:
        raise ValueError(f"unknown WSGI variant {variant!r}") from None
    ctx = Context(otlp_endpoint=endpoint, sink=sink)
    app = make_variant(apps.flask_app, ctx)
    if off:
        switch_off_devkit(off)

    def flush_all() -> None:
        for flush in ctx.flushers:
            flush()

    atexit.register(flush_all)
    return app


def create_wsgi_app() -> Any:
    """gunicorn's factory (``create_wsgi_app()``): build the WSGI variant named in the
    environment."""
    sink = open(os.devnull, "wb")  # noqa: SIM115 - lives as long as the worker
    try:
        off = [part for part in os.environ.get(OFF_ENV, "").split(",") if part]
        return build_wsgi(os.environ[VARIANT_ENV], os.environ[ENDPOINT_ENV], sink, off)
    except Unavailable as exc:
        print(UNAVAILABLE_MARK + str(exc), file=sys.stderr, flush=True)
        raise SystemExit(UNAVAILABLE_EXIT) from None
