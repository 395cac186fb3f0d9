"""The ``devkit`` command: version, doctor (exit status, masking, reachability) and demo."""

from __future__ import annotations

import argparse
import gzip
import os
import re
import socket
import subprocess
import sys
import threading
import types
import urllib.error
import urllib.request
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

import devkit
from devkit import cli
from devkit.cli import demo as demo_command
from devkit.config import traces_endpoint

# Importing a submodule binds it on the package; tests/test_lifecycle.py checks that
main = cli.main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DEVKIT_", "OTEL_")) and k != "PROMETHEUS_MULTIPROC_DIR"
    }


@pytest.fixture(autouse=True)
def _no_multiprocess_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)


# -- version ----------------------------------------------------------------------------------


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out == f"devkit {devkit.__version__}\n"


def test_python_m_devkit_runs_the_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devkit", "version"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"devkit {devkit.__version__}\n"


def test_no_command_prints_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: devkit" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["frobnicate"], "invalid choice: 'frobnicate'"), (["doctor", "--bogus"], "--bogus")],
)
def test_unknown_command_or_flag_is_argparses_error_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_command_module_plugs_in_with_add_parser_and_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[str] = []

    def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> Any:
        parser = commands.add_parser("plugin")
        parser.add_argument("spec")
        return parser

    def run(args: argparse.Namespace) -> int:
        seen.append(args.spec)
        return 3

    plugin = types.SimpleNamespace(add_parser=add_parser, run=run)
    monkeypatch.setattr(cli, "_COMMANDS", (*cli._COMMANDS, plugin))
    assert main(["plugin", "shop.yaml"]) == 3
    assert seen == ["shop.yaml"]


def test_public_names_are_the_entry_point_and_each_commands_interface() -> None:
    assert cli.__all__ == ["main"]
    assert sorted(cli.doctor.__all__) == ["add_parser", "doctor", "run"]
    assert sorted(cli.demo.__all__) == ["add_parser", "demo", "run"]
    for module in (cli, cli.doctor, cli.demo, cli.version):
        assert all(callable(getattr(module, name)) for name in module.__all__)


# -- doctor -----------------------------------------------------------------------------------


def test_doctor_default_environment_is_healthy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "healthy: no problems found" in out
    assert re.search(r"DEVKIT_LOG_LEVEL\s+info\s+\(default\)", out)
    assert re.search(r"DEVKIT_TRACES_EXPORTER\s+none\s+\(default\)", out)
    assert re.search(r"starlette/fastapi\s+starlette \S+", out)
    assert "multiprocess mode" in out


def test_doctor_shows_which_fast_paths_are_in_use(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from devkit import _compat

    assert main(["doctor"]) == 0
    assert re.search(r"metric-values\s+in use\s+\(prometheus-client\)", capsys.readouterr().out)
    lost = _compat.FastPath("metric-values", "prometheus-client", False, "no MutexValue")
    monkeypatch.setattr(_compat, "fast_paths", lambda: [lost])
    assert main(["doctor"]) == 0  # slower, still correct: not a problem
    out = capsys.readouterr().out
    assert re.search(r"metric-values\s+not available: the slower public path is used", out)
    assert f"prometheus-client {version('prometheus-client')}: no MutexValue" in out


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DEVKIT_SAMPLE_SUCCESS_RATIO", "2"),
        ("DEVKIT_LOG_LEVEL", "loud"),
        ("DEVKIT_REDACT_IP", "maybe"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
    ],
)
def test_doctor_bad_value_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, value: str
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv(variable, value)
    assert main(["doctor"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: {variable}=")
    assert value in captured.err
    assert captured.out == ""


def test_doctor_hash_mode_without_salt_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEVKIT_REDACT_MODE", "hash")
    assert main(["doctor"]) == 2
    assert "DEVKIT_REDACT_SALT" in capsys.readouterr().err


def test_doctor_unreachable_endpoint_exits_1_with_advice(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()  # nothing listens there
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}/")
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"DEVKIT_TRACES_EXPORTER\s+otlp\s+\(because OTEL_EXPORTER_OTLP_ENDPOINT", out)
    assert f"http://127.0.0.1:{port}/v1/traces" in out
    assert re.search(r"reachable\s+no", out)
    assert f"http://127.0.0.1:{port}/v1/traces is unreachable" in out
    assert "advice:" in out


def test_doctor_reachable_endpoint_connects_without_sending(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    received: list[bytes] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(5)
        port = listener.getsockname()[1]

        def accept() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(5)
                received.append(conn.recv(1024))

        thread = threading.Thread(target=accept)
        thread.start()
        monkeypatch.setenv(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{port}/custom/traces"
        )
        assert main(["doctor"]) == 0
        thread.join(10)
    out = capsys.readouterr().out
    assert f"http://127.0.0.1:{port}/custom/traces" in out
    assert re.search(r"reachable\s+yes", out)
    assert received == [b""]  # connected, then closed: no data sent


def test_doctor_masks_salt_headers_and_url_credentials(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEVKIT_REDACT_MODE", "hash")
    monkeypatch.setenv("DEVKIT_REDACT_SALT", "pepper-0123456789")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer tok-xyz,x-tenant=acme")
    monkeypatch.setenv(
        "OTEL_EXPORTER_OTLP_ENDPOINT", f"http://ada:pa55word@127.0.0.1:{free_port()}"
    )
    assert main(["doctor"]) == 1  # unreachable
    captured = capsys.readouterr()
    text = captured.out + captured.err
    for secret in ("pepper-0123456789", "tok-xyz", "acme", "pa55word", "ada:"):
        assert secret not in text
    assert re.search(r"DEVKIT_REDACT_SALT\s+\*\*\*\s+\(environment\)", text)
    assert "authorization=***,x-tenant=***" in text
    assert "http://***@127.0.0.1:" in text


def test_doctor_shows_sources_of_fallbacks(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "shop")
    monkeypatch.setenv("DEVKIT_LOG_LEVEL", "debug")
    monkeypatch.setenv("DEVKIT_SAMPLE_SUCCESS_RATIO", "0.25")
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"DEVKIT_SERVICE_NAME\s+shop\s+\(environment, OTEL_SERVICE_NAME\)", out)
    assert re.search(r"DEVKIT_LOG_LEVEL\s+debug\s+\(environment\)", out)
    assert re.search(r"DEVKIT_SAMPLE_SUCCESS_RATIO\s+0\.25\s+\(environment\)", out)


def test_doctor_flags_a_misspelt_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEVKIT_SAMPLE_RATIO", "0.5")
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "DEVKIT_SAMPLE_RATIO is not a devkit variable" in out
    assert "did you mean DEVKIT_SAMPLE_SUCCESS_RATIO?" in out


def test_doctor_flags_a_missing_multiprocess_dir(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "absent"))
    assert main(["doctor"]) == 1
    assert "does not exist" in capsys.readouterr().out
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert main(["doctor"]) == 0
    assert re.search(r"multiprocess mode\s+on", capsys.readouterr().out)


@pytest.mark.parametrize(
    ("env", "protocol", "expected"),
    [
        ({}, "http/protobuf", "http://localhost:4318/v1/traces"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"},
            "http/protobuf",
            "http://c:4318/v1/traces",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1/x",
            },
            "http/protobuf",
            "http://t:1/x",
        ),
        ({}, "grpc", "http://localhost:4317"),
    ],
)
def test_traces_endpoint_follows_the_otel_rules(
    env: dict[str, str], protocol: str, expected: str
) -> None:
    assert traces_endpoint(env, protocol) == expected


# -- demo -------------------------------------------------------------------------------------


def test_demo_without_fastapi_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert "fastapi" in err
    assert "pip install" in err


def test_demo_without_otlp_proto_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.proto.collector.trace.v1", None)
    assert main(["demo"]) == 1
    assert "devkit-observability[otlp]" in capsys.readouterr().err


def test_receiver_decodes_gzip_and_rejects_garbage() -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id = bytes(range(16))
    span.name = "GET /items/{item_id}"
    receiver = demo_command._start_receiver()
    try:
        post = urllib.request.Request(
            receiver.endpoint + "/v1/traces",
            data=gzip.compress(request.SerializeToString()),
            headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
        )
        with demo_command._opener.open(post, timeout=5) as answer:
            assert answer.status == 200
        garbage = urllib.request.Request(receiver.endpoint + "/v1/traces", data=b"\xff\x00garbage")
        with pytest.raises(urllib.error.HTTPError) as info:
            demo_command._opener.open(garbage, timeout=5)
        assert info.value.code == 400
        info.value.close()
        spans, exports, rejected = demo_command._snapshot(receiver)
    finally:
        receiver.stop()
    assert [s.name for s in spans] == ["GET /items/{item_id}"]
    assert (exports, rejected) == (1, 1)


def test_kept_traces_are_classified_by_their_server_span() -> None:
    from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

    def server_span(trace: int, ms: float, error: bool = False) -> Span:
        span = Span(trace_id=trace.to_bytes(16, "big"), kind=Span.SPAN_KIND_SERVER, name="GET /")
        span.start_time_unix_nano = 1_000_000_000
        span.end_time_unix_nano = span.start_time_unix_nano + int(ms * 1e6)
        if error:
            span.status.code = Status.STATUS_CODE_ERROR
        return span

    child = Span(trace_id=(1).to_bytes(16, "big"), kind=Span.SPAN_KIND_CLIENT, name="db")
    traces = demo_command._kept_traces(
        [server_span(1, 5, error=True), child, server_span(2, 350), server_span(3, 5)]
    )
    assert sorted(t.category for t in traces.values()) == ["error", "ratio", "slow"]


@pytest.mark.integration
def test_demo_end_to_end() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devkit", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for heading in ("=== Logs ===", "=== Metrics ===", "=== Probes ===", "=== Traces ===",
                    "=== SLOs ==="):  # fmt: skip
        assert heading in out
    # The injected checkout failures visibly spend that SLO's budget; the item pages are fast.
    assert re.search(r"checkout-available\s+objective\s+99.5 %\s+SLI\s+\d+\.\d%.*spent", out)
    assert re.search(r"items-fast\s+objective\s+99 %\s+SLI 100\.0%\s+budget left\s+100%\s+ok", out)
    assert "[REDACTED:" in out
    for secret in ("hunter2", "ada@example.com", "4111 1111 1111 1111"):
        assert secret not in out + result.stderr
    assert re.search(r'"trace_id": "[0-9a-f]{32}"', out)
    assert re.search(
        r'^\s+http_request_duration_seconds_bucket\{.*\} \S+ # \{trace_id="[0-9a-f]{32}"\}',
        out,
        re.MULTILINE,
    )
    assert re.search(r"http_requests_errors_total\{.*status_code=\"500\"\} [1-9]", out)
    for probe in ("startup", "ready", "live"):
        assert re.search(rf"GET /healthz/{probe}\s+-> 200 \{{\"status\":\"pass\"", out)
    sent = re.search(r"sent (\d+) requests: .* (\d+) 5xx, (\d+) slower", out)
    kept = re.search(r"kept (\d+) of (\d+) traces: (\d+) errors, (\d+) slow, (\d+) by ratio", out)
    assert sent is not None, out
    assert kept is not None, out
    n, m, errors, slow, _ratio = map(int, kept.groups())
    errors_sent, slow_sent = int(sent.group(2)), int(sent.group(3))
    assert m == int(sent.group(1))
    assert errors_sent > 0
    assert n < m
    assert errors >= errors_sent
    assert slow >= slow_sent
    assert "traffic [" in result.stderr
