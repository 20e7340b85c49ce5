"""Candidate pairs from FAISS k-nearest-neighbour search, never an N x N matrix.

Exact (flat) search below EXACT_SEARCH_BELOW vectors; above, an inverted-file (IVF) index
whose recall of the exact k-NN is measured in benchmarks/dedup_bench.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import faiss

EXACT_SEARCH_BELOW = 50_000  # vectors: exact FAISS search below, IVF above
IVF_NPROBE = 8
IDENTITY_K = 16  # neighbours fetched in the identity search
SEARCH_BATCH = 16384
Progress = Callable[[str, int, int], None]
# (i, j, distance): i < j, plain L2, one row per pair
Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]


def build_vector_index(x: np.ndarray, exact_below: int = EXACT_SEARCH_BELOW, seed: int = 0) -> faiss.Index:
    """A FAISS L2 index over x: exact (flat) for small sets; for large ones an inverted file
    (IVF, about 4*sqrt(n) lists trained on a sample, IVF_NPROBE probed)."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    if n < exact_below:
        flat = faiss.IndexFlatL2(d)
        flat.add(x)
        return flat
    nlist = int(2 ** round(math.log2(4 * math.sqrt(n))))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
    ivf.cp.niter = 10
    sample = np.random.default_rng(seed).choice(n, min(n, 40 * nlist), replace=False)
    ivf.train(x[np.sort(sample)])
    ivf.add(x)
    ivf.nprobe = IVF_NPROBE
    return ivf


def plain_l2(squared: np.ndarray) -> np.ndarray:
    """FAISS reports squared L2; users see plain L2. The one place the two meet."""
    return np.sqrt(np.maximum(squared, 0.0))


def _search_block(
    index: faiss.Index, block: np.ndarray, start: int, n: int, radius: float, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(pair keys i*n+j with i < j, distances) of one block of queries, rows start.. of the items."""
    d2, ids = index.search(block, k)
    rows = np.broadcast_to(np.arange(start, start + len(block), dtype=np.int64)[:, None], ids.shape)
    dist = plain_l2(d2)
    ok = (ids >= 0) & (ids != rows) & (dist < radius)
    i, j = rows[ok], ids[ok].astype(np.int64)
    return np.minimum(i, j) * n + np.maximum(i, j), dist[ok].astype(np.float32)


def _unique_pairs(keys: np.ndarray, dist: np.ndarray, n: int) -> Pairs:
    """Each pair key once, with its smallest distance."""
    order = np.lexsort((dist, keys))
    keys, dist = keys[order], dist[order]
    first = np.ones(len(keys), bool)
    first[1:] = keys[1:] != keys[:-1]
    keys, dist = keys[first], dist[first]
    return keys // n, keys % n, dist


def candidate_pairs(
    index: faiss.Index,
    queries: np.ndarray,
    radius: float,
    k: int,
    batch: int = SEARCH_BATCH,
    progress: Progress | None = None,
) -> Pairs:
    """Pairs (i, j, distance), i < j, where one of i's query views has j among its k nearest
    neighbours within `radius` (plain L2), each pair once with its smallest distance.
    queries: (n, views, d) or (n, d); row i is item i. Returns three arrays (i, j, distance).
    Memory: the pairs found, never an n x n matrix."""
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 2:
        q = q[:, None, :]
    n, views, _ = q.shape
    k = min(k + 1, index.ntotal)
    keys_all, dist_all = [], []
    done = 0
    for v in range(views):
        for start in range(0, n, batch):
            block = np.ascontiguousarray(q[start : start + batch, v])
            keys, dist = _search_block(index, block, start, n, radius, k)
            keys_all.append(keys)
            dist_all.append(dist)
            done += len(block)
            if progress:
                progress("search", done, n * views)
    if not keys_all:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.float32)
    return _unique_pairs(np.concatenate(keys_all), np.concatenate(dist_all), n)
