"""``devkit dashboard``: a Grafana dashboard for a service, or its data source file.

Prints the dashboard JSON model on stdout (Grafana's import takes it as is, a dashboard
provider takes the file); with ``--datasources``, the provisioning YAML of the Prometheus
data source whose exemplars open the trace and its logs, generated from the same options
so that the two agree. ``--slo FILE`` adds a row per SLO over the series that
``devkit slo rules`` records. Needs the ``slo`` extra (grafana-foundation-sdk, PyYAML).

Exit status: 0, or 2 for a bad flag, SLO file or environment, or the extra missing, with
one message naming it. docs/dashboards.md describes the panels and every option.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from typing import TextIO

from devkit.cli._command import Subcommands

__all__ = ["add_parser", "run"]

_EXTRA = "pip install 'devkit-observability[slo]'"
# The defaults of devkit.ops.dashboard.DashboardOptions, repeated for --help because this
# module imports only the standard library until the command runs (a test pins them).
_OPTIONS = (
    ("--prometheus-uid", "UID", "uid of the Prometheus data source (default: prometheus)"),
    ("--prometheus-name", "NAME", "its name (default: Prometheus)"),
    (
        "--prometheus-url",
        "URL",
        "its URL, in the data source file (default: http://prometheus:9090)",
    ),
    (
        "--scrape-interval",
        "DURATION",
        "Prometheus's scrape interval, which sizes $__rate_interval (default: 15s)",
    ),
    (
        "--traces-uid",
        "UID",
        "uid of the traces data source an exemplar opens (default: tempo; empty: none)",
    ),
    (
        "--logs-uid",
        "UID",
        "uid of the Loki data source for the logs of an exemplar's trace "
        "(default: loki; empty: none)",
    ),
    (
        "--logs-query",
        "LOGQL",
        "LogQL for those logs, ${__value.raw} standing for the trace id (default: "
        '{service_name="SERVICE"} |= "${__value.raw}" | json | trace_id="${__value.raw}")',
    ),
)


def add_parser(commands: Subcommands) -> argparse.ArgumentParser:
    """Add ``dashboard`` to the ``devkit`` command line."""
    parser = commands.add_parser(
        "dashboard",
        help="print a Grafana dashboard for a service (or its data source file)",
        description="Print a Grafana dashboard JSON model for a service instrumented by "
        "devkit, or with --datasources the Grafana data source provisioning file that "
        "links its exemplars to traces and logs.",
    )
    parser.add_argument(
        "--slo",
        metavar="FILE",
        help="add the SLI, error budget and burn rates of each SLO of this SLO file",
    )
    parser.add_argument(
        "--datasources",
        action="store_true",
        help="print the data source provisioning YAML instead of the dashboard",
    )
    parser.add_argument(
        "--service",
        metavar="NAME",
        help="the service (default: the SLO file's service, else the service name from "
        "the environment, as devkit.init() reads it)",
    )
    for flag, metavar, text in _OPTIONS:
        parser.add_argument(flag, metavar=metavar, help=text)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``devkit dashboard``."""
    return _dashboard(args, os.environ, sys.stdout, sys.stderr)


def _dashboard(
    args: argparse.Namespace, environ: Mapping[str, str], out: TextIO, err: TextIO
) -> int:
    try:
        import grafana_foundation_sdk  # noqa: F401
        import yaml  # noqa: F401
    except ImportError as exc:
        err.write(f"error: devkit dashboard needs {exc.name}: {_EXTRA}\n")
        return 2
    from devkit.config import Settings
    from devkit.conventions import buckets_for
    from devkit.exceptions import ConfigError
    from devkit.ops.dashboard import (
        DashboardOptionError,
        DashboardOptions,
        dashboard,
        render_datasources,
    )
    from devkit.ops.slo import SLOFile, SLOFileError, load

    settings: Settings | None = None

    def configured() -> Settings:
        # The service's own configuration: its name, and its slow threshold, which is a
        # bucket bound a latency SLO may use.
        nonlocal settings
        if settings is None:
            settings = Settings.from_env(environ)
        return settings

    try:
        slo_file: SLOFile | None = None
        if args.slo is not None:
            slo_file = load(args.slo, buckets=buckets_for(configured().slow_threshold_ms / 1000))
        service = args.service or (slo_file.service if slo_file else None)
        names = [flag.removeprefix("--").replace("-", "_") for flag, _, _ in _OPTIONS]
        chosen = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
        options = DashboardOptions(service=service or configured().service_name, **chosen)
    except (ConfigError, SLOFileError) as exc:
        err.write(f"error: {exc}\n")
        return 2
    except DashboardOptionError as exc:
        err.write(f"error: --{exc.option.replace('_', '-')}: {exc.problem}\n")
        return 2

    if args.datasources:
        out.write(render_datasources(options))
    else:
        out.write(json.dumps(dashboard(options, slo_file), indent=2) + "\n")
    return 0
