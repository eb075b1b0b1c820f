"""``gate plugins``: what is loaded, from where, supplying what, through which hooks."""

from __future__ import annotations

import json

import click

from gate.cli.base import App, cli, json_option, pass_app


@cli.command()
@json_option
@pass_app
def plugins(app: App, as_json: bool) -> None:
    """List the loaded plugins: version, origin, the hooks each implements and what it supplies."""
    pm = app.pm
    supplied: dict[str, list[str]] = {}
    about: dict[str, str] = {}
    for kind, registered in pm.registry:
        cls = registered.cls
        label = f"{kind} {cls.name} (v{cls.version})"
        supplied.setdefault(registered.plugin, []).append(label)
        about[label] = cls.description
    rows = [
        {
            "name": info.name,
            "version": info.version,
            "source": info.source,
            "hooks": hooks_of(pm, info.name),
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
        if row["hooks"]:
            click.echo(f"    hooks: {', '.join(row['hooks'])}")
        for item in row["components"]:
            click.echo(f"    {item}: {about[item]}" if about[item] else f"    {item}")


def hooks_of(pm, name: str) -> list[str]:
    """The hooks the plugin registered as ``name`` implements, sorted."""
    plugin = pm.get_plugin(name)
    if plugin is None:
        return []
    return sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
