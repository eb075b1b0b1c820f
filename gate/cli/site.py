"""The site: ``gate doors ...``, ``gate groups ...``, ``gate rules ...``."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from gate.cli.base import App, cli, echo_rows, json_option, pass_app

if TYPE_CHECKING:
    from gate.components import Action
    from gate.messaging.connection import Messaging

#: option names that differ from the setting's: ``cooldown_s`` is ``--cooldown``
_FLAGS = {"cooldown_s": "--cooldown", "relock_s": "--relock"}


def door_options(fn):
    """One option per :class:`gate.runtime.doors.DoorSettings` field, helped by its description;
    the model validates what they give (``gate doors add/set``)."""
    from gate.runtime.doors import DoorSettings

    for name, field in reversed(DoorSettings.model_fields.items()):
        flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
        if name == "enabled":
            option = click.option(
                "--enable/--disable", "enabled", default=None, help=field.description
            )
        elif name == "direction":
            choice = click.Choice(["in", "out", "none"])
            option = click.option(flag, name, type=choice, help=f"{field.description} none: clear.")
        else:
            kind = {"int": int, "float": float}.get(_base_type(field.annotation), str)
            option = click.option(flag, name, type=kind, help=field.description)
        fn = option(fn)
    return fn


def _base_type(annotation) -> str:
    """``float`` for ``float | None`` (and the like)."""
    import typing

    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    return getattr(args[0], "__name__", "str")


def _settings(values: dict) -> dict:
    """The options given, checked by the door settings model; ``--direction none`` clears."""
    from pydantic import ValidationError

    from gate.runtime.doors import DoorSettings

    settings = {k: v for k, v in values.items() if v is not None}
    clear = settings.get("direction") == "none"
    if clear:
        del settings["direction"]
    try:
        checked = DoorSettings.model_validate(settings)
    except ValidationError as exc:
        item = exc.errors()[0]
        key = str(item["loc"][0])
        flag = _FLAGS.get(key, "--" + key.replace("_", "-"))
        message = item["msg"].removeprefix("Value error, ")
        if message.startswith("is "):  # a sentence of gate's own
            raise click.ClickException(f"{flag} {message}") from None
        raise click.ClickException(f"{flag}: {message} (got {item['input']!r})") from None
    out = checked.model_dump(include=set(settings))
    if "enabled" in out:
        out["enabled"] = int(out["enabled"])
    if clear:
        out["direction"] = None
    return out


def _check(app: App, name: str) -> None:
    """Validate a door's settings together with the config's defaults."""
    from gate.runtime.doors import spec_from_row

    spec_from_row(app.db.door(name), app.config)


@cli.group()
def doors() -> None:
    """Doors and turnstiles: add, change, remove, and unlock or lock by hand."""


@doors.command("list")
@json_option
@pass_app
def doors_list(app: App, as_json: bool) -> None:
    """Every door and its settings (empty settings use the config's defaults)."""

    def line(row: dict) -> str:
        extras = [
            f"{k}={('on' if row[k] else 'off') if k == 'motion' else row[k]}"
            for k in ("direction", "area", "threshold", "min_margin", "confirm_frames",
                      "window_frames", "cooldown_s", "relock_s", "motion", "detect_width")
            if row[k] is not None
        ]  # fmt: skip
        state = "" if row["enabled"] else "  DISABLED"
        return f"{row['name']}\t{row['source'] or '-'}\t{' '.join(extras)}{state}"

    echo_rows(app.db.doors(), as_json, "no doors yet: gate doors add NAME --source ...", line)


@doors.command("add")
@click.argument("name")
@door_options
@pass_app
def doors_add(app: App, name: str, **values) -> None:
    """Add door NAME with its source and settings."""
    with app.db.db.atomic():
        app.db.add_door(name, **_settings(values))
        _check(app, name)
    click.echo(f"added door {name}")


@doors.command("set")
@click.argument("name")
@door_options
@pass_app
def doors_set(app: App, name: str, **values) -> None:
    """Change door NAME's source or settings."""
    settings = _settings(values)
    if not settings:
        raise click.UsageError("nothing to change")
    with app.db.db.atomic():
        app.db.update_door(name, **settings)
        _check(app, name)
    click.echo(f"changed door {name}")


@contextmanager
def one_off_actuators(app: App, names: list[str]) -> Iterator[tuple[list, Messaging]]:
    """The configured actuators, started for a short-lived process beside a running gate.

    They reach the running gate's broker (its embedded one, if so) under a
    client id of their own, so gate's own connection is never taken away.
    """
    from gate.actions.signing import keys_folder
    from gate.components import ActuatorSetup
    from gate.messaging.connection import Messaging
    from gate.runtime.doors import spec_from_row

    keys = keys_folder(app.config, app.db.path)
    messaging = Messaging(app.config, keys, embedded_broker=False, client="cli")
    doors = tuple(spec_from_row(app.db.door(name), app.config) for name in names)
    setup = ActuatorSetup(app.config, doors, keys, messaging.link, one_off=True)
    actuators = app.pipeline.actuators
    try:
        for actuator in actuators:
            actuator.start(setup)  # the mqtt actuator waits at most [mqtt] connect_wait_s
        yield actuators, messaging
    finally:
        for actuator in actuators:
            actuator.close()
        messaging.close()


@doors.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def doors_remove(app: App, name: str, yes: bool) -> None:
    """Remove door NAME and its rules, and withdraw it (Home Assistant, MQTT states)."""
    if app.db.door(name) is None:
        raise click.ClickException(f"no door called {name!r}")
    if not yes:
        click.confirm(f"Remove door {name} and its rules?", abort=True)
    with one_off_actuators(app, [name]) as (actuators, messaging):
        app.db.remove_door(name)
        click.echo(f"removed door {name}")
        for actuator in actuators:
            actuator.doors_changed([])
        if messaging.reached() is False:
            click.echo("MQTT broker not reachable: Home Assistant still lists the door", err=True)


def _door_command(app: App, name: str, action: Action, reason: str | None) -> None:
    """Unlock or lock by hand, through the same path as a face: every configured actuator."""
    from gate.actions.unlock import DoorActions

    if app.db.door(name) is None:
        raise click.ClickException(f"no door called {name!r}")
    with one_off_actuators(app, [name]) as (actuators, _):
        event = DoorActions(app.db, actuators, app.pm.hook).command(
            name, action, reason="manual" if action == "unlock" else "lock",
            actor=getpass.getuser(), note=reason, ttl_s=app.config.decision.unlock_ttl_s,
        )  # fmt: skip
    if event.delivered is None:
        click.echo(f"{action} {name}: event {event.id}, no actuator delivers commands")
        sys.exit(1)
    state = "delivered" if event.delivered else "NOT delivered (is the broker up?)"
    click.echo(f"{action} {name}: event {event.id}, {state}")
    if not event.delivered:
        sys.exit(1)


@doors.command("unlock")
@click.argument("name")
@click.option("--reason", help="Why, for the log.")
@pass_app
def doors_unlock(app: App, name: str, reason: str | None) -> None:
    """Unlock NAME now; logged as manual, with your user name and --reason."""
    _door_command(app, name, "unlock", reason)


@doors.command("lock")
@click.argument("name")
@click.option("--reason", help="Why, for the log.")
@pass_app
def doors_lock(app: App, name: str, reason: str | None) -> None:
    """Lock NAME now; logged with your user name and --reason."""
    _door_command(app, name, "lock", reason)


def key_store(app: App):
    """The doors' signing keys: ``[actuators.mqtt] keys_dir``, else beside the database."""
    from gate.actions.signing import KeyStore, keys_folder

    return KeyStore(keys_folder(app.config, app.db.path))


@doors.command("key")
@click.argument("name")
@click.option("--rotate", is_flag=True, help="Make a new key; the old one stops working.")
@click.option(
    "--osdp", is_flag=True, help="The OSDP secure channel key (SCBK) for the door's panel."
)
@pass_app
def doors_key(app: App, name: str, rotate: bool, osdp: bool) -> None:
    """Show door NAME's signing key (made on first use), or make a new one.

    Put the key on the door's controller: it must refuse any command whose
    signature does not match (see docs/security.md). With --osdp, the door's
    OSDP Secure Channel Base Key instead: enter it for the reader in the
    access-control panel (see docs/osdp.md).
    """
    if app.db.door(name) is None:
        raise click.ClickException(f"no door called {name!r}")
    store = key_store(app)
    if osdp:
        key = (store.set_scbk(name) if rotate else store.scbk(name, create=True)).hex()
        where, holder = store.scbk_path(name), "the reader's entry in the panel"
    else:
        key = store.rotate(name) if rotate else store.key(name, create=True)
        where, holder = store.path(name), "the door's controller"
    click.echo(key)
    state = "new key" if rotate else "key"
    click.echo(f"{state} of door {name} in {where} (owner-only)", err=True)
    if rotate:
        click.echo(f"put it in {holder}: until then, it refuses gate", err=True)


@cli.group()
def groups() -> None:
    """Groups of people, which rules let through doors."""


@groups.command("list")
@json_option
@pass_app
def groups_list(app: App, as_json: bool) -> None:
    """Every group and its members."""
    echo_rows(
        app.db.groups(),
        as_json,
        "no groups yet: gate groups add NAME",
        lambda row: f"{row['name']}\t{', '.join(row['members']) or '-'}",
    )


@groups.command("add")
@click.argument("name")
@pass_app
def groups_add(app: App, name: str) -> None:
    """Create group NAME."""
    app.db.add_group(name)
    click.echo(f"added group {name}")


@groups.command("remove")
@click.argument("name")
@pass_app
def groups_remove(app: App, name: str) -> None:
    """Delete group NAME with its rules (its members stay enrolled)."""
    app.db.remove_group(name)
    click.echo(f"removed group {name}")


@groups.command("join")
@click.argument("group")
@click.argument("people", nargs=-1, required=True)
@pass_app
def groups_join(app: App, group: str, people: tuple[str, ...]) -> None:
    """Put PEOPLE in GROUP."""
    app.db.join(group, people)
    click.echo(f"{group}: + {', '.join(people)}")


@groups.command("leave")
@click.argument("group")
@click.argument("people", nargs=-1, required=True)
@pass_app
def groups_leave(app: App, group: str, people: tuple[str, ...]) -> None:
    """Take PEOPLE out of GROUP."""
    app.db.leave(group, people)
    click.echo(f"{group}: - {', '.join(people)}")


@cli.group()
def rules() -> None:
    """Which group may pass which door when (in the site's time zone)."""


@rules.command("list")
@json_option
@pass_app
def rules_list(app: App, as_json: bool) -> None:
    """Every rule; with none at all, [policy] without_rules decides."""
    from gate.policy.access import format_days

    rows = [
        {
            "id": r.id,
            "group": r.group,
            "door": r.door,
            "days": format_days(r.window.days),
            "from": r.window.start.strftime("%H:%M"),
            "to": "24:00" if r.window.end.hour == 23 and r.window.end.second == 59
            else r.window.end.strftime("%H:%M"),
        }
        for r in app.db.rules()
    ]  # fmt: skip
    mode = app.config.policy.without_rules
    echo_rows(
        rows,
        as_json,
        f"no rules: [policy] without_rules = {mode!r} applies to everyone enrolled",
        lambda r: f"{r['id']}\t{r['group']}\t{r['door']}\t{r['days']}\t{r['from']}-{r['to']}",
    )


@rules.command("add")
@click.option("--group", required=True, help="Members of this group ...")
@click.option("--door", default="*", show_default=True, help="... may pass this door (* = any)")
@click.option("--days", default="daily", show_default=True, help="mon-fri, sat,sun, daily ...")
@click.option("--from", "start", default="00:00", show_default=True, help="HH:MM")
@click.option(
    "--to", "end", default="24:00", show_default=True, help="HH:MM (before --from: overnight)"
)
@pass_app
def rules_add(app: App, group: str, door: str, days: str, start: str, end: str) -> None:
    """Let a group through a door during weekly hours."""
    from gate.policy.access import parse_clock, parse_days

    try:
        mask = parse_days(days)
        parse_clock(start), parse_clock(end)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    rule_id = app.db.add_rule(group, door, mask, start, end)
    click.echo(f"added rule {rule_id}")


@rules.command("remove")
@click.argument("rule_id", type=int)
@pass_app
def rules_remove(app: App, rule_id: int) -> None:
    """Delete rule RULE_ID (see gate rules list)."""
    app.db.remove_rule(rule_id)
    click.echo(f"removed rule {rule_id}")
