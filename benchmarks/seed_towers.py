"""The seed tutorials' towers against our default, trained the same way on the same split.

ORL: trained on s1-s30 (a share of those held out to calibrate the threshold), measured on
s31-s40, people never seen. Fashion-MNIST: trained on the training set, measured on test-set
pairs (the third seed's protocol: the 10 classes are shared, so this is not an unseen-class test).

    python benchmarks/seed_towers.py [--epochs 40] [--only orl|fashion]
"""

from __future__ import annotations

import argparse
import gzip
import struct
import tempfile
from pathlib import Path

import numpy as np
from _cli import SHARED, siamese

ORL_TRAIN = ["s[1-9]", "s1[0-9]", "s2[0-9]", "s30"]
ORL_TEST = ["s3[1-9]", "s40"]
TOWERS = [
    # (label, arch, mode, size)
    ("dense (seed 1)", "dense", "batch", "56x46"),
    ("seed-conv (seed 2, ORL)", "seed-conv", "batch", "56x46"),
    ("seed-conv, fixed pairs as in the tutorial", "seed-conv", "pairs", "56x46"),
    ("seed-gap (seed 3, Fashion-MNIST)", "seed-gap", "batch", "56x46"),
    ("facenet-s (our default)", "facenet-s", "batch", "48x40"),
]


def _row(label, report, seconds):
    v, o = report["verification"], report["one_shot"]
    return f"| {label} | {v['accuracy']:.3f} | {v['best_accuracy']:.3f} | {v['auc']:.3f} | {o['rank1']:.3f} | {seconds:.0f} |"


def orl(epochs: int, work: Path) -> None:
    data = SHARED / "orl_faces"
    print(f"\nORL: trained on s1-s30, measured on s31-s40 (unseen people), {epochs} epochs")
    print("| tower | accuracy at own threshold | best accuracy (optimistic) | AUC | one-shot rank-1 | train s |")
    print("|---|---|---|---|---|---|")
    for label, arch, mode, size in TOWERS:
        out = work / f"orl-{arch}-{mode}"
        include = [a for p in ORL_TRAIN for a in ("--identities", p)]
        _, seconds = siamese(
            "train",
            str(data),
            "--out",
            str(out),
            "--arch",
            arch,
            "--mode",
            mode,
            "--size",
            size,
            "--epochs",
            str(epochs),
            "--steps-per-epoch",
            "20",
            "--val-fraction",
            "0.2",
            "--seed",
            "0",
            *include,
        )
        test = [a for p in ORL_TEST for a in ("--identities", p)]
        report, _ = siamese("evaluate", str(data), "--model", str(out), *test)
        print(_row(label, report, seconds), flush=True)


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path) as fh:
        magic, n = struct.unpack(">II", fh.read(8))
        dims = [struct.unpack(">I", fh.read(4))[0] for _ in range((magic & 0xFF) - 1)]
        return np.frombuffer(fh.read(), dtype=np.uint8).reshape(n, *dims)


def fashion(epochs: int, work: Path) -> None:
    src = SHARED / "fashion_mnist"
    train = work / "fashion_train.npz"
    test = work / "fashion_test.npz"
    np.savez(train, X=_idx(src / "train-images-idx3-ubyte.gz"), y=_idx(src / "train-labels-idx1-ubyte.gz"))
    # Test set, first 2,000 images: evaluation pairs are sampled from these.
    np.savez(test, X=_idx(src / "t10k-images-idx3-ubyte.gz")[:2000], y=_idx(src / "t10k-labels-idx1-ubyte.gz")[:2000])
    print(f"\nFashion-MNIST: trained on the training set, measured on test-set pairs, {epochs} epochs of 100 steps")
    print("| tower | accuracy at own threshold | best accuracy (optimistic) | AUC | one-shot rank-1 | train s |")
    print("|---|---|---|---|---|---|")
    for label, arch, mode, _ in TOWERS:
        out = work / f"fashion-{arch}-{mode}"
        # 10 classes: two are held out of training to calibrate the threshold (pairs need two).
        _, seconds = siamese(
            "train",
            str(train),
            "--out",
            str(out),
            "--arch",
            arch,
            "--mode",
            mode,
            "--size",
            "28x28",
            "--epochs",
            str(epochs),
            "--steps-per-epoch",
            "100",
            "--val-fraction",
            "0.2",
            "--augment",
            "none",
            "--batch-identities",
            "9",
            "--images-per-identity",
            "8",
            "--seed",
            "0",
        )
        report, _ = siamese("evaluate", str(test), "--model", str(out), "--cap", "500")
        print(_row(label, report, seconds), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--only", choices=["orl", "fashion"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "orl"):
            orl(args.epochs, Path(tmp))
        if args.only in (None, "fashion"):
            fashion(max(5, args.epochs // 4), Path(tmp))


if __name__ == "__main__":
    main()
