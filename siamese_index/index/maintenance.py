"""Looking after a home: status, consistency check and repair, online backup.

A mixin of SiameseIndex (it uses the index's database, lock, FAISS state and embedder), kept
apart because none of it is on the enroll or lookup path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import numpy as np
from sqlalchemy import Connection, delete, func, insert, select, update

from siamese_index.errors import Busy, IndexStale, InvalidData, InvalidImage
from siamese_index.imaging.sources import read_source
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


class Maintenance:
    """status(), check(repair=...) and backup(path) for SiameseIndex."""

    def _counts(self, conn: Connection) -> dict:
        def scalar(stmt):
            return int(conn.execute(stmt).scalar() or 0)

        return {
            "identities": scalar(select(func.count()).select_from(identities)),
            "identities_with_images": scalar(select(func.count(func.distinct(images.c.identity_id)))),
            "images": scalar(select(func.count()).select_from(images)),
            "embeddings": scalar(
                select(func.count()).select_from(embeddings).where(embeddings.c.model_version == self._mv)
            ),
            "stored_images": scalar(select(func.count(func.distinct(images.c.stored_path)))),
        }

    def status(self) -> dict:
        """A summary: home, schema, model, counts, FAISS stamp, operating point, quick consistency.

        Keys: home, database, schema_version, change_counter, keep_images, model {version,
        model_id, model_dir, dim, threshold, threshold_method}, counts {identities,
        identities_with_images, images, embeddings, stored_images}, index {path, stamp, loaded,
        vectors, generation, last_sync}, operating_point {threshold, method, gallery_size,
        target_far, margin}, consistency {ok, problems}."""
        self._check_open()
        self.refresh()
        with self._db.read() as conn:
            counter = Database.get_counter(conn)
            counts = self._counts(conn)
            sqlite_ids = self._active_ids(conn)
            schema = self._db.schema_version(conn)
            mv = conn.execute(select(model_versions).where(model_versions.c.id == self._mv)).one()
            generation = int(Database.get_meta(conn, "index_generation", "1"))
            stored = (
                conn.execute(select(func.distinct(images.c.stored_path)).where(images.c.stored_path.is_not(None)))
                .scalars()
                .all()
            )
        problems = []
        with self._lock:
            mem_ids = self._vectors.ids() if self._vectors is not None else np.zeros(0, np.int64)
            synced = self._synced
            last_sync = {k: v for k, v in self._sync_info.items() if k != "stamp"}
        if synced == counter and id_set_sha256(mem_ids) != id_set_sha256(sqlite_ids):
            problems.append(f"the loaded FAISS index holds {len(mem_ids)} vectors, SQLite {len(sqlite_ids)}")
        stamp = read_stamp(self.index_path)
        file_problems = []
        if stamp is None or not self.index_path.is_file():
            file_problems.append("the FAISS file is missing (it is rebuilt on the next open or check --repair)")
        else:
            reasons = stale_reasons(
                stamp, model_id=self.model_id, dim=self.dim, generation=generation, expected_ids=sqlite_ids
            )
            file_problems.extend(f"the FAISS file is stale: {r}" for r in reasons)
        if file_problems:
            try:  # a writer between its commit and its save is not a problem
                self._db.lock.acquire(timeout=0)
            except Busy:
                file_problems = []
            else:
                self._db.lock.release()
        problems.extend(file_problems)
        missing = [p for p in stored if not (self.home / p).is_file()]
        if missing:
            problems.append(f"{len(missing)} stored image copies are missing")
        op = self.operating_point()
        scores = json.loads(mv.scores or "{}")
        return {
            "home": str(self.home),
            "database": str(self._db.path),
            "schema_version": schema,
            "change_counter": counter,
            "keep_images": self.keep_images,
            "model": {
                "version": mv.id,
                "model_id": mv.model_id,
                "model_dir": mv.model_dir,
                "dim": mv.dim,
                "threshold": self.threshold,
                "threshold_method": scores.get("threshold_method"),
            },
            "counts": counts,
            "index": {
                "path": str(self.index_path),
                "stamp": stamp,
                "loaded": len(mem_ids),
                "vectors": len(sqlite_ids),
                "generation": generation,
                "last_sync": last_sync,
            },
            "operating_point": op.to_dict(),
            "consistency": {"ok": not problems, "problems": problems},
        }

    def check(self, repair: bool = False) -> dict:
        """Verify that SQLite, the FAISS file and the stored copies agree; with repair, fix them.

        Holds the writer lock while it runs. Returns {"ok", "problems", "repaired", "unrepaired",
        "checked"}: ok is True when nothing was wrong; problems is a list of {"kind", "detail"}
        (kinds: database, index_file, index_memory, bad_embedding, missing_embedding,
        missing_file, corrupt_file, orphan_file); repaired lists what was fixed, unrepaired what
        needs a person (e.g. restore from a backup). Repairs: FAISS rebuilt from SQLite and
        saved; orphan and corrupt copies deleted; rows whose copy is lost forget it; unusable
        embeddings deleted and re-embedded from the stored copy when there is one."""
        self._check_open()
        problems: list[dict] = []
        repaired: list[str] = []
        unrepaired: list[str] = []

        def problem(kind, detail):
            problems.append({"kind": kind, "detail": detail})

        with self._db.lock:
            for p in self._db.integrity_problems():
                problem("database", p)
                unrepaired.append(f"database: {p} (restore a backup)")
            with self._db.read() as conn:
                counter = Database.get_counter(conn)
                generation = int(Database.get_meta(conn, "index_generation", "1"))
                sqlite_ids = self._active_ids(conn)
                emb_rows = conn.execute(
                    select(embeddings.c.image_id, embeddings.c.vector).where(embeddings.c.model_version == self._mv)
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
            bad_emb = [r.image_id for r in emb_rows if blob_vector(r.vector, self.dim) is None]
            for i in bad_emb:
                problem("bad_embedding", f"image {i}: stored embedding is not {self.dim} finite float32 values")
            have_emb = {r.image_id for r in emb_rows} - set(bad_emb)
            no_emb = [r for r in img_rows if r.id not in have_emb]
            for r in no_emb:
                if r.id not in bad_emb:
                    problem(
                        "missing_embedding", f"image {r.id} of {r.external_id} has no embedding for {self.model_id}"
                    )
            # The FAISS file and the in-memory index.
            try:
                _, stamp = VectorIndex.load(self.index_path, self.dim)
                for reason in stale_reasons(
                    stamp,
                    model_id=self.model_id,
                    dim=self.dim,
                    generation=generation,
                    expected_ids=np.setdiff1d(sqlite_ids, bad_emb),
                ):
                    problem("index_file", reason)
            except IndexStale as e:
                problem("index_file", str(e))
            with self._lock:  # not loaded yet (open(sync=False)), or behind another writer: nothing to compare
                mem = self._vectors.ids() if self._vectors is not None and self._synced == counter else None
            if mem is not None and id_set_sha256(mem) != id_set_sha256(np.setdiff1d(sqlite_ids, bad_emb)):
                problem("index_memory", "the loaded FAISS index does not hold SQLite's vectors")
            # Stored copies.
            referenced: dict[str, str] = {}
            for r in img_rows:
                if r.stored_path:
                    referenced[r.stored_path] = r.content_sha256
            missing, corrupt = [], []
            for rel, sha in sorted(referenced.items()):
                path = self.home / rel
                if not path.is_file():
                    missing.append(rel)
                    problem("missing_file", f"{rel} is gone")
                elif hashlib.sha256(path.read_bytes()).hexdigest() != sha:
                    corrupt.append(rel)
                    problem("corrupt_file", f"{rel} does not match its content hash")
            orphans = []
            img_dir = self.home / IMAGES_DIR
            if img_dir.is_dir():
                for path in sorted(img_dir.rglob("*")):
                    if path.is_file() and path.relative_to(self.home).as_posix() not in referenced:
                        orphans.append(path)
                        problem("orphan_file", f"{path.relative_to(self.home).as_posix()} belongs to no image")

            if repair and problems:
                self._repair(bad_emb, no_emb, missing, corrupt, orphans, repaired, unrepaired)
            elif not repair:
                unrepaired = [f"{p['kind']}: {p['detail']}" for p in problems]
        return {
            "ok": not problems,
            "problems": problems,
            "repaired": repaired,
            "unrepaired": unrepaired,
            "checked": {"images": len(img_rows), "embeddings": len(emb_rows), "stored_files": len(referenced)},
        }

    def _repair(self, bad_emb, no_emb, missing, corrupt, orphans, repaired, unrepaired) -> None:
        for path in orphans:
            try:
                unlink_copy(path)
                repaired.append(f"deleted orphan {path.relative_to(self.home).as_posix()}")
            except OSError as e:
                unrepaired.append(f"could not delete {path}: {e}")
        for rel in corrupt:
            try:
                unlink_copy(self.home / rel)
            except OSError:
                pass
        lost = missing + corrupt
        reembed = []
        with self._db.write() as txn:
            conn = txn.conn
            for chunk in in_chunks(lost):
                conn.execute(update(images).where(images.c.stored_path.in_(chunk)).values(stored_path=None))
            for rel in lost:
                repaired.append(f"forgot the lost copy {rel} (re-enroll that photo to keep one)")
            for chunk in in_chunks(bad_emb):
                conn.execute(
                    delete(embeddings).where(embeddings.c.image_id.in_(chunk), embeddings.c.model_version == self._mv)
                )
            need = {r.id: r for r in no_emb} | {i: None for i in bad_emb if i not in {r.id for r in no_emb}}
            if need:
                rows = conn.execute(
                    select(images.c.id, images.c.stored_path, images.c.source_name, identities.c.external_id)
                    .join(identities, identities.c.id == images.c.identity_id)
                    .where(images.c.id.in_(list(need)))
                ).all()
                for r in rows:
                    if r.stored_path and (self.home / r.stored_path).is_file():
                        reembed.append(r)
                    else:
                        unrepaired.append(
                            f"image {r.id} ({r.source_name}) of {r.external_id} has no usable "
                            f"embedding and no stored copy: re-enroll it or remove it with remove-image"
                        )
                if reembed:
                    arrays, ok = [], []
                    for r in reembed:
                        try:
                            src = read_source(self.home / r.stored_path)
                            arrays.append(self._prepare(src, strict_face=False)[0])
                            ok.append(r)
                        except InvalidImage as e:
                            unrepaired.append(
                                f"image {r.id} of {r.external_id}: its stored copy is unusable ({e.reason})"
                            )
                    vecs = self._embed(arrays)
                    now = now_iso()
                    for r, v in zip(ok, vecs):
                        conn.execute(
                            insert(embeddings).values(
                                image_id=r.id, model_version=self._mv, vector=vector_blob(v), created_at=now
                            )
                        )
                        repaired.append(f"re-embedded image {r.id} of {r.external_id} from its stored copy")
        # Rebuild FAISS from SQLite unconditionally and save it.
        with self._lock:
            with self._db.read() as conn:
                counter = Database.get_counter(conn)
                self._generation = int(Database.get_meta(conn, "index_generation", "1"))
                ids, vecs = self._fetch_vectors(conn)
            self._vectors = VectorIndex.build(self.dim, ids, vecs)
            self._synced = counter
            self._sync_info = {"source": "rebuilt", "reason": "check --repair"}
            self._op_cache = None
            self._save_index()
        repaired.append(f"rebuilt the FAISS index from SQLite ({len(ids)} vectors)")

    def backup(self, path) -> dict:
        """Write a consistent copy of the home to a new folder `path` (safe while the index is in
        use): the database through SQLite's online backup API, then the stored image copies.
        The FAISS cache is not copied (it is rebuilt when the copy is opened). Refuses an existing
        non-empty target. Returns {"path", "identities", "images", "stored_images",
        "missing_images", "bytes"}."""
        self._check_open()
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
            conn = sqlite3.connect(db_copy, isolation_level=None)
            try:
                rows = conn.execute("SELECT id, stored_path FROM images WHERE stored_path IS NOT NULL").fetchall()
                n_ident = conn.execute("SELECT COUNT(*) FROM identities").fetchone()[0]
                n_img = conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]
                copied, missing, total = set(), 0, 0
                for _image_id, rel in rows:
                    if rel in copied:
                        continue
                    src = self.home / rel
                    dst = tmp / rel
                    dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                    try:
                        shutil.copyfile(src, dst)
                        os.chmod(dst, 0o600)
                    except FileNotFoundError:  # removed after the snapshot, or already lost
                        conn.execute("UPDATE images SET stored_path = NULL WHERE stored_path = ?", (rel,))
                        missing += 1
                        continue
                    copied.add(rel)
                    total += dst.stat().st_size
                # The model versions kept in the home (retrain, reembed): model_dir "models/N".
                for (rel,) in conn.execute("SELECT model_dir FROM model_versions WHERE model_dir LIKE 'models/%'"):
                    if ".." not in Path(rel).parts and (self.home / rel).is_dir():
                        shutil.copytree(self.home / rel, tmp / rel)
                        total += sum(f.stat().st_size for f in (tmp / rel).rglob("*") if f.is_file())
                conn.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            finally:
                conn.close()
            os.chmod(db_copy, 0o600)
            total += db_copy.stat().st_size
            if target.exists():
                target.rmdir()
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return {
            "path": str(target),
            "identities": int(n_ident),
            "images": int(n_img),
            "stored_images": len(copied),
            "missing_images": missing,
            "bytes": total,
        }
