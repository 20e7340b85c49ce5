"""The open-set ("unknown person") operating point of an identification gallery.

A model's pair threshold t accepts some fraction p of impostor *pairs* (distance < t). A stranger
looked up against a gallery of N identities is wrongly accepted if ANY of the N is closer than t,
which (treating the N comparisons as independent) happens with probability 1 - (1 - p) ** N:
a pair threshold that accepts 1% of impostor pairs accepts a stranger among 400 people 98% of
the time. So identification needs a stricter threshold that depends on the gallery size:

1. For a target open-set false-accept rate alpha, the per-pair rate must be
   p = 1 - (1 - alpha) ** (1 / N).
2. The model's impostor table (config.metrics["impostor_far_table"]: [far, distance] points,
   far = fraction of impostor pairs closer than distance, measured on identities never trained
   on) gives the distance at which the per-pair rate is p (interpolated in log-far).
3. With 30 identities or more, the gallery checks itself: each enrolled identity in turn plays
   the stranger against all the others; its nearest distance to another identity is what a
   stranger would have scored. The alpha-quantile of those minima is a threshold that would
   have wrongly accepted a fraction alpha of these leave-one-identity-out strangers.
4. The threshold is the smallest of the pair threshold, (2) and (3).

Optionally a margin: a query is known only if the second-best identity is at least `margin`
farther than the best. Pure numpy; no TensorFlow, no FAISS.
"""

from __future__ import annotations

import math

import numpy as np

from siamese_index.types import OperatingPoint

DEFAULT_TARGET_FAR = 0.01
MIN_GALLERY_FOR_EMPIRICAL = 30


def per_pair_far(target_far: float, gallery_size: int) -> float:
    """The per-pair false-accept rate p with 1 - (1 - p) ** N = target_far (N >= 1)."""
    if not 0.0 < target_far < 1.0:
        raise ValueError(f"target_far must be in (0, 1), got {target_far}")
    n = max(int(gallery_size), 1)
    # 1 - (1 - a) ** (1 / n), computed without cancellation for tiny a or huge n.
    return float(-math.expm1(math.log1p(-target_far) / n))


def _clean_table(table) -> tuple[np.ndarray, np.ndarray]:
    """[[far, distance], ...] -> (fars, distances) sorted by distance, validated."""
    arr = np.asarray(table, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) == 0:
        raise ValueError("impostor_far_table must be a non-empty list of [far, distance] points")
    if not np.isfinite(arr).all() or (arr[:, 0] < 0).any() or (arr[:, 0] > 1).any() or (arr[:, 1] < 0).any():
        raise ValueError("impostor_far_table holds values outside far in [0, 1], distance >= 0")
    order = np.lexsort((arr[:, 0], arr[:, 1]))
    fars, dists = arr[order, 0], arr[order, 1]
    if (np.diff(fars) < -1e-12).any():
        raise ValueError("impostor_far_table: far must not decrease as distance grows")
    return fars, dists


def distance_at_far(table, far: float) -> tuple[float, str]:
    """The distance whose impostor-pair rate is `far`, interpolated in log10(far).

    Returns (distance, note); note is empty unless `far` lies outside the table.
    """
    fars, dists = _clean_table(table)
    positive = fars > 0
    if not positive.any():
        return float(dists.max()), f"no impostor pair below distance {dists.max():.4g} in the table"
    pf, pd = fars[positive], dists[positive]
    # Several distances can share a far value; keep the largest distance for each.
    uf = np.unique(pf)
    ud = np.array([pd[pf == f].max() for f in uf])
    if far < uf[0]:
        zero = dists[~positive]
        if len(zero):
            d = float(zero.max())
            return d, (
                f"per-pair rate {far:.3g} is below the table's resolution ({uf[0]:.3g}): "
                f"using {d:.4g}, the largest distance no impostor pair was below"
            )
        d = float(ud[0])
        return d, (
            f"per-pair rate {far:.3g} is below the table's resolution ({uf[0]:.3g}): "
            f"using its smallest point {d:.4g}; the real rate may be higher"
        )
    if far > uf[-1]:
        return float(ud[-1]), f"per-pair rate {far:.3g} is above the table's range: using its largest point"
    if len(uf) == 1:
        return float(ud[0]), ""
    return float(np.interp(math.log10(far), np.log10(uf), ud)), ""


MAX_STRANGERS = 500  # identities sampled to play the stranger in the gallery check (cost ~ 500 x N)


def leave_one_identity_out_minima(
    vectors: np.ndarray, labels, chunk: int = 1024, max_identities: int = MAX_STRANGERS, seed: int = 0
) -> np.ndarray:
    """For each identity (in np.unique(labels) order): its nearest plain-L2 distance to an image
    of any OTHER identity, over all its images. Exact, chunked brute force.

    Above max_identities, a seeded sample of that many identities plays the stranger (against the
    whole gallery): the quantile needs a sample of strangers, not all of them, and the cost stays
    linear in the gallery size instead of quadratic.
    """
    x = np.asarray(vectors, dtype=np.float32)
    labels = np.asarray(labels)
    uniq, inv = np.unique(labels, return_inverse=True)
    if len(uniq) < 2:
        return np.full(len(uniq), np.inf)
    strangers = np.arange(len(uniq))
    if len(uniq) > max_identities:
        strangers = np.sort(np.random.default_rng(seed).choice(len(uniq), max_identities, replace=False))
    slot = np.full(len(uniq), -1)
    slot[strangers] = np.arange(len(strangers))
    rows = np.flatnonzero(slot[inv] >= 0)
    out = np.full(len(strangers), np.inf)
    sq = (x * x).sum(1)
    for start in range(0, len(rows), chunk):
        r = rows[start : start + chunk]
        d2 = sq[r, None] + sq[None, :] - 2.0 * (x[r] @ x.T)
        d2[inv[r, None] == inv[None, :]] = np.inf
        row_min = np.sqrt(np.maximum(d2.min(1), 0.0)).astype(np.float64)
        np.minimum.at(out, slot[inv[r]], row_min)
    return out


def empirical_threshold(minima: np.ndarray, target_far: float) -> float:
    """The target_far-quantile of the leave-one-identity-out minima (lower order statistic,
    so that at most that fraction of those strangers would have been accepted)."""
    m = np.asarray(minima, dtype=np.float64)
    m = m[np.isfinite(m)]
    if not len(m):
        raise ValueError("no finite leave-one-identity-out distance")
    return float(np.quantile(m, target_far, method="lower"))


def operating_point(
    pair_threshold: float | None,
    gallery_size: int,
    target_far: float = DEFAULT_TARGET_FAR,
    far_table=None,
    minima: np.ndarray | None = None,
    margin: float = 0.0,
    min_empirical: int = MIN_GALLERY_FOR_EMPIRICAL,
) -> OperatingPoint:
    """The identification threshold for a gallery of `gallery_size` identities.

    pair_threshold: the model's calibrated pair threshold (never exceeded).
    far_table: the model's impostor table ([far, distance] points) or None.
    minima: leave_one_identity_out_minima() of the gallery (used at >= min_empirical identities).
    """
    n = int(gallery_size)
    p = per_pair_far(target_far, n)
    candidates: list[tuple[float, str]] = []
    notes: list[str] = [
        f"target: {target_far:.3g} of strangers wrongly accepted among {n} identities -> per-pair impostor rate {p:.3g}"
    ]
    if pair_threshold is not None:
        candidates.append((float(pair_threshold), "pair threshold"))
        notes.append(f"model pair threshold {pair_threshold:.4g}")
    if far_table:
        try:
            d, note = distance_at_far(far_table, p)
        except ValueError as e:
            notes.append(f"impostor table unusable ({e})")
        else:
            candidates.append((d, "impostor table"))
            notes.append(f"model impostor table gives {d:.4g}" + (f" ({note})" if note else ""))
    else:
        notes.append(
            "the model has no impostor table, so the pair threshold is used as is "
            "(strangers are accepted more often as the gallery grows)"
        )
    if minima is not None and n >= min_empirical:
        try:
            d = empirical_threshold(minima, target_far)
        except ValueError:
            pass
        else:
            candidates.append((d, "gallery check"))
            notes.append(
                f"gallery check (the {target_far:.3g}-quantile of each identity's nearest other "
                f"identity, {n} identities) gives {d:.4g}"
            )
    elif n < min_empirical:
        notes.append(f"gallery check skipped (needs {min_empirical} identities)")
    if not candidates:
        return OperatingPoint(
            None,
            "; ".join(notes + ["no threshold: the model is not calibrated, pass one"]),
            n,
            float(target_far),
            float(margin),
        )
    threshold, source = min(candidates, key=lambda c: c[0])
    notes.append(f"using the smallest: {threshold:.4g} ({source})")
    if margin:
        notes.append(f"and a margin of {margin:.4g} between the best and second identity")
    return OperatingPoint(float(threshold), "; ".join(notes), n, float(target_far), float(margin))


def is_known(best: float, second: float | None, threshold: float, margin: float = 0.0) -> bool:
    """The decision rule: best < threshold and (second - best) >= margin (no second: no margin)."""
    if not best < threshold:
        return False
    if margin and second is not None and math.isfinite(second):
        return (second - best) >= margin
    return True
