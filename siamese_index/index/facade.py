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

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Connection

from siamese_index.config import resolve_home, resolve_model_dir
from siamese_index.errors import InvalidData, NotFound
from siamese_index.imaging.sources import Source
from siamese_index.index import opening
from siamese_index.index import openset as calibration
from siamese_index.index.cache import VectorCache
from siamese_index.index.enrollment import Enrollment, NearDuplicateCheck
from siamese_index.index.lookup import Lookup, verify_with
from siamese_index.index.maintenance import Maintenance
from siamese_index.index.people import People
from siamese_index.index.search import IdentitySearch
from siamese_index.index.served import ModelInfo, ServedModel, recorded_info
from siamese_index.storage.db import DB_NAME, LOCK_NAME, Database, home_exists
from siamese_index.storage.vectors import VectorIndex
from siamese_index.types import (
    BackupResult,
    CheckReport,
    EnrollResult,
    Identification,
    Merged,
    OperatingPoint,
    Person,
    PersonDetails,
    Removed,
    RemovedImage,
    Status,
    Verification,
)

if TYPE_CHECKING:
    from siamese_index.towers.embedder import Embedder


class SiameseIndex:
    """One home: enroll identities, identify and verify images, manage and check the index.

    Create with SiameseIndex.open(); close with close() or a `with` block. Thread-safe. A thin
    facade: the work is done by its collaborators (served model, FAISS cache, search, lookup,
    enrollment, people, maintenance), each in its own module of siamese_index.index.
    """

    def __init__(
        self,
        *,
        home: Path,
        db: Database,
        model_row: Any,
        info: ModelInfo,
        embedder: Embedder | None,
        keep_images: bool,
        target_far: float,
        margin: float,
        near_duplicates: NearDuplicateCheck | None = None,
    ):
        self.home = home
        self._db = db
        lock = threading.RLock()  # in-memory state: served model, FAISS index, sync counter
        self._served = ServedModel(home, model_row, info, embedder, lock)
        self._cache = VectorCache(home, db, self._served, lock)
        search = IdentitySearch(db, self._cache)
        self._lookup = Lookup(db, self._served, self._cache, search, target_far, margin)
        self._enrollment = Enrollment(home, db, self._served, self._cache, search, bool(keep_images), near_duplicates)
        self._people = People(home, db, self._cache)
        self._maintenance = Maintenance(
            home, db, self._served, self._cache, self._lookup.operating_point, lambda: self.keep_images
        )
        self._closed = False

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        home: Any = None,
        model: Any = None,
        embedder: Embedder | None = None,
        create: bool = True,
        keep_images: bool | None = None,
        target_far: float = calibration.DEFAULT_TARGET_FAR,
        margin: float = 0.0,
        lock_timeout: float = 60.0,
        sync: bool = True,
        near_duplicates: NearDuplicateCheck | None = None,
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
        near_duplicates: the check that warns when a new photo is the same picture as one
        enrolled under another id (default: the public API's, siamese_index's dedup pipeline).
        Raises NotFound when the home does not exist and create is False.
        """
        opening.check_settings(target_far, margin)
        home = resolve_home(home)
        is_new = not home_exists(home)
        if is_new:
            opening.check_new_home(home, create)
        info, embedder = opening.resolve_model(model, embedder, is_new)
        if is_new:
            opening.make_home(home)
        db = Database(home / DB_NAME, home / LOCK_NAME, lock_timeout=lock_timeout)
        try:
            row, keep_default, info = opening.record_model(db, info, keep_images)
            if is_new:
                try:
                    os.chmod(home / DB_NAME, 0o600)
                except OSError:
                    pass
            opening.tidy_home(db, home)
            idx = cls(
                home=home,
                db=db,
                model_row=row,
                info=info,
                embedder=embedder,
                keep_images=keep_default and keep_images is not False,
                target_far=target_far,
                margin=margin,
                near_duplicates=near_duplicates,
            )
            if sync:
                idx.refresh()
        except BaseException:
            db.close()
            raise
        return idx

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._db.checkpoint()
        self._db.close()

    def __enter__(self) -> SiameseIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SiameseIndex(home={str(self.home)!r}, model_id={self.model_id!r})"

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidData("this SiameseIndex is closed")

    # -- what it serves ------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        """The served model's id (the hash of its weights)."""
        return self._served.model_id

    @property
    def dim(self) -> int:
        """The served model's embedding size."""
        return self._served.dim

    @property
    def model_dir(self) -> str | None:
        """The served version's recorded model directory (None for an injected embedder)."""
        return self._served.model_dir

    @property
    def threshold(self) -> float | None:
        """The served model's pair threshold (verify)."""
        return self._served.threshold

    @property
    def version(self) -> int:
        """The served model version (model_versions.id)."""
        return self._served.version

    @property
    def generation(self) -> int:
        """The FAISS index generation in memory (bumped by every version switch)."""
        return self._cache.generation

    @property
    def vectors(self) -> VectorIndex | None:
        """The in-memory FAISS index (None before the first sync): for inspection and tests."""
        return self._cache.vectors

    @property
    def last_sync(self) -> dict:
        """How the last sync of the FAISS index went (as status()'s index.last_sync)."""
        return self._cache.last_sync

    @property
    def keep_images(self) -> bool:
        """Whether this session keeps copies of enrolled photos."""
        return self._enrollment.keep_images

    @property
    def target_far(self) -> float:
        return self._lookup.target_far

    @property
    def margin(self) -> float:
        return self._lookup.margin

    @property
    def index_path(self) -> Path:
        return self._cache.path

    # -- the interface for lifecycle/ (model versions, retrain, feedback, thresholds) -----------
    @property
    def db(self) -> Database:
        """The home's database (read and write transactions, the writer lock)."""
        return self._db

    def ensure_open(self) -> None:
        """Raise InvalidData when this index was closed."""
        self._check_open()

    def model_snapshot(self) -> tuple[int, Embedder]:
        """(version, embedder) of the active model, taken together after a refresh: a caller that
        embeds with this embedder must search only that version's vectors."""
        return self._cache.model_snapshot()

    def prepare(
        self, src: Source, strict_face: bool = False, embedder: Embedder | None = None
    ) -> tuple[np.ndarray, list[str]]:
        """One read source as an input of `embedder` (default: the served tower), with warnings.
        Raises InvalidImage when the model cannot use it."""
        return self._served.prepare(src, strict_face, embedder)

    def embed(self, arrays: list[np.ndarray], embedder: Embedder | None = None) -> np.ndarray:
        """Prepared inputs -> (n, dim) float32 by `embedder` (default: the served tower)."""
        return self._served.embed(arrays, embedder)

    def recorded_info(self, row: Any) -> ModelInfo:
        """The calibration of a model_versions row: a threshold set for this home, else its
        model directory's config.json, else the record."""
        return recorded_info(row, self.home)

    def delete_images(self, conn: Connection, rows: Sequence[Any]) -> list[Path]:
        """Inside the caller's write transaction: delete image rows and their embeddings; returns
        the stored copies to pass to unlink_after_commit() once it committed."""
        return self._people.delete_images(conn, rows)

    def unlink_after_commit(self, paths: list[Path]) -> int:
        """Delete stored copies whose rows are committed as gone, and fold the WAL."""
        return self._people.unlink_after_commit(paths)

    def switch_embedder(self, embedder: Embedder | None = None) -> None:
        """After a committed version switch (caller holds the writer lock): serve the new version
        (with `embedder` when it is that version's, already loaded), rebuild FAISS and save it."""
        self._cache.after_switch(embedder)

    def drop_cache(self) -> None:
        """Forget the in-memory FAISS index: the next use reloads or rebuilds it from SQLite."""
        self._cache.drop()

    # -- FAISS synchronisation -----------------------------------------------------------------
    def refresh(self) -> bool:
        """See other processes' writes: one cheap SELECT of the change counter; when it moved,
        reload the FAISS file (or rebuild it from SQLite). Returns True when it reloaded.

        identify(), status() and the other readers call it themselves."""
        self._check_open()
        return self._cache.refresh()

    # -- enrollment ----------------------------------------------------------------------------
    def enroll(
        self,
        external_id: str,
        sources: Any,
        name: str | None = None,
        meta: dict | None = None,
        allow_no_face: bool = False,
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
        return self._enrollment.enroll(external_id, sources, name=name, meta=meta, allow_no_face=allow_no_face)

    def enroll_dir(
        self, root: Any, progress: Callable[[int, int, str], None] | None = None, allow_no_face: bool = False
    ) -> list[EnrollResult]:
        """Enroll a folder with one subfolder per person (folder name = id, image files inside).

        Each person is one transaction. Files that are not images by suffix, files directly in
        `root`, and folders whose name is not a valid id are reported as failed; the rest are
        enrolled. progress(done, total, id) is called after each person."""
        self._check_open()
        return self._enrollment.enroll_dir(root, progress=progress, allow_no_face=allow_no_face)

    # -- lookup --------------------------------------------------------------------------------
    def operating_point(self, target_far: float | None = None, margin: float | None = None) -> OperatingPoint:
        """The threshold identify() uses at the current gallery size, and how it was obtained."""
        self._check_open()
        return self._lookup.operating_point(target_far, margin)

    def identify(
        self, sources: Any, k: int = 5, threshold: float | None = None, margin: float | None = None
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
        return self._lookup.identify(sources, k=k, threshold=threshold, margin=margin)

    def identify_vectors(
        self,
        vectors: Any,
        k: int = 5,
        threshold: float | None = None,
        margin: float | None = None,
        labels: Sequence[str] | None = None,
    ) -> list[Identification]:
        """identify() for embeddings already computed with this home's model ((n, dim) float32)."""
        self._check_open()
        out = self._lookup.identify_vectors(vectors, k, threshold, margin, labels)
        assert out is not None  # only None with expect_version
        return out

    def verify(self, a: Any, b: Any, threshold: float | None = None) -> Verification:
        """Are two images the same identity? distance < threshold (default: the model's pair
        threshold). Raises InvalidImage for an unreadable image."""
        self._check_open()
        return self._lookup.verify(a, b, threshold)

    # -- people --------------------------------------------------------------------------------
    def people(self) -> list[Person]:
        """Every enrolled identity with its image count, ordered by id."""
        self._check_open()
        return self._people.everyone()

    def person(self, external_id: str) -> PersonDetails:
        """One identity: id, name, meta, created, updated and its images (image_id, source_name,
        sha256, width, height, bytes, stored_path, created). NotFound when nobody has that id."""
        self._check_open()
        return self._people.show(external_id)

    def rename(self, external_id: str, name: str | None) -> Person:
        """Set (or, with None, clear) an identity's display name."""
        self._check_open()
        return self._people.rename(external_id, name)

    def remove(self, external_id: str) -> Removed:
        """Delete an identity: its rows, embeddings, FAISS vectors and stored copies.

        Returns Removed (id, images, files_deleted). Deleted rows are overwritten (SQLite
        secure_delete) and the WAL is checkpointed, so nothing of them stays in the home."""
        self._check_open()
        return self._people.remove(external_id)

    def remove_image(self, external_id: str, image: Any) -> RemovedImage:
        """Delete one photo of an identity. `image`: its image number (FAISS id), its source file
        name, or a prefix (>= 6 hex characters) of its content hash. The identity stays, even
        with no image left. Returns RemovedImage (id, image_id, source_name, remaining_images,
        files_deleted)."""
        self._check_open()
        return self._people.remove_image(external_id, image)

    def merge(self, external_id: str, into_id: str) -> Merged:
        """Move every photo of `external_id` to `into_id` and delete `external_id` (two ids that are
        the same person). Photos `into_id` already has are dropped; `into_id` keeps its name (it
        takes the other's when it has none) and gains the other's meta keys it lacks.
        Returns Merged (id, into, moved, duplicates_dropped)."""
        self._check_open()
        return self._people.merge(external_id, into_id)

    # -- status, check, backup -----------------------------------------------------------------
    def status(self) -> Status:
        """A summary: home, database, schema_version, change_counter, keep_images, model
        (version, model_id, model_dir, dim, threshold, threshold_method), counts (identities,
        identities_with_images, images, embeddings, stored_images), index (path, stamp, loaded,
        vectors, generation, last_sync), operating_point and consistency (ok, problems)."""
        self._check_open()
        return self._maintenance.status()

    def check(self, repair: bool = False) -> CheckReport:
        """Verify that SQLite, the FAISS file and the stored copies agree; with repair, fix them.

        Holds the writer lock while it runs. ok is True when nothing was wrong; problems are
        (kind, detail) pairs (kinds: database, index_file, index_memory, bad_embedding,
        missing_embedding, missing_file, corrupt_file, orphan_file); repaired lists what was
        fixed, unrepaired what needs a person (e.g. restore from a backup). Repairs: FAISS
        rebuilt from SQLite and saved; orphan and corrupt copies deleted; rows whose copy is lost
        forget it; unusable embeddings deleted and re-embedded from the stored copy when there is
        one."""
        self._check_open()
        return self._maintenance.check(repair=repair)

    def backup(self, path: Any) -> BackupResult:
        """Write a consistent copy of the home to a new folder `path` (safe while the index is in
        use): the database through SQLite's online backup API, then the stored image copies.
        The FAISS cache is not copied (it is rebuilt when the copy is opened). Refuses an existing
        non-empty target. Returns BackupResult (path, identities, images, stored_images,
        missing_images, bytes)."""
        self._check_open()
        return self._maintenance.backup(path)


def verify_files(
    a: Any, b: Any, home: Any = None, model: Any = None, threshold: float | None = None, embedder: Any = None
) -> Verification:
    """Verify two images without a home being needed: with `embedder` or `model` (a model
    directory or name, see config.resolve_model_dir) when given; else with the recorded model of
    the home at `home` (config.resolve_home) when that home exists; else with the default model.
    A `home` given explicitly that exists is always opened, so a model that differs from its
    recorded one raises ModelMismatch; one that does not exist raises NotFound unless a model or
    embedder is given. No home is created and nothing is enrolled."""
    if home is not None or (embedder is None and model is None):
        h = resolve_home(home)
        if home_exists(h):
            with SiameseIndex.open(h, model=model, embedder=embedder, create=False, sync=False) as idx:
                return idx.verify(a, b, threshold)
        if home is not None and embedder is None and model is None:
            raise NotFound(f"no siamese-index home at {h} (pass the right --home, or --model to verify without one)")
    if embedder is None:
        from siamese_index.towers.embedder import KerasEmbedder

        embedder = KerasEmbedder(resolve_model_dir(model))
    return verify_with(embedder, a, b, threshold)
