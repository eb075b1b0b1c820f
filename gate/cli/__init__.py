"""The ``gate`` command line: enroll people, identify faces, run doors, read the log.

:func:`make_cli` builds the whole group for a plugin manager (the process-wide
one by default): gate's own commands plus those plugins add through
``register_commands``. Tests and embedding programs get the same group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from gate.cli import (  # noqa: F401  (commands)
    controller,
    doctor,
    fleet,
    people,
    plugins,
    recognition,
    running,
    site,
)
from gate.cli.base import GateGroup, cli

if TYPE_CHECKING:
    from gate.plugins import GatePluginManager

__all__ = ["cli", "main", "make_cli"]


def make_cli(pm: GatePluginManager | None = None) -> GateGroup:
    """``gate`` with ``pm``'s plugins: its commands use ``pm`` for components and hooks."""
    if pm is None:
        from gate.plugins import plugin_manager

        pm = plugin_manager()
    group = GateGroup(
        name="gate",
        params=list(cli.params),
        callback=cli.callback,
        help=cli.help,
        commands=dict(cli.commands),
    )
    group.pm = pm
    try:
        pm.hook.register_commands(cli=group)
    except Exception as exc:  # a broken plugin command must not take gate down
        click.echo(f"warning: a plugin failed to add its commands: {exc}", err=True)
    return group


def main() -> None:
    """Entry point: ``gate`` with the installed plugins."""
    make_cli()()
