"""A fleet of gates on one broker: ``gate fleet init|serve|sync|status`` (docs/fleet.md)."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from datetime import datetime

import click

from gate.cli.base import App, cli, json_option, pass_app


def _role(app: App, role: str) -> None:
    """Refuse a command meant for another role, or without a shared broker."""
    from gate.fleet.messages import require_broker

    if app.config.fleet.role != role:
        raise click.ClickException(
            f"this gate's [fleet] role is {app.config.fleet.role!r}: this command is for the {role}"
        )
    require_broker(app.config)


def _messaging(app: App, client: str):
    from gate.actions.signing import keys_folder
    from gate.messaging.connection import Messaging

    keys = keys_folder(app.config, app.db.path)
    return Messaging(app.config, keys, embedded_broker=False, client=client)


def _linked(app: App, messaging):
    """``messaging``'s MQTT link once connected; a one-line error when the broker is not."""
    link = messaging.link()
    if not link.wait_ready(app.config.mqtt.connect_wait_s):
        raise click.ClickException(link.problem or "MQTT broker not reachable")
    return link


@cli.group()
def fleet() -> None:
    """A fleet on one broker: the authority publishes, edges follow and forward their logs."""


@fleet.command("init")
@pass_app
def fleet_init(app: App) -> None:
    """On the authority: make its signing key (once), and print the public key for edges."""
    from gate.actions.signing import keys_folder
    from gate.fleet.messages import ensure_authority_key, key_path

    if app.config.fleet.role != "authority":
        raise click.ClickException(
            'set [fleet] role = "authority" in this gate\'s config first: only the authority signs'
        )
    keys = keys_folder(app.config, app.db.path)
    public, made = ensure_authority_key(keys)
    click.echo(public)
    state = "new key" if made else "key (already made)"
    click.echo(f"authority's {state} in {key_path(keys)} (owner-only); on every edge:", err=True)
    click.echo(f'  [fleet]\n  role = "edge"\n  authority_key = "{public}"', err=True)


@fleet.command("serve")
@pass_app
def fleet_serve(app: App) -> None:
    """On the authority: publish every change, signed, and collect the edges' logs.

    Runs until Ctrl-C or SIGTERM. What changed while it was not running is
    published when it starts.
    """
    from gate.actions.signing import keys_folder
    from gate.fleet.authority import Authority
    from gate.fleet.messages import Signer

    _role(app, "authority")
    signer = Signer.from_folder(keys_folder(app.config, app.db.path))
    messaging = _messaging(app, "fleet")
    stop = threading.Event()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if main else None
    try:
        link = messaging.link()
        if not link.wait_ready(app.config.mqtt.connect_wait_s):
            click.echo(f"{link.problem or 'broker not reachable'}: trying on", err=True)
        authority = Authority(
            link, signer, prefix=app.config.fleet.topic_prefix,
            crops=app.config.fleet.share_face_crops,
        )  # fmt: skip
        click.echo(f"serving the fleet as {app.config.fleet.node}", err=True)
        authority.serve(app.db, stop)
    except KeyboardInterrupt:
        pass
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        messaging.close()
    click.echo("stopped", err=True)


@fleet.command("sync")
@click.option(
    "--timeout", type=click.FloatRange(min=1), default=60, show_default=True, help="Seconds."
)
@pass_app
def fleet_sync(app: App, timeout: float) -> None:
    """On an edge: take the authority's data and forward the log once, then exit.

    Exits 1 when the edge does not hold the authority's newest version, or the
    collector has not acknowledged every event, within --timeout. gate run does
    the same all the time.
    """
    from gate.fleet.edge import Edge

    _role(app, "edge")
    messaging = _messaging(app, "fleet-sync")
    try:
        link = _linked(app, messaging)
        edge = Edge(app.config, app.db.path, link)
        done = edge.sync(app.db, timeout)
        pending = app.db.outbox_size()
    finally:
        messaging.close()
    head = edge.head["version"] if edge.head else None
    click.echo(f"{edge.node}: version {edge.applied} (head {head}), {pending} event(s) pending")
    if not done:
        why = "no head from the authority" if head is None else "not done"
        click.echo(f"{why} after {timeout:g} s", err=True)
        sys.exit(1)


def _age(when: str | None) -> str:
    if not when:
        return "-"
    seconds = time.time() - datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()
    return f"{max(seconds, 0):.0f} s ago"


@fleet.command("status")
@json_option
@pass_app
def fleet_status(app: App, as_json: bool) -> None:
    """The authority: every node, its version, lag, last seen. An edge: what it holds."""
    from gate.fleet import replica

    role = app.config.fleet.role
    if role == "none":
        raise click.ClickException('this gate is in no fleet ([fleet] role = "none")')
    if role == "edge":
        _edge_status(app, as_json)
        return
    from gate.fleet.authority import read_statuses
    from gate.fleet.messages import Topics

    _role(app, "authority")
    messaging = _messaging(app, "cli")
    try:
        nodes = read_statuses(_linked(app, messaging), Topics(app.config.fleet.topic_prefix))
    finally:
        messaging.close()
    head = replica.newest_version(app.db.db)
    counts = dict(
        app.db.db.execute("select node, count(*) from events where node is not null group by node")
    )
    for node in nodes:
        version = node.get("version")
        node["lag"] = head - version if isinstance(version, int) else None
        node["events"] = counts.get(node["node"], 0)
    if as_json:
        click.echo(json.dumps({"head": head, "nodes": nodes}, indent=2))
        return
    click.echo(f"head: version {head}")
    if not nodes:
        click.echo("no edge has reported yet")
    for node in nodes:
        click.echo(
            f"{node['node']:<16} version {node.get('version')}  lag {node['lag']}  "
            f"last seen {_age(node.get('time'))}  pending {node.get('pending')}  "
            f"collected {node['events']}  refused {node.get('refused')}"
        )


def _edge_status(app: App, as_json: bool) -> None:
    from gate.fleet import replica

    head = replica.get_state(app.db.db, "head")
    status = {
        "node": app.config.fleet.node,
        "version": int(replica.get_state(app.db.db, "applied") or 0),
        "head": json.loads(head)["version"] if head else None,
        "pending": app.db.outbox_size(),
        "refused": [
            dict(zip(("time", "topic", "reason"), row, strict=True))
            for row in app.db.db.execute(
                "select time, topic, reason from fleet_refusals order by id desc limit 10"
            )
        ],
    }
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return
    click.echo(
        f"{status['node']}: version {status['version']} (head {status['head']}), "
        f"{status['pending']} event(s) not yet collected"
    )
    for refusal in status["refused"]:
        click.echo(f"refused {refusal['time']} {refusal['topic']}: {refusal['reason']}")
