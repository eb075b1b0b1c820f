"""``gate doctor``: is this set-up ready? One line per check, with a fix for what is not."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from gate.cli.base import App, cli, json_option, pass_app

STYLE = {"ok": "green", "warn": "yellow", "fail": "red"}


@cli.command()
@click.option(
    "--source",
    metavar="SOURCE",
    help="Check this source (camera index, URL, file or folder) instead of the doors.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.5, 120),
    default=5.0,
    show_default=True,
    help="Seconds each door and the broker may take.",
)
@json_option
@pass_app
def doctor(app: App, source: str | None, timeout: float, as_json: bool) -> None:
    """Check the config, database, model files, doors, broker, Home Assistant and threshold.

    Each check is one line: ok, warn or fail, and how to fix what is not ok.
    Doctor only reads: it creates no database, writes to none, and sends one
    message (not retained) on gate's topic prefix as a client of its own.
    Exits 1 when a check fails.
    """
    from gate.actions.signing import keys_folder
    from gate.doctor import quiet_logs, run_checks
    from gate.storage.database import default_db_path

    db_path = Path(app.db_path or app.config.database or default_db_path()).expanduser()
    with quiet_logs():
        checks = run_checks(
            app.config,
            db_path,
            app.pipeline,
            keys_folder(app.config, db_path),
            source=source,
            timeout=timeout,
        )
    failed = [c for c in checks if c.status == "fail"]
    if as_json:
        report = {"ok": not failed, "checks": [c.as_dict() for c in checks]}
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        for check in checks:
            line = check.line()
            status = click.style(line[:4], fg=STYLE[check.status])
            click.echo(status + line[4:])
        warned = sum(c.status == "warn" for c in checks)
        click.echo(f"{len(checks)} checks: {len(failed)} failed, {warned} warnings")
    if failed:
        sys.exit(1)
