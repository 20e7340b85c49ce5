"""The enrolled people of a home: list, show, rename, remove, remove one photo, merge.

Every change runs in one write transaction under the writer lock, with the FAISS cache brought
up to date right after the commit. Deleted rows are overwritten (SQLite secure_delete) and the
WAL is checkpointed, so nothing of a removed person stays in the home.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, delete, func, select, update

from siamese_index.errors import InvalidData, NotFound
from siamese_index.index.cache import VectorCache
from siamese_index.storage.copies import unlink_copy
from siamese_index.storage.db import Database, embeddings, identities, images, in_chunks, now_iso
from siamese_index.types import ImageRecord, Merged, Person, PersonDetails, Removed, RemovedImage

log = logging.getLogger(__name__)

MIN_HASH_PREFIX = 6


def identity_row(conn: Connection, external_id: str) -> Any:
    """The identities row of `external_id`; NotFound when nobody is enrolled under it."""
    row = conn.execute(select(identities).where(identities.c.external_id == external_id)).first()
    if row is None:
        raise NotFound(f"no enrolled identity {external_id!r}")
    return row


def _image_record(r: Any) -> ImageRecord:
    return ImageRecord(
        image_id=r.id,
        source_name=r.source_name,
        sha256=r.content_sha256,
        width=r.width,
        height=r.height,
        bytes=r.bytes,
        stored_path=r.stored_path,
        created=r.created_at,
    )


def _match_image(rows: list, ref: Any) -> list:
    """The image rows `ref` names: number, source file (path or name), or content-hash prefix."""
    text = str(ref).strip()
    matches = []
    if isinstance(ref, int) or text.isdigit():
        matches = [r for r in rows if r.id == int(text)]
    if not matches:
        matches = [r for r in rows if r.source_name == text]
    if not matches:
        matches = [r for r in rows if r.source_name and Path(r.source_name).name == text]
    if not matches and len(text) >= MIN_HASH_PREFIX and all(c in "0123456789abcdef" for c in text.lower()):
        matches = [r for r in rows if r.content_sha256.startswith(text.lower())]
    return matches


class People:
    """Reading and changing enrolled identities."""

    def __init__(self, home: Path, db: Database, cache: VectorCache):
        self.home = home
        self._db = db
        self._cache = cache

    # -- reading -------------------------------------------------------------------------------
    def everyone(self) -> list[Person]:
        """Every enrolled identity with its image count, ordered by id."""
        with self._db.read() as conn:
            rows = conn.execute(
                select(identities, func.count(images.c.id).label("n"))
                .outerjoin(images, images.c.identity_id == identities.c.id)
                .group_by(identities.c.id)
                .order_by(identities.c.external_id)
            ).all()
        return [Person(r.external_id, r.name, json.loads(r.meta or "{}"), int(r.n), r.created_at) for r in rows]

    def show(self, external_id: str) -> PersonDetails:
        """One identity with its images."""
        with self._db.read() as conn:
            row = identity_row(conn, external_id)
            imgs = conn.execute(select(images).where(images.c.identity_id == row.id).order_by(images.c.id)).all()
        return PersonDetails(
            id=row.external_id,
            name=row.name,
            meta=json.loads(row.meta or "{}"),
            created=row.created_at,
            updated=row.updated_at,
            images=tuple(_image_record(r) for r in imgs),
        )

    # -- changing ------------------------------------------------------------------------------
    def rename(self, external_id: str, name: str | None) -> Person:
        """Set (or, with None, clear) an identity's display name."""
        if name is not None and not isinstance(name, str):
            raise InvalidData("name must be text")
        with self._db.lock:
            with self._db.write() as txn:
                row = identity_row(txn.conn, external_id)
                txn.conn.execute(
                    update(identities).where(identities.c.id == row.id).values(name=name, updated_at=now_iso())
                )
            self._cache.after_write(txn)
        return next(p for p in self.everyone() if p.id == external_id)

    def delete_images(self, conn: Connection, rows: Sequence[Any]) -> list[Path]:
        """Delete image rows and their embeddings (inside the caller's write transaction); return
        the stored copies no other row references, to unlink once committed."""
        ids = [r.id for r in rows]
        for chunk in in_chunks(ids):
            conn.execute(delete(embeddings).where(embeddings.c.image_id.in_(chunk)))
            conn.execute(delete(images).where(images.c.id.in_(chunk)))
        unlink = []
        for p in sorted({r.stored_path for r in rows if r.stored_path}):
            still = conn.execute(select(func.count()).select_from(images).where(images.c.stored_path == p)).scalar()
            if not still:
                unlink.append(self.home / p)
        return unlink

    def unlink_after_commit(self, paths: list[Path]) -> int:
        """Delete stored copies whose rows are committed as gone; fold the WAL. Returns how many."""
        n = 0
        for p in paths:
            try:
                n += unlink_copy(p)
            except OSError as e:
                log.warning("could not delete %s (check --repair removes it): %s", p, e)
        self._db.checkpoint()  # fold the WAL so no old page of the deleted rows survives
        return n

    def remove(self, external_id: str) -> Removed:
        """Delete an identity: its rows, embeddings, FAISS vectors and stored copies."""
        with self._db.lock:
            with self._db.write() as txn:
                self._cache.sync_in_txn(txn)
                row = identity_row(txn.conn, external_id)
                rows = txn.conn.execute(select(images).where(images.c.identity_id == row.id)).all()
                unlink = self.delete_images(txn.conn, rows)
                txn.conn.execute(delete(identities).where(identities.c.id == row.id))
            self._cache.after_write(txn, removed=[r.id for r in rows])
            n = self.unlink_after_commit(unlink)
        return Removed(id=external_id, images=len(rows), files_deleted=n)

    def _resolve_image(self, conn: Connection, identity_pk: int, external_id: str, ref: Any) -> Any:
        rows = conn.execute(select(images).where(images.c.identity_id == identity_pk).order_by(images.c.id)).all()
        matches = _match_image(list(rows), ref)
        text = str(ref).strip()
        if not matches:
            raise NotFound(
                f"{external_id} has no image {text!r} (give its image number, source file name or at "
                f"least {MIN_HASH_PREFIX} characters of its content hash; see the person's images)"
            )
        if len(matches) > 1:
            listed = ", ".join(f"{r.id} ({r.source_name}, {r.content_sha256[:10]})" for r in matches[:5])
            raise InvalidData(
                f"{text!r} matches {len(matches)} images of {external_id}: {listed}; give the image number"
            )
        return matches[0]

    def remove_image(self, external_id: str, image: Any) -> RemovedImage:
        """Delete one photo of an identity (the identity stays, even with no image left)."""
        with self._db.lock:
            with self._db.write() as txn:
                self._cache.sync_in_txn(txn)
                ident = identity_row(txn.conn, external_id)
                row = self._resolve_image(txn.conn, ident.id, external_id, image)
                unlink = self.delete_images(txn.conn, [row])
                remaining = txn.conn.execute(
                    select(func.count()).select_from(images).where(images.c.identity_id == ident.id)
                ).scalar()
            self._cache.after_write(txn, removed=[row.id])
            n = self.unlink_after_commit(unlink)
        return RemovedImage(
            id=external_id,
            image_id=row.id,
            source_name=row.source_name,
            remaining_images=int(remaining or 0),
            files_deleted=n,
        )

    def merge(self, external_id: str, into_id: str) -> Merged:
        """Move every photo of `external_id` to `into_id` and delete `external_id`."""
        if external_id == into_id:
            raise InvalidData("cannot merge an identity into itself")
        with self._db.lock:
            with self._db.write() as txn:
                self._cache.sync_in_txn(txn)
                moved, dupes, unlink = self._merge_rows(txn.conn, external_id, into_id)
            self._cache.after_write(txn, removed=[r.id for r in dupes])
            self.unlink_after_commit(unlink)
        return Merged(id=external_id, into=into_id, moved=moved, duplicates_dropped=len(dupes))

    def _merge_rows(self, conn: Connection, external_id: str, into_id: str) -> tuple[int, list, list[Path]]:
        """(photos moved, duplicate rows dropped, copies to unlink) of one merge, in its transaction."""
        src = identity_row(conn, external_id)
        dst = identity_row(conn, into_id)
        have = set(conn.execute(select(images.c.content_sha256).where(images.c.identity_id == dst.id)).scalars())
        rows = conn.execute(select(images).where(images.c.identity_id == src.id)).all()
        dupes = [r for r in rows if r.content_sha256 in have]
        unlink = self.delete_images(conn, dupes)
        moved = conn.execute(update(images).where(images.c.identity_id == src.id).values(identity_id=dst.id)).rowcount
        merged_meta = {**json.loads(src.meta or "{}"), **json.loads(dst.meta or "{}")}
        conn.execute(
            update(identities)
            .where(identities.c.id == dst.id)
            .values(
                name=dst.name if dst.name is not None else src.name,
                meta=json.dumps(merged_meta),
                updated_at=now_iso(),
            )
        )
        conn.execute(delete(identities).where(identities.c.id == src.id))
        return int(moved), dupes, unlink
