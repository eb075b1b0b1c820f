"""Faces in images: ``gate identify``, ``verify``, ``encode``, ``bench lfw``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from gate.cli.base import App, cli, json_option, pass_app
from gate.errors import GateError


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
        "threshold": None if rec.threshold is None else round(rec.threshold, 4),
        "condition": rec.quality.condition if rec.quality else None,
        "quality": rec.quality.as_dict() if rec.quality else None,
    }


def _annotated_paths(images, folder: Path, force: bool) -> dict[str, Path]:
    """Where ``--annotate`` writes each image: same base name, JPEG stays JPEG, else PNG.

    Refuses an existing file without ``force``, and an input image always.
    """
    out: dict[str, Path] = {}
    taken: set[Path] = set()
    for path in images:
        source = Path(path)
        suffix = source.suffix.lower() if source.suffix.lower() in (".jpg", ".jpeg") else ".png"
        target, n = folder / f"{source.stem}{suffix}", 1
        while target in taken:  # two inputs of one name, from different folders
            n += 1
            target = folder / f"{source.stem}-{n}{suffix}"
        taken.add(target)
        if source.exists() and target.exists() and target.samefile(source):
            raise click.ClickException(f"{target}: is an input image: annotate into another folder")
        if target.exists() and not force:
            raise click.ClickException(f"{target}: exists (--force to overwrite)")
        out[str(path)] = target
    return out


@cli.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option(
    "--annotate",
    "annotate_dir",
    type=click.Path(file_okay=False),
    help="Write each image here with every face's box, landmarks, name and distance or reason.",
)
@click.option("--force", is_flag=True, help="With --annotate: overwrite annotated images.")
@json_option
@pass_app
def identify(app: App, images, annotate_dir: str | None, force: bool, as_json: bool) -> None:
    """Say who is in each image: every face, matched against everyone enrolled.

    --annotate DIR draws the verdicts: green a match, red unknown, amber a face
    gate will not decide on (ambiguous, low quality, too small), with the
    distance, the threshold and the reason.
    """
    from gate.recognition.images import read_image

    targets: dict[str, Path] = {}
    if annotate_dir is not None:
        targets = _annotated_paths(images, Path(annotate_dir), force)
        Path(annotate_dir).mkdir(parents=True, exist_ok=True)
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
        recognitions = app.pipeline.recognise(pixels)
        faces = [_face_json(rec, names) for rec in recognitions]
        for face, rec in zip(faces, recognitions, strict=True):
            if rec.quality is not None and face["status"] == "low_quality":
                face["why"] = "; ".join(app.pipeline.floor.failures(rec.quality))
        report.append({"image": str(path), "faces": faces})
        if targets:
            from gate.recognition.annotate import Label, describe, draw, write_image

            labels = [
                Label(rec.face, face["status"], describe(face))
                for face, rec in zip(faces, recognitions, strict=True)
            ]
            try:
                write_image(targets[str(path)], draw(pixels, labels))
                report[-1]["annotated"] = str(targets[str(path)])
            except (GateError, OSError) as exc:
                raise click.ClickException(f"{targets[str(path)]}: cannot write ({exc})") from None
        if as_json:
            continue
        if not faces:
            click.echo(f"{path}: no face")
        for face in faces:
            who = face["person"] or face["status"]
            extra = f" (nearest {face['nearest']})" if face["status"] != "match" else ""
            distance = "-" if face["distance"] is None else f"{face['distance']:.3f}"
            limit = "" if face["threshold"] is None else f" (threshold {face['threshold']:.3f})"
            why = f" [{face['why']}]" if face.get("why") else ""
            click.echo(f"{path}: {who}{extra}{why}  distance {distance}{limit}  box {face['box']}")
        if targets:
            click.echo(f"{path}: annotated -> {targets[str(path)]}")
    if as_json:
        click.echo(json.dumps(report, indent=2))
    if errors:
        sys.exit(1)


@cli.command()
@json_option
@pass_app
def calibrate(app: App, as_json: bool) -> None:
    """Show the thresholds in force for the people enrolled now, and what they mean.

    gate turns [recognition] stranger_acceptance into a distance per image
    condition (colour or grey, faces under 80 px or not) from a model of how
    close strangers come, refined on the enrolled people themselves.
    """
    app.pipeline.load_templates(app.db)
    cal = app.pipeline.calibration
    names = app.db.names()
    alike = [
        {"person": names[p], "other": names[q], "distance": round(d, 4)}
        for p, q, d in app.pipeline.look_alikes(app.db)
    ]
    r = app.config.recognition
    data = {**cal.report(r.threshold), "look_alikes": alike}
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    if cal.source == "encoder":
        click.echo(
            f"encoder {app.pipeline.encoder.name!r} has no impostor model: fixed threshold "
            f"{cal.threshold('colour'):.3f}; no stranger acceptance can be stated"
        )
    elif cal.source == "override":
        click.echo(f"fixed threshold {r.threshold:g} ([recognition] threshold) overrides "
                   f"stranger_acceptance {r.stranger_acceptance:g}")  # fmt: skip
    else:
        click.echo(f"stated stranger acceptance {cal.risk:g} per face track (or photo)")
    click.echo(f"{cal.people} people, {cal.templates} templates enrolled")
    click.echo("condition     threshold  strangers named (est.)  enrolled named (est.)  site shift")
    for row in cal.summary():
        accept = row["stranger_acceptance"]
        genuine = row["enrolled_accepted"]
        click.echo(
            f"{row['condition']:<13} {row['threshold']:<10.3f} "
            f"{'-' if accept is None else f'{100 * accept:.2g}%':<23} "
            f"{'-' if genuine is None else f'{100 * genuine:.0f}%':<22} {row['site_shift']:+.3f}"
        )
    for pair in alike:
        click.echo(
            f"look-alikes: {pair['person']} and {pair['other']} ({pair['distance']:.3f}): "
            f"add photos of both, or expect them to be refused as ambiguous"
        )


@cli.command()
@click.argument("first", type=click.Path())
@click.argument("second", type=click.Path())
@json_option
@pass_app
def verify(app: App, first: str, second: str, as_json: bool) -> None:
    """Say whether the largest faces in FIRST and SECOND are the same person."""
    import numpy as np

    from gate.recognition.images import read_image

    vectors = []
    for path in (first, second):
        pixels = read_image(path).pixels
        faces = app.pipeline.detector.detect(pixels)
        if not faces:
            raise click.ClickException(f"{path}: no face")
        face = max(faces, key=lambda f: f.size)
        vectors.append(app.pipeline.normalise(app.pipeline.encoder.encode(pixels, [face]))[0])
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

    from gate.recognition.images import read_image

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
    from gate.recognition.evaluation import plot_roc
    from gate.recognition.lfw import read_pairs, unique_images
    from gate.recognition.lfw_protocol import run_protocol

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
