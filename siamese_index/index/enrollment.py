"""Enrolling photos of one identity: read, check, embed, then write in one transaction.

Each file ends "added", "exists" (this content is already enrolled for this id) or "failed" with
a reason, and only what was committed is reported. The photos are embedded outside the writer
lock by the tower of the version that serves at that moment; the write checks that this version
still serves (else the enrollment starts again with the new tower).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Connection, insert, select, update

from siamese_index.errors import Busy, InvalidData, InvalidImage, NotFound
from siamese_index.imaging.loading import is_image_file
from siamese_index.imaging.sources import Source, as_list, read_source
from siamese_index.index.cache import VectorCache
from siamese_index.index.near_duplicates import enrolled_near_duplicates
from siamese_index.index.search import IdentitySearch
from siamese_index.index.served import ServedModel
from siamese_index.storage.copies import PENDING_NAME, recover_pending_copies, store_copy, unlink_copy, write_pending
from siamese_index.storage.db import Database, embeddings, identities, images, inserted_id, now_iso, vector_blob
from siamese_index.types import EnrollResult

log = logging.getLogger(__name__)

MAX_ID_LENGTH = 200
ENROLL_ATTEMPTS = 3  # enrollments started again when the model version switches meanwhile

# (home, new photos as (label, bytes, sha256), photos of OTHER ids as rows (content_sha256,
# stored_path, external_id)) -> one list of warnings per new photo. The default is
# index/near_duplicates.py's enrolled_near_duplicates; a caller may inject another.
NearDuplicateCheck = Callable[[Path, list[tuple[str, bytes, str]], Sequence[Any]], list[list[str]]]


class _ModelSwitched(Exception):
    """The active model version changed between embedding and writing."""


def check_id(external_id: Any) -> str:
    """An external id: printable text without '/', no surrounding spaces, at most 200 characters."""
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


def check_meta(meta: Any) -> dict | None:
    """Metadata: None, or a JSON-serialisable dict with text keys (copied)."""
    if meta is None:
        return None
    if not isinstance(meta, dict) or not all(isinstance(k, str) for k in meta):
        raise InvalidData("meta must be a dict with text keys")
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise InvalidData(f"meta is not JSON-serialisable ({e})") from e
    return dict(meta)


def merge_meta(old: dict, new: dict | None) -> dict:
    """`old` updated by `new`; a None value in `new` deletes its key."""
    merged = dict(old)
    for k, v in (new or {}).items():
        if v is None:
            merged.pop(k, None)
        else:
            merged[k] = v
    return merged


@dataclass
class _Todo:
    """A new photo ready to be written: its position in the call, source, model input, warnings."""

    pos: int
    src: Source
    array: np.ndarray
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Request:
    """One enroll() call: the identity, its name and meta, and the per-file results so far."""

    external_id: str
    name: str | None
    meta: dict | None
    results: list[EnrollResult | None]


class Enrollment:
    """enroll() and enroll_dir() of one home."""

    def __init__(
        self,
        home: Path,
        db: Database,
        served: ServedModel,
        cache: VectorCache,
        search: IdentitySearch,
        keep_images: bool,
        near_duplicates: NearDuplicateCheck | None = None,
    ):
        self.home = home
        self._db = db
        self._served = served
        self._cache = cache
        self._search = search
        self.keep_images = keep_images
        self._near_duplicates = near_duplicates

    # -- enroll --------------------------------------------------------------------------------
    def enroll(
        self,
        external_id: str,
        sources: Any,
        name: str | None = None,
        meta: dict | None = None,
        allow_no_face: bool = False,
    ) -> list[EnrollResult]:
        """See SiameseIndex.enroll."""
        external_id = check_id(external_id)
        meta = check_meta(meta)
        if name is not None and not isinstance(name, str):
            raise InvalidData("name must be text")
        items = as_list(sources)
        if not items:
            raise InvalidData("no images given")
        req = _Request(external_id, name, meta, [None] * len(items))
        new, same_as = self._read(req, items)
        for attempt in range(ENROLL_ATTEMPTS):
            try:
                self._attempt(req, new, allow_no_face)
                break
            except _ModelSwitched:
                if attempt == ENROLL_ATTEMPTS - 1:
                    raise Busy("the home's model version kept changing during this enrollment; try again") from None
        return self._resolve_repeats(req, same_as)

    def _read(self, req: _Request, items: list) -> tuple[list[tuple[int, Source]], dict[int, int]]:
        """Read every source: (the distinct new ones, {position: position of the same content})."""
        first_of: dict[str, int] = {}
        same_as: dict[int, int] = {}
        new: list[tuple[int, Source]] = []
        for pos, source in enumerate(items):
            try:
                src = read_source(source)
            except InvalidImage as e:
                req.results[pos] = EnrollResult(e.path, "failed", reason=e.reason, identity=req.external_id)
                continue
            if src.sha256 in first_of:
                same_as[pos] = first_of[src.sha256]
                req.results[pos] = EnrollResult(
                    src.label, "exists", identity=req.external_id, reason="same content as another file in this call"
                )
                continue
            first_of[src.sha256] = pos
            new.append((pos, src))
        return new, same_as

    def _attempt(self, req: _Request, new: list[tuple[int, Source]], allow_no_face: bool) -> None:
        """Embed with the serving tower and write; _ModelSwitched when another version serves by then."""
        mv, embedder = self._cache.model_snapshot()
        with self._db.read() as conn:
            existing = self._images_by_hash(conn, req.external_id)
            row = conn.execute(select(identities).where(identities.c.external_id == req.external_id)).first()
        todo: list[_Todo] = []
        for pos, src in new:
            if src.sha256 in existing:
                req.results[pos] = EnrollResult(
                    src.label, "exists", image_id=existing[src.sha256], identity=req.external_id
                )
                continue
            try:
                arr, warnings = self._served.prepare(src, strict_face=not allow_no_face, embedder=embedder)
            except InvalidImage as e:
                req.results[pos] = EnrollResult(src.label, "failed", reason=e.reason, identity=req.external_id)
                continue
            todo.append(_Todo(pos, src, arr, warnings))
        self._warn_near_duplicates(req.external_id, todo)
        vectors = self._served.embed([t.array for t in todo], embedder)
        usable = bool(todo) or any(r is not None and r.status == "exists" for r in req.results)
        if todo or (self._identity_changes(row, req) and usable):  # when every file fails, nothing changes
            self._write(req, todo, vectors, mv)

    @staticmethod
    def _identity_changes(row: Any, req: _Request) -> bool:
        if row is None:
            return False
        old_meta = json.loads(row.meta or "{}")
        return (req.name is not None and req.name != row.name) or (
            req.meta is not None and merge_meta(old_meta, req.meta) != old_meta
        )

    @staticmethod
    def _resolve_repeats(req: _Request, same_as: dict[int, int]) -> list[EnrollResult]:
        """A file repeating another of the same call shares its fate."""
        results = req.results
        for pos, first in same_as.items():
            r, f = results[pos], results[first]
            assert r is not None and f is not None  # every position got a result above
            if f.status == "failed":
                results[pos] = EnrollResult(r.path, "failed", reason=f.reason, identity=req.external_id)
            else:
                results[pos] = EnrollResult(
                    r.path, "exists", image_id=f.image_id, reason=r.reason, identity=req.external_id
                )
        return [r for r in results if r is not None]

    def _warn_near_duplicates(self, external_id: str, todo: list[_Todo]) -> None:
        """Warn on each new photo that is the same picture (dedup's near level) as one enrolled
        under ANOTHER id. Best effort: this check never fails an enrollment."""
        if not todo:
            return
        try:
            check = self._near_duplicates or enrolled_near_duplicates
            with self._db.read() as conn:
                others = conn.execute(
                    select(images.c.content_sha256, images.c.stored_path, identities.c.external_id)
                    .join(identities, identities.c.id == images.c.identity_id)
                    .where(identities.c.external_id != external_id)
                ).all()
            found = check(self.home, [(t.src.label, t.src.data, t.src.sha256) for t in todo], others)
        except Exception as e:  # noqa: BLE001
            log.warning("near-duplicate check skipped: %s", e)
            return
        for t, extra in zip(todo, found):
            t.warnings.extend(extra)

    @staticmethod
    def _images_by_hash(conn: Connection, external_id: str) -> dict[str, int]:
        rows = conn.execute(
            select(images.c.content_sha256, images.c.id)
            .join(identities, identities.c.id == images.c.identity_id)
            .where(identities.c.external_id == external_id)
        ).all()
        return {r.content_sha256: r.id for r in rows}

    # -- the write -----------------------------------------------------------------------------
    def _write(self, req: _Request, todo: list[_Todo], vectors: np.ndarray, mv: int) -> None:
        """One transaction under the writer lock; the copies it wrote are removed on rollback."""
        created_files: list[Path] = []
        added: list[tuple[int, np.ndarray]] = []
        pending = self.home / PENDING_NAME
        with self._db.lock:
            recover_pending_copies(self._db)
            if self.keep_images and todo:
                # Say which copies are about to be written, so a crash before the commit leaves
                # nothing behind once the home is opened again (see recover_pending_copies).
                write_pending(self.home, [t.src for t in todo])
            try:
                with self._db.write() as txn:
                    self._cache.sync_in_txn(txn)
                    if self._served.version != mv:  # embedded by a tower that no longer serves
                        raise _ModelSwitched()
                    pk = self._upsert_identity(txn.conn, req)
                    added = self._insert_images(txn.conn, pk, req, todo, vectors, created_files)
            except BaseException:
                for path in created_files:  # rolled back: remove the copies it wrote
                    unlink_copy(path)
                pending.unlink(missing_ok=True)
                raise
            pending.unlink(missing_ok=True)  # committed: the copies now belong to the database
            ids = np.asarray([a[0] for a in added], np.int64)
            vecs = np.stack([a[1] for a in added]) if added else np.zeros((0, self._served.dim), np.float32)
            self._cache.after_write(txn, added=(ids, vecs))

    @staticmethod
    def _upsert_identity(conn: Connection, req: _Request) -> int:
        """The identity's primary key, created or updated (name, merged meta) as asked."""
        now = now_iso()
        row = conn.execute(select(identities).where(identities.c.external_id == req.external_id)).first()
        if row is None:
            return inserted_id(
                conn.execute(
                    insert(identities).values(
                        external_id=req.external_id,
                        name=req.name,
                        meta=json.dumps(merge_meta({}, req.meta)),
                        created_at=now,
                        updated_at=now,
                    )
                )
            )
        changes = {}
        if req.name is not None and req.name != row.name:
            changes["name"] = req.name
        if req.meta is not None:
            merged = merge_meta(json.loads(row.meta or "{}"), req.meta)
            if merged != json.loads(row.meta or "{}"):
                changes["meta"] = json.dumps(merged)
        if changes:
            conn.execute(update(identities).where(identities.c.id == row.id).values(updated_at=now, **changes))
        return int(row.id)

    def _insert_images(
        self,
        conn: Connection,
        pk: int,
        req: _Request,
        todo: list[_Todo],
        vectors: np.ndarray,
        created_files: list[Path],
    ) -> list[tuple[int, np.ndarray]]:
        """Insert each new photo (row, embedding, stored copy); returns (image id, vector) added."""
        existing = {
            r.content_sha256: r.id
            for r in conn.execute(select(images.c.content_sha256, images.c.id).where(images.c.identity_id == pk)).all()
        }
        others = self._search.nearest(vectors, 1, exclude=req.external_id, conn=conn) if todo else []
        added: list[tuple[int, np.ndarray]] = []
        now = now_iso()
        for t, vec, near in zip(todo, vectors, others):
            if t.src.sha256 in existing:  # enrolled meanwhile by another process
                req.results[t.pos] = EnrollResult(
                    t.src.label, "exists", image_id=existing[t.src.sha256], identity=req.external_id
                )
                continue
            image_id = self._insert_image(conn, pk, t.src, vec, now, created_files)
            existing[t.src.sha256] = image_id
            added.append((image_id, vec))
            warnings = t.warnings + self._duplicate_identity_warning(t.src, near)
            req.results[t.pos] = EnrollResult(
                t.src.label, "added", image_id=image_id, warnings=tuple(warnings), identity=req.external_id
            )
        return added

    def _insert_image(
        self, conn: Connection, pk: int, src: Source, vec: np.ndarray, now: str, created_files: list[Path]
    ) -> int:
        stored = None
        if self.keep_images:
            stored, created = store_copy(self.home, src)
            if created:
                created_files.append(self.home / stored)
        image_id = inserted_id(
            conn.execute(
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
            )
        )
        conn.execute(
            insert(embeddings).values(
                image_id=image_id, model_version=self._served.version, vector=vector_blob(vec), created_at=now
            )
        )
        return image_id

    def _duplicate_identity_warning(self, src: Source, near: list) -> list[str]:
        """A warning when the new photo is closer than the pair threshold to ANOTHER identity."""
        t = self._served.threshold
        if not near or t is None or near[0].distance >= t:
            return []
        o = near[0]
        who = f"{o.id}" + (f" ({o.name})" if o.name else "")
        return [
            f"possible duplicate identity: {src.label} is at distance {o.distance:.3f} from "
            f"{who}, closer than the model's threshold {t:.3f}"
        ]

    # -- enroll_dir ----------------------------------------------------------------------------
    def enroll_dir(
        self, root: Any, progress: Callable[[int, int, str], None] | None = None, allow_no_face: bool = False
    ) -> list[EnrollResult]:
        """See SiameseIndex.enroll_dir."""
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
            results.extend(self._enroll_folder(folder, allow_no_face))
            if progress is not None:
                progress(done, len(people), folder.name)
        return results

    def _enroll_folder(self, folder: Path, allow_no_face: bool) -> list[EnrollResult]:
        """One person folder: its image files enrolled under the folder's name, the rest reported."""
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        photos = [p for p in files if is_image_file(p)]
        results = [
            EnrollResult(
                str(p), "failed", identity=folder.name, reason=f"not an image file type ({p.suffix or 'no suffix'})"
            )
            for p in files
            if not is_image_file(p)
        ]
        try:
            check_id(folder.name)
        except InvalidData as e:
            results.extend(EnrollResult(str(p), "failed", reason=str(e)) for p in photos)
            photos = []
        if photos:
            results.extend(self.enroll(folder.name, photos, allow_no_face=allow_no_face))
        elif not files:
            results.append(EnrollResult(str(folder), "failed", identity=folder.name, reason="no image files"))
        return results
