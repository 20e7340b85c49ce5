"""The shipped face tower's scores on people it never trained on, via `siamese-index evaluate`.

- ORL, all 40 people (never trained on ORL): one-shot rank-1 (image 1 enrolled... by file name
  order, the first image of each person), and verification on sampled pairs;
- LFW people held out of its training (recorded in its config): verification and one-shot.

ORL s31-s40 has only 400 sampled pairs, so its verification figures move by about a point from
one pair sample to the next: a second row averages --pair-seeds samples (seeds 0, 1, ...). A
third does the same with the threshold chosen again on ORL s1-s30 alone (`siamese-index
calibrate`), the seed towers' training people: the protocol of the README's seed-tower table.

    python benchmarks/face_model.py [--model NAME] [--pair-seeds 8]  (default: the default face tower)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from _cli import SHARED, siamese

from siamese_index.config import DEFAULT_MODEL_NAME


def row(name, report):
    v, o = report["verification"], report["one_shot"]
    return (
        f"| {name} | {v['accuracy']:.3f} | {v['best_accuracy']:.3f} | {v['auc']:.3f} | {v['eer']:.3f} | "
        f"{v['tar_at_far_1pct']:.3f} | {o['identities']} | {o['rank1']:.3f} | {o['rank5']:.3f} |"
    )


def spread(reports) -> str:
    """Mean [min-max] of the verification figures over several pair samples."""
    cells = []
    for key in ("accuracy", "best_accuracy", "auc", "eer", "tar_at_far_1pct"):
        vals = [r["verification"][key] for r in reports]
        cells.append(f"{statistics.mean(vals):.3f} [{min(vals):.3f}-{max(vals):.3f}]")
    o = reports[0]["one_shot"]  # one-shot does not depend on the pair sample
    return " | ".join(cells) + f" | {o['identities']} | {o['rank1']:.3f} | {o['rank5']:.3f} |"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEFAULT_MODEL_NAME)
    ap.add_argument("--pair-seeds", type=int, default=8, help="pair samples averaged for ORL s31-s40")
    args = ap.parse_args()
    print(
        "| people never trained on | accuracy at own threshold | best accuracy (optimistic) | AUC | EER | TAR@FAR1% | enrolled | rank-1 | rank-5 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    orl, _ = siamese("evaluate", str(SHARED / "orl_faces"), "--model", args.model)
    print(row("ORL, all 40 people", orl), flush=True)
    unseen = ("--identities", "s3[1-9]", "--identities", "s40")  # the seed-tower table's test people
    orl10, _ = siamese("evaluate", str(SHARED / "orl_faces"), "--model", args.model, *unseen)
    print(row("ORL, s31-s40", orl10), flush=True)
    more = [
        siamese("evaluate", str(SHARED / "orl_faces"), "--model", args.model, *unseen, "--seed", str(seed))[0]
        for seed in range(1, args.pair_seeds)
    ]
    print(f"| ORL, s31-s40, mean [range] of {args.pair_seeds} pair samples | " + spread([orl10, *more]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        calibrated = f"{tmp}/orl-calibrated"
        cal, _ = siamese(
            "calibrate",
            str(SHARED / "orl_faces"),
            "--model",
            args.model,
            "--out",
            calibrated,
            "--exclude",
            "s3[1-9]",
            "--exclude",
            "s40",
        )
        reports = [
            siamese("evaluate", str(SHARED / "orl_faces"), "--model", calibrated, *unseen, "--seed", str(seed))[0]
            for seed in range(args.pair_seeds)
        ]
    print(
        f"| ORL, s31-s40, threshold {cal['threshold']:.4f} chosen on ORL s1-s30 (was {cal['previous_threshold']:.4f}), "
        f"mean [range] of {args.pair_seeds} pair samples | " + spread(reports),
        flush=True,
    )
    lfw, _ = siamese("evaluate", str(SHARED / "lfw" / "lfw-deepfunneled"), "--model", args.model, "--held-out")
    print(row("LFW, held-out people", lfw), flush=True)


if __name__ == "__main__":
    main()
