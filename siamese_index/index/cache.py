"""Keeping the FAISS cache in step with SQLite: load, sync by the change counter, save.

SQLite is the source of truth; the in-memory `VectorIndex` describes the served version's
vectors as of change counter `synced`. A reader polls the counter (one SELECT) and, when it
moved, applies other processes' changes incrementally or reloads the saved file (rebuilding it
from SQLite when it does not match). A writer applies its own changes right after its commit and
saves the file. A version switch (seen in the database) makes the served model adopt the new
version first. Callers of the `*_locked` helpers hold the shared state lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Connection, func, select

from siamese_index.errors import Busy
from siamese_index.index.served import ServedModel
from siamese_index.storage.db import Database, WriteTxn, embeddings, model_versions
from siamese_index.storage.registry import set_stamp
from siamese_index.storage.vectors import INDEX_NAME, VectorIndex, load_or_rebuild

if TYPE_CHECKING:
    from siamese_index.towers.embedder import Embedder

log = logging.getLogger(__name__)

INCREMENTAL_FETCH_LIMIT = 5000  # more new ids than this: read all vectors, keep the new ones


class VectorCache:
    """The served version's FAISS index, synced with SQLite by the change counter."""

    def __init__(self, home: Path, db: Database, served: ServedModel, lock: threading.RLock):
        self.path = home / INDEX_NAME
        self._db = db
        self._served = served
        self._lock = lock
        self._vectors: VectorIndex | None = None
        self._synced = -1
        self._generation = 1
        self._last_sync: dict = {}
        self.epoch = 0  # bumped on every change of the in-memory state (keys derived caches)

    # -- what readers see ----------------------------------------------------------------------
    @property
    def vectors(self) -> VectorIndex | None:
        """The in-memory index (None before the first sync or after drop())."""
        return self._vectors

    @property
    def synced(self) -> int:
        """The change counter the in-memory index describes (-1: none)."""
        return self._synced

    @property
    def generation(self) -> int:
        """The index generation (bumped by every version switch) the in-memory index belongs to."""
        return self._generation

    @property
    def last_sync(self) -> dict:
        """How the last sync went: {"source": "file" | "rebuilt" | "incremental", ...}."""
        return dict(self._last_sync)

    def snapshot(self) -> tuple[int, VectorIndex | None]:
        """(served version, its index), taken together."""
        with self._lock:
            return self._served.version, self._vectors

    def model_snapshot(self) -> tuple[int, Embedder]:
        """(version, embedder) of the active model, taken together after a refresh: a caller that
        embeds with this embedder must search only that version's vectors."""
        self.refresh()
        with self._lock:
            return self._served.version, self._served.embedder()

    def search(self, vi: VectorIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search under the state lock (a concurrent sync may be changing `vi`)."""
        with self._lock:
            return vi.search(queries, k)

    # -- reading SQLite ------------------------------------------------------------------------
    def _usable(self) -> Any:
        """The WHERE clause of the served version's usable embeddings."""
        served = self._served
        return (embeddings.c.model_version == served.version) & (func.length(embeddings.c.vector) == served.dim * 4)

    def active_ids(self, conn: Connection) -> np.ndarray:
        """The image ids with a usable embedding by the served version, ascending."""
        query = select(embeddings.c.image_id).where(self._usable()).order_by(embeddings.c.image_id)
        return np.asarray(conn.execute(query).scalars().all(), dtype=np.int64)

    def fetch_vectors(self, conn: Connection, only: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the served version, optionally only those ids."""
        query = select(embeddings.c.image_id, embeddings.c.vector).where(self._usable()).order_by(embeddings.c.image_id)
        if only is not None:
            query = query.where(embeddings.c.image_id.in_([int(i) for i in only]))
        rows = conn.execute(query).all()
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, self._served.dim), np.float32)
        ids = np.asarray([r.image_id for r in rows], np.int64)
        # The length filter above makes every blob dim float32 values (see storage.db.blob_vector).
        return ids, np.stack([np.frombuffer(r.vector, dtype="<f4").astype(np.float32) for r in rows])

    # -- syncing -------------------------------------------------------------------------------
    def refresh(self) -> bool:
        """See other processes' writes: one cheap SELECT of the change counter; when it moved,
        sync (and save a rebuilt file when no writer is busy). True when it synced."""
        with self._lock:
            if self._vectors is not None and self._db.change_counter() == self._synced:
                return False
            with self._db.read() as conn:
                info = self.sync_locked(conn, Database.get_counter(conn))
        if info["source"] == "rebuilt":
            self._save_if_possible()
        return True

    def sync_locked(self, conn: Connection, counter: int) -> dict:
        """Make the in-memory index describe SQLite as `conn` sees it, following a switch of the
        active model version (see lifecycle/versions.activate)."""
        self._follow_version(conn)
        generation = int(Database.get_meta(conn, "index_generation", "1") or 1)
        expected = self.active_ids(conn)
        if self._vectors is not None and generation == self._generation:
            # Same model and generation: apply only what other processes changed, instead of
            # reloading the whole file (which costs ~100 ms per change at 100k vectors).
            info = self._sync_incremental(conn, self._vectors, expected)
        else:
            self._vectors, info = load_or_rebuild(
                self.path,
                model_id=self._served.model_id,
                dim=self._served.dim,
                generation=generation,
                expected_ids=expected,
                fetch=lambda: self.fetch_vectors(conn),
            )
        self._synced, self._generation, self._last_sync = counter, generation, info
        self.epoch += 1
        return info

    def _follow_version(self, conn: Connection) -> None:
        active = conn.execute(select(model_versions).where(model_versions.c.active == 1)).first()
        if active is None:
            return
        if int(active.id) != self._served.version:
            self._served.adopt(active)
            self.drop_locked()
        elif set_stamp(active) != self._served.threshold_stamp:
            self._served.adopt_threshold(active)
            self.epoch += 1

    def _sync_incremental(self, conn: Connection, vi: VectorIndex, expected: np.ndarray) -> dict:
        have = vi.ids()
        gone = np.setdiff1d(have, expected)
        new = np.setdiff1d(expected, have)
        if len(gone):
            vi.remove(gone)
        if len(new):
            # A long id list would exceed SQLite's variable limit: then read all and keep the new.
            ids, vecs = self.fetch_vectors(conn, only=new if len(new) <= INCREMENTAL_FETCH_LIMIT else None)
            keep = np.isin(ids, new)
            vi.add(ids[keep], vecs[keep])
        return {"source": "incremental", "added": int(len(new)), "removed": int(len(gone))}

    def sync_in_txn(self, txn: WriteTxn) -> None:
        """Inside a write transaction: make sure FAISS matches the database before it changes."""
        with self._lock:
            if self._vectors is None or self._synced != txn.before:
                self.sync_locked(txn.conn, txn.before)

    def after_write(
        self, txn: WriteTxn, added: tuple[np.ndarray, np.ndarray] | None = None, removed: Sequence[int] = ()
    ) -> None:
        """Bring FAISS up to date after a committed write (caller still holds the writer lock)."""
        with self._lock:
            try:
                self._apply_write(txn, added, removed)
            except Exception:  # noqa: BLE001 - SQLite is committed; the cache is rebuilt on next use
                log.exception("updating the FAISS index failed; it will be rebuilt from SQLite")
                self.drop_locked()

    def _apply_write(self, txn: WriteTxn, added: tuple[np.ndarray, np.ndarray] | None, removed: Sequence[int]) -> None:
        changed = bool(len(removed)) or (added is not None and bool(len(added[0])))
        if self._vectors is not None and self._synced == txn.before and txn.after is not None:
            if len(removed):
                self._vectors.remove(np.asarray(list(removed), np.int64))
            if added is not None and len(added[0]):
                self._vectors.add(added[0], added[1])
            self._synced = txn.after
        else:
            with self._db.read() as conn:
                self.sync_locked(conn, Database.get_counter(conn))
            changed = changed or self._last_sync.get("source") == "rebuilt"
        self.epoch += 1
        if changed:  # a metadata-only write leaves the saved vectors valid
            self.save_locked()

    def rebuild(self, reason: str) -> int:
        """Rebuild FAISS from SQLite unconditionally and save it (caller holds the writer lock).
        Returns the number of vectors."""
        with self._lock:
            with self._db.read() as conn:
                counter = Database.get_counter(conn)
                self._generation = int(Database.get_meta(conn, "index_generation", "1") or 1)
                ids, vecs = self.fetch_vectors(conn)
            self._vectors = VectorIndex.build(self._served.dim, ids, vecs)
            self._synced = counter
            self._last_sync = {"source": "rebuilt", "reason": reason}
            self.epoch += 1
            self.save_locked()
        return len(ids)

    def after_switch(self, embedder: Embedder | None = None) -> None:
        """After a committed version switch (caller holds the writer lock): adopt the new version,
        rebuild FAISS from its vectors and save it."""
        with self._lock:
            with self._db.read() as conn:
                active = conn.execute(select(model_versions).where(model_versions.c.active == 1)).one()
                if int(active.id) != self._served.version:
                    self._served.adopt(active, embedder)
                    self.drop_locked()
                else:
                    self._served.offer_embedder(embedder)
                self.sync_locked(conn, Database.get_counter(conn))
            self.save_locked()

    def drop(self) -> None:
        """Forget the in-memory index: the next use reloads or rebuilds it."""
        with self._lock:
            self.drop_locked()

    def drop_locked(self) -> None:
        self._vectors, self._synced = None, -1
        self.epoch += 1

    # -- saving --------------------------------------------------------------------------------
    def save_locked(self) -> None:
        """Save the in-memory index (caller holds the writer lock and the state lock)."""
        if self._vectors is None:
            return
        try:
            self._vectors.save(
                self.path, model_id=self._served.model_id, generation=self._generation, change_counter=self._synced
            )
        except OSError as e:
            log.warning("could not save %s (it will be rebuilt on the next open): %s", self.path, e)

    def _save_if_possible(self) -> None:
        """Save a rebuilt index if no other writer is busy (readers must never wait for writers)."""
        try:
            self._db.lock.acquire(timeout=0)
        except Busy:
            return
        try:
            with self._lock:
                if self._vectors is not None and self._db.change_counter() == self._synced:
                    self.save_locked()
        finally:
            self._db.lock.release()
