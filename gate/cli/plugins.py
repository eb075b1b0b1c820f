"""``gate plugins``: what is loaded, from where, supplying what."""

from __future__ import annotations

import json

import click

from gate.cli.base import App, cli, json_option, pass_app


@cli.command()
@json_option
@pass_app
def plugins(app: App, as_json: bool) -> None:
    """List the loaded plugins, what each supplies and its version."""
    pm = app.pm
    supplied: dict[str, list[str]] = {}
    for kind, registered in pm.registry:
        supplied.setdefault(registered.plugin, []).append(
            f"{kind} {registered.cls.name} (v{registered.cls.version})"
        )
    rows = [
        {
            "name": info.name,
            "version": info.version,
            "source": info.source,
            "components": supplied.get(info.name, []),
            "error": info.error,
        }
        for info in pm.infos.values()
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(f"{row['name']} {row['version']} ({row['source']})")
        if row["error"]:
            click.echo(f"    failed to load: {row['error']}")
        for item in row["components"]:
            click.echo(f"    {item}")
