"""``gate controller``: the reference door controller, for a relay on this machine or for trying."""

from __future__ import annotations

from pathlib import Path

import click

from gate.cli.base import App, cli, pass_app


@cli.command("controller")
@click.option("--door", required=True, help="The door this controller drives.")
@click.option(
    "--key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The door's key (gate doors key NAME). Default: gate's own key folder.",
)
@click.option(
    "--relay",
    default="print",
    show_default=True,
    help="'print', or module:factory of a relay plugin (called with the door's name).",
)
@click.option(
    "--relock", "relock_s", type=click.FloatRange(0.1, 3600), default=5.0, show_default=True,
    help="Seconds the door stays unlocked.",
)  # fmt: skip
@click.option(
    "--state-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where the last sequence number obeyed is kept. Default: beside the key.",
)
@pass_app
def controller(
    app: App,
    door: str,
    key_file: Path | None,
    relay: str,
    relock_s: float,
    state_file: Path | None,
) -> None:
    """Obey the signed commands for --door and refuse, log and report every other one.

    Connects to the broker of [mqtt], listens on <prefix>/<door>/command,
    checks each message (signature, sequence, nonce, expiry, not retained),
    drives the relay on the ones that verify and publishes each refusal on
    <prefix>/<door>/controller/rejected. Runs until Ctrl-C; locks on exit.
    """
    from gate.actions.controller import Controller, load_relay, run_forever
    from gate.actions.signing import KeyStore, keys_folder, read_key

    if key_file is not None:
        key = read_key(key_file)
        state_file = state_file or key_file.with_name(f"{key_file.stem}.controller.json")
    else:
        store = KeyStore(keys_folder(app.config, app.db_path))
        key = store.key(door)  # never made here: the key comes from where gate signs
        path = store.path(door)
        state_file = state_file or path.with_name(f"{path.stem}.controller.json")
    credentials = None
    if app.config.mqtt.host is None:  # gate's embedded broker on this machine
        from gate.messaging.broker import EMBEDDED_USER, broker_password

        password = broker_password(keys_folder(app.config, app.db_path))
        if password is None:
            raise click.ClickException(
                "no [mqtt] host and no embedded broker password yet: start gate run first"
            )
        credentials = (EMBEDDED_USER, password)
    unit = Controller(
        app.config.mqtt, door, key, load_relay(relay, door), relock_s=relock_s,
        state_file=state_file, credentials=credentials,
    )  # fmt: skip
    run_forever(unit, echo=lambda line: click.echo(line, err=True))
