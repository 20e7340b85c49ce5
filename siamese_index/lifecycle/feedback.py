"""Operators' corrections of identify answers, kept as material for the next retrain.

`record(idx, "query.jpg", is_id="E1024")` says the person in query.jpg IS E1024 (a missed match);
`is_not="E1024"` says it is NOT (a false match). The query photo itself is stored in the row (the
pair needs it; a blob in SQLite is removed with its row, and overwritten thanks to
secure_delete), with the distance the serving version measured. One row per (identity, photo):
a later correction of the same photo about the same person replaces the earlier one. Removing
a person removes their feedback (ON DELETE CASCADE). `retrain --from-feedback` turns each row
into pairs of the query with that person's stored photos (see retrain.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Connection, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from siamese_index.errors import InvalidData, NotFound
from siamese_index.storage.db import blob_vector, embeddings, feedback, identities, images, now_iso
from siamese_index.types import FeedbackEntry, FeedbackRecorded

if TYPE_CHECKING:
    from siamese_index.imaging.sources import Source
    from siamese_index.index.facade import SiameseIndex

MAX_QUERY_BYTES = 16 * 1024 * 1024


def _identity(conn: Connection, external_id: str) -> Any:
    ident = conn.execute(select(identities).where(identities.c.external_id == external_id)).first()
    if ident is None:
        raise NotFound(f"no enrolled identity {external_id!r}")
    return ident


def _nearest_distance(idx: SiameseIndex, external_id: str, version: int, vec: np.ndarray) -> float | None:
    """From the query's vector to the person's nearest photo under `version` (None: no vector)."""
    with idx.db.read() as conn:
        ident = _identity(conn, external_id)
        blobs = (
            conn.execute(
                select(embeddings.c.vector)
                .join(images, images.c.id == embeddings.c.image_id)
                .where(images.c.identity_id == ident.id, embeddings.c.model_version == version)
            )
            .scalars()
            .all()
        )
    vecs = [v for v in (blob_vector(b, len(vec)) for b in blobs) if v is not None]
    return float(min(np.linalg.norm(v - vec) for v in vecs)) if vecs else None


def _upsert(
    idx: SiameseIndex, external_id: str, label: int, src: Source, version: int, distance: float | None
) -> tuple[int, bool]:
    """Write the row (one per identity and photo: a later one replaces it). Returns (id, replaced)."""
    with idx.db.write(bump=False) as txn:  # nothing a lookup reads changes
        conn = txn.conn
        ident = _identity(conn, external_id)  # again: it may have been removed meanwhile
        same = (feedback.c.identity_id == ident.id, feedback.c.query_sha256 == src.sha256)
        before = conn.execute(select(feedback.c.id).where(*same)).first()
        values = {
            "identity_id": ident.id,
            "label": label,
            "query_sha256": src.sha256,
            "query_name": src.label,
            "query_image": src.data,
            "model_version": version,
            "distance": distance,
            "created_at": now_iso(),
        }
        conn.execute(
            sqlite_insert(feedback)
            .values(**values)
            .on_conflict_do_update(
                index_elements=["identity_id", "query_sha256"],
                set_={k: values[k] for k in ("label", "query_name", "model_version", "distance", "created_at")},
            )
        )
        fid = conn.execute(select(feedback.c.id).where(*same)).scalar_one()
    return int(fid), before is not None


def record(idx: SiameseIndex, query: Any, *, is_id: str | None = None, is_not: str | None = None) -> FeedbackRecorded:
    """Record that the person in `query` (a path, bytes or (name, bytes)) is / is not `is_id` /
    `is_not` (exactly one). The result's distance is from the query to the person's nearest
    photo under the serving version; model_agreed says whether that version's pair threshold
    already gave the recorded answer (None when unknown)."""
    from siamese_index.imaging.sources import read_source

    idx.ensure_open()
    if is_id is not None and is_not is None:
        external_id, label = is_id, 1
    elif is_not is not None and is_id is None:
        external_id, label = is_not, 0
    else:
        raise InvalidData("give exactly one of --is ID (the query shows this person) or --is-not ID (it does not)")
    src = read_source(query)
    if len(src.data) > MAX_QUERY_BYTES:
        raise InvalidData(f"{src.label}: {len(src.data)} bytes; feedback keeps query photos up to {MAX_QUERY_BYTES}")
    mv, embedder = idx.model_snapshot()
    arr, _ = idx.prepare(src, strict_face=False, embedder=embedder)  # readable by the model, or InvalidImage
    distance = _nearest_distance(idx, external_id, mv, idx.embed([arr], embedder)[0])
    fid, replaced = _upsert(idx, external_id, label, src, mv, distance)
    t = idx.threshold
    agreed = None if distance is None or t is None else bool((distance < t) == bool(label))
    return FeedbackRecorded(
        feedback_id=fid,
        query=src.label,
        sha256=src.sha256,
        identity=external_id,
        label="is" if label else "is-not",
        distance=distance,
        threshold=t,
        model_version=mv,
        model_agreed=agreed,
        replaced=replaced,
    )


def list_feedback(idx: SiameseIndex) -> list[FeedbackEntry]:
    """Every recorded correction (without the photos), oldest first."""
    idx.ensure_open()
    with idx.db.read() as conn:
        rows = conn.execute(
            select(
                feedback.c.id,
                feedback.c.label,
                feedback.c.query_name,
                feedback.c.query_sha256,
                feedback.c.model_version,
                feedback.c.distance,
                feedback.c.created_at,
                identities.c.external_id,
            )
            .join(identities, identities.c.id == feedback.c.identity_id)
            .order_by(feedback.c.id)
        ).all()
    return [
        FeedbackEntry(
            feedback_id=r.id,
            identity=r.external_id,
            label="is" if r.label else "is-not",
            query=r.query_name,
            sha256=r.query_sha256,
            model_version=r.model_version,
            distance=r.distance,
            created=r.created_at,
        )
        for r in rows
    ]
