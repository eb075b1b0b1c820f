"""Site adaptation: the ``dlib-torch`` encoder against variants trained with each loss.

The task is built from ``../shared/data/train/glint_subset`` (no LFW): with a seed, some people
are held out entirely as *strangers*; for every other (*enrolled*) person K photos are the
site's photos, used both to train a variant (``metric.train.train``, which holds out a
quarter of these people again for validation and the threshold) and as that person's
enrolled templates. The test is everything else: the enrolled people's other photos and all
the strangers' photos.

Reported per encoder, on the test photos:

* TAR at FAR 1e-3 over every pair of test photos (the number of impostor pairs is printed);
* open-set identification against the K enrolled photos per person: rank-1, and the rate at
  which the strangers are rejected at the threshold in force (the base encoder's default
  threshold, the stored threshold for a variant), with the DIR at that threshold;
* training time on this machine (faces found, network cache, epochs: all of ``train``);
* ``train``'s own held-out check of its threshold rule (strangers accepted by the base and by
  the variant when each fold's threshold is chosen without it), and whether it warned.

Examples::

    python bench/site_adaptation.py                  # K=5, 6 strangers, every loss, seeds 0,1,2
    python bench/site_adaptation.py --k 10 --losses triplet,arcface --seeds 0 --json out.json

Variants whose backbone is frozen are evaluated as the encoder computes them: its head on the
base encoder's per-face descriptor (checked against ``DlibTorchEncoder(variant=...)`` on some
photos every run); variants with fine-tuned blocks are encoded by that encoder in full.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from gate.recognition.metric.folders import encode_folder
from gate.recognition.metric.scoring import open_set, verification
from gate.recognition.metric.train import train
from gate_plugins.dlib_torch import DlibTorchEncoder, DlibTorchOptions
from gate_plugins.yunet import YuNetDetector

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BASE = DlibTorchEncoder  # its class attributes: space, dim, threshold (the base's default)
DEFAULT_LOSSES = "contrastive,triplet:batch_hard,triplet:semi_hard,center,arcface,cosface"


def build_task(root: Path, strangers: int, k: int, seed: int, work: Path):
    """Symlinked training folder of the enrolled people's K photos; the split as sets."""
    rng = np.random.default_rng(seed)
    people = sorted(d.name for d in root.iterdir() if d.is_dir())
    held = set(rng.choice(people, size=strangers, replace=False).tolist())
    train_dir = work / "site"
    site_photos: set[Path] = set()
    for person in people:
        if person in held:
            continue
        photos = sorted(p for p in (root / person).iterdir() if p.is_file())
        chosen = sorted(rng.choice(len(photos), size=min(k, len(photos) - 1), replace=False))
        (train_dir / person).mkdir(parents=True)
        for i in chosen:
            (train_dir / person / photos[i].name).symlink_to(photos[i])
            site_photos.add(photos[i])
    return held, site_photos, train_dir


def measure(embeddings, people, paths, site_photos, threshold: float) -> dict:
    """Verification over the test photos, open set against the enrolled (site) photos."""
    gallery = np.asarray([p in site_photos for p in paths])
    test = ~gallery
    ids = np.unique(np.asarray(people)[test], return_inverse=True)[1]
    ver, _ = verification(embeddings[test], ids, threshold)
    ident, _ = open_set(embeddings, people, gallery, threshold)
    return {
        "tar_at_far_1e-3": ver["tar_at_far_1e-3"],
        "impostor_pairs": ver["impostor_pairs"],
        "genuine_pairs": ver["genuine_pairs"],
        "eer": ver["eer"],
        "rank1": ident["rank1"],
        "dir_at_threshold": ident["dir_at_threshold"],
        "stranger_rejection": ident["stranger_rejection"],
        "stranger_probes": ident["stranger_probes"],
        "known_probes": ident["known_probes"],
        "threshold": threshold,
    }


def run_seed(args, seed: int, folder, detector, work: Path) -> list[dict]:
    """The baseline and every loss on the task of one seed."""
    held, site_photos, train_dir = build_task(args.data, args.strangers, args.k, seed, work)
    rows = [
        {
            "encoder": f"dlib-torch (base) at {threshold}",
            "seed": seed,
            "train_s": None,
            "reference": threshold != BASE.threshold,
            **measure(folder.embeddings, folder.people, folder.paths, site_photos, threshold),
        }
        for threshold in dict.fromkeys([BASE.threshold, 0.6])
    ]
    probe = slice(0, 8)
    for spec in args.losses.split(","):
        loss, _, mining = spec.partition(":")
        out = work / f"{loss}{'-' + mining if mining else ''}.pt"
        tick = time.perf_counter()
        result = train(
            train_dir,
            loss,
            args.epochs,
            out,
            encoder=DlibTorchEncoder(),
            detector=detector,
            mining=mining or None,
            unfreeze_blocks=args.unfreeze_blocks,
            seed=seed,
        )
        train_s = time.perf_counter() - tick
        encoder = DlibTorchEncoder(DlibTorchOptions(variant=str(out)))
        if result.variant.unfrozen_blocks:
            embeddings = encode_folder(args.data, detector, encoder).embeddings
        else:
            embeddings = encoder.project(folder.embeddings)
            check = encode_folder_subset(folder, probe, detector, encoder)
            assert np.abs(check - embeddings[probe]).max() < 1e-4, "head != encoder"
        rows.append(
            {
                "encoder": f"{loss}{' ' + mining if mining else ''}",
                "seed": seed,
                "train_s": train_s,
                "best_epoch": result.best_epoch,
                "epochs_run": len(result.history) - 1,
                "timings": result.timings,
                "validation": result.validation,
                **measure(embeddings, folder.people, folder.paths, site_photos, result.threshold),
            }
        )
        print(f"seed {seed} {spec}: trained in {train_s:.0f} s", file=sys.stderr)
    print(f"seed {seed}: strangers {sorted(held)}", file=sys.stderr)
    return rows


def pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def table(rows: list[dict]) -> None:
    """One markdown row per encoder and seed."""
    print(
        "| seed | encoder | TAR @ FAR 1e-3 | EER | rank-1 | strangers rejected "
        "| DIR at threshold | threshold | best / run epochs | held-out check | training time |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        epochs = f"{r['best_epoch']} / {r['epochs_run']}" if "best_epoch" in r else "-"
        took = f"{r['train_s']:.0f} s" if r["train_s"] is not None else "-"
        print(
            f"| {r['seed']} | {r['encoder']} | {pct(r['tar_at_far_1e-3'])} "
            f"| {r['eer'] * 100:.2f}% | {pct(r['rank1'])} | {pct(r['stranger_rejection'])} "
            f"| {pct(r['dir_at_threshold'])} | {r['threshold']:.3f} | {epochs} "
            f"| {held_out(r)} | {took} |"
        )


def held_out(row: dict) -> str:
    """``gate train``'s own check of its threshold rule on people it did not see: strangers
    accepted by the base and by the variant, over all folds; "warned" when it failed."""
    if "validation" not in row:
        return "-"
    check = row["validation"]["calibration"]["held_out"]
    warned = ", warned" if check["warning"] else ""
    return f"{check['base_accepted']} / {check['variant_accepted']} of {check['strangers']}{warned}"


def summary(rows: list[dict]) -> None:
    """Means over seeds, and the change in stranger rejection against the base per seed."""
    base = {r["seed"]: r for r in rows if r["train_s"] is None and not r["reference"]}
    print(
        "| encoder | TAR @ FAR 1e-3 | EER | rank-1 | strangers rejected "
        "| change in strangers rejected vs base, per seed | DIR at threshold | training time |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in dict.fromkeys(r["encoder"] for r in rows):
        mine = [r for r in rows if r["encoder"] == name]

        def mean(key: str, mine=mine) -> float:
            return float(np.mean([r[key] for r in mine]))

        change = " / ".join(
            f"{(r['stranger_rejection'] - base[r['seed']]['stranger_rejection']) * 100:+.1f}"
            for r in mine
        )
        took = "-" if mine[0]["train_s"] is None else f"{mean('train_s'):.0f} s"
        print(
            f"| {name} | {pct(mean('tar_at_far_1e-3'))} | {mean('eer') * 100:.2f}% "
            f"| {pct(mean('rank1'))} | {pct(mean('stranger_rejection'))} "
            f"| {change if mine[0]['train_s'] is not None else '-'} "
            f"| {pct(mean('dir_at_threshold'))} | {took} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA / "train" / "glint_subset")
    parser.add_argument("--strangers", type=int, default=6)
    parser.add_argument("--k", type=int, default=5, help="site photos per enrolled person")
    parser.add_argument("--losses", default=DEFAULT_LOSSES, help="loss[:mining],...")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--unfreeze-blocks", type=int, default=0)
    parser.add_argument("--seeds", default="0,1,2", help="one task (strangers, photos) per seed")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, help="write every number here too")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"no data at {args.data}")
    if args.threads:
        torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="gate-site-"))
    detector = YuNetDetector()
    tick = time.perf_counter()
    folder = encode_folder(args.data, detector, DlibTorchEncoder())
    encode_s = time.perf_counter() - tick
    people = len(set(folder.people))
    print(
        f"{args.data}: {people} people, {len(folder.paths)} faces "
        f"({len(folder.skipped)} photos skipped, {folder.padded} padded); base encoder: "
        f"{encode_s:.0f} s",
        file=sys.stderr,
    )
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        rows += run_seed(args, seed, folder, detector, work / f"seed{seed}")

    first = rows[0]
    print(
        f"\n{len(folder.paths)} faces of {people} people; per seed: {args.strangers} strangers, "
        f"{people - args.strangers} enrolled people x {args.k} site photos; base threshold "
        f"{BASE.threshold}; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}\n"
    )
    summary(rows)
    print()
    table(rows)
    print(
        f"\nTAR @ FAR 1e-3 rests on {first['impostor_pairs']} impostor pairs "
        f"({first['genuine_pairs']} genuine) per seed; rank-1 and DIR on {first['known_probes']} "
        f"probes of enrolled people; stranger rejection on {first['stranger_probes']} probes "
        f"of {args.strangers} people."
    )
    if args.json:
        settings = {**vars(args), "data": str(args.data), "json": str(args.json)}
        args.json.write_text(json.dumps({"args": settings, "rows": rows}, indent=2, default=str))


def encode_folder_subset(folder, rows: slice, detector, encoder) -> np.ndarray:
    """The given photos encoded from scratch by ``encoder`` (to check the fast path)."""
    from gate.recognition.images import read_image
    from gate.recognition.metric.folders import find_face

    out = []
    for path in folder.paths[rows]:
        image, face, _ = find_face(detector, read_image(path).pixels)
        out.append(encoder.encode(image, [face])[0])
    return np.asarray(out)


if __name__ == "__main__":
    main()
