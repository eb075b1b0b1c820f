"""Commands ``gate train`` (fit an encoder variant to a site) and ``gate eval`` (measure one).

Both read a folder with one subfolder of photos per person. ``gate train`` writes a variant of
a trainable encoder, ``dlib-torch`` unless told otherwise (:mod:`gate.recognition.metric.train`),
which it builds from the plugins' registry with the configured detector; ``gate eval`` measures
whatever encoder the config selects, variant or not: verification over every pair of photos
and open-set identification with some people held out as strangers. The training code is
imported only when a command runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from gate import hookimpl
from gate.cli.base import App, json_option, pass_app
from gate.recognition.metric.choices import TRAIN_LOSSES, TRIPLET_MINING

if TYPE_CHECKING:
    from gate.recognition.metric.trainable import TrainableEncoder
    from gate.recognition.pipeline import Pipeline

STAGES = {"faces": "Finding faces", "encoding": "Encoding", "training": "Training"}


class _Bars:
    """A click progress bar per stage, on stderr, hidden when stderr is not a terminal."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.bar: Any = None
        self.done = 0

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            self.close()
            self.stage, self.done = stage, 0
            self.bar = click.progressbar(
                length=total,
                label=STAGES.get(stage, stage),
                file=sys.stderr,
                show_pos=True,
                hidden=not sys.stderr.isatty(),
            )
            self.bar.__enter__()
        self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None

    def __enter__(self) -> _Bars:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _training_parts(app: App, name: str) -> tuple[Pipeline, TrainableEncoder]:
    """A pipeline with the configured detector, and the encoder ``name`` built through it as
    training starts from it: the config's options for it with the encoder's
    ``training_options`` over them (the base network, full precision). Close both when done.
    """
    from gate.recognition.metric.trainable import TrainableEncoder
    from gate.recognition.pipeline import Pipeline

    registry = app.pm.registry
    overrides = getattr(registry.get("encoder", name).cls, "training_options", None)
    if overrides is None:
        raise click.ClickException(_not_trainable(app, name))
    config = app.config
    section = {**config.encoders.get(name, {}), **overrides}
    config = config.model_copy(update={"encoders": {**config.encoders, name: section}})
    pipeline = Pipeline(config, registry)
    encoder = pipeline.build("encoder", name)
    if not isinstance(encoder, TrainableEncoder):
        encoder.close()
        pipeline.close()
        raise click.ClickException(_not_trainable(app, name))
    return pipeline, encoder


def _not_trainable(app: App, name: str) -> str:
    trainable = sorted(
        encoder
        for encoder, registered in app.pm.registry.components["encoder"].items()
        if getattr(registered.cls, "training_options", None) is not None
    )
    return (
        f"encoder {name!r} cannot be trained: gate train adapts an encoder's network "
        f"(trainable: {', '.join(trainable) or 'none'})"
    )


# --------------------------------------------------------------------------- gate train


@click.command("train")
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="One subfolder of photos per person.",
)
@click.option(
    "--encoder",
    "encoder_name",
    default="dlib-torch",
    show_default=True,
    help="The encoder to adapt (a trainable one); its config section applies, not its variant.",
)
@click.option("--loss", type=click.Choice(TRAIN_LOSSES), default="triplet", show_default=True)
@click.option("--mining", type=click.Choice(TRIPLET_MINING), help="Triplet mining [semi_hard].")
@click.option("--epochs", type=click.IntRange(1, 10000), default=30, show_default=True)
@click.option(
    "--out", required=True, help="Variant name (kept in the data dir's encoders/) or a .pt path."
)
@click.option("--head-dim", type=click.IntRange(2, 4096), default=128, show_default=True)
@click.option("--head-hidden", type=click.IntRange(1, 8192), help="An MLP head of this width.")
@click.option(
    "--unfreeze-blocks",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Also fine-tune the network's last N residual blocks (0-4).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.25,
    show_default=True,
    help="Share of the people held out to validate on.",
)
@click.option(
    "--patience",
    type=click.IntRange(1),
    default=5,
    show_default=True,
    help="Stop after this many epochs without a better validation score.",
)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True)
@click.option(
    "--augment-copies",
    type=click.IntRange(0, 100),
    default=6,
    show_default=True,
    help="Augmented copies of each photo made (and encoded) once before training.",
)
@json_option
@pass_app
def train_command(
    app: App,
    data_dir: str,
    encoder_name: str,
    loss: str,
    mining: str | None,
    epochs: int,
    out: str,
    head_dim: int,
    head_hidden: int | None,
    unfreeze_blocks: int,
    seed: int,
    val_fraction: float,
    patience: int,
    lr: float,
    augment_copies: int,
    as_json: bool,
) -> None:
    """Adapt an encoder (dlib-torch) to a site: train an encoder variant on --data.

    People (never photos) are split into training and validation; a projection
    head (optionally with the network's last blocks) is trained with --loss on
    augmented faces, the best epoch on validation is kept, and the match
    threshold is chosen so that strangers are rejected at least as often as by
    the base encoder. Writes the variant and, beside it, .metrics.json and
    .metrics.csv. Says so when no epoch beat the untrained head (nothing
    learnt) and when validation is too small to tell epochs apart.
    """
    from gate.recognition.metric.train import train

    pipeline, encoder = _training_parts(app, encoder_name)
    try:
        with _Bars() as bars:
            result = train(
                data_dir,
                loss,
                epochs,
                out,
                encoder=encoder,
                detector=pipeline.detector,
                mining=mining,
                head_dim=head_dim,
                hidden=head_hidden,
                unfreeze_blocks=unfreeze_blocks,
                seed=seed,
                val_fraction=val_fraction,
                patience=patience,
                lr=lr,
                augment_copies=augment_copies,
                progress=bars,
            )
    finally:
        encoder.close()
        pipeline.close()
    if as_json:
        click.echo(json.dumps(result.summary(), indent=2))
        return
    from gate.recognition.metric.folders import describe_skip

    for skip in result.skipped:
        click.echo(f"skipped {describe_skip(skip)}", err=True)
    data = result.data
    click.echo(
        f"{data['photos']} faces of {data['people']} people: trained on {data['train_people']}, "
        f"validated on {data['val_people']}"
    )
    click.echo("epoch  train loss  val EER  val TAR@FAR1e-2  seconds")
    for row in result.history:
        mark = "  <- kept" if row["epoch"] == result.best_epoch else ""
        click.echo(
            f"{row['epoch']:5d}  {row['train_loss']:10.4f}  {row['eer'] * 100:6.2f}%"
            f"  {_pct(row['tar_at_far_1e-2']):>15}  {row['seconds']:7.3f}{mark}"
        )
    for note in result.notes:
        click.echo(note)
    val = result.validation
    base, variant, cal = val["base"], val["variant"], val["calibration"]
    click.echo(
        f"threshold {result.threshold:.4f} (base encoder {base['threshold']}); on the "
        f"validation people: EER {_pct(base['eer'])} -> {_pct(variant['eer'])}, TAR@FAR1e-2 "
        f"{_pct(base['tar_at_far_1e-2'])} -> {_pct(variant['tar_at_far_1e-2'])}, strangers "
        f"rejected {_pct(base['stranger_rejection'])} -> {_pct(variant['stranger_rejection'])}"
    )
    click.echo(
        f"threshold check over {cal['folds']} folds of people: strangers rejected "
        f"{_pct(cal['base_stranger_rejection'])} (base) -> "
        f"{_pct(cal['variant_stranger_rejection'])}"
    )
    click.echo(f"took {result.timings['total_s']:.0f} s")
    click.echo(f"wrote {result.path}")
    click.echo(f"      {result.metrics_json}")
    click.echo(f"      {result.metrics_csv}")
    from gate.recognition.metric.head import variants_dir

    named = result.path.parent.resolve() == variants_dir().resolve()
    use = result.variant.name if named else str(result.path.resolve())
    click.echo("to use it, in gate.toml:")
    click.echo('    [pipeline]\n    encoder = "dlib-torch"')
    click.echo(f"    [encoders.dlib-torch]\n    variant = {json.dumps(use)}")
    click.echo("then rebuild everyone's templates: gate people reencode")


# --------------------------------------------------------------------------- gate eval


def _split(people: list[str], strangers: int | None, enroll: int, seed: int):
    """Who is held out as a stranger, and which photos enroll the others."""
    import numpy as np

    names = sorted(set(people))
    if strangers is None:
        strangers = max(1, round(len(names) / 4)) if len(names) >= 3 else 0
    if strangers >= len(names):
        raise click.UsageError(f"--strangers {strangers}: only {len(names)} people have a face")
    rng = np.random.default_rng(seed)
    held = {names[i] for i in rng.permutation(len(names))[:strangers]}
    gallery = np.zeros(len(people), bool)
    for name in names:
        if name in held:
            continue
        rows = np.flatnonzero(np.asarray(people) == name)
        gallery[rng.permutation(rows)[:enroll]] = True
    return sorted(held), gallery


def _plot_histograms(groups: dict[str, Any], threshold: float, path: Path, title: str) -> Path:
    """Overlaid distance histograms with the threshold as a line, saved as PNG."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    values = [np.asarray(v) for v in groups.values() if len(v)]
    top = max([threshold, *(float(v.max()) for v in values)]) * 1.05
    bins = np.linspace(0.0, top, 60)
    for label, v in groups.items():
        if len(v):
            ax.hist(v, bins=bins, alpha=0.5, density=True, label=f"{label} ({len(v)})")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("distance")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(loc="upper right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


@click.command("eval")
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="One subfolder of photos per person.",
)
@click.option(
    "--strangers",
    type=click.IntRange(0),
    help="People held out as strangers [a quarter of them, at least 1].",
)
@click.option(
    "--enroll",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Photos enrolled per other person; their other photos are the probes.",
)
@click.option(
    "--far",
    type=click.FloatRange(0, 1),
    default=1e-2,
    show_default=True,
    help="False-alarm rate (strangers accepted) for the DIR.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Picks strangers, photos.")
@click.option("--plots", type=click.Path(file_okay=False), help="Save PNG plots in this folder.")
@json_option
@pass_app
def eval_command(
    app: App,
    data_dir: str,
    strangers: int | None,
    enroll: int,
    far: float,
    seed: int,
    plots: str | None,
    as_json: bool,
) -> None:
    """Measure the configured detector and encoder on --data.

    Verification over every pair of photos: ROC, EER, TAR at FAR 1e-2 and 1e-3.
    Open-set identification: --enroll photos of each person not held out are
    enrolled, their other photos and every photo of the --strangers held out
    are probes: rank-1, detection-and-identification rate (DIR) at --far, and
    the share of strangers rejected at the threshold in force.
    """
    import numpy as np

    from gate.recognition.evaluation import plot_roc
    from gate.recognition.metric.folders import describe_skip, encode_folder
    from gate.recognition.metric.scoring import open_set, pair_distances, verification

    pipeline = app.pipeline
    encoder = pipeline.encoder
    with _Bars() as bars:  # the folder first: its problems are the user's to fix
        folder = encode_folder(data_dir, pipeline.detector, encoder, bars)
    threshold = pipeline.threshold
    if len(set(folder.people)) < 2:
        raise click.ClickException(f"{data_dir}: faces of at least 2 people are needed")
    ids = folder.ids()
    ver, curve = verification(folder.embeddings, ids, threshold)
    held, gallery = _split(folder.people, strangers, enroll, seed)
    if (~gallery & ~np.isin(folder.people, held)).sum() == 0:
        raise click.ClickException(f"nobody has more than --enroll {enroll} photo(s) to probe with")
    ident, result = open_set(folder.embeddings, folder.people, gallery, threshold, far)
    label = f"{encoder.name} {encoder.version}"
    written = []
    if plots:
        folder_out = Path(plots)
        written.append(plot_roc({label: curve}, folder_out / "roc.png", title="Verification"))
        d, same = pair_distances(folder.embeddings, ids)
        groups = {"same person": d[same], "different people": d[~same]}
        written.append(
            _plot_histograms(groups, threshold, folder_out / "distances.png", "Pair distances")
        )
        nearest = result.nearest_distances
        known = np.isin(np.asarray(folder.people)[~gallery], sorted(set(folder.people) - set(held)))
        groups = {"enrolled people's probes": nearest[known], "strangers": nearest[~known]}
        written.append(
            _plot_histograms(groups, threshold, folder_out / "open_set.png", "Nearest enrolled")
        )
    report = {
        "encoder": {
            "name": encoder.name,
            "version": encoder.version,
            "space": encoder.space,
            "dim": encoder.dim,
        },
        "detector": pipeline.detector.name,
        "threshold": threshold,
        "data": {
            "people": len(set(folder.people)),
            "faces": len(folder.paths),
            "skipped": folder.skipped,
            "padded": folder.padded,
        },
        "verification": ver,
        "open_set": {**ident, "strangers": held, "enrolled_per_person": enroll, "seed": seed},
        "plots": [str(p) for p in written],
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for skip in folder.skipped:
        click.echo(f"skipped {describe_skip(skip)}", err=True)
    click.echo(f"encoder     {label} (space {encoder.space}, threshold {threshold:.4f})")
    click.echo(
        f"faces       {len(folder.paths)} of {len(set(folder.people))} people "
        f"({len(folder.skipped)} files skipped, {folder.padded} found after padding)"
    )
    click.echo(
        f"pairs       {ver['pairs']} ({ver['genuine_pairs']} same person, "
        f"{ver['impostor_pairs']} different)"
    )
    click.echo(f"EER         {ver['eer'] * 100:.2f}% (at {ver['eer_threshold']:.4f})")
    click.echo(f"TAR@FAR1e-2 {_pct(ver['tar_at_far_1e-2'])}")
    click.echo(f"TAR@FAR1e-3 {_pct(ver['tar_at_far_1e-3'])}")
    click.echo(
        f"at {threshold:.4f}    TAR {_pct(ver['tar_at_threshold'])}, "
        f"different-people pairs rejected {_pct(ver['impostor_rejection'])}"
    )
    click.echo(
        f"open set    {ident['enrolled_people']} people enrolled with {enroll} photo(s) each, "
        f"{ident['known_probes']} probes; {ident['stranger_people']} strangers, "
        f"{ident['stranger_probes']} probes"
    )
    click.echo(f"rank-1      {_pct(ident['rank1'])}")
    click.echo(f"{f'DIR@FAR{far:g}':<12}{_pct(ident['dir_at_far'])}")
    click.echo(
        f"at {threshold:.4f}    DIR {_pct(ident['dir_at_threshold'])}, "
        f"strangers rejected {_pct(ident['stranger_rejection'])}"
    )
    for path in written:
        click.echo(f"plot        {path}")


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(train_command)
    cli.add_command(eval_command)
