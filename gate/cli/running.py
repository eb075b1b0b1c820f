"""Doors at work and their log: ``gate run``, ``demo``, ``log``."""

from __future__ import annotations

import csv
import json
import signal
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import get_args

import click

from gate.cli.base import App, cli, pass_app
from gate.storage.events import REASONS, Decision

DECISIONS = get_args(Decision)


def echo_event(event, node: str | None = None) -> None:
    """One line per decision, for a person watching ``gate run`` (``gate log``: with the fleet
    node that logged it, when given)."""
    who = event.person or event.actor or "-"
    distance = "-" if event.distance is None else f"{event.distance:.3f}"
    delivered = {True: "delivered", False: "NOT delivered", None: ""}[event.delivered]
    where = "" if node is None else f"{node:<12} "
    card = f"  card {event.credential}" if event.credential else ""
    click.echo(
        f"{event.time}  {where}{event.door:<10} {event.decision:<7} {event.reason:<13} "
        f"{who:<20} distance {distance}  {delivered}{card}".rstrip()
    )


def echo_stats(stats, door: str | None = None) -> None:
    """The end-of-run summary of one door."""
    median, p90 = stats.latency(50), stats.latency(90)
    timing = f"latency median {median:.1f} ms, p90 {p90:.1f} ms" if median is not None else ""
    label = f"{door}: " if door else ""
    click.echo(
        f"{label}{stats.frames} frames, {stats.granted} granted, {stats.denied} denied, "
        f"{stats.dropped} dropped; {timing}".rstrip("; ")
    )
    if stats.skipped:
        click.echo(
            f"{label}face detection skipped on {stats.skipped} of {stats.frames} frames "
            "(no motion, no face in view)"
        )
    if stats.reopened:
        click.echo(f"{label}source reopened {stats.reopened} time(s) after it failed or stalled")
    if stats.error:
        click.echo(f"{label}source: {stats.error}", err=True)


@cli.command()
@click.option("--door", "doors", multiple=True, help="Only this door (repeat for several).")
@click.option("--source", help="Camera index, RTSP/HTTP URL, video file or folder, for one door.")
@click.option("--realtime", is_flag=True, help="Play video files at their own frame rate.")
@click.option("--preview", is_flag=True, help="A live view of the doors on a local web page.")
@click.option(
    "--preview-port", type=click.IntRange(0, 65535), default=8089, show_default=True,
    help="The live view's port (0: any free one).",
)  # fmt: skip
@click.option(
    "--preview-bind", default="127.0.0.1", show_default=True,
    help="The live view's address; anything but loopback shows faces to the network.",
)  # fmt: skip
@pass_app
def run(
    app: App,
    doors: tuple[str, ...],
    source: str | None,
    realtime: bool,
    preview: bool,
    preview_port: int,
    preview_bind: str,
) -> None:
    """Watch the doors and decide, log and unlock, until their sources end or Ctrl-C.

    With no options, every enabled door that has a source (gate doors add):
    a door whose camera fails keeps trying while the others decide, and doors
    added, changed or removed meanwhile take effect within seconds. With
    --source, one door (--door, default "front") watches that source, which
    must open. SIGTERM stops like Ctrl-C. --preview serves a live view of every
    door (faces, names, distances, decisions) on http://127.0.0.1:8089/.
    """
    from gate.runtime.doors import doors_for_run
    from gate.runtime.runner import Runner

    specs = doors_for_run(app.db, app.config, list(doors), source)
    live = None
    if preview:
        from gate.runtime.preview import Preview

        if preview_bind not in ("127.0.0.1", "localhost", "::1"):
            click.echo(
                f"warning: the live view listens on {preview_bind}: anyone who reaches it sees "
                "the doors' faces and names",
                err=True,
            )
        live = Preview(preview_bind, preview_port)
    runner = Runner(
        app.pipeline, app.db.path, specs, hook=app.pm.hook, realtime=realtime,
        on_event=echo_event, site=source is None, only=doors, preview=live,
    )  # fmt: skip
    terminated = []

    def on_sigterm(signum, frame) -> None:
        terminated.append(signum)
        runner.stop()

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main else None
    try:
        results = runner.run()
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
        results = {loop.door.name: loop.stats for loop in runner.loops}
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    if terminated:
        click.echo("stopped (SIGTERM)", err=True)
    for name, stats in results.items():
        echo_stats(stats, name if len(results) > 1 else None)
    for name, error in runner.errors.items():
        click.echo(f"door {name}: {error}", err=True)
    if runner.errors:
        sys.exit(1)


@cli.command()
@click.option("--workdir", type=click.Path(file_okay=False), help="Keep the demo's files here.")
@click.pass_context
def demo(ctx: click.Context, workdir: str | None) -> None:
    """Enroll the bundled sample people and run a door over the bundled clip.

    Uses its own database and an embedded MQTT broker, and prints every
    decision and every MQTT message.
    """
    from gate.demo import run_demo

    run_demo(Path(workdir) if workdir else None, echo_event=echo_event, echo_stats=echo_stats)


def parse_when(text: str | None) -> str | None:
    """``30m``, ``2h``, ``7d`` (ago) or an ISO date/time (local unless it says) to UTC ISO."""
    if text is None:
        return None
    from gate.storage.events import utc_iso

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        try:
            moment = datetime.now(UTC) - timedelta(seconds=float(text[:-1]) * units[text[-1]])
        except OverflowError:
            raise click.ClickException(f"{text!r}: too far back (before the year 1)") from None
        return utc_iso(moment.timestamp())
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r}: use 30m, 2h, 7d or an ISO date/time") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return utc_iso(moment.timestamp())


LOG_FIELDS = [
    "id", "time", "node", "door", "decision", "reason", "person", "person_id",
    "distance", "margin", "latency_ms", "delivered", "credential", "actor", "note",
]  # fmt: skip


@cli.group("log", invoke_without_command=True)
@click.option("--since", help="From this time: 30m, 2h, 7d ago, or an ISO date/time.")
@click.option("--until", help="Before this time (same forms).")
@click.option("--person", help="Only this person.")
@click.option("--door", help="Only this door.")
@click.option("--node", help="Only those logged by this node of the fleet (docs/fleet.md).")
@click.option("--decision", type=click.Choice(DECISIONS), help="Only these.")
@click.option("--reason", type=click.Choice(sorted(REASONS)), help="Only decided for this reason.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Output CSV.")
@click.option(
    "--snapshots",
    "snapshots_dir",
    type=click.Path(file_okay=False),
    help="Write the face crops of the events shown into this folder.",
)
@click.option("--browse", is_flag=True, help="Open the log read-only in datasette (on 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), default=8001, show_default=True,
              help="With --browse: the port.")  # fmt: skip
@click.pass_context
def log_command(
    ctx, since, until, person, door, node, decision, reason, limit, as_json, as_csv,
    snapshots_dir, browse, port,
) -> None:  # fmt: skip
    """Show logged access decisions, newest first; check the log; apply retention.

    In a fleet, the authority's log holds every node's events, each with the
    node that logged it. --snapshots DIR writes the stored face crops of the
    events selected, named <id>-<time>-<door>-<decision>-<person>.jpg.
    --browse serves the log read-only with datasette, face thumbnails and
    facets by door, person, decision and reason (pip install 'gate-access[browse]').
    """
    if ctx.invoked_subcommand:
        if any((since, until, person, door, node, decision, reason, as_json, as_csv,
                snapshots_dir, browse)):  # fmt: skip
            raise click.UsageError(
                f"'gate log {ctx.invoked_subcommand}' takes no filter or format: "
                "give those to 'gate log' alone"
            )
        return
    app: App = ctx.find_object(App)
    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    if browse:
        if snapshots_dir or as_json or as_csv:
            raise click.UsageError("--browse takes filters, not --snapshots, --json or --csv")
        _browse(app, port, since=since, until=until, person=person, door=door, node=node,
                decision=decision, reason=reason)  # fmt: skip
        return
    if snapshots_dir and as_csv:
        raise click.UsageError("--snapshots writes files: give --json for a report, not --csv")
    fleet = app.config.fleet
    own = fleet.node if fleet.role != "none" else None  # this node's events have no node
    events = app.db.events(
        since=parse_when(since),
        until=parse_when(until),
        person=person,
        door=door,
        node=None if node is None else "" if node == own else node,
        decision=decision,
        reason=reason,
        limit=limit,
        snapshots=bool(snapshots_dir),
    )
    if snapshots_dir:
        _write_snapshots(events, Path(snapshots_dir), as_json)
        return
    nodes = {i: n or own for i, n in app.db.event_nodes(e.id for e in events).items()}
    rows = [event.public() | {"node": nodes.get(event.id)} for event in events]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=LOG_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    else:
        if not events:
            click.echo("no events")
        shown = fleet.role == "authority" or any(nodes.values())
        for event in events:
            echo_event(event, (nodes.get(event.id) or "-") if shown else None)


def _write_snapshots(events, folder: Path, as_json: bool) -> None:
    """``gate log --snapshots``: the crops written, and how many events had none."""
    from gate.storage.browse import write_snapshots

    try:
        done = write_snapshots(events, folder)
    except OSError as exc:
        raise click.ClickException(f"{folder}: cannot write snapshots ({exc})") from None
    if as_json:
        report = {"files": [str(p) for p in done.files], "without_snapshot": done.without}
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"wrote {len(done.files)} snapshot(s) to {folder}")
    if done.without:
        click.echo(
            f"{len(done.without)} event(s) had no snapshot (retention may have dropped them, "
            "or the decision was not made on a face)"
        )


def _browse(app: App, port: int, since, until, **filters) -> None:
    """``gate log --browse``: datasette on the database, read-only, or how to install it."""
    from gate.storage.browse import INSTALL_HINT, datasette_installed, events_url, serve

    if not datasette_installed():
        raise click.ClickException(f"--browse needs datasette: {INSTALL_HINT}")
    fleet = app.config.fleet
    if fleet.role != "none" and filters.get("node") == fleet.node:  # its own events: no node
        filters["node"], filters["node__isnull"] = None, "1"
    path = app.db.path
    when = {"time__gte": parse_when(since), "time__lt": parse_when(until)}
    url = events_url(port, path, {**filters, **when, "_sort_desc": "time"})
    code = serve(path, port, url, click.echo)
    if code:
        raise click.ClickException(f"datasette stopped with exit status {code}")


@log_command.command("verify")
@pass_app
def log_verify(app: App) -> None:
    """Check the log's hash chain: report the first broken link (exit 1), if any.

    Shows an event deleted or edited directly in the database. The last line
    is the chain's head: note it elsewhere, and a rewrite of the whole chain
    shows too.
    """
    found = app.db.verify_log()
    if found.unchecked:
        click.echo(f"{found.unchecked} event(s) logged before the chain existed: not checked")
    if found.purged:
        click.echo(f"{found.purged} older event(s) purged by retention (last {found.purged_at})")
    if found.erased:
        click.echo(f"{found.erased} event(s) with their person's name erased")
    if not found.ok:
        raise click.ClickException(f"log broken: {found.problem}")
    span = f" (events {found.first_id} to {found.last_id})" if found.checked else ""
    click.echo(f"log intact: {found.checked} event(s) checked{span}")
    click.echo(f"head: {found.last_id or found.anchor_id} {found.head_hash}")


@log_command.command("purge")
@pass_app
def log_purge(app: App) -> None:
    """Apply [retention] now: forget old events, then old snapshots (gate run does it hourly)."""
    from gate.storage.retention import purge

    retention = app.config.retention

    def kept(days: int) -> str:
        return "(kept for ever)" if days == 0 else f"older than {days} day(s)"

    done = purge(app.db, retention)
    click.echo(
        f"purged {done.events} event(s) {kept(retention.events_days)}, "
        f"{done.snapshots} snapshot(s) {kept(retention.snapshots_days)}, "
        f"{done.stranger_snapshots} stranger snapshot(s) {kept(retention.stranger_snapshots_days)}"
    )
