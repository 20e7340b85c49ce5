"""The near level's check of candidate pairs: near.near_distance on the two pictures, with
distances cached by content pair, so a rerun decodes no picture again."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from siamese_index.duplicates.linkage import Pair
from siamese_index.errors import InvalidImage
from siamese_index.imaging import near
from siamese_index.storage.descriptor_cache import Store

CHUNK = 1024  # pairs looked up in the cache (and reported as progress) at a time
KEEP_THUMBNAILS = 2048
Progress = Callable[[str, int, int], None]


class Thumbnails(dict[str, np.ndarray]):
    """Near thumbnails kept from the describe step for the pair checks, at most KEEP_THUMBNAILS (~50 MB)."""

    def keep(self, sha: str, gray: np.ndarray) -> None:
        if len(self) < KEEP_THUMBNAILS:
            self[sha] = gray


class NearChecker:
    """Runs near.near_distance on pairs of contents (nodes): cached distances first, then pictures
    decoded on demand through a bounded LRU of thumbnails and keypoints, in a few threads.

    shas: node -> content sha256; paths: node -> the paths of its files (any readable one will do)."""

    def __init__(
        self,
        shas: Sequence[str],
        paths: Sequence[Sequence[str]],
        store: Store,
        kind: str,
        progress: Progress | None = None,
        workers: int = 1,
        thumbnails: Thumbnails | None = None,
    ):
        self.shas, self.paths = shas, paths
        self.thumbnails = thumbnails if thumbnails is not None else Thumbnails()
        self.store, self.kind, self.progress = store, kind, progress
        self.features = near.FeatureCache(self._load)
        self.pending: list[tuple[str, str, str, float]] = []
        self.workers = max(1, workers)
        self.checked = 0  # pairs compared in this run
        self.from_cache = 0  # pairs whose distance came from the cache

    def _load(self, node: int) -> np.ndarray | None:
        gray = self.thumbnails.pop(self.shas[node], None)
        if gray is not None:
            return gray
        for path in self.paths[node]:
            try:
                return near.load_gray(path)
            except InvalidImage:
                continue
        return None

    def _key(self, i: int, j: int) -> tuple[str, str]:
        a, b = self.shas[i], self.shas[j]
        return (a, b) if a < b else (b, a)

    def _measure(self, pair: Pair) -> float:
        fa, fb = self.features.get(pair[0]), self.features.get(pair[1])
        return math.inf if fa is None or fb is None else near.near_distance(fa, fb)

    def _record(self, i: int, j: int, d: float) -> None:
        a, b = self._key(i, j)
        self.pending.append((a, b, self.kind, d))
        self.checked += 1
        if len(self.pending) >= CHUNK:
            self.flush()

    def distance(self, i: int, j: int) -> float:
        """One pair's near distance (the cache's, else measured and recorded)."""
        known = self.store.pair_distances([self._key(i, j)], self.kind)
        if known:
            self.from_cache += 1
            return next(iter(known.values()))
        d = self._measure((i, j))
        self._record(i, j, d)
        return d

    def _check_chunk(self, chunk: list[Pair], pool: ThreadPoolExecutor | None, out: dict[Pair, float]) -> None:
        known = self.store.pair_distances([self._key(i, j) for i, j in chunk], self.kind)
        todo = []
        for i, j in chunk:
            d = known.get(self._key(i, j))
            if d is None:
                todo.append((i, j))
            else:
                out[(i, j)] = d
                self.from_cache += 1
        measured = list(pool.map(self._measure, todo)) if pool else [self._measure(p) for p in todo]
        for (i, j), d in zip(todo, measured):
            out[(i, j)] = d
            self._record(i, j, d)

    def check(self, pairs: list[Pair]) -> dict[Pair, float]:
        """Near distances of many pairs, in chunks (progress stage "verify")."""
        out: dict[Pair, float] = {}
        total = len(pairs)
        pairs = sorted(pairs)  # locality for the thumbnail cache
        pool = ThreadPoolExecutor(self.workers) if self.workers > 1 else None
        try:
            for start in range(0, total, CHUNK):
                self._check_chunk(pairs[start : start + CHUNK], pool, out)
                if self.progress:
                    self.progress("verify", min(start + CHUNK, total), total)
        finally:
            if pool:
                pool.shutdown()
        return out

    def flush(self) -> None:
        """Write the distances measured so far to the cache."""
        if self.pending:
            self.store.store(pairs=self.pending)
            self.pending = []
