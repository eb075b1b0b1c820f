"""The ``gate`` command line: enroll people, identify faces, run doors, read the log."""

from __future__ import annotations

import click

from gate.cli import (  # noqa: F401  (commands)
    controller,
    people,
    plugins,
    recognition,
    running,
    site,
)
from gate.cli.base import cli

__all__ = ["cli", "main"]


_commands_added = False


def main() -> None:
    """Entry point: add plugin commands, then run the CLI."""
    global _commands_added
    if not _commands_added:
        from gate.plugins import plugin_manager

        try:
            plugin_manager().hook.register_commands(cli=cli)
        except Exception as exc:  # a broken plugin command must not take gate down
            click.echo(f"warning: a plugin failed to add its commands: {exc}", err=True)
        _commands_added = True
    cli()
