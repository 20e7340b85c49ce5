"""Plain numpy metrics for verification and one-shot identification.

Distances: lower means more alike; label 1 = same identity. "Same" means distance < threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike


def accuracy_at(distances: ArrayLike, labels: ArrayLike, threshold: float) -> float:
    d, y = np.asarray(distances), np.asarray(labels)
    return float(np.mean((d < threshold) == (y == 1)))


def best_threshold(distances: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """The threshold with the highest accuracy on these pairs (the lowest, on a tie), and that
    accuracy.

    Candidates are midpoints between consecutive distinct distances, so the answer never sits
    on a sample. Optimistic when reported on the pairs it was chosen on.
    """
    threshold, _ = least_regret_threshold([(distances, labels)])  # one set: its best threshold
    return threshold, accuracy_at(distances, labels, threshold)


def least_regret_threshold(sets: Sequence[tuple[ArrayLike, ArrayLike]]) -> tuple[float, list[float]]:
    """The threshold at which the set that loses most accuracy, against its own best threshold,
    loses least; and each set's loss there.

    sets: (distances, labels) per camera or collection. A threshold that must serve several
    cameras should not sacrifice one for another: pooled max accuracy lets the set whose
    accuracy curve is flattest pull the threshold its way. Ties go to the higher mean
    accuracy, then to the lower threshold. With one set: its max-accuracy threshold.
    """
    arrays = [(np.asarray(d, dtype=np.float64), np.asarray(y).astype(bool)) for d, y in sets]
    values = np.unique(np.concatenate([d for d, _ in arrays]))
    # Every cut of every set lies between two neighbouring pooled values (or outside them all).
    candidates = np.concatenate([[values[0] - 1e-6], (values[1:] + values[:-1]) / 2, [values[-1] + 1e-6]])
    acc = np.empty((len(arrays), len(candidates)))
    for i, (d, y) in enumerate(arrays):
        genuine_below = np.searchsorted(np.sort(d[y]), candidates, side="left")
        impostors_below = np.searchsorted(np.sort(d[~y]), candidates, side="left")
        acc[i] = (genuine_below + (~y).sum() - impostors_below) / len(d)
    regret = acc.max(axis=1, keepdims=True) - acc
    worst = regret.max(axis=0)
    # lexsort: last key first; smallest worst loss, then largest mean accuracy, then lowest index.
    k = int(np.lexsort((np.arange(len(candidates)), -acc.mean(axis=0), np.round(worst, 12)))[0])
    return float(candidates[k]), [float(r) for r in regret[:, k]]


def roc_auc(distances: ArrayLike, labels: ArrayLike) -> float:
    """P(an impostor pair is farther than a genuine pair), ties counting one half."""
    d = np.asarray(distances, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n_gen, n_imp = int(y.sum()), int((~y).sum())
    if n_gen == 0 or n_imp == 0:
        return float("nan")
    # Mann-Whitney U with average ranks (scores = -distance).
    order = np.argsort(-d, kind="stable")
    ranks = np.empty(len(d))
    sd = -d[order]
    i = 0
    while i < len(sd):
        j = i
        while j + 1 < len(sd) and sd[j + 1] == sd[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[y].sum() - n_gen * (n_gen + 1) / 2
    return float(u / (n_gen * n_imp))


def roc_curve(distances: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false accept rate, true accept rate, threshold) for every distinct cut, ascending."""
    d = np.asarray(distances, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    thresholds = np.unique(d)
    cuts = np.concatenate([[thresholds[0] - 1e-9], (thresholds[:-1] + thresholds[1:]) / 2, [thresholds[-1] + 1e-9]])
    ds = np.sort(d[y])
    di = np.sort(d[~y])
    tar = np.searchsorted(ds, cuts, side="left") / max(len(ds), 1)
    far = np.searchsorted(di, cuts, side="left") / max(len(di), 1)
    return far, tar, cuts


def eer(distances: ArrayLike, labels: ArrayLike) -> float:
    """Equal error rate: where false accepts and false rejects are equal (interpolated)."""
    far, tar, _ = roc_curve(distances, labels)
    frr = 1 - tar
    diff = far - frr
    i = int(np.argmax(diff >= 0))
    if i == 0:
        return float((far[0] + frr[0]) / 2)
    # Linear interpolation between the cuts on either side of the crossing.
    x0, x1 = diff[i - 1], diff[i]
    w = 0.0 if x1 == x0 else -x0 / (x1 - x0)
    return float(far[i - 1] + w * (far[i] - far[i - 1]))


def tar_at_far(distances: ArrayLike, labels: ArrayLike, far_target: float = 0.01) -> float:
    """True accept rate at the loosest threshold whose false accept rate is <= far_target."""
    far, tar, _ = roc_curve(distances, labels)
    ok = far <= far_target
    return float(tar[ok].max()) if ok.any() else 0.0


def verification_report(distances: ArrayLike, labels: ArrayLike, threshold: float | None) -> dict[str, Any]:
    t_best, acc_best = best_threshold(distances, labels)
    report = {
        "pairs": int(np.size(labels)),
        "genuine": int(np.sum(labels)),
        "threshold": None if threshold is None else float(threshold),
        "accuracy": None if threshold is None else accuracy_at(distances, labels, threshold),
        "best_accuracy": acc_best,
        "best_threshold": t_best,
        "auc": roc_auc(distances, labels),
        "eer": eer(distances, labels),
        "tar_at_far_1pct": tar_at_far(distances, labels, 0.01),
    }
    return report


def pairwise_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Plain L2 distances between every row of a and every row of b."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    d2 = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(d2, 0.0))


def rank_k(
    gallery: np.ndarray,
    gallery_labels: ArrayLike,
    probes: np.ndarray,
    probe_labels: ArrayLike,
    ks: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Share of probes whose true identity is among the k nearest enrolled identities."""
    gallery_labels = np.asarray(gallery_labels)
    probe_labels = np.asarray(probe_labels)
    hits = {k: 0 for k in ks}
    for start in range(0, len(probes), 1024):
        d = pairwise_l2(probes[start : start + 1024], gallery)
        order = np.argsort(d, axis=1, kind="stable")
        ranked = gallery_labels[order]
        truth = probe_labels[start : start + 1024, None]
        for k in ks:
            hits[k] += int((ranked[:, :k] == truth).any(axis=1).sum())
    return {f"rank{k}": hits[k] / max(len(probes), 1) for k in ks}


def one_shot_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Enroll the first row of each identity (rows are sorted by file name); the rest are probes."""
    labels = np.asarray(labels)
    _, first = np.unique(labels, return_index=True)
    probe = np.setdiff1d(np.arange(len(labels)), first)
    return np.sort(first), probe


def n_way_accuracy(
    emb: np.ndarray, labels: ArrayLike, groups_of_label: Sequence[str], n_way: int, tasks: int, seed: int
) -> dict[str, Any]:
    """N-way one-shot tasks drawn within one group (e.g. an alphabet): one image per candidate.

    Each task picks n_way identities of one group, one enrolled image each, and a probe of a
    different image of one of them; correct when its nearest enrolled image is that identity.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    rows_of = {int(l): np.flatnonzero(labels == l) for l in np.unique(labels)}
    by_group: dict[str, list[int]] = {}
    for lab, rows in rows_of.items():
        if len(rows) >= 2:
            by_group.setdefault(groups_of_label[lab], []).append(lab)
    eligible = [g for g, labs in by_group.items() if len(labs) >= n_way]
    if not eligible:
        return {
            "accuracy": None,
            "tasks": 0,
            "n_way": n_way,
            "reason": f"no group has {n_way} identities with two images",
        }
    correct = 0
    for _ in range(tasks):
        g = eligible[rng.integers(len(eligible))]
        cands = rng.choice(by_group[g], size=n_way, replace=False)
        target = rng.integers(n_way)
        enrolled: list[int] = []
        probe = -1  # set below: target is one of the candidates
        for j, lab in enumerate(cands):
            pick = rng.choice(rows_of[int(lab)], size=2, replace=False)
            enrolled.append(int(pick[0]))
            if j == target:
                probe = int(pick[1])
        d = pairwise_l2(emb[[probe]], emb[enrolled])[0]
        correct += int(np.argmin(d) == target)
    return {"accuracy": correct / tasks, "tasks": tasks, "n_way": n_way, "groups": len(eligible)}


FAR_GRID = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 0.5)


def impostor_far_table(emb: np.ndarray, labels: ArrayLike, max_rows: int = 3000, seed: int = 0) -> list[list[float]]:
    """[far, distance] points: the share of impostor pairs closer than distance.

    Uses every cross-identity pair among (up to max_rows) rows, millions of pairs, so that the
    small false-accept rates needed for identification against large galleries are measured.
    """
    labels = np.asarray(labels)
    if len(labels) > max_rows:
        keep = np.sort(np.random.default_rng(seed).choice(len(labels), max_rows, replace=False))
        emb, labels = emb[keep], labels[keep]
    chunks = []
    for s in range(0, len(labels), 512):
        d = pairwise_l2(emb[s : s + 512], emb)
        rows = np.arange(s, min(s + 512, len(labels)))[:, None]
        mask = (labels[s : s + 512, None] != labels[None, :]) & (rows < np.arange(len(labels))[None, :])
        chunks.append(d[mask].astype(np.float32))
    imp = np.sort(np.concatenate(chunks))
    if len(imp) == 0:
        return []
    return [[far, float(imp[min(len(imp) - 1, int(far * len(imp)))])] for far in FAR_GRID if far * len(imp) >= 1]
