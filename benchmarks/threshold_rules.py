"""Which threshold rule carries to unseen people of a second camera? Settled without ORL s31-s40.

Twenty random splits of ORL s1-s30 into 20 calibration people and 10 verified people. For each,
thresholds are chosen on LFW's held-out people (those recorded in the model's config) and the
20 ORL people by four rules: LFW alone, ORL alone, pooled max accuracy, and the least
worst-set loss that `calibrate` uses for several sets. The 10 other people are then verified
(4 pair samples each). `--test` adds the row the default was measured on: calibrate on LFW
held-out + all of s1-s30, verify s31-s40 (8 pair samples).

    python benchmarks/threshold_rules.py [--model NAME] [--splits 20] [--test]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _cli import SHARED  # noqa: E402

from siamese_index.config import DEFAULT_MODEL_NAME, resolve_model_dir  # noqa: E402
from siamese_index.towers.embedder import KerasEmbedder  # noqa: E402
from siamese_index.training.datasets import load_dataset  # noqa: E402
from siamese_index.training.metrics import accuracy_at, best_threshold, least_regret_threshold  # noqa: E402
from siamese_index.training.pairs import sample_pairs  # noqa: E402


def distances(emb, labels, seed, n_pairs=None):
    a, b, y = sample_pairs(labels, n_pairs=n_pairs, seed=seed, cap_per_identity=20)
    return np.linalg.norm(emb[a] - emb[b], axis=1), y


def rules(lfw, orl) -> dict[str, float]:
    """Thresholds by each rule; each set gives as many pairs as the smaller (as calibrate does)."""
    n = min(len(distances(*lfw, 0)[0]), len(distances(*orl, 0)[0]))
    sets = [distances(*lfw, 0, n), distances(*orl, 0, n)]
    pooled = best_threshold(np.concatenate([d for d, _ in sets]), np.concatenate([y for _, y in sets]))[0]
    return {
        "LFW alone": best_threshold(*sets[0])[0],
        "ORL alone": best_threshold(*sets[1])[0],
        "both, pooled max accuracy": pooled,
        "both, least worst-set loss": least_regret_threshold(sets)[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEFAULT_MODEL_NAME)
    ap.add_argument("--splits", type=int, default=20)
    ap.add_argument("--test", action="store_true", help="also calibrate on s1-s30 and verify s31-s40")
    args = ap.parse_args()
    embedder = KerasEmbedder(resolve_model_dir(args.model))
    held = embedder.config.training["val_identity_names"]
    lfw_data = load_dataset(SHARED / "lfw" / "lfw-deepfunneled", embedder.preprocessing, include=held)
    orl_data = load_dataset(SHARED / "orl_faces", embedder.preprocessing)
    lfw = (embedder.embed_batch(lfw_data.x), lfw_data.labels)
    orl_emb = embedder.embed_batch(orl_data.x)
    person = np.array([int(n[1:]) for n in orl_data.names])[orl_data.labels]  # ORL's sN -> N, per image

    def orl(people):
        rows = np.flatnonzero(np.isin(person, people))
        return orl_emb[rows], orl_data.labels[rows]

    lfw_pairs = distances(*lfw, 0)
    rng = np.random.default_rng(0)
    results: dict[str, list] = {}
    for _ in range(args.splits):
        order = rng.permutation(np.arange(1, 31))
        test = [distances(*orl(order[20:]), seed) for seed in range(4)]
        for rule, t in rules(lfw, orl(order[:20])).items():
            acc = np.mean([accuracy_at(d, y, t) for d, y in test])
            results.setdefault(rule, []).append((t, acc, accuracy_at(*lfw_pairs, t)))
    print(f"{args.model}: {args.splits} splits of ORL s1-s30 (20 calibrate with LFW held-out, 10 verified)")
    print("| threshold chosen on | threshold (mean) | the 10 other ORL people (mean, worst split) | LFW held-out |")
    print("|---|---|---|---|")
    for rule, rows in results.items():
        r = np.array(rows)
        print(f"| {rule} | {r[:, 0].mean():.3f} | {r[:, 1].mean():.3f} ({r[:, 1].min():.3f}) | {r[:, 2].mean():.3f} |")
    if args.test:
        test = [distances(*orl(np.arange(31, 41)), seed) for seed in range(8)]
        print("\ncalibrated on LFW held-out + ORL s1-s30, verifying s31-s40 (mean of 8 pair samples)")
        for rule, t in rules(lfw, orl(np.arange(1, 31))).items():
            print(f"| {rule} | {t:.4f} | {np.mean([accuracy_at(d, y, t) for d, y in test]):.3f} |")


if __name__ == "__main__":
    main()
