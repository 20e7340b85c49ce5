"""SiameseIndex: the facade over one home folder (SQLite + FAISS cache + stored image copies).

    with SiameseIndex.open("~/faces") as idx:
        idx.enroll("E1024", ["ada1.jpg", "ada2.jpg"], name="Ada Lovelace")
        [answer] = idx.identify(["query.jpg"])

A home holds:
    index.db                 SQLite, the source of truth (WAL mode; -wal/-shm files beside it)
    index.faiss(.stamp.json) the FAISS cache, rebuilt from SQLite whenever it does not match
    images/ab/abcdef...ext   content-addressed copies of enrolled photos (unless keep_images=False)
    write.lock               the cross-process writer lock
    models/<version>/        model versions made by retrain or reembed (see versions.py)
    version.lock             held while a retrain or a version switch runs

Distances are plain L2 everywhere. Writers serialize on the lock; readers never block. The
library never prints and never configures logging.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from sqlalchemy import Connection, delete, func, insert, select, update

from siamese_index.config import MODELS_DIR, resolve_home, resolve_model_dir
from siamese_index.errors import Busy, InvalidData, InvalidImage, ModelError, ModelMismatch, NotFound
from siamese_index.imaging.loading import is_image_file
from siamese_index.imaging.sources import Source, as_list, read_source
from siamese_index.index import openset as calibration
from siamese_index.index.maintenance import Maintenance
from siamese_index.index.openset import OperatingPoint
from siamese_index.lifecycle.thresholds import set_stamp
from siamese_index.storage.copies import (
    IMAGES_DIR,
    PENDING_NAME,
    recover_pending_copies,
    store_copy,
    unlink_copy,
    write_pending,
)
from siamese_index.storage.db import (
    DB_NAME,
    LOCK_NAME,
    Database,
    WriteTxn,
    blob_vector,
    embeddings,
    identities,
    images,
    in_chunks,
    model_versions,
    now_iso,
    vector_blob,
)
from siamese_index.storage.vectors import INDEX_NAME, VectorIndex, load_or_rebuild
from siamese_index.types import EnrollResult, Identification, Match, Person, Verification

log = logging.getLogger(__name__)

EMBED_BATCH = 256
MAX_ID_LENGTH = 200
MIN_HASH_PREFIX = 6
_HOME_NAMES = (
    DB_NAME,
    LOCK_NAME,
    IMAGES_DIR,
    INDEX_NAME,
    PENDING_NAME.lstrip("."),
    "models",
    "version.lock",
    "near-cache",
)


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
class _ModelSwitched(Exception):
    """Internal: the active model version changed between embedding and writing."""


def _check_id(external_id) -> str:
    if not isinstance(external_id, str):
        raise InvalidData(f"an id must be text, got {type(external_id).__name__}")
    if not external_id.strip():
        raise InvalidData("an id must not be empty")
    if external_id != external_id.strip():
        raise InvalidData(f"id {external_id!r}: no leading or trailing spaces")
    if "/" in external_id or not external_id.isprintable():
        raise InvalidData(f"id {external_id!r}: must be printable text without '/'")
    if len(external_id) > MAX_ID_LENGTH:
        raise InvalidData(f"id {external_id[:20]!r}...: longer than {MAX_ID_LENGTH} characters")
    return external_id


def _check_meta(meta) -> dict | None:
    if meta is None:
        return None
    if not isinstance(meta, dict) or not all(isinstance(k, str) for k in meta):
        raise InvalidData("meta must be a dict with text keys")
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise InvalidData(f"meta is not JSON-serialisable ({e})") from e
    return dict(meta)


def _merge_meta(old: dict, new: dict | None) -> dict:
    merged = dict(old)
    for k, v in (new or {}).items():
        if v is None:
            merged.pop(k, None)
        else:
            merged[k] = v
    return merged


def _model_path(home: Path | None, model_dir) -> Path:
    """A recorded model directory: absolute, or (a version kept in the home) relative to the home."""
    p = Path(model_dir)
    return p if p.is_absolute() or home is None else Path(home) / p


@dataclass
class _ModelInfo:
    model_id: str
    dim: int
    threshold: float | None
    model_dir: str | None
    metrics: dict
    threshold_method: str | None = None


def _info_from_embedder(embedder) -> _ModelInfo:
    cfg = getattr(embedder, "config", None)
    metrics = getattr(cfg, "metrics", None) or getattr(embedder, "metrics", None) or {}
    model_dir = getattr(embedder, "model_dir", None)
    return _ModelInfo(
        model_id=str(embedder.model_id),
        dim=int(embedder.dim),
        threshold=None if embedder.threshold is None else float(embedder.threshold),
        model_dir=str(Path(model_dir).resolve()) if model_dir else None,
        metrics=dict(metrics),
        threshold_method=getattr(cfg, "threshold_method", None),
    )


def _info_from_model_dir(model_dir: Path) -> tuple[_ModelInfo, object | None]:
    """Read a model directory's config (cheap: no TensorFlow unless the config lacks its id)."""
    from siamese_index.towers.modeldir import read_config

    cfg = read_config(model_dir)
    if cfg.preprocessing is None:
        raise ModelError(f"{model_dir}: a vector model; an index needs a model that embeds images")
    embedder = None
    model_id = cfg.model_id
    if not model_id:
        from siamese_index.towers.embedder import KerasEmbedder

        embedder = KerasEmbedder(model_dir)
        model_id = embedder.model_id
    info = _ModelInfo(
        model_id,
        int(cfg.embedding_dim),
        cfg.threshold,
        str(Path(model_dir).resolve()),
        dict(cfg.metrics or {}),
        cfg.threshold_method,
    )
    return info, embedder


# ---------------------------------------------------------------------------------------------
# The facade
# ---------------------------------------------------------------------------------------------
class SiameseIndex(Maintenance):
    """One home: enroll identities, identify and verify images, manage and check the index.

    Create with SiameseIndex.open(); close with close() or a `with` block. Thread-safe.
    """

    def __init__(
        self,
        *,
        home: Path,
        db: Database,
        model_row,
        info: _ModelInfo,
        embedder,
        keep_images: bool,
        target_far: float,
        margin: float,
    ):
        self.home = home
        self._db = db
        self._mv = int(model_row.id)
        self.model_id: str = model_row.model_id
        self.dim: int = int(model_row.dim)
        self.model_dir: str | None = model_row.model_dir
        self.threshold: float | None = info.threshold  # the model's pair threshold
        self._model_dir_hint = info.model_dir  # a directory given to open() for this model
        self._far_table = info.metrics.get("impostor_far_table")
        self._threshold_stamp = set_stamp(model_row)
        self._embedder = embedder
        self.keep_images = bool(keep_images)
        self.target_far = float(target_far)
        self.margin = float(margin)
        self._lock = threading.RLock()  # in-memory state: FAISS index, sync counter, caches
        self._vectors: VectorIndex | None = None
        self._synced = -1
        self._generation = 1
        self._sync_info: dict = {}
        self._op_cache: tuple | None = None
        self._closed = False

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        home=None,
        model=None,
        embedder=None,
        create: bool = True,
        keep_images: bool | None = None,
        target_far: float = calibration.DEFAULT_TARGET_FAR,
        margin: float = 0.0,
        lock_timeout: float = 60.0,
        sync: bool = True,
    ) -> SiameseIndex:
        """Open (or, with create=True, create) the home at `home` (see config.resolve_home).

        A new home records its model: `embedder` if given, else the model directory `model`
        (config.resolve_model_dir: a path, a name under models/, SIAMESE_INDEX_MODEL, or the
        default). An existing home always uses its recorded model; passing a model or embedder
        whose model_id or dimension differs raises ModelMismatch. The Keras tower is loaded
        lazily, on the first embedding.
        keep_images: keep content-addressed copies of enrolled photos. It is the home's setting,
        recorded when the home is created (None means True). On an existing home, None and True
        follow the recorded setting (a home created without copies never starts keeping them),
        while False stops keeping copies for this session.
        sync: load the FAISS index now (rebuilding and saving it when it is missing, stale or
        corrupt). With sync=False it is loaded on first use instead, so that check() sees the
        file as it is on disk rather than after open has quietly rebuilt it.
        Raises NotFound when the home does not exist and create is False.
        """
        if not 0.0 < float(target_far) < 1.0:
            raise InvalidData(f"target_far must be between 0 and 1, got {target_far}")
        if margin is None or float(margin) < 0:
            raise InvalidData(f"margin must be >= 0, got {margin}")
        home = resolve_home(home)
        db_path = home / DB_NAME
        is_new = not db_path.exists()
        if is_new:
            if not create:
                raise NotFound(f"no siamese-index home at {home} (enroll someone first, or pass the right --home)")
            if home.exists() and not home.is_dir():
                raise InvalidData(f"{home}: exists and is not a folder")
            if home.is_dir():
                foreign = [p.name for p in home.iterdir() if not p.name.lstrip(".").startswith(_HOME_NAMES)]
                if foreign:
                    raise InvalidData(
                        f"{home}: not empty and not a siamese-index home "
                        f"(found {', '.join(sorted(foreign)[:3])}); choose an empty or new folder"
                    )
        # Resolve the model before creating anything, so a bad model leaves no empty home.
        info: _ModelInfo | None = None
        if embedder is not None:
            if model is not None:
                raise InvalidData("pass a model directory or an embedder, not both")
            info = _info_from_embedder(embedder)
        elif model is not None or is_new:
            info, embedder = _info_from_model_dir(resolve_model_dir(model))
        if is_new:
            existed = home.exists()
            home.mkdir(parents=True, exist_ok=True)
            if not existed:
                os.chmod(home, 0o700)
        db = Database(db_path, home / LOCK_NAME, lock_timeout=lock_timeout)
        try:
            row, keep_default, info = cls._record_model(db, info, keep_images, created=is_new)
            if is_new:
                try:
                    os.chmod(db_path, 0o600)
                except OSError:
                    pass
            idx = cls(
                home=home,
                db=db,
                model_row=row,
                info=info,
                embedder=embedder,
                keep_images=keep_default and keep_images is not False,
                target_far=target_far,
                margin=margin,
            )
            if sync:
                idx.refresh()
        except BaseException:
            db.close()
            raise
        return idx

    @classmethod
    def _record_model(cls, db: Database, info: _ModelInfo | None, keep_images, created: bool):
        """Migrate, record the model of a new home, or check the given one against the record.

        Takes the writer lock only when something must be written, so opening an existing home
        to read never waits for a writer."""
        db.migrate()  # locks only when the schema is behind
        with db.read() as conn:
            row = conn.execute(select(model_versions).where(model_versions.c.active == 1)).first()
            keep = Database.get_meta(conn, "keep_images")
        if row is None:
            if info is None:  # a home whose creation was interrupted before its model was recorded
                info, _ = _info_from_model_dir(resolve_model_dir(None))
            with db.write() as txn:
                row = txn.conn.execute(select(model_versions).where(model_versions.c.active == 1)).first()
                if row is None:  # not recorded meanwhile by a concurrent first open
                    scores = {
                        "impostor_far_table": info.metrics.get("impostor_far_table"),
                        "threshold_method": info.threshold_method,
                    }
                    txn.conn.execute(
                        insert(model_versions).values(
                            model_id=info.model_id,
                            model_dir=info.model_dir,
                            dim=info.dim,
                            threshold=info.threshold,
                            parent=None,
                            created_at=now_iso(),
                            active=1,
                            activated_at=now_iso(),
                            scores=json.dumps(scores),
                        )
                    )
                    Database.set_meta(txn.conn, "keep_images", "0" if keep_images is False else "1")
                    Database.set_meta(txn.conn, "created_at", now_iso())
                    row = txn.conn.execute(select(model_versions).where(model_versions.c.active == 1)).one()
                    log.info("recorded model %s (dim %d) as the home's model", info.model_id, info.dim)
                keep = Database.get_meta(txn.conn, "keep_images")
        if info is not None and (info.model_id != row.model_id or info.dim != row.dim):
            raise ModelMismatch(
                f"this home was built with model {row.model_id} (embedding size {row.dim}); the given model is "
                f"{info.model_id} (embedding size {info.dim}). Open it without a model to use its own, "
                f"or move the home to the new model with reembed --model"
            )
        if info is None:
            info = cls._recorded_info(row, db.path.parent)
        elif set_stamp(row):  # a threshold set for this home outranks the given directory's
            recorded = cls._recorded_info(row)
            info = replace(
                info, threshold=recorded.threshold, metrics=recorded.metrics, threshold_method=recorded.threshold_method
            )
        if (db.path.parent / PENDING_NAME).exists():
            try:  # only when no writer is active: a live enrollment owns its pending copies
                db.lock.acquire(timeout=0)
            except Busy:
                pass
            else:
                try:
                    recover_pending_copies(db)
                finally:
                    db.lock.release()
        try:  # what an interrupted retrain or activation left behind (skipped while one runs)
            from siamese_index.lifecycle.versions import cleanup_leftovers

            cleanup_leftovers(db, db.path.parent)
        except Exception:  # noqa: BLE001 - never stop a home from opening; the next open tries again
            log.exception("could not clean up after an interrupted retrain or activation")
        return row, keep != "0", info

    @staticmethod
    def _recorded_info(row, home: Path | None = None) -> _ModelInfo:
        """The recorded model's calibration: the record when a threshold was set for this home
        (thresholds.set_calibration), else its config.json when readable (cheap), else the record."""
        scores = json.loads(row.scores or "{}")
        info = _ModelInfo(
            row.model_id,
            int(row.dim),
            row.threshold,
            row.model_dir,
            {"impostor_far_table": scores.get("impostor_far_table")},
            scores.get("threshold_method"),
        )
        if row.model_dir and not set_stamp(row):
            try:
                from siamese_index.towers.modeldir import read_config

                cfg = read_config(_model_path(home, row.model_dir))
            except (ModelError, OSError):
                return info
            if cfg.model_id == row.model_id and int(cfg.embedding_dim) == int(row.dim):
                return _ModelInfo(
                    row.model_id,
                    int(row.dim),
                    cfg.threshold,
                    row.model_dir,
                    dict(cfg.metrics or {}),
                    cfg.threshold_method,
                )
        return info

    def _get_embedder(self):
        with self._lock:
            if self._embedder is not None:
                return self._embedder
            from siamese_index.towers.embedder import KerasEmbedder

            candidates = [_model_path(self.home, p) for p in (self._model_dir_hint, self.model_dir) if p]
            if self.model_dir:
                candidates.append(MODELS_DIR / Path(self.model_dir).name)
            found = next((p for p in candidates if p.is_dir()), None)
            if found is None:
                raise ModelError(
                    f"this home's model {self.model_id} is not available "
                    f"(recorded at {self.model_dir or 'an injected embedder'})"
                )
            emb = KerasEmbedder(found)
            if emb.model_id != self.model_id or emb.dim != self.dim:
                raise ModelMismatch(
                    f"{found} now holds model {emb.model_id} (size {emb.dim}); this home was built "
                    f"with {self.model_id} (size {self.dim})"
                )
            self._embedder = emb
            return emb

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._db.checkpoint()
        self._db.close()

    def __enter__(self) -> SiameseIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SiameseIndex(home={str(self.home)!r}, model_id={self.model_id!r})"

    @property
    def index_path(self) -> Path:
        return self.home / INDEX_NAME

    # -- FAISS synchronisation -----------------------------------------------------------------
    def _active_ids(self, conn: Connection) -> np.ndarray:
        rows = (
            conn.execute(
                select(embeddings.c.image_id)
                .where(embeddings.c.model_version == self._mv, func.length(embeddings.c.vector) == self.dim * 4)
                .order_by(embeddings.c.image_id)
            )
            .scalars()
            .all()
        )
        return np.asarray(rows, dtype=np.int64)

    def _sync_incremental(self, conn: Connection, expected: np.ndarray) -> dict:
        have = self._vectors.ids()
        gone = np.setdiff1d(have, expected)
        new = np.setdiff1d(expected, have)
        if len(gone):
            self._vectors.remove(gone)
        if len(new):
            # A long id list would exceed SQLite's variable limit: then read all and keep the new.
            ids, vecs = self._fetch_vectors(conn, only=new if len(new) <= 5000 else None)
            keep = np.isin(ids, new)
            self._vectors.add(ids[keep], vecs[keep])
        return {"source": "incremental", "added": int(len(new)), "removed": int(len(gone))}

    def _fetch_vectors(self, conn: Connection, only: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        query = (
            select(embeddings.c.image_id, embeddings.c.vector)
            .where(embeddings.c.model_version == self._mv, func.length(embeddings.c.vector) == self.dim * 4)
            .order_by(embeddings.c.image_id)
        )
        if only is not None:
            query = query.where(embeddings.c.image_id.in_([int(i) for i in only]))
        rows = conn.execute(query).all()
        ids, vecs = [], []
        for image_id, blob in rows:
            v = blob_vector(blob)
            ids.append(image_id)
            vecs.append(v)
        if not ids:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        return np.asarray(ids, np.int64), np.stack(vecs)

    def _sync(self, conn: Connection, counter: int) -> dict:
        """Make the in-memory index describe SQLite as `conn` sees it (caller holds self._lock),
        following a switch of the active model version (see versions.activate)."""
        active = conn.execute(select(model_versions).where(model_versions.c.active == 1)).first()
        if active is not None and int(active.id) != self._mv:
            self._adopt(active)
        elif active is not None and set_stamp(active) != self._threshold_stamp:
            self._adopt_threshold(active)
        generation = int(Database.get_meta(conn, "index_generation", "1"))
        expected = self._active_ids(conn)
        if self._vectors is not None and generation == self._generation:
            # Same model and generation: apply only what other processes changed, instead of
            # reloading the whole file (which costs ~100 ms per change at 100k vectors).
            info = self._sync_incremental(conn, expected)
        else:
            vi, info = load_or_rebuild(
                self.index_path,
                model_id=self.model_id,
                dim=self.dim,
                generation=generation,
                expected_ids=expected,
                fetch=lambda: self._fetch_vectors(conn),
            )
            self._vectors = vi
        self._synced, self._generation, self._sync_info = counter, generation, info
        self._op_cache = None
        return info

    def _adopt(self, row, embedder=None) -> None:
        """Serve model version `row` from now on (caller holds self._lock; _sync loads its vectors):
        queries are then embedded by its tower and searched among its vectors only."""
        info = self._recorded_info(row, self.home)
        log.info("model version %d (%s) is now the home's model", row.id, row.model_id)
        self._mv = int(row.id)
        self.model_id, self.dim, self.model_dir = row.model_id, int(row.dim), row.model_dir
        self.threshold = info.threshold
        self._far_table = info.metrics.get("impostor_far_table")
        self._threshold_stamp = set_stamp(row)
        self._model_dir_hint = None
        self._embedder = embedder if embedder is not None and embedder.model_id == row.model_id else None
        self._vectors, self._synced, self._op_cache = None, -1, None

    def _adopt_threshold(self, row) -> None:
        """The served version was given another threshold (thresholds.set_calibration)."""
        info = self._recorded_info(row, self.home)
        self.threshold, self._far_table = info.threshold, info.metrics.get("impostor_far_table")
        self._threshold_stamp = set_stamp(row)
        self._op_cache = None

    def _after_switch(self, embedder=None) -> None:
        """After a committed version switch (caller holds the writer lock): adopt the new version,
        rebuild FAISS from its vectors and save it."""
        with self._lock:
            with self._db.read() as conn:
                active = conn.execute(select(model_versions).where(model_versions.c.active == 1)).one()
                if int(active.id) != self._mv:
                    self._adopt(active, embedder)
                elif embedder is not None and self._embedder is None and embedder.model_id == self.model_id:
                    self._embedder = embedder
                self._sync(conn, Database.get_counter(conn))
            self._save_index()

    def _model_snapshot(self):
        """(version, embedder) of the active model, taken together after a refresh: a caller that
        embeds with this embedder must search only that version's vectors."""
        self.refresh()
        with self._lock:
            return self._mv, self._get_embedder()

    def _save_index(self) -> None:
        """Save the in-memory index (caller holds the writer lock and self._lock)."""
        try:
            self._vectors.save(
                self.index_path, model_id=self.model_id, generation=self._generation, change_counter=self._synced
            )
        except OSError as e:
            log.warning("could not save %s (it will be rebuilt on the next open): %s", self.index_path, e)

    def _save_if_possible(self) -> None:
        """Save a rebuilt index if no other writer is busy (readers must never wait for writers)."""
        try:
            self._db.lock.acquire(timeout=0)
        except Busy:
            return
        try:
            with self._lock:
                if self._vectors is not None and self._db.change_counter() == self._synced:
                    self._save_index()
        finally:
            self._db.lock.release()

    def refresh(self) -> bool:
        """See other processes' writes: one cheap SELECT of the change counter; when it moved,
        reload the FAISS file (or rebuild it from SQLite). Returns True when it reloaded.

        identify(), status() and the other readers call it themselves."""
        self._check_open()
        with self._lock:
            if self._vectors is not None and self._db.change_counter() == self._synced:
                return False
            with self._db.read() as conn:
                info = self._sync(conn, Database.get_counter(conn))
        if info["source"] == "rebuilt":
            self._save_if_possible()
        return True

    def _after_write(
        self, txn: WriteTxn, added: tuple[np.ndarray, np.ndarray] | None = None, removed: Sequence[int] = ()
    ) -> None:
        """Bring FAISS up to date after a committed write (caller still holds the writer lock)."""
        with self._lock:
            try:
                changed = bool(len(removed)) or (added is not None and bool(len(added[0])))
                if self._vectors is not None and self._synced == txn.before:
                    if len(removed):
                        self._vectors.remove(np.asarray(list(removed), np.int64))
                    if added is not None and len(added[0]):
                        self._vectors.add(added[0], added[1])
                    self._synced = txn.after
                else:
                    with self._db.read() as conn:
                        self._sync(conn, Database.get_counter(conn))
                    changed = changed or self._sync_info.get("source") == "rebuilt"
                self._op_cache = None
                if changed:  # a metadata-only write leaves the saved vectors valid
                    self._save_index()
            except Exception:  # noqa: BLE001 - SQLite is committed; the cache is rebuilt on next use
                log.exception("updating the FAISS index failed; it will be rebuilt from SQLite")
                self._vectors, self._synced = None, -1

    def _sync_in_txn(self, txn: WriteTxn) -> None:
        """Inside a write transaction: make sure FAISS matches the database before it changes."""
        with self._lock:
            if self._vectors is None or self._synced != txn.before:
                self._sync(txn.conn, txn.before)

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidData("this SiameseIndex is closed")

    # -- embedding -----------------------------------------------------------------------------
    def _embed(self, arrays: list[np.ndarray], embedder=None) -> np.ndarray:
        embedder = embedder if embedder is not None else self._get_embedder()
        dim = int(embedder.dim)
        if not arrays:
            return np.zeros((0, dim), np.float32)
        out = []
        for start in range(0, len(arrays), EMBED_BATCH):
            v = np.asarray(embedder.embed_batch(np.stack(arrays[start : start + EMBED_BATCH])), dtype=np.float32)
            out.append(v)
        vecs = np.concatenate(out)
        if vecs.shape != (len(arrays), dim):
            raise ModelError(f"the model returned vectors of shape {vecs.shape}, expected ({len(arrays)}, {dim})")
        if not np.isfinite(vecs).all():
            raise ModelError("the model returned non-finite embeddings")
        return vecs

    def _prepare(self, src: Source, strict_face: bool, embedder=None) -> tuple[np.ndarray, list[str]]:
        embedder = embedder if embedder is not None else self._get_embedder()
        arr, warnings = embedder.prepare(src.data, name=src.label, strict_face=strict_face)
        return arr, list(warnings or [])

    # -- search --------------------------------------------------------------------------------
    def _identity_of(self, conn: Connection, image_ids: Iterable[int]) -> dict[int, tuple[str, str | None]]:
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

    def _search_identities(
        self,
        vectors: np.ndarray,
        want: int,
        exclude: str | None = None,
        conn: Connection | None = None,
        vi: VectorIndex | None = None,
    ) -> list[list[Match]]:
        """Per query, up to `want` distinct identities, nearest first (an identity's distance is its
        nearest image). Every hit is joined back to SQLite: hits for deleted images are dropped.
        vi: the FAISS index to search (default: the current one)."""
        q = np.asarray(vectors, dtype=np.float32)
        results: list[list[Match] | None] = [None] * len(q)
        with self._lock:
            vi = self._vectors if vi is None else vi
            n = vi.ntotal if vi is not None else 0
        if n == 0:
            return [[] for _ in range(len(q))]
        pending = list(range(len(q)))
        kk = min(n, max(4 * want, 16))
        known: dict[int, tuple[str, str | None] | None] = {}
        while pending:
            with self._lock:
                ids, dists = vi.search(q[pending], kk)
            new = {int(i) for i in np.unique(ids) if i >= 0 and int(i) not in known}
            if new:
                if conn is not None:
                    found = self._identity_of(conn, new)
                else:
                    with self._db.read() as c:
                        found = self._identity_of(c, new)
                known.update({i: found.get(i) for i in new})
            still = []
            for row, qi in enumerate(pending):
                best: dict[str, Match] = {}
                for i, d in zip(ids[row], dists[row]):
                    who = known.get(int(i))
                    if who is None or who[0] == exclude:
                        continue
                    if who[0] not in best:
                        best[who[0]] = Match(who[0], who[1], float(d))
                        if len(best) >= want:
                            break
                if len(best) >= want or kk >= n:
                    results[qi] = list(best.values())
                else:
                    still.append(qi)
            pending = still
            kk = min(n, kk * 4)
        return results  # type: ignore[return-value]

    # -- enrollment ----------------------------------------------------------------------------
    def enroll(
        self, external_id: str, sources, name: str | None = None, meta: dict | None = None, allow_no_face: bool = False
    ) -> list[EnrollResult]:
        """Enroll photos of one identity; returns one EnrollResult per source, in order.

        sources: paths, bytes, or (name, bytes) pairs. Per file: "added"; "exists" (this content
        is already enrolled for this id: a no-op); or "failed" with a reason (unreadable image,
        no face when the model crops faces and allow_no_face is False) while the others go on.
        name / meta (merged; a None value deletes a key) update an existing id. Everything is
        written in one transaction under the writer lock, and reported only once committed;
        when every file fails nothing is written. A warning is attached when a new photo is
        closer than the pair threshold to a DIFFERENT identity (a possible duplicate identity).
        Raises InvalidData for a bad id or meta, Busy when another writer holds the lock too long.
        """
        self._check_open()
        external_id = _check_id(external_id)
        meta = _check_meta(meta)
        if name is not None and not isinstance(name, str):
            raise InvalidData("name must be text")
        sources = as_list(sources)
        if not sources:
            raise InvalidData("no images given")
        results: list[EnrollResult | None] = [None] * len(sources)
        first_of: dict[str, int] = {}
        same_as: dict[int, int] = {}
        new: list[tuple[int, Source]] = []
        for pos, source in enumerate(sources):
            try:
                src = read_source(source)
            except InvalidImage as e:
                results[pos] = EnrollResult(e.path, "failed", reason=e.reason, identity=external_id)
                continue
            if src.sha256 in first_of:
                same_as[pos] = first_of[src.sha256]
                results[pos] = EnrollResult(
                    src.label, "exists", identity=external_id, reason="same content as another file in this call"
                )
                continue
            first_of[src.sha256] = pos
            new.append((pos, src))

        for attempt in range(3):  # again when another process switches the model meanwhile
            mv, embedder = self._model_snapshot()
            with self._db.read() as conn:
                existing = self._images_by_hash(conn, external_id)
                row = conn.execute(select(identities).where(identities.c.external_id == external_id)).first()
            todo: list[tuple[int, Source, np.ndarray, list[str]]] = []
            for pos, src in new:
                if src.sha256 in existing:
                    results[pos] = EnrollResult(
                        src.label, "exists", image_id=existing[src.sha256], identity=external_id
                    )
                    continue
                try:
                    arr, warnings = self._prepare(src, strict_face=not allow_no_face, embedder=embedder)
                except InvalidImage as e:
                    results[pos] = EnrollResult(src.label, "failed", reason=e.reason, identity=external_id)
                    continue
                todo.append((pos, src, arr, warnings))
            self._warn_near_duplicates(external_id, todo)
            vectors = self._embed([t[2] for t in todo], embedder)

            identity_changes = row is not None and (
                (name is not None and name != row.name)
                or (
                    meta is not None and _merge_meta(json.loads(row.meta or "{}"), meta) != json.loads(row.meta or "{}")
                )
            )
            usable = bool(todo) or any(r is not None and r.status == "exists" for r in results)
            if todo or (identity_changes and usable):  # when every file fails, nothing changes at all
                try:
                    self._enroll_write(external_id, name, meta, todo, vectors, results, mv=mv)
                except _ModelSwitched:
                    if attempt == 2:
                        raise Busy("the home's model version kept changing during this enrollment; try again") from None
                    continue
            break
        for pos, first in same_as.items():
            r, f = results[pos], results[first]
            if f.status == "failed":
                results[pos] = EnrollResult(r.path, "failed", reason=f.reason, identity=external_id)
            else:
                results[pos] = EnrollResult(
                    r.path, "exists", image_id=f.image_id, reason=r.reason, identity=external_id
                )
        return results  # type: ignore[return-value]

    def _warn_near_duplicates(self, external_id: str, todo: list) -> None:
        """Warn on each new photo that is the same picture (dedup's near level) as one enrolled
        under ANOTHER id. Best effort: this check never fails an enrollment."""
        if not todo:
            return
        try:
            from siamese_index.duplicates.pipeline import enrolled_near_duplicates

            with self._db.read() as conn:
                others = conn.execute(
                    select(images.c.content_sha256, images.c.stored_path, identities.c.external_id)
                    .join(identities, identities.c.id == images.c.identity_id)
                    .where(identities.c.external_id != external_id)
                ).all()
            found = enrolled_near_duplicates(self.home, [(t[1].label, t[1].data, t[1].sha256) for t in todo], others)
        except Exception as e:  # noqa: BLE001
            log.warning("near-duplicate check skipped: %s", e)
            return
        for (_pos, _src, _arr, warnings), extra in zip(todo, found):
            warnings.extend(extra)

    def _images_by_hash(self, conn: Connection, external_id: str) -> dict[str, int]:
        rows = conn.execute(
            select(images.c.content_sha256, images.c.id)
            .join(identities, identities.c.id == images.c.identity_id)
            .where(identities.c.external_id == external_id)
        ).all()
        return {r.content_sha256: r.id for r in rows}

    def _enroll_write(self, external_id, name, meta, todo, vectors, results, mv: int | None = None) -> None:
        created_files: list[Path] = []
        added_ids: list[int] = []
        added_vecs: list[np.ndarray] = []
        pending = self.home / PENDING_NAME
        with self._db.lock:
            recover_pending_copies(self._db)
            if self.keep_images and todo:
                # Say which copies are about to be written, so a crash before the commit leaves
                # nothing behind once the home is opened again (see recover_pending_copies).
                write_pending(self.home, [t[1] for t in todo])
            try:
                with self._db.write() as txn:
                    conn = txn.conn
                    self._sync_in_txn(txn)
                    if mv is not None and self._mv != mv:  # embedded by a tower that no longer serves
                        raise _ModelSwitched()
                    now = now_iso()
                    row = conn.execute(select(identities).where(identities.c.external_id == external_id)).first()
                    if row is None:
                        pk = conn.execute(
                            insert(identities).values(
                                external_id=external_id,
                                name=name,
                                meta=json.dumps(_merge_meta({}, meta)),
                                created_at=now,
                                updated_at=now,
                            )
                        ).inserted_primary_key[0]
                    else:
                        pk = row.id
                        changes = {}
                        if name is not None and name != row.name:
                            changes["name"] = name
                        if meta is not None:
                            merged = _merge_meta(json.loads(row.meta or "{}"), meta)
                            if merged != json.loads(row.meta or "{}"):
                                changes["meta"] = json.dumps(merged)
                        if changes:
                            conn.execute(
                                update(identities).where(identities.c.id == pk).values(updated_at=now, **changes)
                            )
                    existing = {
                        r.content_sha256: r.id
                        for r in conn.execute(
                            select(images.c.content_sha256, images.c.id).where(images.c.identity_id == pk)
                        ).all()
                    }
                    dup_matches = (
                        self._search_identities(vectors, 1, exclude=external_id, conn=conn) if len(todo) else []
                    )
                    for (pos, src, _arr, warnings), vec, others in zip(todo, vectors, dup_matches):
                        if src.sha256 in existing:  # enrolled meanwhile by another process
                            results[pos] = EnrollResult(
                                src.label, "exists", image_id=existing[src.sha256], identity=external_id
                            )
                            continue
                        stored = None
                        if self.keep_images:
                            stored, created = store_copy(self.home, src)
                            if created:
                                created_files.append(self.home / stored)
                        image_id = conn.execute(
                            insert(images).values(
                                identity_id=pk,
                                content_sha256=src.sha256,
                                source_name=src.label,
                                width=src.width,
                                height=src.height,
                                bytes=len(src.data),
                                stored_path=stored,
                                created_at=now,
                            )
                        ).inserted_primary_key[0]
                        conn.execute(
                            insert(embeddings).values(
                                image_id=image_id, model_version=self._mv, vector=vector_blob(vec), created_at=now
                            )
                        )
                        existing[src.sha256] = image_id
                        added_ids.append(int(image_id))
                        added_vecs.append(vec)
                        if others and self.threshold is not None and others[0].distance < self.threshold:
                            o = others[0]
                            who = f"{o.id}" + (f" ({o.name})" if o.name else "")
                            warnings = warnings + [
                                f"possible duplicate identity: {src.label} is at distance {o.distance:.3f} from "
                                f"{who}, closer than the model's threshold {self.threshold:.3f}"
                            ]
                        results[pos] = EnrollResult(
                            src.label, "added", image_id=int(image_id), warnings=tuple(warnings), identity=external_id
                        )
            except BaseException:
                for path in created_files:  # rolled back: remove the copies it wrote
                    unlink_copy(path)
                pending.unlink(missing_ok=True)
                raise
            pending.unlink(missing_ok=True)  # committed: the copies now belong to the database
            added = (
                np.asarray(added_ids, np.int64),
                np.stack(added_vecs) if added_vecs else np.zeros((0, self.dim), np.float32),
            )
            self._after_write(txn, added=added)

    def enroll_dir(
        self, root, progress: Callable[[int, int, str], None] | None = None, allow_no_face: bool = False
    ) -> list[EnrollResult]:
        """Enroll a folder with one subfolder per person (folder name = id, image files inside).

        Each person is one transaction. Files that are not images by suffix, files directly in
        `root`, and folders whose name is not a valid id are reported as failed; the rest are
        enrolled. progress(done, total, id) is called after each person."""
        self._check_open()
        root = Path(root)
        if not root.is_dir():
            raise NotFound(f"{root}: no such folder")
        results: list[EnrollResult] = []
        people = []
        for entry in sorted(root.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                people.append(entry)
            else:
                results.append(EnrollResult(str(entry), "failed", reason="not inside a person folder"))
        for done, folder in enumerate(people, 1):
            files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
            images_ = [p for p in files if is_image_file(p)]
            for p in files:
                if not is_image_file(p):
                    results.append(
                        EnrollResult(
                            str(p),
                            "failed",
                            identity=folder.name,
                            reason=f"not an image file type ({p.suffix or 'no suffix'})",
                        )
                    )
            try:
                _check_id(folder.name)
            except InvalidData as e:
                results.extend(EnrollResult(str(p), "failed", reason=str(e)) for p in images_)
                images_ = []
            if images_:
                results.extend(self.enroll(folder.name, images_, allow_no_face=allow_no_face))
            elif not files:
                results.append(EnrollResult(str(folder), "failed", identity=folder.name, reason="no image files"))
            if progress is not None:
                progress(done, len(people), folder.name)
        return results

    # -- lookup --------------------------------------------------------------------------------
    def operating_point(self, target_far: float | None = None, margin: float | None = None) -> OperatingPoint:
        """The threshold identify() uses at the current gallery size, and how it was obtained."""
        self._check_open()
        target_far = self.target_far if target_far is None else float(target_far)
        margin = self.margin if margin is None else float(margin)
        with self._lock:
            key = (self._synced, target_far, margin)
            if self._op_cache and self._op_cache[0] == key:
                return self._op_cache[1]
        with self._db.read() as conn:
            n = int(
                conn.execute(
                    select(func.count(func.distinct(images.c.identity_id)))
                    .join(embeddings, embeddings.c.image_id == images.c.id)
                    .where(embeddings.c.model_version == self._mv)
                ).scalar()
                or 0
            )
            rows = (
                conn.execute(
                    select(embeddings.c.vector, images.c.identity_id)
                    .join(images, images.c.id == embeddings.c.image_id)
                    .where(embeddings.c.model_version == self._mv)
                ).all()
                if n >= calibration.MIN_GALLERY_FOR_EMPIRICAL
                else []
            )
        minima = None
        if rows:
            good = [(blob_vector(r.vector, self.dim), r.identity_id) for r in rows]
            good = [(v, lab) for v, lab in good if v is not None]
            minima = calibration.leave_one_identity_out_minima(
                np.stack([g[0] for g in good]), np.asarray([g[1] for g in good])
            )
        op = calibration.operating_point(self.threshold, n, target_far, self._far_table, minima, margin)
        with self._lock:
            self._op_cache = (key, op)
        return op

    def identify(
        self, sources, k: int = 5, threshold: float | None = None, margin: float | None = None
    ) -> list[Identification]:
        """Who is in each query image? One Identification per source, in order.

        sources: one or many paths, bytes or (name, bytes) pairs, embedded in batches.
        candidates: the top-k distinct identities (an identity's distance is its nearest image);
        match: the best one when known, else None. Known means: best distance < the operating
        threshold (see operating_point(): calibrated for the target rate of strangers wrongly
        accepted at the current gallery size; `threshold` overrides it) and, with a margin,
        second-best distance - best >= margin.
        An unreadable query does not raise: its Identification has known=False, no candidates
        and `error` set to the reason (so one bad file does not spoil a batch).
        Raises ModelError when the model has no calibrated threshold and none is given.
        """
        self._check_open()
        if int(k) < 1:
            raise InvalidData(f"k must be >= 1, got {k}")
        sources = as_list(sources)
        read: list = []
        for source in sources:
            try:
                read.append(read_source(source))
            except InvalidImage as e:
                read.append(e)
        for _attempt in range(3):
            # The query is embedded by the version whose vectors it is searched among: when the
            # home switches models in between, the lookup starts again with the new tower.
            mv, embedder = self._model_snapshot()
            labels, arrays, warnings, errors = [], [], [], {}
            for pos, src in enumerate(read):
                try:
                    if isinstance(src, InvalidImage):
                        raise src
                    arr, warn = self._prepare(src, strict_face=False, embedder=embedder)
                except InvalidImage as e:
                    labels.append(e.path)
                    errors[pos] = e.reason
                    continue
                labels.append(src.label)
                arrays.append(arr)
                warnings.append(warn)
            vectors = self._embed(arrays, embedder)
            answered = self._identify_vectors(
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
        vectors,
        k: int = 5,
        threshold: float | None = None,
        margin: float | None = None,
        labels: Sequence[str] | None = None,
    ) -> list[Identification]:
        """identify() for embeddings already computed with this home's model ((n, dim) float32)."""
        return self._identify_vectors(vectors, k, threshold, margin, labels)

    def _identify_vectors(
        self,
        vectors,
        k: int = 5,
        threshold: float | None = None,
        margin: float | None = None,
        labels: Sequence[str] | None = None,
        expect_version: int | None = None,
    ) -> list[Identification] | None:
        """identify_vectors(); with expect_version, None when another version serves by now (the
        vectors then came from the wrong tower). The FAISS index searched, the threshold and the
        version are one snapshot: a lookup never mixes two models' vectors."""
        self._check_open()
        q = np.asarray(vectors, dtype=np.float32)
        self.refresh()
        with self._lock:
            mv, vi = self._mv, self._vectors
        if expect_version is not None and mv != expect_version:
            return None
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InvalidData(f"vectors of shape {q.shape} do not fit this home's embedding size {self.dim}")
        if threshold is None:
            op = self.operating_point(margin=margin)
            t = op.threshold
            if t is None:
                raise ModelError(f"model {self.model_id} has no calibrated threshold: pass one")
        else:
            t = float(threshold)
        m = self.margin if margin is None else float(margin)
        found = self._search_identities(q, max(int(k), 2), vi=vi)
        with self._lock:
            if self._mv != mv:  # switched while searching: the threshold may be the other model's
                if expect_version is not None:
                    return None
                raise Busy("the home's model version changed during this lookup; try again")
        out = []
        for i, cands in enumerate(found):
            label = labels[i] if labels is not None else f"#{i}"
            warnings = () if cands else ("nobody is enrolled",)
            best = cands[0] if cands else None
            second = cands[1].distance if len(cands) > 1 else None
            known = best is not None and calibration.is_known(best.distance, second, t, m)
            out.append(Identification(label, bool(known), best if known else None, tuple(cands[: int(k)]), t, warnings))
        return out

    def verify(self, a, b, threshold: float | None = None) -> Verification:
        """Are two images the same identity? distance < threshold (default: the model's pair
        threshold). Raises InvalidImage for an unreadable image."""
        self._check_open()
        return _verify_with(self._get_embedder(), a, b, self.threshold if threshold is None else threshold)

    # -- people --------------------------------------------------------------------------------
    def _identity_row(self, conn: Connection, external_id: str):
        row = conn.execute(select(identities).where(identities.c.external_id == external_id)).first()
        if row is None:
            raise NotFound(f"no enrolled identity {external_id!r}")
        return row

    def people(self) -> list[Person]:
        """Every enrolled identity with its image count, ordered by id."""
        self._check_open()
        with self._db.read() as conn:
            rows = conn.execute(
                select(identities, func.count(images.c.id).label("n"))
                .outerjoin(images, images.c.identity_id == identities.c.id)
                .group_by(identities.c.id)
                .order_by(identities.c.external_id)
            ).all()
        return [Person(r.external_id, r.name, json.loads(r.meta or "{}"), int(r.n), r.created_at) for r in rows]

    def person(self, external_id: str) -> dict:
        """One identity: id, name, meta, created, updated and its images (image_id, source_name,
        sha256, width, height, bytes, stored_path, created)."""
        self._check_open()
        with self._db.read() as conn:
            row = self._identity_row(conn, external_id)
            imgs = conn.execute(select(images).where(images.c.identity_id == row.id).order_by(images.c.id)).all()
        return {
            "id": row.external_id,
            "name": row.name,
            "meta": json.loads(row.meta or "{}"),
            "created": row.created_at,
            "updated": row.updated_at,
            "images": [
                {
                    "image_id": r.id,
                    "source_name": r.source_name,
                    "sha256": r.content_sha256,
                    "width": r.width,
                    "height": r.height,
                    "bytes": r.bytes,
                    "stored_path": r.stored_path,
                    "created": r.created_at,
                }
                for r in imgs
            ],
        }

    def rename(self, external_id: str, name: str | None) -> Person:
        """Set (or, with None, clear) an identity's display name."""
        self._check_open()
        if name is not None and not isinstance(name, str):
            raise InvalidData("name must be text")
        with self._db.lock:
            with self._db.write() as txn:
                row = self._identity_row(txn.conn, external_id)
                txn.conn.execute(
                    update(identities).where(identities.c.id == row.id).values(name=name, updated_at=now_iso())
                )
            self._after_write(txn)
        return next(p for p in self.people() if p.id == external_id)

    def _delete_images(self, conn: Connection, rows) -> list[Path]:
        """Delete image rows and their embeddings; return stored copies no other row references."""
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

    def _unlink_after_commit(self, paths: list[Path]) -> int:
        n = 0
        for p in paths:
            try:
                n += unlink_copy(p)
            except OSError as e:
                log.warning("could not delete %s (check --repair removes it): %s", p, e)
        self._db.checkpoint()  # fold the WAL so no old page of the deleted rows survives
        return n

    def remove(self, external_id: str) -> dict:
        """Delete an identity: its rows, embeddings, FAISS vectors and stored copies.

        Returns {"id", "images", "files_deleted"}. Deleted rows are overwritten (SQLite
        secure_delete) and the WAL is checkpointed, so nothing of them stays in the home."""
        self._check_open()
        with self._db.lock:
            with self._db.write() as txn:
                self._sync_in_txn(txn)
                row = self._identity_row(txn.conn, external_id)
                rows = txn.conn.execute(select(images).where(images.c.identity_id == row.id)).all()
                unlink = self._delete_images(txn.conn, rows)
                txn.conn.execute(delete(identities).where(identities.c.id == row.id))
            self._after_write(txn, removed=[r.id for r in rows])
            n = self._unlink_after_commit(unlink)
        return {"id": external_id, "images": len(rows), "files_deleted": n}

    def _resolve_image(self, conn: Connection, identity_pk: int, external_id: str, ref):
        rows = conn.execute(select(images).where(images.c.identity_id == identity_pk).order_by(images.c.id)).all()
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

    def remove_image(self, external_id: str, image) -> dict:
        """Delete one photo of an identity. `image`: its image number (FAISS id), its source file
        name, or a prefix (>= 6 hex characters) of its content hash. The identity stays, even
        with no image left. Returns {"id", "image_id", "source_name", "remaining_images",
        "files_deleted"}."""
        self._check_open()
        with self._db.lock:
            with self._db.write() as txn:
                self._sync_in_txn(txn)
                ident = self._identity_row(txn.conn, external_id)
                row = self._resolve_image(txn.conn, ident.id, external_id, image)
                unlink = self._delete_images(txn.conn, [row])
                remaining = txn.conn.execute(
                    select(func.count()).select_from(images).where(images.c.identity_id == ident.id)
                ).scalar()
            self._after_write(txn, removed=[row.id])
            n = self._unlink_after_commit(unlink)
        return {
            "id": external_id,
            "image_id": row.id,
            "source_name": row.source_name,
            "remaining_images": int(remaining),
            "files_deleted": n,
        }

    def merge(self, external_id: str, into_id: str) -> dict:
        """Move every photo of `external_id` to `into_id` and delete `external_id` (two ids that are
        the same person). Photos `into_id` already has are dropped; `into_id` keeps its name (it
        takes the other's when it has none) and gains the other's meta keys it lacks.
        Returns {"id", "into", "moved", "duplicates_dropped"}."""
        self._check_open()
        if external_id == into_id:
            raise InvalidData("cannot merge an identity into itself")
        with self._db.lock:
            with self._db.write() as txn:
                conn = txn.conn
                self._sync_in_txn(txn)
                src = self._identity_row(conn, external_id)
                dst = self._identity_row(conn, into_id)
                have = set(
                    conn.execute(select(images.c.content_sha256).where(images.c.identity_id == dst.id)).scalars()
                )
                rows = conn.execute(select(images).where(images.c.identity_id == src.id)).all()
                dupes = [r for r in rows if r.content_sha256 in have]
                unlink = self._delete_images(conn, dupes)
                moved = conn.execute(
                    update(images).where(images.c.identity_id == src.id).values(identity_id=dst.id)
                ).rowcount
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
            self._after_write(txn, removed=[r.id for r in dupes])
            self._unlink_after_commit(unlink)
        return {"id": external_id, "into": into_id, "moved": int(moved), "duplicates_dropped": len(dupes)}

    # -- status, check, backup -----------------------------------------------------------------


def _verify_with(embedder, a, b, threshold: float | None) -> Verification:
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


def verify_files(a, b, home=None, model=None, threshold: float | None = None, embedder=None) -> Verification:
    """Verify two images without a home being needed: with `embedder` or `model` (a model
    directory or name, see config.resolve_model_dir) when given; else with the recorded model of
    the home at `home` (config.resolve_home) when that home exists; else with the default model.
    A `home` given explicitly that exists is always opened, so a model that differs from its
    recorded one raises ModelMismatch; one that does not exist raises NotFound unless a model or
    embedder is given. No home is created and nothing is enrolled."""
    if home is not None or (embedder is None and model is None):
        h = resolve_home(home)
        if (h / DB_NAME).exists():
            with SiameseIndex.open(h, model=model, embedder=embedder, create=False, sync=False) as idx:
                return idx.verify(a, b, threshold)
        if home is not None and embedder is None and model is None:
            raise NotFound(f"no siamese-index home at {h} (pass the right --home, or --model to verify without one)")
    if embedder is None:
        from siamese_index.towers.embedder import KerasEmbedder

        embedder = KerasEmbedder(resolve_model_dir(model))
    return _verify_with(embedder, a, b, threshold)
