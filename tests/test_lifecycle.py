from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import structlog

import devkit
from devkit import _state
from devkit.testing import CapturedLogs


def test_importing_devkit_has_no_side_effects() -> None:
    code = (
        "import logging, sys, os\n"
        "before = list(logging.getLogger().handlers)\n"
        "os.environ['DEVKIT_LOG_LEVEL'] = 'nonsense'\n"
        "import devkit, devkit.testing\n"
        "import structlog\n"
        "assert logging.getLogger().handlers == before\n"
        "assert not structlog.is_configured()\n"
        "from devkit import _state\n"
        "assert _state.current() is None\n"
        "print('clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "clean"


# Every module a user or framework hook imports: none may read OTEL_* at import time.
_EVERY_MODULE = (
    "devkit, devkit.testing, devkit.http.asgi, devkit.http.wsgi, devkit.tracing.provider, "
    "devkit.integrations.starlette, devkit.integrations.flask, devkit.integrations.django"
)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_PROPAGATORS", "b3"),
        ("OTEL_TRACES_EXPORTER", "zipkin"),
        ("OTEL_LOGS_EXPORTER", "kafka"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
    ],
)
def test_a_bad_opentelemetry_variable_fails_at_init_not_at_import(
    variable: str, value: str
) -> None:
    code = (
        f"import os\nos.environ[{variable!r}] = {value!r}\n"
        f"import {_EVERY_MODULE}\n"
        "try:\n"
        "    devkit.init()\n"
        "except devkit.ConfigError as error:\n"
        "    print(error.variable, '|', error)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    named, _, message = out.stdout.strip().partition(" | ")
    assert named == variable and value in message


def test_init_is_idempotent_and_warns_once(devkit_logs: CapturedLogs) -> None:
    first = devkit.init(service_name="svc")
    root = logging.getLogger()
    handlers = list(root.handlers)
    assert devkit.init() is first
    assert devkit.init(service_name="other") is first
    assert root.handlers == handlers and len(handlers) == 1
    warnings = devkit_logs.find(level="warn", logger="devkit")
    assert len(warnings) == 1
    assert "called again" in warnings[0]["message"]


def test_shutdown_is_idempotent_and_restores_logging() -> None:
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    devkit.init()
    assert structlog.is_configured()
    devkit.shutdown()
    devkit.shutdown()
    assert (list(root.handlers), root.level) == before
    assert not structlog.is_configured()
    assert _state.current() is None


def test_init_after_shutdown_builds_a_new_runtime() -> None:
    first = devkit.init(service_name="a")
    devkit.shutdown()
    second = devkit.init(service_name="b")
    assert second is not first and second.settings.service_name == "b"


@pytest.mark.parametrize("variable", ["DEVKIT_DISABLED", "OTEL_SDK_DISABLED"])
def test_disabled_installs_nothing(variable: str, monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    monkeypatch.setenv(variable, "true")
    runtime = devkit.init()
    assert runtime.enabled is False
    assert root.handlers == before
    assert not structlog.is_configured()
    assert devkit.init() is runtime


def test_shutdown_runs_at_interpreter_exit() -> None:
    code = (
        "import devkit, logging\n"
        "devkit.init(service_name='exit')\n"
        "logging.getLogger('x').info('bye')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert '"message":"bye"' in out.stdout
    assert out.stderr == ""


def test_shutdown_writes_one_final_record(devkit_logs: CapturedLogs) -> None:
    devkit.init()
    from devkit import _setup

    _setup.stop_serving()
    _setup.stop_serving()
    devkit.shutdown()
    (final,) = devkit_logs.find(message="shutdown complete")
    assert final["logger"] == "devkit"
    assert final["requests_unfinished"] == 0


def test_the_runtime_is_a_read_only_view() -> None:
    runtime = devkit.init(service_name="view")
    assert runtime.settings.service_name == "view" and runtime.enabled
    assert runtime.metrics is not None and runtime.logs is not None and runtime.health is not None
    assert isinstance(runtime.integrations, tuple) and isinstance(runtime.instrumentors, tuple)
    with pytest.raises(AttributeError):
        runtime.settings = runtime.settings  # type: ignore[misc]
    with pytest.raises(AttributeError):
        runtime.anything = 1  # type: ignore[attr-defined]
    assert not hasattr(runtime, "closers") and not hasattr(runtime, "extra")
    assert devkit.init() is runtime  # the same view, again
    devkit.shutdown()
    assert runtime.metrics is not None  # what it built stays readable after shutdown
