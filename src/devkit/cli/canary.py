"""``devkit canary``: judge a canary against the baseline beside it, and hand the gates on.

- ``devkit canary judge --prometheus URL --baseline MATCHERS --canary MATCHERS``: every
  gate for both sides, a table (or ``--output json``) and the verdict as the exit status:
  0 promote, 1 roll back, 2 bad input, 3 inconclusive (too few requests, missing series,
  a Prometheus that does not answer);
- ``devkit canary rules``: the rollback triggers as Prometheus alerting rules;
- ``devkit canary test``: those rules with generated ``promtool test rules`` cases, run;
- ``devkit canary export --format argo|flagger``: the gates as an Argo Rollouts
  ``AnalysisTemplate`` or Flagger ``MetricTemplate`` objects.

``--gates FILE`` (YAML or JSON) moves thresholds, windows, the minimum of requests, adds
custom gates and configures the triggers; without it the documented defaults apply. A bad
flag or file exits 2 with one message naming it. Reading YAML, writing rules and exports
needs the ``canary`` extra (PyYAML; SciPy for the judge's noise test).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from devkit.cli._command import Subcommands

if TYPE_CHECKING:
    from devkit.ops.canary import CanaryConfig, Side

__all__ = ["add_parser", "run"]

_NEEDS_YAML = "devkit canary {} needs PyYAML: pip install 'devkit-observability[canary]'"


def add_parser(commands: Subcommands) -> argparse.ArgumentParser:
    """Add ``canary`` and its subcommands to the ``devkit`` command line."""
    parser = commands.add_parser(
        "canary", help="judge a canary against its baseline; rollback rules; Argo/Flagger"
    )
    subcommands = parser.add_subparsers(dest="canary_command", metavar="subcommand")
    judge = subcommands.add_parser(
        "judge", help="run the gates over Prometheus: exit 0 promote, 1 roll back, 3 unsure"
    )
    _sides(judge)
    judge.add_argument("--prometheus", required=True, metavar="URL", help="Prometheus's URL")
    judge.add_argument(
        "--window", metavar="W", help="judge every gate over W (15m, 1h) instead of its own"
    )
    judge.add_argument(
        "--interval",
        metavar="W",
        help="the length of one sample of the noise test (the gates file's, 1m by default)",
    )
    judge.add_argument("--output", choices=("table", "json"), default="table")
    judge.add_argument("--timeout", type=float, default=10.0, metavar="S", help="per query (10 s)")
    rules = subcommands.add_parser("rules", help="print the rollback triggers' alerting rules")
    _sides(rules)
    test = subcommands.add_parser(
        "test", help="run promtool test rules on the rollback rules with generated cases"
    )
    _sides(test)
    test.add_argument("--write", metavar="DIR", help="keep the rules and tests in DIR")
    test.add_argument("--promtool", default="promtool", help="the promtool binary (promtool)")
    export = subcommands.add_parser(
        "export", help="print the gates as an Argo Rollouts or Flagger analysis"
    )
    _sides(export)
    export.add_argument("--format", required=True, choices=("argo", "flagger"))
    export.add_argument(
        "--prometheus", metavar="URL", help="the address the engine queries (argo: required)"
    )
    export.add_argument(
        "--interval", default="1m", metavar="W", help="how often the engine measures (1m)"
    )
    export.add_argument("--count", type=int, default=5, help="argo: measurements per analysis (5)")
    export.add_argument(
        "--failure-limit", type=int, default=1, help="argo: failed measurements allowed (1)"
    )
    export.add_argument(
        "--inconclusive-limit",
        type=int,
        default=1,
        help="argo: inconclusive measurements allowed before the rollout pauses (1)",
    )
    export.add_argument(
        "--rollback-alerts",
        action="store_true",
        help="also fail on the firing alerts of devkit canary rules (load them first)",
    )
    parser.set_defaults(canary_parser=parser)
    return parser


def _sides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--baseline", required=True, metavar="MATCHERS", help='the baseline: version="1.3.0"'
    )
    parser.add_argument(
        "--canary", required=True, metavar="MATCHERS", help='the canary: version="1.4.0"'
    )
    parser.add_argument("--gates", metavar="FILE", help="the gates file (defaults without)")


def run(args: argparse.Namespace) -> int:
    """Run the ``canary`` subcommand."""
    command = args.canary_command
    if command is None:
        args.canary_parser.print_help(sys.stderr)
        return 2
    from devkit.exceptions import DevkitError
    from devkit.ops.prometheus import PrometheusError

    try:
        if command != "judge":
            try:
                import yaml  # noqa: F401
            except ImportError:
                print(f"error: {_NEEDS_YAML.format(command)}", file=sys.stderr)
                return 2
        config = _config(args.gates)
        baseline, canary = _parse_sides(args, templates=command == "export")
        if command == "judge":
            return _judge(config, baseline, canary, args, sys.stdout)
        if command == "rules":
            return _rules(config, baseline, canary, sys.stdout)
        if command == "test":
            return _test(config, baseline, canary, args, sys.stdout)
        return _export(config, baseline, canary, args, sys.stdout)
    except DevkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3 if isinstance(exc, PrometheusError) else 2


def _config(path: str | None) -> CanaryConfig:
    from devkit.ops.canary import defaults, load

    return load(path) if path else defaults()


def _parse_sides(args: argparse.Namespace, *, templates: bool) -> tuple[Side, Side]:
    from devkit.ops.canary import CanaryError, Side

    baseline = Side.parse("baseline", args.baseline, templates=templates)
    canary = Side.parse("canary", args.canary, templates=templates)
    if set(baseline.matchers) == set(canary.matchers):
        raise CanaryError("--baseline and --canary select the same series")
    return baseline, canary


def _duration(flag: str, text: str | None) -> float | None:
    from devkit.ops.canary import CanaryError
    from devkit.ops.slo import parse_duration

    if text is None:
        return None
    try:
        seconds = parse_duration(text)
    except ValueError:
        raise CanaryError(f"{flag}: {text!r} is not a duration (30s, 5m, 1h)") from None
    if seconds <= 0:
        raise CanaryError(f"{flag}: {text!r} is not a duration above 0s")
    return seconds


def _judge(
    config: CanaryConfig, baseline: Side, canary: Side, args: argparse.Namespace, out: TextIO
) -> int:
    from devkit.ops.canary import CanaryError
    from devkit.ops.canary_judge import judge
    from devkit.ops.prometheus import Prometheus, PrometheusError

    config = config.with_windows(
        _duration("--window", args.window), _duration("--interval", args.interval)
    )
    short = [g for g in config.gates if g.window_s < config.statistics.interval_s]
    if short:
        raise CanaryError(
            f"the sample interval {config.statistics.interval} (--interval) is longer than "
            f"the {short[0].name} gate's window {short[0].window}"
        )
    try:
        prometheus = Prometheus(args.prometheus, timeout_s=args.timeout)
    except PrometheusError as exc:
        raise CanaryError(f"--prometheus: {exc}") from None
    judgement = judge(config, baseline, canary, prometheus)
    if args.output == "json":
        out.write(json.dumps(judgement.to_json(), indent=2) + "\n")
    else:
        out.write(judgement.table())
    if judgement.unanswered:
        print(f"error: {judgement.unanswered}", file=sys.stderr)
    return judgement.exit_status


def _rules(config: CanaryConfig, baseline: Side, canary: Side, out: TextIO) -> int:
    from devkit.ops.canary_rules import rule_groups
    from devkit.ops.rules import render

    source = config.source if config.source != "<defaults>" else "the default gates"
    out.write(f"# Generated by devkit canary rules from {source}: edit that instead.\n")
    out.write(render(rule_groups(config, baseline, canary)))
    return 0


def _test(
    config: CanaryConfig, baseline: Side, canary: Side, args: argparse.Namespace, out: TextIO
) -> int:
    from devkit.ops.canary_rules import run as run_tests

    passed, output = run_tests(
        config, baseline, canary, Path(args.write) if args.write else None, args.promtool
    )
    out.write(output + "\n")
    return 0 if passed else 1


def _export(
    config: CanaryConfig, baseline: Side, canary: Side, args: argparse.Namespace, out: TextIO
) -> int:
    from devkit.ops import canary_export as export
    from devkit.ops.canary import CanaryError

    interval_s = _duration("--interval", args.interval)
    assert interval_s is not None
    for flag, value in (
        ("--count", args.count),
        ("--failure-limit", args.failure_limit),
        ("--inconclusive-limit", args.inconclusive_limit),
    ):
        if value < (1 if flag == "--count" else 0):
            raise CanaryError(f"{flag}: {value} is too small")
    header = (
        f"Generated by devkit canary export from "
        f"{config.source if config.source != '<defaults>' else 'the default gates'}: "
        f"baseline {baseline.text}, canary {canary.text}."
    )
    if args.format == "argo":
        if not args.prometheus:
            raise CanaryError("--prometheus: Argo Rollouts needs the address of Prometheus")
        options = export.ArgoOptions(
            interval_s, args.count, args.failure_limit, args.inconclusive_limit
        )
        template = export.analysis_template(
            config,
            baseline,
            canary,
            args.prometheus,
            options,
            with_alerts=args.rollback_alerts,
        )
        out.write(export.render([template], header))
        return 0
    templates = export.metric_templates(
        config, baseline, canary, args.prometheus, with_alerts=args.rollback_alerts
    )
    analysis = export.render(
        [{"metrics": export.flagger_analysis(config, interval_s, with_alerts=args.rollback_alerts)}]
    )
    header += "\nIn the Canary, spec.analysis:\n" + analysis
    out.write(export.render(templates, header))
    return 0
