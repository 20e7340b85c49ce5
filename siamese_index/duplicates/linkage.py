"""Complete-linkage grouping over candidate pairs: every two members of a group are closer than
the threshold (A~B and B~C never drag in a C far from A)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from siamese_index.unionfind import UnionFind

MAX_DENSE_COMPONENT = 300  # a linked component up to this size gets every missing pair measured
Pair = tuple[int, int]  # (i, j), i < j
PairDistance = Callable[[int, int], float]
# (members sorted, {(i, j): distance for every pair of members})
Linked = tuple[list[int], dict[Pair, float]]


def complete_linkage(
    distances: dict[Pair, float],
    threshold: float,
    pair_distance: PairDistance | None = None,
    max_dense: int = MAX_DENSE_COMPONENT,
) -> list[Linked]:
    """Groups of items in which EVERY two members are closer than `threshold`.

    distances: known (i, j) -> distance, i < j (the candidate pairs). Items linked by a pair
    under the threshold form components; inside a component of up to `max_dense` items, the
    missing pairs are measured with pair_distance (when given, and recorded in `distances`) and
    clusters are merged closest first while their farthest members stay under the threshold.
    Larger components use the known pairs only (a pair never measured counts as far).
    Returns [(members, {(i, j): distance for every pair of members})], members sorted, groups
    ordered by their first member."""
    links: UnionFind[int] = UnionFind()
    for (i, j), d in distances.items():
        if d < threshold:
            links.union(i, j)
    out = []
    for nodes in links.groups():  # the components, sorted, by their smallest member
        if len(nodes) <= max_dense:
            mat = _component_matrix(nodes, distances, pair_distance)
            # Most clusters of a large collection are single items: drop them before anything else.
            clusters = [[nodes[c] for c in cl] for cl in _dense_clusters(mat, threshold) if len(cl) > 1]
        else:
            clusters = [cl for cl in _sparse_clusters(nodes, distances, threshold) if len(cl) > 1]
        for cl in clusters:
            members = sorted(cl)
            out.append((members, _pairs_of(members, distances)))
    out.sort(key=lambda g: g[0][0])
    return out


def _component_matrix(nodes: list[int], distances: dict[Pair, float], pair_distance: PairDistance | None) -> np.ndarray:
    """The component's distance matrix; a pair neither known nor measurable is infinitely far."""
    m = len(nodes)
    mat = np.full((m, m), np.inf)
    for a in range(m):
        for b in range(a + 1, m):
            key = (nodes[a], nodes[b])
            d = distances.get(key)
            if d is None and pair_distance is not None:
                d = distances[key] = pair_distance(*key)
            if d is not None:
                mat[a, b] = mat[b, a] = d
    return mat


def _pairs_of(members: list[int], distances: dict[Pair, float]) -> dict[Pair, float]:
    return {
        (members[a], members[b]): distances[(members[a], members[b])]
        for a in range(len(members))
        for b in range(a + 1, len(members))
    }


def _dense_clusters(mat: np.ndarray, threshold: float) -> list[list[int]]:
    """Complete linkage on a full matrix: merge the closest two clusters while under threshold."""
    m = len(mat)
    d = mat.copy()
    np.fill_diagonal(d, np.inf)
    clusters: dict[int, list[int]] = {i: [i] for i in range(m)}
    while len(clusters) > 1:
        a, b = divmod(int(np.argmin(d)), m)
        if not d[a, b] < threshold:
            break
        a, b = min(a, b), max(a, b)
        clusters[a].extend(clusters.pop(b))
        merged = np.maximum(d[a], d[b])  # a cluster's distance is its farthest pair's
        d[a, :] = merged
        d[:, a] = merged
        d[a, a] = np.inf
        d[b, :] = np.inf
        d[:, b] = np.inf
    return list(clusters.values())


def _sparse_clusters(nodes: list[int], distances: dict[Pair, float], threshold: float) -> list[list[int]]:
    """Closest pair first; two clusters merge only when every cross pair is known and close."""
    cluster_of = {v: v for v in nodes}
    members = {v: [v] for v in nodes}
    edges = sorted(
        (d, i, j) for (i, j), d in distances.items() if d < threshold and i in cluster_of and j in cluster_of
    )
    for _, i, j in edges:
        ca, cb = cluster_of[i], cluster_of[j]
        if ca == cb:
            continue
        if all(distances.get((min(x, y), max(x, y)), math.inf) < threshold for x in members[ca] for y in members[cb]):
            for v in members[cb]:
                cluster_of[v] = ca
            members[ca].extend(members.pop(cb))
    return list(members.values())
