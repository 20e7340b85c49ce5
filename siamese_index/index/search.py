"""Nearest enrolled identities of query vectors: FAISS hits joined back to SQLite.

An identity's distance is that of its nearest image. Every hit is looked up in SQLite, so hits
for images deleted meanwhile are dropped and a removed identity never comes back.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from sqlalchemy import Connection, select

from siamese_index.index.cache import VectorCache
from siamese_index.storage.db import Database, identities, images, in_chunks
from siamese_index.storage.vectors import VectorIndex
from siamese_index.types import Match

MIN_CANDIDATES = 16  # FAISS hits fetched per query at first (then 4x as many until enough)


def identity_of(conn: Connection, image_ids: Iterable[int]) -> dict[int, tuple[str, str | None]]:
    """image id -> (external id, name) for the ids that still exist."""
    ids = sorted({int(i) for i in image_ids if i >= 0})
    out: dict[int, tuple[str, str | None]] = {}
    for chunk in in_chunks(ids):
        rows = conn.execute(
            select(images.c.id, identities.c.external_id, identities.c.name)
            .join(identities, identities.c.id == images.c.identity_id)
            .where(images.c.id.in_(chunk))
        ).all()
        out.update({r.id: (r.external_id, r.name) for r in rows})
    return out


def _distinct(
    ids: np.ndarray, dists: np.ndarray, known: dict[int, tuple[str, str | None] | None], want: int, exclude: str | None
) -> dict[str, Match]:
    """Up to `want` distinct identities among one query's hits, nearest first."""
    best: dict[str, Match] = {}
    for i, d in zip(ids, dists):
        who = known.get(int(i))
        if who is None or who[0] == exclude:
            continue
        if who[0] not in best:
            best[who[0]] = Match(who[0], who[1], float(d))
            if len(best) >= want:
                break
    return best


class IdentitySearch:
    """Searches the served version's FAISS index for the nearest distinct identities."""

    def __init__(self, db: Database, cache: VectorCache):
        self._db = db
        self._cache = cache

    def _names(self, ids: set[int], conn: Connection | None) -> dict[int, tuple[str, str | None]]:
        if conn is not None:
            return identity_of(conn, ids)
        with self._db.read() as c:
            return identity_of(c, ids)

    def nearest(
        self,
        vectors: np.ndarray,
        want: int,
        exclude: str | None = None,
        conn: Connection | None = None,
        vi: VectorIndex | None = None,
    ) -> list[list[Match]]:
        """Per query, up to `want` distinct identities, nearest first. exclude: an external id to
        leave out; conn: read inside this transaction; vi: the index to search (default: the
        current one)."""
        q = np.asarray(vectors, dtype=np.float32)
        if vi is None:
            vi = self._cache.snapshot()[1]
        n = vi.ntotal if vi is not None else 0
        if vi is None or n == 0:
            return [[] for _ in range(len(q))]
        results: list[list[Match]] = [[] for _ in range(len(q))]
        pending = list(range(len(q)))
        kk = min(n, max(4 * want, MIN_CANDIDATES))
        known: dict[int, tuple[str, str | None] | None] = {}
        while pending:
            ids, dists = self._cache.search(vi, q[pending], kk)
            new = {int(i) for i in np.unique(ids) if i >= 0 and int(i) not in known}
            if new:
                found = self._names(new, conn)
                known.update({i: found.get(i) for i in new})
            still = []
            for row, qi in enumerate(pending):
                best = _distinct(ids[row], dists[row], known, want, exclude)
                if len(best) >= want or kk >= n:
                    results[qi] = list(best.values())
                else:
                    still.append(qi)
            pending = still
            kk = min(n, kk * 4)
        return results
