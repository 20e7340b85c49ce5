"""Lookups: the identification threshold at the current gallery size, identify and verify.

A lookup embeds its queries with the tower of the version whose vectors it searches (one
snapshot): when the home switches models in between, it starts again with the new tower.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import func, select

from siamese_index.errors import Busy, InvalidData, InvalidImage, ModelError
from siamese_index.imaging.sources import Source, as_list, read_source
from siamese_index.index import openset
from siamese_index.index.cache import VectorCache
from siamese_index.index.search import IdentitySearch
from siamese_index.index.served import ServedModel
from siamese_index.storage.db import Database, blob_vector, embeddings, images
from siamese_index.types import Identification, OperatingPoint, Verification

if TYPE_CHECKING:
    from siamese_index.towers.embedder import Embedder

LOOKUP_ATTEMPTS = 3  # lookups started again when the model version switches meanwhile


def verify_with(embedder: Embedder, a: Any, b: Any, threshold: float | None) -> Verification:
    """Are two images the same identity by `embedder`: distance < threshold (default: its own)."""
    t = embedder.threshold if threshold is None else float(threshold)
    if t is None:
        raise ModelError(f"model {embedder.model_id} has no calibrated threshold: pass one")
    sa, sb = read_source(a), read_source(b)
    xa, wa = embedder.prepare(sa.data, name=sa.label, strict_face=False)
    xb, wb = embedder.prepare(sb.data, name=sb.label, strict_face=False)
    va, vb = np.asarray(embedder.embed_batch(np.stack([xa, xb])), dtype=np.float64)
    if not (np.isfinite(va).all() and np.isfinite(vb).all()):
        raise ModelError("the model returned non-finite embeddings")
    d = float(np.linalg.norm(va - vb))
    return Verification(sa.label, sb.label, d, float(t), d < t, tuple(list(wa or []) + list(wb or [])))


class Lookup:
    """identify(), identify_vectors(), verify() and the operating point they use."""

    def __init__(
        self,
        db: Database,
        served: ServedModel,
        cache: VectorCache,
        search: IdentitySearch,
        target_far: float,
        margin: float,
    ):
        self._db = db
        self._served = served
        self._cache = cache
        self._search = search
        self.target_far = float(target_far)
        self.margin = float(margin)
        self._op_cache: tuple[tuple, OperatingPoint] | None = None

    # -- the identification threshold ----------------------------------------------------------
    def operating_point(self, target_far: float | None = None, margin: float | None = None) -> OperatingPoint:
        """The threshold identify() uses at the current gallery size, and how it was obtained."""
        far = self.target_far if target_far is None else float(target_far)
        m = self.margin if margin is None else float(margin)
        served = self._served
        # The cache epoch moves with every sync, write and version or threshold change.
        key = (self._cache.epoch, served.version, served.threshold, far, m)
        cached = self._op_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        n, minima = self._gallery_minima()
        op = openset.operating_point(served.threshold, n, far, served.far_table, minima, m)
        self._op_cache = (key, op)
        return op

    def _gallery_minima(self) -> tuple[int, np.ndarray | None]:
        """(enrolled identities, their leave-one-identity-out nearest distances when enough)."""
        mv, dim = self._served.version, self._served.dim
        with self._db.read() as conn:
            n = int(
                conn.execute(
                    select(func.count(func.distinct(images.c.identity_id)))
                    .join(embeddings, embeddings.c.image_id == images.c.id)
                    .where(embeddings.c.model_version == mv)
                ).scalar()
                or 0
            )
            if n < openset.MIN_GALLERY_FOR_EMPIRICAL:
                return n, None
            rows = conn.execute(
                select(embeddings.c.vector, images.c.identity_id)
                .join(images, images.c.id == embeddings.c.image_id)
                .where(embeddings.c.model_version == mv)
            ).all()
        good = [(v, r.identity_id) for r in rows if (v := blob_vector(r.vector, dim)) is not None]
        if not good:
            return n, None
        return n, openset.leave_one_identity_out_minima(
            np.stack([g[0] for g in good]), np.asarray([g[1] for g in good])
        )

    # -- identify ------------------------------------------------------------------------------
    def identify(
        self, sources: Any, k: int = 5, threshold: float | None = None, margin: float | None = None
    ) -> list[Identification]:
        """See SiameseIndex.identify."""
        if int(k) < 1:
            raise InvalidData(f"k must be >= 1, got {k}")
        read: list[Source | InvalidImage] = []
        for source in as_list(sources):
            try:
                read.append(read_source(source))
            except InvalidImage as e:
                read.append(e)
        for _attempt in range(LOOKUP_ATTEMPTS):
            mv, embedder = self._cache.model_snapshot()
            labels, arrays, warnings, errors = self._prepare_queries(read, embedder)
            vectors = self._served.embed(arrays, embedder)
            answered = self.identify_vectors(
                vectors,
                k=k,
                threshold=threshold,
                margin=margin,
                labels=[lab for i, lab in enumerate(labels) if i not in errors],
                expect_version=mv,
            )
            if answered is not None:
                break
        else:
            raise Busy("the home's model version kept changing during this lookup; try again")
        return self._assemble(labels, errors, answered, warnings, threshold, margin)

    def _prepare_queries(
        self, read: list[Source | InvalidImage], embedder: Embedder
    ) -> tuple[list[str], list[np.ndarray], list[list[str]], dict[int, str]]:
        """(labels, model inputs, warnings per usable query, {position: why it is unusable})."""
        labels: list[str] = []
        arrays: list[np.ndarray] = []
        warnings: list[list[str]] = []
        errors: dict[int, str] = {}
        for pos, src in enumerate(read):
            try:
                if isinstance(src, InvalidImage):
                    raise src
                arr, warn = self._served.prepare(src, strict_face=False, embedder=embedder)
            except InvalidImage as e:
                labels.append(e.path)
                errors[pos] = e.reason
                continue
            labels.append(src.label)
            arrays.append(arr)
            warnings.append(warn)
        return labels, arrays, warnings, errors

    def _assemble(
        self,
        labels: list[str],
        errors: dict[int, str],
        answered: list[Identification],
        warnings: list[list[str]],
        threshold: float | None,
        margin: float | None,
    ) -> list[Identification]:
        """One Identification per query in order: the unusable ones carry their error."""
        t: float | None
        if answered:
            t = answered[0].threshold
        else:
            t = float(threshold) if threshold is not None else self.operating_point(margin=margin).threshold
        answers, warn_iter = iter(answered), iter(warnings)
        out = []
        for pos, label in enumerate(labels):
            if pos in errors:
                out.append(Identification(label, False, None, (), t, error=errors[pos]))
            else:
                a, w = next(answers), next(warn_iter)
                out.append(
                    Identification(a.query, a.known, a.match, a.candidates, a.threshold, tuple(w) + a.warnings, a.error)
                )
        return out

    def identify_vectors(
        self,
        vectors: Any,
        k: int = 5,
        threshold: float | None = None,
        margin: float | None = None,
        labels: Sequence[str] | None = None,
        expect_version: int | None = None,
    ) -> list[Identification] | None:
        """See SiameseIndex.identify_vectors; with expect_version, None when another version serves
        by now (the vectors then came from the wrong tower). The FAISS index searched, the
        threshold and the version are one snapshot: a lookup never mixes two models' vectors."""
        q = np.asarray(vectors, dtype=np.float32)
        self._cache.refresh()
        mv, vi = self._cache.snapshot()
        if expect_version is not None and mv != expect_version:
            return None
        if q.ndim != 2 or q.shape[1] != self._served.dim:
            raise InvalidData(f"vectors of shape {q.shape} do not fit this home's embedding size {self._served.dim}")
        t = self._threshold_for(threshold, margin)
        m = self.margin if margin is None else float(margin)
        found = self._search.nearest(q, max(int(k), 2), vi=vi)
        if self._cache.snapshot()[0] != mv:  # switched while searching: the threshold may be the other model's
            if expect_version is not None:
                return None
            raise Busy("the home's model version changed during this lookup; try again")
        out = []
        for i, cands in enumerate(found):
            label = labels[i] if labels is not None else f"#{i}"
            warnings = () if cands else ("nobody is enrolled",)
            best = cands[0] if cands else None
            second = cands[1].distance if len(cands) > 1 else None
            known = best is not None and openset.is_known(best.distance, second, t, m)
            out.append(Identification(label, bool(known), best if known else None, tuple(cands[: int(k)]), t, warnings))
        return out

    def _threshold_for(self, threshold: float | None, margin: float | None) -> float:
        if threshold is not None:
            return float(threshold)
        t = self.operating_point(margin=margin).threshold
        if t is None:
            raise ModelError(f"model {self._served.model_id} has no calibrated threshold: pass one")
        return t

    def verify(self, a: Any, b: Any, threshold: float | None = None) -> Verification:
        """See SiameseIndex.verify."""
        return verify_with(self._served.embedder(), a, b, self._served.threshold if threshold is None else threshold)
