"""The ``gate`` command line: enroll people, identify faces, run doors, read the log."""

from __future__ import annotations

import csv
import json
import logging
import sys
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path

import click

from gate import __version__
from gate.errors import GateError


class App:
    """What commands share: config, plugins, database and pipeline, each made on first use."""

    def __init__(self, config_path: str | None, db_path: str | None):
        self.config_path = config_path
        self.db_path = db_path

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
        from gate.database import GateDB, default_db_path

        return GateDB(self.db_path or self.config.database or default_db_path())

    @cached_property
    def pipeline(self):
        from gate.pipeline import Pipeline

        return Pipeline(self.config, self.pm.registry)

    def close(self) -> None:
        if "pipeline" in self.__dict__:
            self.pipeline.close()
        if "db" in self.__dict__:
            self.db.close()


class GateGroup(click.Group):
    """Turns gate's own errors into one-line messages instead of tracebacks."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except GateError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


pass_app = click.make_pass_decorator(App)


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
    app = App(config_path, db_path)
    ctx.obj = app
    ctx.call_on_close(app.close)
    _ = app.config  # a broken config is reported by every command, not only those reading it


# enrollment and people -------------------------------------------------------


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
@pass_app
def enroll(app: App, name, images, from_folder, skip_refused) -> None:
    """Enroll NAME from IMAGE..., or everyone in --from-folder.

    Each photo must show exactly one face, large and sharp enough. A refused
    photo is reported with its reason and, unless --skip-refused, nothing of
    that person is stored.
    """
    from gate.enrollment import enroll as enroll_person
    from gate.images import list_images

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

    total = sum(len(paths) for _, paths in batches)
    results = []
    with click.progressbar(
        length=total,
        label="Enrolling",
        file=sys.stderr,
        show_pos=True,
        hidden=not sys.stderr.isatty(),
    ) as bar:
        for person, paths in batches:
            results.append(
                enroll_person(
                    app.db,
                    app.pipeline,
                    person,
                    paths,
                    skip_refused=skip_refused,
                    progress=lambda _path: bar.update(1),
                )
            )
    failed = False
    for result in results:
        for refusal in result.refusals:
            click.echo(f"refused {refusal.source}: {refusal.reason}", err=True)
        if result.stored:
            skipped = len(result.accepted) - result.added
            note = f" ({skipped} already enrolled)" if skipped else ""
            click.echo(f"enrolled {result.name}: {result.added} photo(s){note}")
            continue
        failed = True
        if result.accepted:
            click.echo(
                f"nothing stored for {result.name}: {len(result.accepted)} photo(s) passed; "
                "fix or remove the refused ones, or use --skip-refused",
                err=True,
            )
    if failed:
        sys.exit(1)


@cli.group()
def people() -> None:
    """List, remove and rename enrolled people."""


@people.command("list")
@json_option
@pass_app
def people_list(app: App, as_json: bool) -> None:
    """Everyone enrolled, with their number of face templates."""
    rows = app.db.people()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("nobody is enrolled")
    for row in rows:
        click.echo(f"{row['name']}\t{row['templates']} template(s)\tsince {row['created_at']}")


@people.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def people_remove(app: App, name: str, yes: bool) -> None:
    """Remove NAME and their face templates (the log keeps their past events)."""
    if app.db.person(name) is None:
        raise click.ClickException(f"no person called {name!r}")
    if not yes:
        click.confirm(f"Remove {name} and all their templates?", abort=True)
    count = app.db.remove_person(name)
    click.echo(f"removed {name} ({count} template(s))")


@people.command("rename")
@click.argument("old")
@click.argument("new")
@pass_app
def people_rename(app: App, old: str, new: str) -> None:
    """Rename OLD to NEW."""
    app.db.rename_person(old, new)
    click.echo(f"renamed {old} to {new}")


# recognition ------------------------------------------------------------------


def _face_json(rec, names: dict[int, str]) -> dict:
    match = rec.match
    return {
        "box": [round(float(v), 1) for v in rec.face.box],
        "score": round(float(rec.face.score), 3),
        "status": match.status,
        "person": names.get(match.person_id) if match.person_id is not None else None,
        "nearest": names.get(match.candidate_id) if match.candidate_id is not None else None,
        "distance": None if match.distance == float("inf") else round(match.distance, 4),
        "margin": None if match.margin == float("inf") else round(match.margin, 4),
    }


@cli.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@json_option
@pass_app
def identify(app: App, images, as_json: bool) -> None:
    """Say who is in each image: every face, matched against everyone enrolled."""
    from gate.images import read_image

    app.pipeline.load_templates(app.db)
    names = app.db.names()
    report, errors = [], 0
    for path in images:
        try:
            pixels = read_image(path).pixels
        except GateError as exc:
            errors += 1
            report.append({"image": str(path), "error": str(exc)})
            if not as_json:
                click.echo(f"error: {exc}", err=True)
            continue
        faces = [_face_json(rec, names) for rec in app.pipeline.recognise(pixels)]
        report.append({"image": str(path), "faces": faces})
        if as_json:
            continue
        if not faces:
            click.echo(f"{path}: no face")
        for face in faces:
            who = face["person"] or face["status"]
            extra = f" (nearest {face['nearest']})" if face["status"] != "match" else ""
            distance = "-" if face["distance"] is None else f"{face['distance']:.3f}"
            click.echo(f"{path}: {who}{extra}  distance {distance}  box {face['box']}")
    if as_json:
        click.echo(json.dumps(report, indent=2))
    if errors:
        sys.exit(1)


@cli.command()
@click.argument("first", type=click.Path())
@click.argument("second", type=click.Path())
@json_option
@pass_app
def verify(app: App, first: str, second: str, as_json: bool) -> None:
    """Say whether the largest faces in FIRST and SECOND are the same person."""
    import numpy as np

    from gate.images import read_image

    vectors = []
    for path in (first, second):
        pixels = read_image(path).pixels
        faces = app.pipeline.detector.detect(pixels)
        if not faces:
            raise click.ClickException(f"{path}: no face")
        face = max(faces, key=lambda f: f.size)
        vectors.append(app.pipeline.encoder.encode(pixels, [face])[0])
    distance = float(np.linalg.norm(vectors[0] - vectors[1]))
    threshold = app.pipeline.threshold
    same = distance <= threshold
    if as_json:
        click.echo(
            json.dumps({"same": same, "distance": round(distance, 4), "threshold": threshold})
        )
    else:
        verdict = "same person" if same else "different people"
        click.echo(f"{verdict} (distance {distance:.3f}, threshold {threshold:.3f})")


@cli.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="An .npz file.")
@pass_app
def encode(app: App, images, out: str) -> None:
    """Write the embedding of every face in IMAGE... to an .npz file.

    Arrays: embeddings (faces x dim), boxes (x, y, w, h), scores, landmarks
    (NaN where a detector gives none), image (index into images), images (paths).
    """
    import numpy as np

    from gate.images import read_image

    vectors, boxes, scores, marks, owner, errors = [], [], [], [], [], 0
    for index, path in enumerate(images):
        try:
            pixels = read_image(path).pixels
        except GateError as exc:
            errors += 1
            click.echo(f"error: {exc}", err=True)
            continue
        faces = app.pipeline.detector.detect(pixels)
        if faces:
            vectors.append(app.pipeline.encoder.encode(pixels, faces))
        for face in faces:
            boxes.append(face.box)
            scores.append(face.score)
            marks.append(np.full((5, 2), np.nan) if face.landmarks is None else face.landmarks)
            owner.append(index)
    encoder = app.pipeline.encoder
    np.savez(
        out,
        embeddings=np.concatenate(vectors) if vectors else np.zeros((0, encoder.dim), np.float32),
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        scores=np.array(scores, np.float32),
        landmarks=np.array(marks, np.float32).reshape(-1, 5, 2),
        image=np.array(owner, np.int64),
        images=np.array([str(p) for p in images]),
        encoder=np.array(f"{encoder.name} {encoder.version}"),
    )
    click.echo(f"{len(owner)} face(s) from {len(images) - errors} image(s) -> {out}")
    if errors:
        sys.exit(1)


@cli.group()
def bench() -> None:
    """Measure accuracy on public benchmarks."""


@bench.command("lfw")
@click.option("--pairs", "pairs_file", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False))
@click.option(
    "--train-pairs",
    type=click.Path(exists=True, dir_okay=False),
    help="Choose the threshold on these pairs (View 1: pairsDevTrain.txt).",
)
@click.option("--roc", "roc_path", type=click.Path(dir_okay=False), help="Save the ROC as PNG.")
@json_option
@pass_app
def bench_lfw(app: App, pairs_file, root, train_pairs, roc_path, as_json: bool) -> None:
    """LFW verification with the configured detector and encoder.

    Accepts the official pairs.txt (10 folds) and View 1's pairsDevTrain.txt /
    pairsDevTest.txt. Reports mean accuracy and its spread, EER and TAR at
    FAR 1e-3, and saves the ROC curve.
    """
    from gate.evaluation import plot_roc
    from gate.lfw import read_pairs, unique_images
    from gate.lfw_protocol import run_protocol

    try:
        count = len(
            unique_images(
                read_pairs(pairs_file).pairs
                + (read_pairs(train_pairs).pairs if train_pairs else []),
                root,
            )
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    with click.progressbar(
        length=count, label="Encoding", file=sys.stderr, hidden=not sys.stderr.isatty()
    ) as bar:
        report = run_protocol(
            app.pipeline,
            Path(pairs_file),
            Path(root),
            train_pairs and Path(train_pairs),
            bar.update,
        )
    label = f"{app.pipeline.detector.name} + {app.pipeline.encoder.name}"
    if roc_path:
        plot_roc({label: report.roc}, roc_path, title=f"LFW {Path(pairs_file).name}")
    summary = {"pipeline": label, **report.summary(), "roc": roc_path}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"pipeline   {label}")
    click.echo(f"pairs      {report.pairs} ({report.protocol})")
    click.echo(f"images     {report.images}, {report.missed} without a detected face")
    click.echo(f"accuracy   {report.accuracy * 100:.2f}% ± {report.spread * 100:.2f}")
    click.echo(f"threshold  {report.threshold:.4f}")
    click.echo(f"EER        {report.eer * 100:.2f}%")
    click.echo(
        f"TAR@FAR1e-3 {report.tar_at_far_1e3 * 100:.2f}% ({report.different_pairs} different pairs)"
    )
    if roc_path:
        click.echo(f"ROC        {roc_path}")


# running ------------------------------------------------------------------------


def echo_event(event) -> None:
    """One line per decision, for a person watching ``gate run``."""
    who = event.person or "-"
    distance = "-" if event.distance is None else f"{event.distance:.3f}"
    delivered = {True: "delivered", False: "NOT delivered", None: ""}[event.delivered]
    click.echo(
        f"{event.time}  {event.door:<8} {event.decision:<7} {event.reason:<9} "
        f"{who:<20} distance {distance}  {delivered}".rstrip()
    )


def echo_stats(stats) -> None:
    """The end-of-run summary."""
    median, p90 = stats.latency(50), stats.latency(90)
    timing = f"latency median {median:.1f} ms, p90 {p90:.1f} ms" if median is not None else ""
    click.echo(
        f"{stats.frames} frames, {stats.granted} granted, {stats.denied} denied, "
        f"{stats.dropped} dropped; {timing}".rstrip("; ")
    )
    if stats.error:
        click.echo(f"source: {stats.error}", err=True)


@cli.command()
@click.option("--source", help="Camera index, RTSP/HTTP URL, video file or image folder.")
@click.option("--door", help="Door name (default: the first door in the config).")
@click.option("--realtime", is_flag=True, help="Play a video file at its own frame rate.")
@pass_app
def run(app: App, source: str | None, door: str | None, realtime: bool) -> None:
    """Watch a source and decide, log and unlock, until it ends or Ctrl-C."""
    from gate.database import check_name
    from gate.loop import DoorLoop

    doors = app.config.doors
    door = check_name(door or next(iter(doors), "front"))
    source = source or (doors[door].source if door in doors else None)
    if not source:
        raise click.UsageError(f"no --source given and door {door!r} has none in the config")
    loop = DoorLoop(
        app.pipeline, app.db, door, source, hook=app.pm.hook, realtime=realtime, on_event=echo_event
    )
    try:
        stats = loop.run()
    except KeyboardInterrupt:
        loop.stop.set()
        stats = loop.stats
        click.echo("stopped", err=True)
    echo_stats(stats)


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


# the log ---------------------------------------------------------------------------


def parse_when(text: str | None) -> str | None:
    """``30m``, ``2h``, ``7d`` (ago) or an ISO date/time (local unless it says) to UTC ISO."""
    if text is None:
        return None
    from gate.events import utc_iso

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        moment = datetime.now(UTC) - timedelta(seconds=float(text[:-1]) * units[text[-1]])
        return utc_iso(moment.timestamp())
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r}: use 30m, 2h, 7d or an ISO date/time") from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return utc_iso(moment.timestamp())


LOG_FIELDS = [
    "id", "time", "door", "decision", "reason", "person", "person_id",
    "distance", "margin", "latency_ms", "delivered",
]  # fmt: skip


@cli.command("log")
@click.option("--since", help="From this time: 30m, 2h, 7d ago, or an ISO date/time.")
@click.option("--until", help="Before this time (same forms).")
@click.option("--person", help="Only this person.")
@click.option("--door", help="Only this door.")
@click.option("--decision", type=click.Choice(["granted", "denied"]), help="Only these.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Output CSV.")
@pass_app
def log_command(app: App, since, until, person, door, decision, limit, as_json, as_csv) -> None:
    """Show logged access decisions, newest first."""
    if as_json and as_csv:
        raise click.UsageError("choose one of --json and --csv")
    events = app.db.events(
        since=parse_when(since),
        until=parse_when(until),
        person=person,
        door=door,
        decision=decision,
        limit=limit,
    )
    rows = [event.public() for event in events]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=LOG_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    else:
        if not events:
            click.echo("no events")
        for event in events:
            echo_event(event)


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


_commands_added = False


def main() -> None:
    """Entry point: add plugin commands, then run the CLI."""
    global _commands_added
    if not _commands_added:
        from gate.plugins import plugin_manager

        try:
            plugin_manager().hook.register_commands(cli=cli)
        except Exception as exc:  # a broken plugin command must not take gate down
            click.echo(f"warning: a plugin failed to add its commands: {exc}", err=True)
        _commands_added = True
    cli()
