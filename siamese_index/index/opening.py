"""Opening a home: check the folder, resolve and record its model, tidy what a crash left.

A new home records its model (an injected embedder, or a model directory) before anything else
is written; an existing home always serves its recorded model, and a different one given to
open() is refused. The writer lock is taken only when something must be written, so opening an
existing home to read never waits for a writer.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select

from siamese_index.config import resolve_model_dir
from siamese_index.errors import Busy, InvalidData, ModelMismatch, NotFound
from siamese_index.index.served import ModelInfo, info_from_embedder, info_from_model_dir, recorded_info
from siamese_index.storage.copies import IMAGES_DIR, PENDING_NAME, recover_pending_copies
from siamese_index.storage.db import DB_NAME, LOCK_NAME, Database, home_exists, model_versions, now_iso
from siamese_index.storage.registry import MODELS_DIR_NAME, VERSION_LOCK, cleanup_leftovers, set_stamp
from siamese_index.storage.vectors import INDEX_NAME

if TYPE_CHECKING:
    from siamese_index.towers.embedder import Embedder

log = logging.getLogger(__name__)

# What a home folder may hold (a folder with anything else is not taken over as a new home).
HOME_NAMES = (
    DB_NAME,
    LOCK_NAME,
    IMAGES_DIR,
    INDEX_NAME,
    PENDING_NAME.lstrip("."),
    MODELS_DIR_NAME,
    VERSION_LOCK,
    "near-cache",
)


def check_settings(target_far: float, margin: float | None) -> None:
    if not 0.0 < float(target_far) < 1.0:
        raise InvalidData(f"target_far must be between 0 and 1, got {target_far}")
    if margin is None or float(margin) < 0:
        raise InvalidData(f"margin must be >= 0, got {margin}")


def check_new_home(home: Path, create: bool) -> None:
    """A home that does not exist yet may be made here: NotFound without create, InvalidData
    for a file or a folder holding something else."""
    if not create:
        raise NotFound(f"no siamese-index home at {home} (enroll someone first, or pass the right --home)")
    if home.exists() and not home.is_dir():
        raise InvalidData(f"{home}: exists and is not a folder")
    if home.is_dir():
        foreign = [p.name for p in home.iterdir() if not p.name.lstrip(".").startswith(HOME_NAMES)]
        if foreign:
            raise InvalidData(
                f"{home}: not empty and not a siamese-index home "
                f"(found {', '.join(sorted(foreign)[:3])}); choose an empty or new folder"
            )


def resolve_model(model: Any, embedder: Embedder | None, is_new: bool) -> tuple[ModelInfo | None, Embedder | None]:
    """The model given to open(), resolved before anything is created (so a bad model leaves
    no empty home). None when an existing home is opened without one."""
    if embedder is not None:
        if model is not None:
            raise InvalidData("pass a model directory or an embedder, not both")
        return info_from_embedder(embedder), embedder
    if model is not None or is_new:
        return info_from_model_dir(resolve_model_dir(model))
    return None, None


def make_home(home: Path) -> None:
    existed = home.exists()
    home.mkdir(parents=True, exist_ok=True)
    if not existed:
        os.chmod(home, 0o700)


def _active(conn: Any) -> Any:
    return conn.execute(select(model_versions).where(model_versions.c.active == 1)).first()


def _insert_model(db: Database, info: ModelInfo, keep_images: bool | None) -> tuple[Any, str | None]:
    """Record `info` as the home's model (unless a concurrent first open did): (row, keep_images)."""
    with db.write() as txn:
        row = _active(txn.conn)
        if row is None:
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
            row = _active(txn.conn)
            log.info("recorded model %s (dim %d) as the home's model", info.model_id, info.dim)
        return row, Database.get_meta(txn.conn, "keep_images")


def record_model(db: Database, info: ModelInfo | None, keep_images: bool | None) -> tuple[Any, bool, ModelInfo]:
    """Migrate, record the model of a new home, or check the given one against the record.
    Returns (active version row, the home's keep_images setting, the model's calibration)."""
    db.migrate()  # locks only when the schema is behind
    with db.read() as conn:
        row = _active(conn)
        keep = Database.get_meta(conn, "keep_images")
    if row is None:
        if info is None:  # a home whose creation was interrupted before its model was recorded
            info, _ = info_from_model_dir(resolve_model_dir(None))
        row, keep = _insert_model(db, info, keep_images)
    if info is not None and (info.model_id != row.model_id or info.dim != row.dim):
        raise ModelMismatch(
            f"this home was built with model {row.model_id} (embedding size {row.dim}); the given model is "
            f"{info.model_id} (embedding size {info.dim}). Open it without a model to use its own, "
            f"or move the home to the new model with reembed --model"
        )
    if info is None:
        info = recorded_info(row, db.path.parent)
    elif set_stamp(row):  # a threshold set for this home outranks the given directory's
        recorded = recorded_info(row)
        info = replace(
            info, threshold=recorded.threshold, metrics=recorded.metrics, threshold_method=recorded.threshold_method
        )
    return row, keep != "0", info


def tidy_home(db: Database, home: Path) -> None:
    """Remove what a crash left: copies of an enrollment that never committed (only when no
    writer is active: a live enrollment owns its pending copies) and the leftovers of an
    interrupted retrain or activation (skipped while one runs)."""
    if (home / PENDING_NAME).exists():
        try:
            db.lock.acquire(timeout=0)
        except Busy:
            pass
        else:
            try:
                recover_pending_copies(db)
            finally:
                db.lock.release()
    try:
        cleanup_leftovers(db, home)
    except Exception:  # noqa: BLE001 - never stop a home from opening; the next open tries again
        log.exception("could not clean up after an interrupted retrain or activation")


def is_new_home(home: Path) -> bool:
    return not home_exists(home)
