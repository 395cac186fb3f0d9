"""``devkit doctor``: check the configuration from the environment and the exporter.

It prints the effective configuration (secrets masked), the framework integrations and
OpenTelemetry instrumentors ``init()`` would enable, the multiprocess mode and whether the
OTLP endpoint is reachable. Exit status: 0 healthy, 1 a problem was found (each comes with
one line of advice), 2 invalid configuration.
"""

from __future__ import annotations

import argparse
import difflib
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib import metadata
from typing import TYPE_CHECKING, TextIO
from urllib.parse import urlsplit, urlunsplit

from devkit.cli._command import Subcommands
from devkit.cli._installed import OTLP_GRPC_MODULE, OTLP_HTTP_MODULE, importable

if TYPE_CHECKING:
    from devkit.config import Settings

__all__ = ["add_parser", "doctor", "run"]


def add_parser(commands: Subcommands) -> argparse.ArgumentParser:
    """Add ``doctor`` to the ``devkit`` command line."""
    return commands.add_parser(
        "doctor", help="check the configuration from the environment and the exporter"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``devkit doctor`` on the process environment."""
    return doctor(os.environ, sys.stdout, sys.stderr)


@dataclass
class _Report:
    """Doctor output: sections on ``out`` and the problems found, each with advice."""

    out: TextIO
    problems: list[tuple[str, str]] = field(default_factory=list)

    def section(self, title: str) -> None:
        self.out.write(f"\n{title}\n")

    def row(self, name: str, value: str, note: str = "") -> None:
        self.out.write(f"  {name:<32} {value}{f'  ({note})' if note else ''}\n")

    def problem(self, what: str, advice: str) -> None:
        self.problems.append((what, advice))


def doctor(
    environ: Mapping[str, str], out: TextIO, err: TextIO, *, connect_timeout_s: float = 1.0
) -> int:
    """Check the configuration in ``environ``: 0 healthy, 1 problems found, 2 invalid."""
    from devkit import __version__
    from devkit.config import Settings
    from devkit.exceptions import ConfigError

    env = {k: v for k, v in environ.items() if v.strip()}
    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        err.write(f"error: {exc}\n")
        return 2

    report = _Report(out)
    out.write(f"devkit {__version__} doctor\n")
    _doctor_configuration(report, settings, env)
    _doctor_integrations(report, settings)
    _doctor_multiprocess(report, settings)
    _doctor_traces(report, settings, connect_timeout_s)
    _doctor_fast_paths(report)

    if report.problems:
        report.section(f"Problems ({len(report.problems)})")
        for what, advice in report.problems:
            out.write(f"  ! {what}\n    advice: {advice}\n")
        return 1
    out.write("\nhealthy: no problems found\n")
    return 0


def _doctor_configuration(report: _Report, settings: Settings, env: Mapping[str, str]) -> None:
    from devkit.config import VARIABLES, source_of

    # Secrets (the salt, the metrics token) are the fields Settings keeps out of its repr.
    secrets = {f.name for f in fields(settings) if not f.repr}
    report.section("Configuration (effective value, source)")
    for var in VARIABLES:
        value = getattr(settings, var.field)
        shown = ("***" if value else "unset") if var.field in secrets else _show(value)
        report.row(var.name, shown, source_of(var, env))

    known = {v.name for v in VARIABLES}
    for name in sorted(n for n in env if n.startswith("DEVKIT_") and n not in known):
        close = difflib.get_close_matches(name, sorted(known), n=1)
        report.problem(
            f"{name} is not a devkit variable and is ignored",
            f"did you mean {close[0]}?" if close else "remove it; `devkit doctor` lists them all",
        )

    otel = sorted(n for n in env if n.startswith("OTEL_"))
    if otel:
        report.section("OpenTelemetry variables")
        for name in otel:
            report.row(name, _masked_otel_value(name, env[name]))


def _doctor_fast_paths(report: _Report) -> None:
    """Which shortcuts through the dependencies' internals the installed versions allow.

    A missing one is not a problem (devkit takes the public path and stays correct) but
    it costs CPU per request or per export, so it is shown with the dependency to move.
    """
    from devkit import _compat

    report.section("Fast paths (docs/benchmarks.md#where-the-time-goes)")
    for path in _compat.fast_paths():
        if path.active:
            report.row(path.name, "in use", path.dependency)
        else:
            version = _dist_version(path.dependency)
            report.row(
                path.name,
                "not available: the slower public path is used",
                f"{path.dependency} {version}: {path.detail}",
            )


def _show(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "empty"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _masked_otel_value(name: str, value: str) -> str:
    """Header values are credentials; URLs may carry user:password."""
    if name.endswith("_HEADERS"):
        keys = [item.partition("=")[0].strip() for item in value.split(",") if item.strip()]
        return ",".join(f"{key}=***" for key in keys)
    if name.endswith("_ENDPOINT"):
        return _masked_url(value)
    return value


def _masked_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def _doctor_integrations(report: _Report, settings: Settings) -> None:
    from devkit.config import FRAMEWORKS, SERVER_INSTRUMENTORS

    report.section("Framework integrations (enabled by init() when importable)")
    for framework in FRAMEWORKS:
        found = [f"{m} {_dist_version(m)}" for m in framework.packages if importable(m)]
        report.row(framework.label, ", ".join(found) if found else "not installed")

    report.section("OpenTelemetry instrumentors (entry points opentelemetry_instrumentor)")
    disabled = settings.disabled_instrumentations
    eps = sorted(metadata.entry_points(group="opentelemetry_instrumentor"), key=lambda e: e.name)
    if not eps:
        report.row("(none installed)", "")
    for ep in eps:
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else ""
        if ep.name in SERVER_INSTRUMENTORS:
            state = "skipped: devkit's middleware makes the server span"
        elif ep.name in disabled:
            state = "disabled by OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"
        else:
            state = "enabled by init()"
        report.row(ep.name, state, dist)


def _dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "(version unknown)"


def _doctor_multiprocess(report: _Report, settings: Settings) -> None:
    report.section("Metrics")
    directory = settings.multiprocess_dir
    if directory is None:
        report.row("multiprocess mode", "off", "PROMETHEUS_MULTIPROC_DIR unset: one process")
        return
    report.row("multiprocess mode", "on", f"PROMETHEUS_MULTIPROC_DIR={directory}")
    if not os.path.isdir(directory):
        report.problem(
            f"PROMETHEUS_MULTIPROC_DIR={directory} does not exist",
            "create it (empty) before the server starts, e.g. in the container entrypoint",
        )
    elif not os.access(directory, os.W_OK | os.X_OK):
        report.problem(
            f"PROMETHEUS_MULTIPROC_DIR={directory} is not writable",
            "give the server's user write access to it (an emptyDir volume in Kubernetes)",
        )


def _doctor_traces(report: _Report, settings: Settings, timeout_s: float) -> None:
    report.section("Traces")
    if settings.disabled:
        report.row("devkit", "disabled", "DEVKIT_DISABLED / OTEL_SDK_DISABLED: init() is a no-op")
    report.row("tail sampling", settings.tail_sampling)
    exporter = settings.traces_exporter
    if exporter == "none":
        report.row("exporter", "none", "set OTEL_EXPORTER_OTLP_ENDPOINT to export kept traces")
        return
    if exporter == "console":
        report.row("exporter", "console", "spans printed on stdout")
        return

    protocol = settings.export.protocol
    report.row("exporter", f"otlp ({protocol})")
    module = OTLP_HTTP_MODULE if protocol == "http/protobuf" else OTLP_GRPC_MODULE
    if not importable(module):
        report.problem(
            f"the OTLP {protocol} exporter is not installed: init() will fail",
            "pip install 'devkit-observability[otlp]'"
            if protocol == "http/protobuf"
            else "pip install opentelemetry-exporter-otlp-proto-grpc",
        )
    endpoint = settings.export.endpoint
    report.row("endpoint", _masked_url(endpoint))

    reachable, detail = _reachable(endpoint, timeout_s)
    report.row("reachable", "yes" if reachable else "no", detail)
    if not reachable:
        report.problem(
            f"OTLP endpoint {_masked_url(endpoint)} is unreachable ({detail})",
            "start a collector there or point OTEL_EXPORTER_OTLP_ENDPOINT at yours "
            "(meanwhile kept spans are dropped and counted, requests are not slowed)",
        )


def _reachable(endpoint: str, timeout_s: float) -> tuple[bool, str]:
    """TCP connect to the endpoint's host:port; nothing is sent."""
    try:
        parts = urlsplit(endpoint if "://" in endpoint else "http://" + endpoint)
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        return False, f"malformed URL: {exc}"
    if not host:
        return False, "malformed URL: no host"
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True, f"TCP connect to {host}:{port}"
    except TimeoutError:
        return False, f"no answer from {host}:{port} within {timeout_s:g} s"
    except OSError as exc:
        return False, f"{host}:{port}: {exc.strerror or exc}"
