"""New photos against a home's enrolled photos: SiameseIndex.enroll's near-duplicate warning.

It lives with the index (not in duplicates/) because enrollment uses it; the descriptor
(imaging/near.py) and its content cache (storage/descriptor_cache.py) are shared with dedup.

Dedup's near level, for a handful of new photos against a gallery: the near descriptors and
thumbnails of enrolled photos live in the home's NEAR_SIDECAR, filled in as photos are enrolled
(and, for photos enrolled before, from their stored copy).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from siamese_index.errors import InvalidImage
from siamese_index.imaging import near
from siamese_index.storage.descriptor_cache import NO_INFO, VectorCache

NEAR_SIDECAR = "near-cache.sqlite"  # in an index's home: near descriptors and thumbnails by content


@dataclass
class _Gallery:
    """The enrolled photos to check against: ids by content, and the whole-picture descriptors."""

    ids_of: dict[str, set[str]] = field(default_factory=dict)  # sha -> external ids enrolled with it
    stored_of: dict[str, str] = field(default_factory=dict)  # sha -> stored copy, relative to home
    shas: list[str] = field(default_factory=list)  # the contents with a descriptor, rows of `vectors`
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, near.DIM), np.float32))


def _remember(store: VectorCache, sha: str, gray: np.ndarray) -> np.ndarray:
    """Describe a picture and keep its descriptor and thumbnail in the sidecar; returns the descriptor."""
    vec = near.describe(gray)
    store.store(vectors=[(sha, near.VERSION, vec.astype("<f4").tobytes(), NO_INFO)])
    store.store_thumbnail(sha, near.VERSION, gray)
    return vec


def _describe_new(
    store: VectorCache, new: Sequence[tuple[str, bytes, str]]
) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """(thumbnail, descriptor) of each new photo (None when it cannot be decoded), remembered in the sidecar."""
    out: list[tuple[np.ndarray, np.ndarray] | None] = []
    for label, data, sha in new:
        try:
            gray = near.load_gray(data, name=label)
        except InvalidImage:
            out.append(None)
            continue
        out.append((gray, _remember(store, sha, gray)))
    return out


def _gallery(store: VectorCache, home: Path, enrolled: Sequence[tuple[str, str | None, str]]) -> _Gallery:
    """The enrolled photos' descriptors: from the sidecar, else from their stored copy."""
    g = _Gallery()
    for sha, stored, external_id in enrolled:
        g.ids_of.setdefault(sha, set()).add(external_id)
        if stored:
            g.stored_of.setdefault(sha, stored)
    have = store.all_vectors(near.VERSION)
    for sha in g.ids_of:
        if sha not in have and sha in g.stored_of:
            try:
                gray = near.load_gray(home / g.stored_of[sha])
            except InvalidImage:
                continue
            have[sha] = _remember(store, sha, gray).astype("<f4").tobytes()
    g.shas = [sha for sha in g.ids_of if sha in have]
    if g.shas:
        views = len(near.WINDOWS)
        g.vectors = np.stack([np.frombuffer(have[s], "<f4").reshape(views, near.DIM)[0] for s in g.shas])
    return g


def _near_hits(
    store: VectorCache, g: _Gallery, sha: str, gray: np.ndarray, vec: np.ndarray, threshold: float
) -> dict[str, float]:
    """external id -> near distance of the enrolled photos that are this picture (another content)."""
    d = np.min(np.linalg.norm(g.vectors[None, :, :] - vec[:, None, :], axis=2), axis=0)
    order = [int(i) for i in np.argsort(d)[: near.NEAR_K] if d[i] < near.CANDIDATE_RADIUS and g.shas[i] != sha]
    hits: dict[str, float] = {}
    if not order:
        return hits
    mine = near.features(gray)
    for i in order:
        thumb = store.thumbnail(g.shas[i], near.VERSION)
        if thumb is None:
            continue
        dist = near.near_distance(mine, near.features(thumb))
        if dist < threshold:
            for other in g.ids_of[g.shas[i]]:
                hits[other] = min(hits.get(other, math.inf), dist)
    return hits


def _messages(label: str, same_file: set[str], hits: dict[str, float]) -> list[str]:
    """One warning per other id: the same file first (distance 0), then by near distance."""
    out = []
    for other, dist in sorted(hits.items(), key=lambda t: (t[1], t[0])):
        if other in same_file:
            out.append(f"{label} is the same file as a photo enrolled under {other}")
        else:
            out.append(f"{label} is a near-duplicate (near distance {dist:.3f}) of a photo enrolled under {other}")
    return out


def enrolled_near_duplicates(
    home: str | os.PathLike[str],
    new: Sequence[tuple[str, bytes, str]],
    enrolled: Sequence[tuple[str, str | None, str]],
    threshold: float = near.THRESHOLD,
) -> list[list[str]]:
    """For each new photo (label, bytes, sha256), warnings naming the ids under which a
    near-duplicate of it (the same picture, maybe edited) is already enrolled.

    enrolled: (sha256, stored_path relative to home or None, external_id) of the photos to check
    against (the caller passes those of OTHER ids). Their near descriptors and thumbnails live in
    home/NEAR_SIDECAR, filled in for each new photo and, for photos enrolled before, from their
    stored copy; an enrolled photo with neither is only matched by identical content."""
    home = Path(home)
    out: list[list[str]] = [[] for _ in new]
    if not new:
        return out
    store = VectorCache(home / NEAR_SIDECAR)
    try:
        fresh = _describe_new(store, new)
        g = _gallery(store, home, enrolled)
        for k, (label, _data, sha) in enumerate(new):
            same_file = g.ids_of.get(sha, set())
            hits = dict.fromkeys(same_file, 0.0)
            described = fresh[k]
            if described is not None and g.shas:
                for other, dist in _near_hits(store, g, sha, *described, threshold).items():
                    hits[other] = min(hits.get(other, math.inf), dist)
            out[k] = _messages(label, same_file, hits)
    finally:
        store.close()
    return out
