"""The model-version registry of a home: its rows, their directories, the version lock.

The low-level pieces that both the index facade (which serves the active version) and
lifecycle/ (which makes and switches versions) need: resolving a version reference, recording a
never-served version, where a recorded model directory lives, when a version's threshold was set
for this home, the process-wide version lock, and removing what an interrupted retrain or
activation left. No TensorFlow: directories are checked by their file names only.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Row, insert, select, update

from siamese_index.errors import Busy, InvalidData, NotFound
from siamese_index.storage.db import Database, WriterLock, embeddings, inserted_id, model_versions, now_iso

log = logging.getLogger(__name__)

VERSION_LOCK = "version.lock"
MODELS_DIR_NAME = "models"
SET_KEY = "threshold_set"  # scores[SET_KEY]: a threshold chosen for this home (see lifecycle/thresholds.py)


def set_stamp(row: Any) -> str | None:
    """When the version's threshold was last set here (None: it follows its config.json)."""
    return (json.loads(row.scores or "{}").get(SET_KEY) or {}).get("set_at")


# ---------------------------------------------------------------------------------------------
# The version lock: one retrain or activation per home at a time
# ---------------------------------------------------------------------------------------------
_locks: dict[str, WriterLock] = {}
_locks_guard = threading.Lock()


def version_lock(home: Path | str) -> WriterLock:
    """The process-wide lock object of HOME/version.lock (re-entrant within one thread)."""
    key = str(Path(home).resolve())
    with _locks_guard:
        lock = _locks.get(key)
        if lock is None:
            lock = _locks[key] = WriterLock(Path(home) / VERSION_LOCK, timeout=0)
        return lock


@contextmanager
def holding_version_lock(home: Path | str) -> Iterator[WriterLock]:
    """Hold the version lock for a retrain or activation; Busy at once when another holds it."""
    lock = version_lock(home)
    try:
        lock.acquire(timeout=0)
    except Busy:
        raise Busy(f"another retrain or model activation is running on {home}; let it finish first") from None
    try:
        yield lock
    finally:
        lock.release()


# ---------------------------------------------------------------------------------------------
# Version rows and their directories
# ---------------------------------------------------------------------------------------------
def model_path(home: Path | str, model_dir: str | Path | None) -> Path | None:
    """A recorded model directory: absolute, or (a version kept in the home) relative to it."""
    if not model_dir:
        return None
    p = Path(model_dir)
    return p if p.is_absolute() else Path(home) / p


def resolve_version(conn: Connection, ref: int | str) -> Row[Any]:
    """A version row from a reference: its number, 'active', 'parent' (of the active one), or a
    model id (or a unique prefix of at least 6 characters)."""
    text = str(ref).strip()
    active = conn.execute(select(model_versions).where(model_versions.c.active == 1)).first()
    if text in ("active", "current"):
        if active is None:
            raise NotFound("this home has no active model version")
        return active
    if text in ("parent", "previous"):
        if active is None or active.parent is None:
            raise NotFound("the active model version has no parent")
        text = str(active.parent)
    if text.isdigit():
        row = conn.execute(select(model_versions).where(model_versions.c.id == int(text))).first()
        if row is None:
            raise NotFound(f"no model version {text} (see `models list`)")
        return row
    rows = conn.execute(select(model_versions)).all()
    exact = [r for r in rows if r.model_id == text]
    if exact:
        return exact[0]
    pref = [r for r in rows if len(text) >= 6 and r.model_id.startswith(text)]
    if len(pref) == 1:
        return pref[0]
    if len(pref) > 1:
        raise InvalidData(f"{text!r} matches {len(pref)} model versions; give the version number")
    raise NotFound(f"no model version {text!r} (give a version number or model id; see `models list`)")


def insert_version(
    db: Database, *, model_id: str, dim: int, threshold: float | None, parent: int | None, scores: dict
) -> int:
    """Record a never-served version whose directory will be HOME/models/<version> (the caller
    holds the version lock and writes the directory next; cleanup_leftovers() removes the row if
    that never happens)."""
    with db.write(bump=False) as txn:
        if txn.conn.execute(select(model_versions.c.id).where(model_versions.c.model_id == model_id)).first():
            raise InvalidData(f"model {model_id} is already a version of this home")
        vid = inserted_id(
            txn.conn.execute(
                insert(model_versions).values(
                    model_id=model_id,
                    model_dir=None,
                    dim=int(dim),
                    threshold=threshold,
                    parent=parent,
                    created_at=now_iso(),
                    active=0,
                    activated_at=None,
                    scores=json.dumps(scores),
                )
            )
        )
        txn.conn.execute(
            update(model_versions).where(model_versions.c.id == vid).values(model_dir=f"{MODELS_DIR_NAME}/{vid}")
        )
    return vid


# ---------------------------------------------------------------------------------------------
# Leftovers of an interrupted retrain or activation
# ---------------------------------------------------------------------------------------------
def _dir_ok(p: Path | None) -> bool:
    # config.json and the weights file (towers.modeldir.WEIGHTS_NAME; storage does not import towers)
    return p is not None and (p / "config.json").is_file() and (p / "model.weights.h5").is_file()


def _find_leftovers(db: Database, home: Path) -> tuple[list[int], list[int], list[Path]]:
    with db.read() as conn:
        rows = conn.execute(select(model_versions)).all()
        never = [r for r in rows if not r.active and r.activated_at is None]
        with_vectors = [
            int(r.id)
            for r in never
            if conn.execute(select(embeddings.c.image_id).where(embeddings.c.model_version == r.id).limit(1)).first()
        ]
    broken = [int(r.id) for r in never if not _dir_ok(model_path(home, r.model_dir))]
    referenced = {Path(r.model_dir).name for r in rows if r.model_dir and not Path(r.model_dir).is_absolute()}
    stray = []
    models = home / MODELS_DIR_NAME
    if models.is_dir():
        for p in models.iterdir():
            if p.name.startswith(".") or (p.name.isdigit() and p.name not in referenced):
                stray.append(p)
    return with_vectors, broken, stray


def cleanup_leftovers(db: Database, home: Path | str) -> list[str]:
    """Remove what an interrupted retrain or activation left: embeddings of versions that never
    served, version rows whose model directory was never completely written, temporary or
    unreferenced directories under HOME/models. Skipped (returns []) while a retrain or
    activation holds the version lock or a writer is busy. Returns what it did."""
    home = Path(home)
    with_vectors, broken, stray = _find_leftovers(db, home)
    if not (with_vectors or broken or stray):
        return []
    lock = version_lock(home)
    if lock.held:
        return []
    try:
        lock.acquire(timeout=0)
    except Busy:
        return []
    done: list[str] = []
    try:
        with_vectors, broken, stray = _find_leftovers(db, home)  # again, under the lock
        try:
            with db.write(lock_timeout=0, bump=False) as txn:
                for v in sorted(set(with_vectors) | set(broken)):
                    n = txn.conn.execute(embeddings.delete().where(embeddings.c.model_version == v)).rowcount
                    if n:
                        done.append(f"deleted {n} embeddings of model version {v}, which never served")
                for v in broken:
                    txn.conn.execute(
                        model_versions.delete().where(model_versions.c.id == v, model_versions.c.active == 0)
                    )
                    done.append(f"deleted model version {v}, whose model directory was never completely written")
        except Busy:
            return []
        stray += [home / MODELS_DIR_NAME / str(v) for v in broken if (home / MODELS_DIR_NAME / str(v)).exists()]
        for p in stray:
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"deleted the leftover model directory {p.name}")
    finally:
        lock.release()
    for line in done:
        log.info("cleanup after an interrupted retrain or activation: %s", line)
    return done
