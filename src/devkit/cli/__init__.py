"""The ``devkit`` command: ``main`` parses the command line and runs one command.

Each command is a module of this package with two functions (``_command.Command``), so a
command plugs in by being listed in ``_COMMANDS`` and touches no other:

- ``add_parser(commands)`` adds its parser to the ``devkit`` parser's subparsers and
  returns it (a command with subcommands adds their parsers below its own);
- ``run(args) -> int`` runs it with the parsed arguments and returns the exit status (a
  command with subcommands dispatches on its own ``dest``).

The commands: ``version``, ``doctor`` (:mod:`devkit.cli.doctor`), ``demo``
(:mod:`devkit.cli.demo`), ``slo`` (:mod:`devkit.cli.slo`), ``dashboard``
(:mod:`devkit.cli.dashboard`) and ``canary`` (:mod:`devkit.cli.canary`). Each imports
only the standard library until it runs, so the command line starts fast and works
wherever devkit is installed; those that need an extra say which.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from devkit.cli import canary, dashboard, demo, doctor, slo, version
from devkit.cli._command import Command

__all__ = ["main"]

# In the order ``devkit --help`` lists them.
_COMMANDS: tuple[Command, ...] = (version, doctor, demo, slo, dashboard, canary)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``devkit`` command line; returns the process exit status.

    An unknown command or a bad flag exits with argparse's message and status 2; no
    command prints the usage and returns 2.
    """
    parser = argparse.ArgumentParser(
        prog="devkit", description="devkit: logs, metrics, traces and probes in one call."
    )
    commands = parser.add_subparsers(dest="command", metavar="command")
    for command in _COMMANDS:
        command.add_parser(commands).set_defaults(_devkit_run=command.run)
    args = parser.parse_args(argv)
    run = getattr(args, "_devkit_run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return 2
    result: int = run(args)
    return result
