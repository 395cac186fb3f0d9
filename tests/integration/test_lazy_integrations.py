"""Frameworks are patched when the service imports them, and never imported by devkit.

A real uvicorn serves an app whose module calls ``devkit.init()`` *before* importing
Starlette, in an environment where FastAPI, Flask and Django are installed too.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import httpx
import pytest
from servers import clean_env, free_port, serve, uvicorn_argv, value

pytestmark = pytest.mark.integration

FRAMEWORKS = ("django", "fastapi", "flask", "starlette")

APP = textwrap.dedent(
    """
    import sys

    import devkit

    devkit.init()
    AT_INIT = sorted(name for name in {frameworks!r} if name in sys.modules)

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route


    async def modules(request):
        now = sorted(name for name in {frameworks!r} if name in sys.modules)
        return JSONResponse({{"at_init": AT_INIT, "now": now}})


    app = Starlette(routes=[Route("/modules", modules)])
    """
).format(frameworks=FRAMEWORKS)


def test_init_before_the_framework_import_still_instruments_the_app(tmp_path: Path) -> None:
    (tmp_path / "lazy_app.py").write_text(APP, encoding="utf-8")
    port = free_port()
    env = clean_env(DEVKIT_SERVICE_NAME="lazy")
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    with serve(uvicorn_argv("lazy_app:app", port), env, tmp_path, port) as server:
        response = httpx.get(server.url + "/modules", timeout=5)
        assert response.status_code == 200
        # init() imported none of the installed frameworks; the app imported Starlette only.
        assert response.json() == {"at_init": [], "now": ["starlette"]}
        # Starlette was patched as it was imported: devkit's middleware served the request.
        assert len(response.headers["x-correlation-id"]) == 32
        metrics = httpx.get(server.url + "/metrics", timeout=5).text
        series = value(
            metrics, "http_requests_total", method="GET", route="/modules", status_code="200"
        )
        assert series == 1.0
        assert '"route":"/modules"' in server.output()
