"""Strangers against enrolled people at any gallery size: the open-set benchmark.

Uses the embedding cache of ``bench/embed_sets.py`` and only the *held-out*
half of LFW View 1's people (the impostor model is fitted on the other half).
For galleries of 10, 40, 140 and 500 people (people with two or more photos
enroll 2-3 of them, their other photos probe; everyone else of the half is a
stranger), in each image condition (gallery and probes alike), it measures:

* per photo, for each rule: the share of strangers named as someone and of
  enrolled people's photos named right; the old fixed 0.55, the calibrated
  threshold (default ``stranger_acceptance``) with and without the margin,
  and a fused per-person template (the normalised mean of their embeddings);
* the calibration check: for several stated risks, the stranger acceptance
  the model promises against the one measured (threshold rule alone), with a
  95% binomial interval;
* per track: photo sequences of one person (2-4 photos, fused as gate fuses a
  track, spread-corrected, judged after each view) for strangers and enrolled
  people;
* DET curves (strangers accepted against enrolled people missed) per photo,
  nearest template against the fused template, as ``docs/open-set-det.png``.

    python bench/open_set.py [--cache DIR] [--risk 0.01] [--plot docs/open-set-det.png]
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np

from gate.recognition.calibration import calibrate, pairwise, person_means
from gate.recognition.quality import SMALL_FACE_PX
from gate_plugins._dlib import impostor_model

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fit", ROOT / "tools" / "fit_impostor_model.py")
fit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fit)

SIZES = (10, 40, 140, 500)
#: the cached copies of View 1 (bench/embed_sets.py); each face is judged at the threshold of
#: its own condition, as gate does (grey or not, face under 80 px or not)
CONDITIONS = ("colour", "grey", "grey-96", "colour-64", "grey-64", "colour-far", "grey-far")
MARGIN = 0.04
OLD_THRESHOLD = 0.55


def binomial_interval(k: int, n: int) -> tuple[float, float]:
    """Wilson 95% interval of a proportion."""
    if n == 0:
        return 0.0, 1.0
    z = 1.96
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def person_scores(probes: np.ndarray, gallery: np.ndarray, owners: np.ndarray, people: int):
    """Per-person nearest-template distance ``(probes, people)``."""
    d = pairwise(probes, gallery)
    out = np.full((len(probes), people), np.inf)
    for p in range(people):
        out[:, p] = d[:, owners == p].min(axis=1)
    return out


def decide(scores: np.ndarray, threshold, margin: float) -> np.ndarray:
    """The person named for each row (-1 for nobody)."""
    order = np.argsort(scores, axis=1)
    best = order[:, 0]
    rows = np.arange(len(scores))
    nearest = scores[rows, best]
    runner = scores[rows, order[:, 1]] if scores.shape[1] > 1 else np.full(len(scores), np.inf)
    ok = (nearest <= threshold) & (runner - nearest >= margin)
    return np.where(ok, best, -1)


def make_gallery(labels: np.ndarray, size: int, rng):
    """Enrolled templates (index, person), genuine probes (index, person), stranger indices."""
    by_person: dict[str, list[int]] = {}
    for i, name in enumerate(labels):
        by_person.setdefault(name, []).append(i)
    candidates = sorted(n for n, idx in by_person.items() if len(idx) >= 2)
    chosen = set(rng.choice(candidates, min(size, len(candidates)), replace=False))
    gallery, owners, genuine, genuine_owner, strangers = [], [], [], [], []
    for p, name in enumerate(sorted(chosen)):
        idx = list(rng.permutation(by_person[name]))
        k = 2 if len(idx) <= 3 else 3
        k = min(k, len(idx))
        gallery += idx[:k]
        owners += [p] * k
        genuine += idx[k:]
        genuine_owner += [p] * (len(idx) - k)
    for name, idx in by_person.items():
        if name not in chosen:
            strangers += idx
    return (np.array(gallery), np.array(owners), np.array(genuine, int),
            np.array(genuine_owner, int), np.array(strangers), by_person, chosen)  # fmt: skip


def track_sets(by_person, chosen, gallery_set, rng, limit=4):
    """Photo sequences: strangers' (all photos of a non-enrolled person) and enrolled people's."""
    strangers = [rng.permutation(idx)[:limit] for n, idx in by_person.items()
                 if n not in chosen and len(idx) >= 2]  # fmt: skip
    genuine = []
    for p, name in enumerate(sorted(chosen)):
        rest = [i for i in by_person[name] if i not in gallery_set]
        if len(rest) >= 2:
            genuine.append((p, rng.permutation(rest)[:limit]))
    return strangers, genuine


def track_named(emb, seq, means, threshold, margin, min_views=2):
    """Who a track of photos is granted as (any look from ``min_views`` on), or -1."""
    for n in range(min_views, len(seq) + 1):
        views = emb[seq[:n]]
        fused = views.mean(axis=0, keepdims=True)
        spread = float(((views - fused) ** 2).sum(axis=1).mean())
        scores = np.sqrt(pairwise(fused, means) ** 2 + spread)
        named = decide(scores, threshold, margin)[0]
        if named >= 0:
            return named
    return -1


def face_conditions(cache: Path, condition: str) -> np.ndarray:
    """Each held-out face's image condition, from its size and colour."""
    data = np.load(cache / f"lfw-{condition}.npz")
    keep = np.array([fit.lfw_half(n) == "test" for n in data["label"]])
    small = data["size"][keep] < SMALL_FACE_PX
    grey = data["grey"][keep] > 0.5
    return np.where(grey, "grey", "colour").astype(object) + np.where(small, "-small", "")


def per_face(cal, conditions: np.ndarray) -> np.ndarray:
    return np.array([cal.threshold(c) for c in conditions])


def normalised_separation(raw_s, raw_g, owner, cohort_s, cohort_g) -> tuple[float, float]:
    """Enrolled photos named right at 1% strangers named, raw and cohort z-normalised."""
    z_s = (raw_s - cohort_s[:, :1]) / cohort_s[:, 1:]
    z_g = (raw_g - cohort_g[:, :1]) / cohort_g[:, 1:]
    out = []
    for ss, sg in ((raw_s, raw_g), (z_s, z_g)):
        t = np.quantile(ss.min(axis=1), 0.01)
        out.append(float((decide(sg, t, 0.0) == owner).sum()))
    return out[0], out[1]


def cohort_stats(probes: np.ndarray, cohort: np.ndarray) -> np.ndarray:
    d = pairwise(probes, cohort)
    return np.stack([d.mean(axis=1), d.std(axis=1)], axis=1)


def run_condition(cache: Path, condition: str, risk: float, reps: int, rng, det=None,
                  sizes=SIZES):  # fmt: skip
    emb_all, labels_all = fit.load(cache, condition, "test")
    conds = face_conditions(cache, condition)
    cohort_emb, _ = fit.load(cache, condition, "fit")
    cohort = cohort_stats(emb_all, cohort_emb[rng.choice(len(cohort_emb), 300, replace=False)])
    models = {rule: impostor_model(rule) for rule in ("nearest", "mean")}
    rows = []
    for size in sizes:
        acc = {}
        # small galleries vary most with the people drawn: draw more of them
        for _ in range(reps * max(1, 140 // size)):
            g, owners, gen, gen_owner, strangers, by_person, chosen = make_gallery(
                labels_all, size, rng
            )
            people = int(owners.max()) + 1
            ks = np.bincount(owners)
            order = np.argsort(owners, kind="stable")
            means = person_means(
                emb_all[g][order], np.searchsorted(owners[order], np.arange(people))
            )
            scores = {
                "nearest": (
                    person_scores(emb_all[strangers], emb_all[g], owners, people),
                    person_scores(emb_all[gen], emb_all[g], owners, people),
                ),
                "mean": (
                    pairwise(emb_all[strangers], means),
                    pairwise(emb_all[gen], means),
                ),
            }
            cals = {rule: calibrate(m, emb_all[g], owners, risk) for rule, m in models.items()}
            rules = {
                "old: nearest template, fixed 0.55 + margin": ("nearest", OLD_THRESHOLD, MARGIN),
                "nearest template, calibrated + margin": ("nearest", None, MARGIN),
                "mean template, calibrated + margin (default)": ("mean", None, MARGIN),
                "mean template, calibrated, no margin": ("mean", None, 0.0),
            }
            for name, (rule, fixed, m) in rules.items():
                ss, sg = scores[rule]
                ts = fixed if fixed is not None else per_face(cals[rule], conds[strangers])
                tg = fixed if fixed is not None else per_face(cals[rule], conds[gen])
                a = acc.setdefault(name, [0, 0, 0, 0])
                a[0] += int((decide(ss, ts, m) >= 0).sum())
                a[1] += len(ss)
                a[2] += int((decide(sg, tg, m) == gen_owner).sum())
                a[3] += len(sg)
            main = max(set(conds[strangers]), key=list(conds[strangers]).count)
            acc.setdefault("thresholds", []).append(cals["mean"].threshold(main))
            acc.setdefault("promised", []).append(cals["mean"].acceptance[main])
            acc.setdefault("main", main)
            for rule in ("nearest", "mean"):
                for stated in (0.001, 0.003, 0.01, 0.03):
                    limit = {c: models[rule].threshold(c, ks, stated) + cals[rule].site_shift[c]
                             for c in set(conds)}  # fmt: skip
                    t = np.array([limit[c] for c in conds[strangers]])
                    c = acc.setdefault(f"check {rule} {stated}", [0, 0])
                    c[0] += int((decide(scores[rule][0], t, 0.0) >= 0).sum())
                    c[1] += len(strangers)
            raw, normed = normalised_separation(*scores["mean"], gen_owner, cohort[strangers],
                                                cohort[gen])  # fmt: skip
            n = acc.setdefault("normalisation", [0.0, 0.0, 0])
            n[0], n[1], n[2] = n[0] + raw, n[1] + normed, n[2] + len(gen)
            strangers_t, genuine_t = track_sets(by_person, chosen, set(g.tolist()), rng)
            tr = acc.setdefault("tracks", [0, 0, 0, 0])
            for seq in strangers_t:
                t = min(cals["mean"].threshold(c) for c in conds[seq])
                tr[0] += track_named(emb_all, seq, means, t, MARGIN) >= 0
                tr[1] += 1
            for p, seq in genuine_t:
                t = min(cals["mean"].threshold(c) for c in conds[seq])
                tr[2] += track_named(emb_all, seq, means, t, MARGIN) == p
                tr[3] += 1
            if det is not None and condition == "colour":
                det.setdefault(size, []).append((*scores["nearest"], gen_owner, *scores["mean"]))
        rows.append((size, acc))
    return rows


def det_curve(ss, sg, owner, margin=MARGIN):
    grid = np.linspace(0.3, 0.7, 81)
    far = np.array([(decide(ss, t, margin) >= 0).mean() for t in grid])
    frr = np.array([1 - (decide(sg, t, margin) == owner).mean() for t in grid])
    return far, frr


def plot_det(det: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=110)
    for size, runs in sorted(det.items()):
        ss, sg, owner, ms, mg = (np.concatenate(parts) for parts in zip(*runs, strict=True))
        far, frr = det_curve(ss, sg, owner)
        line = ax.plot(np.maximum(far, 1e-4), frr, label=f"{size} people, nearest template")[0]
        far, frr = det_curve(ms, mg, owner)
        ax.plot(np.maximum(far, 1e-4), frr, linestyle="--", color=line.get_color(),
                label=f"{size} people, mean template")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlim(1e-3, 1)
    ax.set_ylim(0, 0.5)
    ax.set_xlabel("strangers named as someone (per photo)")
    ax.set_ylabel("enrolled people's photos not named right")
    ax.set_title("Open set on LFW View 1, held-out half (colour, all galleries pooled)")
    ax.axvline(0.01, color="grey", linewidth=0.8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    print(f"wrote {path}")


def pct(k, n):
    return f"{100 * k / max(n, 1):.2f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(".cache/embeddings"))
    parser.add_argument("--risk", type=float, default=0.01)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    det = {} if args.plot else None
    for condition in args.conditions.split(","):
        print(f"\n## {condition}, stated risk {args.risk}")
        print("| people | rule | strangers named | enrolled named right |")
        print("|---|---|---|---|")
        sizes = [int(n) for n in args.sizes.split(",")]
        for size, acc in run_condition(
            args.cache, condition, args.risk, args.reps, rng, det, sizes
        ):
            for name, a in acc.items():
                if name in ("thresholds", "promised", "tracks", "main", "normalisation"):
                    continue
                if name.startswith("check"):
                    continue
                print(f"| {size} | {name} | {pct(a[0], a[1])} of {a[1]} | "
                      f"{pct(a[2], a[3])} of {a[3]} |")  # fmt: skip
            tr = acc["tracks"]
            print(f"| {size} | per track (2-4 photos, calibrated + margin) | "
                  f"{pct(tr[0], tr[1])} of {tr[1]} | {pct(tr[2], tr[3])} of {tr[3]} |")  # fmt: skip
            ts = acc["thresholds"]
            print(f"| {size} | {acc['main']} threshold {np.median(ts):.3f} (range {min(ts):.3f}-"
                  f"{max(ts):.3f}), promised {np.median(acc['promised']):.4f} | | |")  # fmt: skip
            raw, normed, n = acc["normalisation"]
            raw, normed = 100 * raw / max(n, 1), 100 * normed / max(n, 1)
            print(f"| {size} | at 1% strangers (oracle threshold), enrolled named right: mean "
                  f"template {raw:.1f}%, cohort z-normalised {normed:.1f}% | | |")  # fmt: skip
            for key in [k for k in acc if k.startswith("check")]:
                k, n = acc[key]
                lo, hi = binomial_interval(k, n)
                print(f"| {size} | {key}: measured {pct(k, n)} (95% {100 * lo:.2f}-"
                      f"{100 * hi:.2f}%) | | |")  # fmt: skip
    if det:
        plot_det(det, args.plot)


if __name__ == "__main__":
    main()
