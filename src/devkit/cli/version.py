"""``devkit version``: print the installed devkit version."""

from __future__ import annotations

import argparse

from devkit.cli._command import Subcommands

__all__ = ["add_parser", "run"]


def add_parser(commands: Subcommands) -> argparse.ArgumentParser:
    """Add ``version`` to the ``devkit`` command line."""
    return commands.add_parser("version", help="print the devkit version")


def run(args: argparse.Namespace) -> int:
    """Print ``devkit <version>``."""
    from devkit import __version__

    print(f"devkit {__version__}")
    return 0
