"""The ``gate`` group and what its commands share: the app object, error handling, options."""

from __future__ import annotations

import json
import logging
from functools import cached_property

import click

from gate import __version__
from gate.errors import GateError


class App:
    """What commands share: config, plugins, database and pipeline, each made on first use.

    ``pm`` is the plugin manager the CLI was made with (:func:`gate.cli.make_cli`); without
    one, the process-wide manager.
    """

    def __init__(self, config_path: str | None, db_path: str | None, pm=None):
        self.config_path = config_path
        self.db_path = db_path
        if pm is not None:
            self.__dict__["pm"] = pm

    @cached_property
    def config(self):
        from gate.config import load_config

        return load_config(self.config_path)

    @cached_property
    def pm(self):
        from gate.plugins import plugin_manager

        return plugin_manager()

    @cached_property
    def db(self):
        from gate.storage.database import GateDB, default_db_path

        return GateDB(self.db_path or self.config.database or default_db_path())

    @cached_property
    def pipeline(self):
        from gate.recognition.pipeline import Pipeline

        return Pipeline(self.config, self.pm.registry)

    def close(self) -> None:
        if "pipeline" in self.__dict__:
            self.pipeline.close()
        if "db" in self.__dict__:
            self.db.close()


class GateGroup(click.Group):
    """Turns gate's own errors into one-line messages instead of tracebacks.

    ``pm`` is the plugin manager its commands use (set by :func:`gate.cli.make_cli`).
    """

    pm = None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except GateError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


pass_app = click.make_pass_decorator(App)


def echo_rows(rows: list, as_json: bool, empty: str, line) -> None:
    """Print rows as JSON, or one ``line(row)`` each, or ``empty`` when there are none."""
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif not rows:
        click.echo(empty)
    else:
        for row in rows:
            click.echo(line(row))


def json_option(fn):
    return click.option("--json", "as_json", is_flag=True, help="Output JSON.")(fn)


@click.group(cls=GateGroup)
@click.version_option(__version__, prog_name="gate")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="GATE_CONFIG",
    help="Config file (TOML). Default: gate.toml in the user config dir, if any.",
)
@click.option(
    "--db",
    "db_path",
    type=click.Path(dir_okay=False),
    envvar="GATE_DB",
    help="SQLite database. Default: from the config, else the user data dir.",
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, db_path: str | None, verbose: int) -> None:
    """gate: face-recognition access control.

    Enroll people from photos, point gate at a camera or clip, and it grants
    the enrolled, denies strangers, logs every decision and sends unlock
    commands over MQTT.
    """
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    app = App(config_path, db_path, pm=getattr(ctx.command, "pm", None))
    ctx.obj = app
    ctx.call_on_close(app.close)
    _ = app.config  # a broken config is reported by every command, not only those reading it
