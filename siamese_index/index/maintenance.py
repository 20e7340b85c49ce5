"""Looking after a home: status, consistency check and repair, online backup.

`Maintenance` is a collaborator of SiameseIndex (it reads the database, the FAISS cache and the
served model through their public interfaces), kept apart because none of it is on the enroll
or lookup path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Connection, delete, func, insert, select, update

from siamese_index.errors import Busy, IndexStale, InvalidData, InvalidImage
from siamese_index.imaging.sources import read_source
from siamese_index.index.cache import VectorCache
from siamese_index.index.served import ServedModel
from siamese_index.storage.copies import IMAGES_DIR, unlink_copy
from siamese_index.storage.db import (
    DB_NAME,
    Database,
    blob_vector,
    embeddings,
    identities,
    images,
    in_chunks,
    model_versions,
    now_iso,
    vector_blob,
)
from siamese_index.storage.vectors import VectorIndex, id_set_sha256, read_stamp, stale_reasons
from siamese_index.types import (
    BackupResult,
    Checked,
    CheckReport,
    Consistency,
    Counts,
    IndexState,
    ModelStatus,
    OperatingPoint,
    Problem,
    Status,
)


@dataclass
class _Findings:
    """What one check() run found, and what it or a repair did about it."""

    problems: list[Problem] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    unrepaired: list[str] = field(default_factory=list)
    bad_emb: list[int] = field(default_factory=list)
    no_emb: list[Any] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    orphans: list[Path] = field(default_factory=list)

    def add(self, kind: str, detail: str) -> None:
        self.problems.append(Problem(kind, detail))


class Maintenance:
    """status(), check(repair=...) and backup(path) of one home."""

    def __init__(
        self,
        home: Path,
        db: Database,
        served: ServedModel,
        cache: VectorCache,
        operating_point: Callable[[], OperatingPoint],
        keep_images: Callable[[], bool],
    ):
        self.home = home
        self._db = db
        self._served = served
        self._cache = cache
        self._operating_point = operating_point
        self._keep_images = keep_images

    # -- status --------------------------------------------------------------------------------
    def _counts(self, conn: Connection) -> Counts:
        def scalar(stmt: Any) -> int:
            return int(conn.execute(stmt).scalar() or 0)

        mv = self._served.version
        return Counts(
            identities=scalar(select(func.count()).select_from(identities)),
            identities_with_images=scalar(select(func.count(func.distinct(images.c.identity_id)))),
            images=scalar(select(func.count()).select_from(images)),
            embeddings=scalar(select(func.count()).select_from(embeddings).where(embeddings.c.model_version == mv)),
            stored_images=scalar(select(func.count(func.distinct(images.c.stored_path)))),
        )

    def status(self) -> Status:
        """A summary: home, schema, model, counts, FAISS stamp, operating point, quick consistency."""
        self._cache.refresh()
        with self._db.read() as conn:
            counter = Database.get_counter(conn)
            counts = self._counts(conn)
            sqlite_ids = self._cache.active_ids(conn)
            schema = self._db.schema_version(conn)
            mv = conn.execute(select(model_versions).where(model_versions.c.id == self._served.version)).one()
            generation = int(Database.get_meta(conn, "index_generation", "1") or 1)
            stored = (
                conn.execute(select(func.distinct(images.c.stored_path)).where(images.c.stored_path.is_not(None)))
                .scalars()
                .all()
            )
        vi, synced = self._cache.vectors, self._cache.synced
        mem_ids = vi.ids() if vi is not None else np.zeros(0, np.int64)
        last_sync = {k: v for k, v in self._cache.last_sync.items() if k != "stamp"}
        problems = []
        if synced == counter and id_set_sha256(mem_ids) != id_set_sha256(sqlite_ids):
            problems.append(f"the loaded FAISS index holds {len(mem_ids)} vectors, SQLite {len(sqlite_ids)}")
        stamp = read_stamp(self._cache.path)
        problems.extend(self._file_status(stamp, generation, sqlite_ids))
        missing = [p for p in stored if not (self.home / p).is_file()]
        if missing:
            problems.append(f"{len(missing)} stored image copies are missing")
        scores = json.loads(mv.scores or "{}")
        return Status(
            home=str(self.home),
            database=str(self._db.path),
            schema_version=schema,
            change_counter=counter,
            keep_images=self._keep_images(),
            model=ModelStatus(
                mv.id, mv.model_id, mv.model_dir, mv.dim, self._served.threshold, scores.get("threshold_method")
            ),
            counts=counts,
            index=IndexState(str(self._cache.path), stamp, len(mem_ids), len(sqlite_ids), generation, last_sync),
            operating_point=self._operating_point(),
            consistency=Consistency(not problems, tuple(problems)),
        )

    def _file_status(self, stamp: dict | None, generation: int, sqlite_ids: np.ndarray) -> list[str]:
        """Problems of the saved FAISS file, unless a writer is between its commit and its save."""
        found = []
        if stamp is None or not self._cache.path.is_file():
            found.append("the FAISS file is missing (it is rebuilt on the next open or check --repair)")
        else:
            reasons = stale_reasons(
                stamp,
                model_id=self._served.model_id,
                dim=self._served.dim,
                generation=generation,
                expected_ids=sqlite_ids,
            )
            found.extend(f"the FAISS file is stale: {r}" for r in reasons)
        if found:
            try:  # a writer between its commit and its save is not a problem
                self._db.lock.acquire(timeout=0)
            except Busy:
                return []
            self._db.lock.release()
        return found

    # -- check ---------------------------------------------------------------------------------
    def check(self, repair: bool = False) -> CheckReport:
        """See SiameseIndex.check."""
        f = _Findings()
        with self._db.lock:
            for p in self._db.integrity_problems():
                f.add("database", p)
                f.unrepaired.append(f"database: {p} (restore a backup)")
            with self._db.read() as conn:
                counter = Database.get_counter(conn)
                generation = int(Database.get_meta(conn, "index_generation", "1") or 1)
                sqlite_ids = self._cache.active_ids(conn)
                emb_rows = conn.execute(
                    select(embeddings.c.image_id, embeddings.c.vector).where(
                        embeddings.c.model_version == self._served.version
                    )
                ).all()
                img_rows = conn.execute(
                    select(
                        images.c.id,
                        images.c.content_sha256,
                        images.c.stored_path,
                        images.c.source_name,
                        identities.c.external_id,
                    ).join(identities, identities.c.id == images.c.identity_id)
                ).all()
            self._check_embeddings(f, emb_rows, img_rows)
            self._check_index(f, counter, generation, np.setdiff1d(sqlite_ids, f.bad_emb))
            referenced = {r.stored_path: r.content_sha256 for r in img_rows if r.stored_path}
            self._check_files(f, referenced)
            if repair and f.problems:
                self._repair(f)
            elif not repair:
                f.unrepaired = [f"{p.kind}: {p.detail}" for p in f.problems]
        return CheckReport(
            ok=not f.problems,
            problems=tuple(f.problems),
            repaired=tuple(f.repaired),
            unrepaired=tuple(f.unrepaired),
            checked=Checked(len(img_rows), len(emb_rows), len(referenced)),
        )

    def _check_embeddings(self, f: _Findings, emb_rows: Sequence[Any], img_rows: Sequence[Any]) -> None:
        dim = self._served.dim
        f.bad_emb = [r.image_id for r in emb_rows if blob_vector(r.vector, dim) is None]
        for i in f.bad_emb:
            f.add("bad_embedding", f"image {i}: stored embedding is not {dim} finite float32 values")
        have_emb = {r.image_id for r in emb_rows} - set(f.bad_emb)
        f.no_emb = [r for r in img_rows if r.id not in have_emb]
        for r in f.no_emb:
            if r.id not in f.bad_emb:
                f.add(
                    "missing_embedding",
                    f"image {r.id} of {r.external_id} has no embedding for {self._served.model_id}",
                )

    def _check_index(self, f: _Findings, counter: int, generation: int, expected: np.ndarray) -> None:
        """The FAISS file and the in-memory index against SQLite's usable vectors."""
        try:
            _, stamp = VectorIndex.load(self._cache.path, self._served.dim)
            for reason in stale_reasons(
                stamp,
                model_id=self._served.model_id,
                dim=self._served.dim,
                generation=generation,
                expected_ids=expected,
            ):
                f.add("index_file", reason)
        except IndexStale as e:
            f.add("index_file", str(e))
        # Not loaded yet (open(sync=False)), or behind another writer: nothing to compare.
        vi = self._cache.vectors
        mem = vi.ids() if vi is not None and self._cache.synced == counter else None
        if mem is not None and id_set_sha256(mem) != id_set_sha256(expected):
            f.add("index_memory", "the loaded FAISS index does not hold SQLite's vectors")

    def _check_files(self, f: _Findings, referenced: dict[str, str]) -> None:
        """Stored copies: missing, damaged (content hash), or belonging to no image."""
        for rel, sha in sorted(referenced.items()):
            path = self.home / rel
            if not path.is_file():
                f.missing.append(rel)
                f.add("missing_file", f"{rel} is gone")
            elif hashlib.sha256(path.read_bytes()).hexdigest() != sha:
                f.corrupt.append(rel)
                f.add("corrupt_file", f"{rel} does not match its content hash")
        img_dir = self.home / IMAGES_DIR
        if img_dir.is_dir():
            for path in sorted(img_dir.rglob("*")):
                if path.is_file() and path.relative_to(self.home).as_posix() not in referenced:
                    f.orphans.append(path)
                    f.add("orphan_file", f"{path.relative_to(self.home).as_posix()} belongs to no image")

    # -- repair --------------------------------------------------------------------------------
    def _repair(self, f: _Findings) -> None:
        self._delete_bad_files(f)
        with self._db.write() as txn:
            conn = txn.conn
            lost = f.missing + f.corrupt
            for chunk in in_chunks(lost):
                conn.execute(update(images).where(images.c.stored_path.in_(chunk)).values(stored_path=None))
            for rel in lost:
                f.repaired.append(f"forgot the lost copy {rel} (re-enroll that photo to keep one)")
            for chunk in in_chunks(f.bad_emb):
                conn.execute(
                    delete(embeddings).where(
                        embeddings.c.image_id.in_(chunk), embeddings.c.model_version == self._served.version
                    )
                )
            self._reembed(conn, f)
        n = self._cache.rebuild("check --repair")  # unconditionally, from SQLite, and saved
        f.repaired.append(f"rebuilt the FAISS index from SQLite ({n} vectors)")

    def _delete_bad_files(self, f: _Findings) -> None:
        for path in f.orphans:
            try:
                unlink_copy(path)
                f.repaired.append(f"deleted orphan {path.relative_to(self.home).as_posix()}")
            except OSError as e:
                f.unrepaired.append(f"could not delete {path}: {e}")
        for rel in f.corrupt:
            try:
                unlink_copy(self.home / rel)
            except OSError:
                pass

    def _reembed(self, conn: Connection, f: _Findings) -> None:
        """Embed again, from the stored copy, each image left without a usable embedding."""
        no_ids = {r.id for r in f.no_emb}
        need = list(no_ids | {i for i in f.bad_emb if i not in no_ids})
        if not need:
            return
        rows = conn.execute(
            select(images.c.id, images.c.stored_path, images.c.source_name, identities.c.external_id)
            .join(identities, identities.c.id == images.c.identity_id)
            .where(images.c.id.in_(need))
        ).all()
        reembed = []
        for r in rows:
            if r.stored_path and (self.home / r.stored_path).is_file():
                reembed.append(r)
            else:
                f.unrepaired.append(
                    f"image {r.id} ({r.source_name}) of {r.external_id} has no usable "
                    f"embedding and no stored copy: re-enroll it or remove it with remove-image"
                )
        if not reembed:
            return
        arrays, ok = [], []
        for r in reembed:
            try:
                arrays.append(self._served.prepare(read_source(self.home / r.stored_path), strict_face=False)[0])
                ok.append(r)
            except InvalidImage as e:
                f.unrepaired.append(f"image {r.id} of {r.external_id}: its stored copy is unusable ({e.reason})")
        vecs = self._served.embed(arrays)
        now = now_iso()
        for r, v in zip(ok, vecs):
            conn.execute(
                insert(embeddings).values(
                    image_id=r.id, model_version=self._served.version, vector=vector_blob(v), created_at=now
                )
            )
            f.repaired.append(f"re-embedded image {r.id} of {r.external_id} from its stored copy")

    # -- backup --------------------------------------------------------------------------------
    def backup(self, path: Any) -> BackupResult:
        """See SiameseIndex.backup."""
        target = Path(path).expanduser().absolute()
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise InvalidData(f"{target}: already exists and is not empty; back up to a new folder")
        home = self.home.resolve()
        if target.resolve() == home or home in target.resolve().parents:
            raise InvalidData(f"{target}: a backup cannot go inside the home it copies")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            os.chmod(tmp, 0o700)
            db_copy = tmp / DB_NAME
            self._db.backup_to(db_copy)
            counts = self._copy_files(db_copy, tmp)
            os.chmod(db_copy, 0o600)
            if target.exists():
                target.rmdir()
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        n_ident, n_img, copied, missing, total = counts
        return BackupResult(str(target), n_ident, n_img, copied, missing, total + (target / DB_NAME).stat().st_size)

    def _copy_files(self, db_copy: Path, tmp: Path) -> tuple[int, int, int, int, int]:
        """Copy what the database copy references into `tmp`: (identities, images, stored copies,
        missing copies, bytes copied). A copy gone meanwhile is forgotten in the copied database."""
        conn = sqlite3.connect(db_copy, isolation_level=None)
        try:
            rows = conn.execute("SELECT id, stored_path FROM images WHERE stored_path IS NOT NULL").fetchall()
            n_ident = int(conn.execute("SELECT COUNT(*) FROM identities").fetchone()[0])
            n_img = int(conn.execute("SELECT COUNT(*) FROM images").fetchone()[0])
            copied: set[str] = set()
            missing, total = 0, 0
            for _image_id, rel in rows:
                if rel in copied:
                    continue
                dst = tmp / rel
                dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                try:
                    shutil.copyfile(self.home / rel, dst)
                    os.chmod(dst, 0o600)
                except FileNotFoundError:  # removed after the snapshot, or already lost
                    conn.execute("UPDATE images SET stored_path = NULL WHERE stored_path = ?", (rel,))
                    missing += 1
                    continue
                copied.add(rel)
                total += dst.stat().st_size
            total += self._copy_versions(conn, tmp)
            conn.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        finally:
            conn.close()
        return n_ident, n_img, len(copied), missing, total

    def _copy_versions(self, conn: sqlite3.Connection, tmp: Path) -> int:
        """The model versions kept in the home (retrain, reembed: model_dir "models/N"); bytes copied."""
        total = 0
        for (rel,) in conn.execute("SELECT model_dir FROM model_versions WHERE model_dir LIKE 'models/%'"):
            if ".." not in Path(rel).parts and (self.home / rel).is_dir():
                shutil.copytree(self.home / rel, tmp / rel)
                total += sum(f.stat().st_size for f in (tmp / rel).rglob("*") if f.is_file())
        return total
