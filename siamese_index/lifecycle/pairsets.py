"""The pairs a retrain learns from and is judged on: photos, pairs among them, the identity graph.

Three origins (see retrain.py): a pairs CSV, the copies the home keeps of enrolled photos, and
operators' corrections (feedback.py). Each distinct photo (by content hash) is one node of the
identity graph; genuine pairs, and photos of one enrolled person, join nodes into identities.
split_pairs holds out whole identities, so none is on both sides of the judge.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Connection, select

from siamese_index.errors import InvalidData, InvalidImage
from siamese_index.storage.db import feedback, identities, images
from siamese_index.unionfind import UnionFind

if TYPE_CHECKING:
    from siamese_index.index.facade import SiameseIndex
    from siamese_index.towers.embedder import Embedder


@dataclass
class Pair:
    a: str  # content sha256 of each photo: one graph node per distinct photo
    b: str
    label: int
    origin: str  # "csv line N", "enrolled E1", "feedback 3"


@dataclass
class PairSet:
    """Photos (prepared for the tower), the pairs among them, and the identity graph."""

    embedder: Embedder
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    pairs: list[Pair] = field(default_factory=list)
    graph: UnionFind[str] = field(default_factory=UnionFind)
    counts: dict[str, int] = field(default_factory=lambda: {"csv": 0, "enrolled": 0, "feedback": 0})
    warnings: list[str] = field(default_factory=list)

    def add_photo(self, data: bytes, name: str) -> str:
        """Prepare a photo (raises InvalidImage); returns its node key."""
        key = hashlib.sha256(data).hexdigest()
        if key not in self.arrays:
            arr, _ = self.embedder.prepare(data, name=name, strict_face=False)
            self.arrays[key] = arr
            self.names[key] = name
        self.graph.find(key)
        return key

    def add_pair(self, a: str, b: str, label: int, origin: str, kind: str) -> None:
        if a == b:
            return  # the same photo twice says nothing
        self.pairs.append(Pair(a, b, int(label), origin))
        self.counts[kind] += 1
        if label == 1:
            self.graph.union(a, b)


def _read_rows(path: Path) -> list[Any]:
    """The pairs file's rows; every structural error (column, label, path) of every line at once."""
    from siamese_index.training.pairs import read_pairs_csv, read_pairs_file

    if not path.is_file():
        raise InvalidData(f"{path}: no such pairs file")
    with path.open(encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
    # A comma means our CSV, even with a bad header (read_pairs_file would take it for LFW's format).
    return read_pairs_csv(path) if "," in first else read_pairs_file(path)


def add_csv_pairs(ps: PairSet, path: str | Path) -> None:
    """The CSV's pairs; every bad row is reported by line number (InvalidData) before training."""
    from siamese_index.imaging.sources import read_source

    path = Path(path)
    rows = _read_rows(path)
    root = path.parent.resolve()
    errors: list[str] = []
    done: dict[Path, str | InvalidImage] = {}
    keys: list[tuple[Any, str, str]] = []
    for r in rows:
        pair: list[str] = []
        for col, p in (("image_a", r.image_a), ("image_b", r.image_b)):
            if p not in done:
                try:
                    done[p] = ps.add_photo(read_source(p).data, str(p))
                except InvalidImage as e:
                    done[p] = e
            got = done[p]
            if isinstance(got, InvalidImage):
                shown = p.relative_to(root) if p.is_relative_to(root) else p
                errors.append(f"{path}: line {r.line}: {col} {str(shown)!r} is not a usable image ({got.reason})")
            else:
                pair.append(got)
        if len(pair) == 2:
            keys.append((r, pair[0], pair[1]))
    if errors:
        raise InvalidData("\n".join(errors))
    for r, a, b in keys:
        ps.add_pair(a, b, r.label, f"csv line {r.line}", "csv")


def _stored_photos(idx: SiameseIndex, ps: PairSet, conn: Connection, warn_prefix: str) -> dict[str, list[str]]:
    """The node keys of every enrolled person's stored photos: {external id: [key, ...]}."""
    rows = conn.execute(
        select(images.c.stored_path, images.c.content_sha256, images.c.source_name, identities.c.external_id)
        .join(identities, identities.c.id == images.c.identity_id)
        .where(images.c.stored_path.is_not(None))
        .order_by(images.c.id)
    ).all()
    out: dict[str, list[str]] = {}
    bad = 0
    for r in rows:
        try:
            data = (idx.home / r.stored_path).read_bytes()
            if hashlib.sha256(data).hexdigest() != r.content_sha256:
                raise InvalidImage(r.stored_path, "damaged copy")
            key = ps.add_photo(data, f"{r.external_id}/{r.source_name or r.stored_path}")
        except (OSError, InvalidImage):
            bad += 1
            continue
        out.setdefault(r.external_id, []).append(key)
    if bad:
        ps.warnings.append(
            f"{warn_prefix}: {bad} stored copies were missing, damaged or unreadable and were skipped (check --repair)"
        )
    return out


def add_enrolled_pairs(idx: SiameseIndex, ps: PairSet, per_identity: int, seed: int) -> None:
    """Genuine pairs among each person's stored photos (up to per_identity), as many impostors."""
    rng = np.random.default_rng(seed)
    with idx.db.read() as conn:
        people = _stored_photos(idx, ps, conn, "--from-enrolled")
    for keys in people.values():  # photos of one enrolled person are one identity
        for k in keys[1:]:
            ps.graph.union(keys[0], k)
    genuine = []
    for who, keys in sorted(people.items()):
        combos = list(combinations(sorted(set(keys)), 2))
        for i in rng.permutation(len(combos))[:per_identity]:
            genuine.append((combos[i], who))
    for (a, b), who in genuine:
        ps.add_pair(a, b, 1, f"enrolled {who}", "enrolled")
    flat = [(who, k) for who, keys in sorted(people.items()) for k in keys]
    if len(people) < 2 or not genuine:
        if not genuine:
            ps.warnings.append("--from-enrolled: no enrolled person has two stored photos: no genuine pairs from them")
        return
    made, tries = 0, 0
    while made < len(genuine) and tries < 50 * len(genuine):
        tries += 1
        (wa, ka), (wb, kb) = (flat[i] for i in rng.integers(0, len(flat), size=2))
        if wa != wb and ps.graph.find(ka) != ps.graph.find(kb):
            ps.add_pair(ka, kb, 0, f"enrolled {wa} vs {wb}", "enrolled")
            made += 1


def add_feedback_pairs(idx: SiameseIndex, ps: PairSet, per_query: int) -> None:
    """Each correction: the query photo with up to per_query stored photos of the person."""
    with idx.db.read() as conn:
        rows = conn.execute(
            select(
                feedback.c.id, feedback.c.label, feedback.c.query_image, feedback.c.query_name, identities.c.external_id
            )
            .join(identities, identities.c.id == feedback.c.identity_id)
            .order_by(feedback.c.id)
        ).all()
        people = _stored_photos(idx, ps, conn, "--from-feedback") if rows else {}
    if not rows:
        ps.warnings.append("--from-feedback: no feedback has been recorded (see `siamese-index feedback`)")
        return
    for keys in people.values():
        for k in keys[1:]:
            ps.graph.union(keys[0], k)
    skipped = 0
    for r in rows:
        photos = people.get(r.external_id, [])[:per_query]
        try:
            q = ps.add_photo(r.query_image, f"feedback {r.id}: {r.query_name}")
        except InvalidImage:
            skipped += 1
            continue
        if not photos:
            skipped += 1
            continue
        for k in photos:
            ps.add_pair(q, k, int(r.label), f"feedback {r.id}", "feedback")
    if skipped:
        ps.warnings.append(
            f"--from-feedback: {skipped} corrections gave no pair (unreadable query, or the person has no stored photo)"
        )


# ---------------------------------------------------------------------------------------------
# Splitting by identity
# ---------------------------------------------------------------------------------------------
def split_pairs(ps: PairSet, fraction: float, seed: int) -> tuple[list[Pair], list[Pair], int, dict[str, int]]:
    """(train, held_out, crossing, fold_of_component): whole components held out until about
    `fraction` of the genuine pairs are; impostor pairs joining the two sides are dropped."""
    comp = {k: ps.graph.find(k) for k in ps.arrays}
    genuine_of: dict[str, int] = {}
    for p in ps.pairs:
        genuine_of.setdefault(comp[p.a], 0)
        genuine_of.setdefault(comp[p.b], 0)
        if p.label == 1:
            genuine_of[comp[p.a]] += 1
    comps = sorted(genuine_of)
    target = fraction * sum(genuine_of.values())
    held: dict[str, int] = {}  # component -> fold (0/1), for the 2-fold accuracy
    got = 0
    for c in (comps[i] for i in np.random.default_rng(seed).permutation(len(comps))):
        if got >= target or target <= 0:
            break
        held[c] = len(held) % 2
        got += genuine_of[c]
    train, held_out, crossing = [], [], 0
    for p in ps.pairs:
        ha, hb = comp[p.a] in held, comp[p.b] in held
        if ha and hb:
            held_out.append(p)
        elif not ha and not hb:
            train.append(p)
        else:
            crossing += 1
    return train, held_out, crossing, held
