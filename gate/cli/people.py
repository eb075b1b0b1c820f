"""Enrollment and people: ``gate enroll``, ``gate people ...``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from gate.cli.base import App, cli, echo_rows, json_option, pass_app


@cli.command()
@click.argument("name", required=False)
@click.argument("images", nargs=-1, type=click.Path())
@click.option(
    "--from-folder",
    type=click.Path(exists=True, file_okay=False),
    help="One subfolder per person, named after them, holding their photos.",
)
@click.option(
    "--skip-refused", is_flag=True, help="Store the accepted photos even if others are refused."
)
@click.option(
    "--force", is_flag=True, help="Enroll faces that look like someone else enrolled, too."
)
@click.option(
    "--camera",
    metavar="SOURCE",
    help="Take the views at a camera: index, RTSP/HTTP URL or video file.",
)
@click.option(
    "--views",
    type=click.IntRange(1, 50),
    default=5,
    show_default=True,
    help="With --camera: how many good, varied views to take.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="With --camera: seconds to find them (a file's own time).",
)
@click.option("--preview", is_flag=True, help="With --camera: show a window when a display exists.")
@pass_app
def enroll(
    app: App, name, images, from_folder, skip_refused, force, camera, views, timeout, preview
) -> None:
    """Enroll NAME from IMAGE..., or everyone in --from-folder, or at --camera.

    Each photo must show exactly one face, large and sharp enough, that does
    not look like someone else enrolled (unless --force). A refused photo is
    reported with its reason and, unless --skip-refused, nothing of that
    person is stored. Each person is reported as soon as they are stored.

    With --camera SOURCE, frames are read until --views good views of one
    face, each a little different (turn your head slightly), with guidance
    as it goes; nothing is stored unless all are found within --timeout.
    """
    if camera is not None:
        if images or from_folder or skip_refused:
            raise click.UsageError(
                "--camera takes NAME only (no IMAGE, --from-folder, --skip-refused)"
            )
        if not name:
            raise click.UsageError("give the NAME to enroll at the camera")
        _enroll_at_camera(app, name, camera, views, timeout, force, preview)
        return
    if views != 5 or timeout != 30.0 or preview:
        raise click.UsageError("--views, --timeout and --preview go with --camera")
    from gate.recognition.enrollment import enroll as enroll_person
    from gate.recognition.images import list_images
    from gate.storage.database import check_name

    if from_folder:
        if name or images:
            raise click.UsageError("give either NAME IMAGE... or --from-folder, not both")
        root = Path(from_folder)
        batches = [(d.name, list_images(d)) for d in sorted(root.iterdir()) if d.is_dir()]
        batches = [(person, paths) for person, paths in batches if paths]
        if not batches:
            raise click.ClickException(f"{root}: no subfolders with images")
    else:
        if not name or not images:
            raise click.UsageError("give NAME and at least one IMAGE (or --from-folder DIR)")
        batches = [(name, [Path(p) for p in images])]
    for person, _ in batches:  # every name before any photo is processed
        check_name(person)
    if force:
        click.echo("--force: faces that look like someone else are enrolled too", err=True)

    total = sum(len(paths) for _, paths in batches)
    failed = False
    with click.progressbar(
        length=total,
        label="Enrolling",
        file=sys.stderr,
        show_pos=True,
        hidden=not sys.stderr.isatty(),
    ) as bar:
        for person, paths in batches:
            result = enroll_person(
                app.db,
                app.pipeline,
                person,
                paths,
                skip_refused=skip_refused,
                force=force,
                progress=lambda _path: bar.update(1),
            )
            if not _report(result):
                failed = True
    if failed:
        sys.exit(1)


def _enroll_at_camera(
    app: App, name: str, spec: str, views: int, timeout: float, force: bool, preview: bool
) -> None:
    """``gate enroll NAME --camera SOURCE``: guidance on stderr, the result on stdout."""
    from gate.recognition.camera_enrollment import enroll_at_camera
    from gate.storage.database import check_name

    check_name(name)
    if force:
        click.echo("--force: a face that looks like someone else is enrolled too", err=True)
    click.echo(f"enrolling {name} at {spec}: {views} views, look at the camera", err=True)
    result = enroll_at_camera(
        app.db,
        app.pipeline,
        name,
        spec,
        views=views,
        timeout=timeout,
        force=force,
        say=lambda line: click.echo(line, err=True),
        preview=preview,
    )
    for refusal in result.refusals:
        click.echo(f"refused {refusal.source}: {refusal.reason}", err=True)
    if not result.stored:
        click.echo(f"nothing stored for {name}", err=True)
        sys.exit(1)
    skipped = len(result.accepted) - result.added
    note = f" ({skipped} already enrolled)" if skipped else ""
    click.echo(f"enrolled {name}: {result.added} view(s) from {spec}{note}")


def _report(result) -> bool:
    """Print what enrolling one person did; False when nothing was stored."""
    for refusal in result.refusals:
        click.echo(f"refused {refusal.source}: {refusal.reason}", err=True)
    if result.stored:
        skipped = len(result.accepted) - result.added
        note = f" ({skipped} already enrolled)" if skipped else ""
        click.echo(f"enrolled {result.name}: {result.added} photo(s){note}")
        return True
    if result.accepted:
        click.echo(
            f"nothing stored for {result.name}: {len(result.accepted)} photo(s) passed; "
            "fix or remove the refused ones, or use --skip-refused",
            err=True,
        )
    return False


@cli.group()
def people() -> None:
    """List, change, remove and rename enrolled people; re-encode their templates."""


@people.command("list")
@json_option
@pass_app
def people_list(app: App, as_json: bool) -> None:
    """Everyone enrolled, with their number of face templates.

    People whose templates lie within the (colour) threshold in force of someone
    else's are flagged ("looks like NAME"): add photos of both.
    """
    rows = app.db.people()
    if len(rows) > 1:
        app.pipeline.load_templates(app.db)
        names = app.db.names()
        alike: dict[str, list[str]] = {}
        for p, q, d in app.pipeline.look_alikes(app.db):
            alike.setdefault(names[p], []).append(f"{names[q]} ({d:.2f})")
            alike.setdefault(names[q], []).append(f"{names[p]} ({d:.2f})")
        for row in rows:
            row["looks_like"] = alike.get(row["name"], [])

    def line(row: dict) -> str:
        notes = [f"{row['templates']} template(s)"]
        if row.get("looks_like"):
            notes.append("looks like " + ", ".join(row["looks_like"]) + ": add photos")
        if row["groups"]:
            notes.append("groups " + ",".join(row["groups"]))
        if not row["enabled"]:
            notes.append("DISABLED")
        if row["valid_from"]:
            notes.append(f"from {row['valid_from']}")
        if row["valid_until"]:
            notes.append(f"until {row['valid_until']}")
        if row.get("credential"):
            notes.append(f"credential {row['credential']}")
        return f"{row['name']}\t" + "\t".join(notes)

    echo_rows(rows, as_json, "nobody is enrolled", line)


@people.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--erase",
    is_flag=True,
    help="Also take their name and face images out of past events (they stay, as #ID).",
)
@pass_app
def people_remove(app: App, name: str, yes: bool, erase: bool) -> None:
    """Remove NAME: face templates, groups, anti-passback places (the log keeps their events).

    With --erase their past events lose their snapshots and show the person's
    id (#ID) instead of the name; the events stay, for the audit trail.
    """
    person = app.db.person(name)
    if person is None:
        raise click.ClickException(f"no person called {name!r}")
    events = app.db.count_events(person["id"]) if erase else 0
    if not yes:
        what = f" and erase them from {events} past event(s)" if erase else ""
        click.confirm(f"Remove {name} and all their templates{what}?", abort=True)
    count = app.db.remove_person(name, erase=erase)
    note = f"; {events} past event(s) now show #{person['id']}" if erase else ""
    click.echo(f"removed {name} ({count} template(s)){note}")


@people.command("rename")
@click.argument("old")
@click.argument("new")
@pass_app
def people_rename(app: App, old: str, new: str) -> None:
    """Rename OLD to NEW."""
    app.db.rename_person(old, new)
    click.echo(f"renamed {old} to {new}")


def parse_moment(text: str, zone, end_of_day: bool = False) -> str | None:
    """A date or date-time in the site's zone (``none`` clears) as ISO 8601 with offset."""
    from datetime import datetime, timedelta

    if text.strip().lower() in ("none", ""):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r}: use YYYY-MM-DD or YYYY-MM-DDTHH:MM") from None
    date_only = len(text.strip()) <= 10
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    if date_only and end_of_day:
        moment += timedelta(days=1)
    return moment.isoformat()


def parse_card(text: str) -> str | None:
    """A credential as canonical text (``none`` clears); a bad one is a one-line error."""
    from gate.actions.credentials import CredentialError, parse_credential

    if text.strip().lower() in ("none", ""):
        return None
    try:
        return str(parse_credential(text))
    except CredentialError as exc:
        raise click.BadParameter(str(exc), param_hint="'--credential'") from None


@people.command("set")
@click.argument("name")
@click.option("--enable/--disable", default=None, help="Let the person through at all.")
@click.option("--valid-from", help="Date or date-time (site time zone); 'none' clears.")
@click.option("--valid-until", help="Date (through its end) or date-time; 'none' clears.")
@click.option(
    "--credential",
    metavar="TEXT",
    help="The card an access panel is sent when NAME is granted: 26bit:FACILITY:CARD "
    "(H10301), 37bit:FACILITY:CARD (H10304) or raw:BITS:NUMBER; 'none' clears.",
)
@pass_app
def people_set(app: App, name: str, enable, valid_from, valid_until, credential) -> None:
    """Enable or disable NAME, limit when their access is valid (visitors), or set the
    credential an access panel is sent for them."""
    zone = app.config.site.zone()
    changes = {}
    if enable is not None:
        changes["enabled"] = enable
    if valid_from is not None:
        changes["valid_from"] = parse_moment(valid_from, zone)
    if valid_until is not None:
        changes["valid_until"] = parse_moment(valid_until, zone, end_of_day=True)
    if credential is not None:
        changes["credential"] = parse_card(credential)
    if not changes:
        raise click.UsageError(
            "nothing to set: --enable/--disable, --valid-from, --valid-until, --credential"
        )
    app.db.set_person(name, **changes)
    click.echo(f"{name}: " + ", ".join(f"{k} = {v}" for k, v in changes.items()))


@people.command("reset-passback")
@click.argument("name")
@click.option("--area", help="Only this area (default: all).")
@pass_app
def people_reset_passback(app: App, name: str, area: str | None) -> None:
    """Override anti-passback: forget which side of its doors NAME was last seen on."""
    count = app.db.reset_passages(name, area)
    click.echo(f"{name}: anti-passback reset in {count} area(s)")


@people.command("reencode")
@click.option("--drop-old", is_flag=True, help="Then delete templates of other encoders.")
@pass_app
def people_reencode(app: App, drop_old: bool) -> None:
    """Rebuild templates with the configured encoder from the stored face crops.

    Run it after changing the encoder (or its variant): templates only match
    faces encoded in the same embedding space.
    """
    from gate.recognition.images import decode_image, face_from_json
    from gate.storage.database import Template

    encoder = app.pipeline.encoder
    stale = app.db.stale_templates(encoder.space)
    names = app.db.names()
    done = missing = 0
    by_person: dict[int, list[Template]] = {}
    with click.progressbar(
        stale, label="Re-encoding", file=sys.stderr, hidden=not sys.stderr.isatty()
    ) as rows:
        for row in rows:
            if not row["face_crop"] or not row["crop_face"]:
                missing += 1
                continue
            crop = decode_image(row["face_crop"], f"template {row['id']}")
            vector = encoder.encode(crop, [face_from_json(row["crop_face"])])[0]
            by_person.setdefault(row["person_id"], []).append(
                Template(
                    embedding=vector,
                    encoder=encoder.name,
                    encoder_version=encoder.version,
                    space=encoder.space,
                    source_sha256=row["source_sha256"],
                    source_name=row["source_name"],
                    face_size=row["face_size"],
                    quality=row["quality"],
                    face_crop=row["face_crop"],
                    crop_face=row["crop_face"],
                )
            )
    for person_id, templates in by_person.items():
        done += app.db.enroll(names[person_id], templates)[1]
    click.echo(f"re-encoded {done} template(s) for {encoder.name} ({encoder.space})")
    if missing:
        click.echo(f"{missing} template(s) have no stored face and need new photos", err=True)
    if drop_old:
        click.echo(f"dropped {app.db.drop_templates_except(encoder.space)} old template(s)")
