"""Site adaptation: the ``dlib-torch`` encoder against variants trained with each loss.

The task is built from ``../shared/data/train/glint_subset`` (no LFW): with a seed, some people
are held out entirely as *strangers*; for every other (*enrolled*) person K photos are the
site's photos, used both to train a variant (``gate.metric.train.train``, which holds out a
quarter of these people again for validation and the threshold) and as that person's
enrolled templates. The test is everything else: the enrolled people's other photos and all
the strangers' photos.

Reported per encoder, on the test photos:

* TAR at FAR 1e-3 over every pair of test photos (the number of impostor pairs is printed);
* open-set identification against the K enrolled photos per person: rank-1, and the rate at
  which the strangers are rejected at the threshold in force (0.6 for the base encoder, the
  stored threshold for a variant), with the DIR at that threshold;
* training time on this machine (faces found, network cache, epochs: all of ``train``).

Examples::

    python bench/site_adaptation.py                          # K=5, 6 strangers, every loss
    python bench/site_adaptation.py --k 10 --losses triplet,arcface --json out.json

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

from gate.metric.train import encode_folder, open_set, train, verification
from gate_plugins.dlib_torch import DlibTorchEncoder, DlibTorchOptions
from gate_plugins.yunet import YuNetDetector

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA / "train" / "glint_subset")
    parser.add_argument("--strangers", type=int, default=6)
    parser.add_argument("--k", type=int, default=5, help="site photos per enrolled person")
    parser.add_argument("--losses", default=DEFAULT_LOSSES, help="loss[:mining],...")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--unfreeze-blocks", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, help="write every number here too")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"no data at {args.data}")
    if args.threads:
        torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="gate-site-"))
    held, site_photos, train_dir = build_task(args.data, args.strangers, args.k, args.seed, work)
    detector = YuNetDetector()
    base = DlibTorchEncoder()
    tick = time.perf_counter()
    folder = encode_folder(args.data, detector, base)
    encode_s = time.perf_counter() - tick
    print(
        f"data {args.data} : {len(set(folder.people))} people, {len(folder.paths)} faces "
        f"({len(folder.skipped)} photos skipped, {folder.padded} padded); strangers "
        f"{sorted(held)}; K={args.k}; encoded in {encode_s:.0f} s",
        file=sys.stderr,
    )
    rows = [
        {
            "encoder": "dlib-torch (base)",
            "train_s": None,
            **measure(folder.embeddings, folder.people, folder.paths, site_photos, 0.6),
        }
    ]
    probe = slice(0, 12)
    for spec in args.losses.split(","):
        loss, _, mining = spec.partition(":")
        out = work / f"{loss}{'-' + mining if mining else ''}.pt"
        tick = time.perf_counter()
        result = train(
            train_dir,
            loss,
            args.epochs,
            out,
            mining=mining or None,
            unfreeze_blocks=args.unfreeze_blocks,
            seed=args.seed,
            detector=detector,
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
                "train_s": train_s,
                "best_epoch": result.best_epoch,
                "epochs_run": len(result.history) - 1,
                "val": result.validation,
                **measure(embeddings, folder.people, folder.paths, site_photos, result.threshold),
            }
        )
        print(f"{spec}: trained in {train_s:.0f} s", file=sys.stderr)

    print(
        f"\n{len(folder.paths)} faces; site: {len({p.parent for p in site_photos})} people x "
        f"{args.k} photos; strangers: {len(held)} people; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}\n"
    )
    print(
        "| encoder | TAR @ FAR 1e-3 | EER | rank-1 | strangers rejected | DIR at threshold "
        "| threshold | best / run epochs | training time |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        epochs = f"{r['best_epoch']} / {r['epochs_run']}" if "best_epoch" in r else "-"
        took = f"{r['train_s']:.0f} s" if r["train_s"] is not None else "-"
        print(
            f"| {r['encoder']} | {r['tar_at_far_1e-3'] * 100:.1f}% | {r['eer'] * 100:.2f}% "
            f"| {r['rank1'] * 100:.1f}% | {r['stranger_rejection'] * 100:.1f}% "
            f"| {r['dir_at_threshold'] * 100:.1f}% | {r['threshold']:.3f} | {epochs} | {took} |"
        )
    first = rows[0]
    print(
        f"\nTAR @ FAR 1e-3 rests on {first['impostor_pairs']} impostor pairs "
        f"({first['genuine_pairs']} genuine); rank-1 and DIR on {first['known_probes']} "
        f"probes of enrolled people; stranger rejection on {first['stranger_probes']} probes."
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": vars(args) | {"data": str(args.data)}, "rows": rows}, indent=2, default=str
            )
        )


def encode_folder_subset(folder, rows: slice, detector, encoder) -> np.ndarray:
    """The given photos encoded from scratch by ``encoder`` (to check the fast path)."""
    from gate.images import read_image
    from gate.metric.train import find_face

    out = []
    for path in folder.paths[rows]:
        image, face, _ = find_face(detector, read_image(path).pixels)
        out.append(encoder.encode(image, [face])[0])
    return np.asarray(out)


if __name__ == "__main__":
    main()
