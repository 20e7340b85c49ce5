"""Before/after retraining, measured on people the new pairs do not contain.

1. A temporary home with the face tower (--model; default: the default face tower): image 1 of each ORL
   person s21-s40 enrolled, one-shot rank-1/rank-5 of their 180 other images.
2. `retrain` from a pairs CSV built from ORL s1-s20 only (every genuine pair of a person's ten
   photos, as many impostor pairs), fine-tuning the active tower; retrain's own held-out
   comparison (on s1-s20 people it did not train on) is printed too.
3. The same one-shot measurement on s21-s40 with the retrained tower (activated by retrain when
   not worse; otherwise activated here only to measure it, and said so).

    python benchmarks/retrain_orl.py [--model DIR] [--epochs 5] [--lr 1e-4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from siamese_index.config import DEFAULT_MODEL_NAME  # noqa: E402  (after the path is set)
from siamese_index.training.pairs import write_pairs_csv  # noqa: E402

ORL = Path(__file__).resolve().parents[2] / "shared" / "data" / "orl_faces"

TRAIN_PEOPLE = [f"s{i}" for i in range(1, 21)]
TEST_PEOPLE = [f"s{i}" for i in range(21, 41)]


def one_shot(idx, people: list[str]) -> dict:
    probes = [(p, ORL / p / f"{i}.pgm") for p in people for i in range(2, 11)]
    answers = idx.identify([str(f) for _, f in probes], k=5)
    rank1 = np.mean([bool(a.candidates) and a.candidates[0].id == p for a, (p, _) in zip(answers, probes)])
    rank5 = np.mean([any(c.id == p for c in a.candidates[:5]) for a, (p, _) in zip(answers, probes)])
    known_right = sum(a.known and a.match.id == p for a, (p, _) in zip(answers, probes))
    return {
        "probes": len(probes),
        "rank1": float(rank1),
        "rank5": float(rank5),
        "known_right": int(known_right),
        "threshold": answers[0].threshold if answers else None,
    }


def pairs_csv(folder: Path, people: list[str], seed: int) -> Path:
    """Copies of the photos (a pairs CSV's paths must stay inside its folder) and the CSV."""
    files = {}
    for p in people:
        (folder / p).mkdir(parents=True)
        files[p] = []
        for i in range(1, 11):
            shutil.copyfile(ORL / p / f"{i}.pgm", folder / p / f"{i}.pgm")
            files[p].append(f"{p}/{i}.pgm")
    rows = [(a, b, 1) for p in people for a, b in combinations(files[p], 2)]
    rng = np.random.default_rng(seed)
    n = len(rows)
    while len(rows) < 2 * n:
        p, q = rng.choice(len(people), 2, replace=False)
        rows.append((files[people[p]][rng.integers(10)], files[people[q]][rng.integers(10)], 0))
    return write_pairs_csv(folder / "new_pairs.csv", rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="Face model directory (default: the default face tower).")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="Keep the home and pairs here (default: temporary).")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not ORL.is_dir():
        sys.exit(f"ORL faces not found at {ORL}")
    model = Path(args.model) if args.model else ROOT / "models" / DEFAULT_MODEL_NAME
    if not (model / "config.json").is_file():
        sys.exit(f"no model directory at {model} (pass --model)")

    from siamese_index.index.facade import SiameseIndex
    from siamese_index.lifecycle.retrain import RetrainOptions, retrain
    from siamese_index.lifecycle.versions import activate

    work = args.workdir or Path(tempfile.mkdtemp(prefix="retrain-orl-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        home = work / "home"
        with SiameseIndex.open(home, model=model) as idx:
            for p in TEST_PEOPLE:
                idx.enroll(p, [ORL / p / "1.pgm"], allow_no_face=True)
            before = one_shot(idx, TEST_PEOPLE)
            csv_path = pairs_csv(work / "pairs", TRAIN_PEOPLE, args.seed)
            t0 = time.perf_counter()
            rep = retrain(
                idx,
                csv_path,
                options=RetrainOptions(
                    epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size, seed=args.seed
                ),
                progress=lambda m: print(f"  {m}", file=sys.stderr),
            )
            seconds = time.perf_counter() - t0
            note = ""
            if not rep.activated:
                activate(idx, rep.version)
                note = " (retrain did not activate it; activated here only to measure it)"
            after = one_shot(idx, TEST_PEOPLE)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    c = rep.comparison
    print(
        f"model {model.name} ({rep.parent.model_id}) retrained on ORL s1-s20 pairs: "
        f"{rep.pairs.total} pairs, {rep.pairs.train} trained on, {args.epochs} epochs, lr {args.lr:g}, "
        f"{seconds:.0f} s"
    )
    if c.judged and c.old is not None and c.new is not None:
        print(
            f"  retrain's held-out check ({c.held_out_pairs} pairs of {c.held_out_identities} s1-s20 people not "
            f"trained on): AUC {c.old.auc:.4f} -> {c.new.auc:.4f}, 2-fold accuracy "
            f"{c.old.accuracy_2fold or float('nan'):.3f} -> {c.new.accuracy_2fold or float('nan'):.3f}"
        )
    else:
        print(f"  {c.reason}")
    print(f"  decision: {rep.decision}")
    print(f"one-shot on s21-s40 (never in the pairs): image 1 enrolled, {before['probes']} probes")
    print(
        f"  before: rank-1 {before['rank1']:.3f}  rank-5 {before['rank5']:.3f}  known and right "
        f"{before['known_right']} (threshold {before['threshold']:.4f})"
    )
    print(
        f"  after:  rank-1 {after['rank1']:.3f}  rank-5 {after['rank5']:.3f}  known and right "
        f"{after['known_right']} (threshold {after['threshold']:.4f}){note}"
    )


if __name__ == "__main__":
    main()
