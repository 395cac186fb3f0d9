"""The interface every command module of ``devkit.cli`` provides, in one place."""

from __future__ import annotations

import argparse
from typing import Protocol, TypeAlias

__all__ = ["Command", "Subcommands"]

# argparse has no public name for what add_subparsers() returns.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class Command(Protocol):
    """A command: ``devkit.cli.main`` lists its module in ``_COMMANDS``."""

    def add_parser(self, commands: Subcommands) -> argparse.ArgumentParser:
        """Add the command's parser to ``commands`` (a command with subcommands adds theirs
        below its own); the parser added."""

    def run(self, args: argparse.Namespace) -> int:
        """Run the command with the parsed arguments; the process exit status (a command
        with subcommands dispatches on its own ``dest``)."""
