"""The symbol tower's recipe on Omniglot alphabets it never saw.

Trains the shipped omniglot-v2 command on 20 of the 30 background alphabets (about 30 min on
2 CPU cores), then measures 20-way one-shot within each of the 10 others with `evaluate`:

    python benchmarks/omniglot_unseen.py [--tasks 4000] [--model DIR]   # --model: skip training
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _cli import SHARED, siamese

UNSEEN = [
    "Arcadian",
    "Balinese",
    "Braille",
    "Early_Aramaic",
    "Greek",
    "Inuktitut*",
    "Korean",
    "Mkhedruli*",
    "Sanskrit",
    "Tifinagh",
]
RECIPE = [
    "--arch",
    "facenet-s",
    "--epochs",
    "14",
    "--size",
    "28x28",
    "--augment",
    "symbols",
    "--val-fraction",
    "0.1",
    "--batch-identities",
    "32",
    "--images-per-identity",
    "4",
    "--seed",
    "2",
    "--proxy-weight",
    "1.0",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=4000)
    ap.add_argument("--model", default=None, help="An already trained 20-alphabet model (skips training).")
    args = ap.parse_args()
    data = SHARED / "omniglot" / "images_background"
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            model = str(Path(tmp) / "omniglot-20")
            exclude = [a for name in UNSEEN for a in ("--exclude", f"{name}/*")]
            _, seconds = siamese("train", str(data), "--out", model, *RECIPE, *exclude)
            print(f"trained on 20 alphabets in {seconds:.0f} s")
        only = [a for name in UNSEEN for a in ("--identities", f"{name}/*")]
        r, _ = siamese("evaluate", str(data), "--model", model, "--n-way", "20", "--tasks", str(args.tasks), *only)
    v, o, n = r["verification"], r["one_shot"], r["n_way"]
    print(
        f"10 unseen alphabets: 20-way one-shot {n['accuracy']:.3f} ({n['tasks']} tasks); verification "
        f"{v['accuracy']:.3f} at own threshold, AUC {v['auc']:.3f}; rank-1 {o['rank1']:.3f} over {o['identities']} characters"
    )


if __name__ == "__main__":
    main()
