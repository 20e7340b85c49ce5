"""Model versions of a home: listing, registering, activation with re-embedding, rollback.

A home serves exactly one model version at a time (model_versions.active = 1); its FAISS index
and every lookup use that version's embeddings only. Moving to another version (`activate`):

1. Bulk: each enrolled image that lacks an embedding by the target version is embedded by the
   target's tower from the copy the home keeps, in batches. Each batch is written in its own short
   write transaction that readers of the active version cannot see (no change-counter bump), so
   the current version keeps answering throughout and enrollments go on between batches.
2. Catch-up and switch: under the writer lock (enrollments now wait), the photos enrolled
   meanwhile are embedded too; then ONE transaction checks that every image has an embedding by
   the target, moves the active flag, stamps activated_at and bumps the index generation.
   FAISS is then rebuilt from the new version's vectors and saved, still under the lock. Other
   processes notice the change counter, adopt the new version (its tower, threshold and vectors
   together) and never search one version's vectors with another's query.

A crash or kill before that transaction commits leaves the previous version active and
untouched. What it leaves behind (embeddings of a version that never served, a half-written model
directory, a version row whose directory was never written) is removed by
storage.registry.cleanup_leftovers() the next time the home is opened, unless a retrain or
activation holds HOME/version.lock.

Versions that once served keep their embeddings (removing a person removes them from every
version: images -> embeddings is ON DELETE CASCADE and remove() deletes them explicitly), so
rollback to the parent only embeds the photos enrolled since the switch.

Images enrolled without a stored copy (keep_images=False) cannot be re-embedded: activation
refuses, naming them, unless drop_unstored=True, which deletes those images (their people stay)
in the switching transaction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Connection, Row, Select, exists, func, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from siamese_index.errors import InvalidData, InvalidImage, ModelError, ModelMismatch
from siamese_index.storage.db import (
    Database,
    embeddings,
    identities,
    images,
    model_versions,
    now_iso,
    vector_blob,
)
from siamese_index.storage.registry import (
    MODELS_DIR_NAME,
    holding_version_lock,
    insert_version,
    model_path,
    resolve_version,
)
from siamese_index.types import ActivationReport, DroppedImage, HeldOutSummary, ModelVersion, VersionDetails

if TYPE_CHECKING:
    from siamese_index.index.facade import SiameseIndex
    from siamese_index.towers.embedder import Embedder

log = logging.getLogger(__name__)

REEMBED_BATCH = 64
CATCH_UP_UNDER_LOCK = 32  # at most this many images left: embed them under the writer lock and switch
SLEEP_ENV = "SIAMESE_INDEX_TEST_REEMBED_SLEEP"  # test hook: seconds to pause after each re-embedded batch

Progress = Callable[[int, int, str], None]


# ---------------------------------------------------------------------------------------------
# Reading versions
# ---------------------------------------------------------------------------------------------
def _state(row: Any) -> str:
    if row.active:
        return "active"
    return "kept" if row.activated_at else "candidate"


def _held_out(scores: dict[str, Any]) -> HeldOutSummary | None:
    """The verdict of the retrain that made the version, when one did."""
    c = scores.get("comparison")
    if not c:
        return None
    return HeldOutSummary(c.get("judged"), c.get("old_auc"), c.get("new_auc"), c.get("verdict"))


def _version_fields(row: Any, home: Path, n_embeddings: int) -> dict[str, Any]:
    """ModelVersion's fields of a model_versions row."""
    scores = json.loads(row.scores or "{}")
    p = model_path(home, row.model_dir)
    return {
        "version": int(row.id),
        "model_id": row.model_id,
        "state": _state(row),
        "active": bool(row.active),
        "parent": row.parent,
        "dim": int(row.dim),
        "threshold": row.threshold,
        "created": row.created_at,
        "activated": row.activated_at,
        "embeddings": int(n_embeddings),
        "model_dir": str(p) if p is not None else None,
        "source": scores.get("source", "recorded when the home was created" if row.parent is None else None),
        "held_out": _held_out(scores),
    }


def _embedding_counts(conn: Connection) -> dict[int, int]:
    rows = conn.execute(select(embeddings.c.model_version, func.count()).group_by(embeddings.c.model_version)).all()
    return {int(v): int(n) for v, n in rows}


def list_versions(idx: SiameseIndex) -> list[ModelVersion]:
    """Every model version of the home, oldest first, with its state (active, kept: served
    before and still has its vectors, candidate: never served), parent and vector count."""
    idx.ensure_open()
    with idx.db.read() as conn:
        rows = conn.execute(select(model_versions).order_by(model_versions.c.id)).all()
        counts = _embedding_counts(conn)
    return [ModelVersion(**_version_fields(r, idx.home, counts.get(int(r.id), 0))) for r in rows]


def show_version(idx: SiameseIndex, ref: int | str = "active") -> VersionDetails:
    """One version in full: list_versions()'s fields plus its scores (retrain comparison,
    calibration), whether its model directory is intact and how many images it lacks."""
    idx.ensure_open()
    with idx.db.read() as conn:
        row = resolve_version(conn, ref)
        n = int(
            conn.execute(
                select(func.count()).select_from(embeddings).where(embeddings.c.model_version == row.id)
            ).scalar_one()
        )
        n_images = int(conn.execute(select(func.count()).select_from(images)).scalar_one())
    p = model_path(idx.home, row.model_dir)
    return VersionDetails(
        **_version_fields(row, idx.home, n),
        scores=json.loads(row.scores or "{}"),
        model_dir_ok=bool(p and (p / "config.json").is_file()),
        images=n_images,
        missing_embeddings=n_images - n,  # what activating it would embed (roughly)
    )


# ---------------------------------------------------------------------------------------------
# Registering a new version (a copy of its model directory kept in the home)
# ---------------------------------------------------------------------------------------------
def _copy_into_home(home: Path, vid: int, src: Path) -> None:
    """Copy a model directory's files to HOME/models/<vid>, appearing there whole or not at all."""
    models = home / MODELS_DIR_NAME
    models.mkdir(mode=0o700, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{vid}.", dir=models))
    try:
        for f in src.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        os.replace(tmp, models / str(vid))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def register_model_dir(
    idx: SiameseIndex, model_dir: str | Path, scores: dict[str, Any] | None = None
) -> tuple[int, bool]:
    """Make a model directory a version of this home (copied to HOME/models/<version>, parent:
    the active version). Returns (version, created); a model already known returns its version."""
    from siamese_index.towers.embedder import KerasEmbedder
    from siamese_index.towers.modeldir import read_config

    idx.ensure_open()
    src = Path(model_dir)
    cfg = read_config(src)
    if cfg.preprocessing is None:
        raise ModelError(f"{src}: a vector model; an index needs a model that embeds images")
    emb = KerasEmbedder(src)  # checks the weights against the config's model id
    with idx.db.read() as conn:
        known = conn.execute(select(model_versions).where(model_versions.c.model_id == emb.model_id)).first()
        active = conn.execute(select(model_versions).where(model_versions.c.active == 1)).one()
    if known is not None:
        return int(known.id), False
    info = {
        "source": f"reembed --model {src.resolve()}",
        "threshold_method": cfg.threshold_method,
        "validation": (cfg.metrics or {}).get("validation"),
    }
    info.update(scores or {})
    with holding_version_lock(idx.home):
        vid = insert_version(
            idx.db, model_id=emb.model_id, dim=emb.dim, threshold=cfg.threshold, parent=int(active.id), scores=info
        )
        _copy_into_home(idx.home, vid, src)
    log.info("registered %s as model version %d", emb.model_id, vid)
    return vid, True


# ---------------------------------------------------------------------------------------------
# Activation, step by step
# ---------------------------------------------------------------------------------------------
def _missing_stmt(version: int) -> Select[Any]:
    """The enrolled images that have no embedding by `version`, oldest first."""
    has = exists().where(embeddings.c.image_id == images.c.id, embeddings.c.model_version == version)
    return (
        select(
            images.c.id, images.c.stored_path, images.c.source_name, images.c.content_sha256, identities.c.external_id
        )
        .join(identities, identities.c.id == images.c.identity_id)
        .where(~has)
        .order_by(images.c.id)
    )


def _no_directory(row: Any, what: str) -> ModelError:
    return ModelError(
        f"model version {row.id} ({row.model_id}) has no model directory "
        f"(recorded at {row.model_dir or 'an injected embedder'}); it cannot {what}"
    )


def _check_model_dir(home: Path, row: Any) -> None:
    """Without loading the tower: the version's directory is there and holds that model."""
    from siamese_index.towers.modeldir import WEIGHTS_NAME, read_config

    p = model_path(home, row.model_dir)
    if p is None or not p.is_dir():
        raise _no_directory(row, "serve")
    cfg = read_config(p)
    if cfg.model_id != row.model_id or int(cfg.embedding_dim) != int(row.dim) or not (p / WEIGHTS_NAME).is_file():
        raise ModelMismatch(
            f"{p} holds model {cfg.model_id} (size {cfg.embedding_dim}); version {row.id} is "
            f"{row.model_id} (size {row.dim})"
        )


def _check_target(home: Path, target: Any, embedder: Embedder | None) -> None:
    """The target can embed: the given embedder is its model, or its directory holds it."""
    if embedder is None:
        _check_model_dir(home, target)  # the tower itself is loaded once there is work for it
    elif embedder.model_id != target.model_id or int(embedder.dim) != int(target.dim):
        raise ModelMismatch(f"the given embedder is {embedder.model_id}; version {target.id} is {target.model_id}")


class _TargetTower:
    """The target version's embedder, loaded from its model directory on first use."""

    def __init__(self, home: Path, row: Any, given: Embedder | None):
        self.home, self.row, self.loaded = home, row, given

    def get(self) -> Embedder:
        if self.loaded is None:
            self.loaded = self._load()
        return self.loaded

    def _load(self) -> Embedder:
        from siamese_index.towers.embedder import KerasEmbedder

        row = self.row
        p = model_path(self.home, row.model_dir)
        if p is None or not p.is_dir():
            raise _no_directory(row, "embed")
        emb = KerasEmbedder(p)
        if emb.model_id != row.model_id or int(emb.dim) != int(row.dim):
            raise ModelMismatch(
                f"{p} holds model {emb.model_id} (size {emb.dim}); version {row.id} is {row.model_id} (size {row.dim})"
            )
        return emb


def _test_pause() -> None:
    value = os.environ.get(SLEEP_ENV)
    if value:
        time.sleep(float(value))


def _stored_bytes(home: Path, r: Any) -> bytes | str:
    """An image's stored copy, or why it cannot be used."""
    if not r.stored_path:
        return "no stored copy (enrolled without keeping images)"
    try:
        data = (home / r.stored_path).read_bytes()
    except OSError:
        return f"its stored copy {r.stored_path} is missing"
    if hashlib.sha256(data).hexdigest() != r.content_sha256:
        return f"its stored copy {r.stored_path} is damaged (content hash differs)"
    return data


def _embed_rows(
    idx: SiameseIndex, tower: _TargetTower, rows: Sequence[Any]
) -> tuple[list[int], np.ndarray, dict[int, str]]:
    """Embed images from their stored copies: (ids, vectors, {image id: why it could not be})."""
    if not rows:
        return [], np.zeros((0, 0), np.float32), {}
    emb = tower.get()
    ids, arrays, failed = [], [], {}
    for r in rows:
        data = _stored_bytes(idx.home, r)
        if isinstance(data, str):
            failed[int(r.id)] = data
            continue
        try:
            arr, _ = emb.prepare(data, name=r.source_name or r.stored_path, strict_face=False)
        except InvalidImage as e:
            failed[int(r.id)] = f"its stored copy is unusable by this model ({e.reason})"
            continue
        ids.append(int(r.id))
        arrays.append(arr)
    return ids, idx.embed(arrays, emb), failed


def _write_vectors(conn: Connection, version: int, ids: list[int], vecs: np.ndarray) -> int:
    """Insert embeddings for the images that still exist (one may have been removed meanwhile)."""
    if not ids:
        return 0
    present = set(conn.execute(select(images.c.id).where(images.c.id.in_(ids))).scalars())
    now = now_iso()
    rows = [
        {"image_id": i, "model_version": version, "vector": vector_blob(v), "created_at": now}
        for i, v in zip(ids, vecs)
        if i in present
    ]
    if rows:
        conn.execute(sqlite_insert(embeddings).on_conflict_do_nothing(), rows)
    return len(rows)


def _unusable_message(version: int, unusable: dict[int, DroppedImage]) -> str:
    listed = "; ".join(f"image {i} ({d.identity}, {d.source_name}): {d.reason}" for i, d in list(unusable.items())[:5])
    more = f" and {len(unusable) - 5} more" if len(unusable) > 5 else ""
    return (
        f"{len(unusable)} enrolled images cannot be embedded by version {version}: {listed}{more}. "
        f"Re-enroll them from the originals, or pass --drop-unstored to remove these images "
        f"(their people stay enrolled with their other photos); nothing was switched"
    )


def _unstored(missing: Sequence[Any]) -> dict[int, DroppedImage]:
    """The images that no tower can re-embed: enrolled without a stored copy."""
    return {
        int(r.id): DroppedImage(
            int(r.id), r.external_id, r.source_name, "no stored copy (enrolled without keeping images)"
        )
        for r in missing
        if not r.stored_path
    }


def _pending(db: Database, vid: int, unusable: dict[int, DroppedImage]) -> list[Any]:
    """The images still lacking a vector by `vid`, less those known to be unusable."""
    with db.read() as conn:
        return [r for r in conn.execute(_missing_stmt(vid)).all() if int(r.id) not in unusable]


def _embed_chunk(
    idx: SiameseIndex, tower: _TargetTower, rows: Sequence[Any], unusable: dict[int, DroppedImage]
) -> tuple[list[int], np.ndarray]:
    """Embed `rows`; the ones that cannot be embedded join `unusable`."""
    ids, vecs, failed = _embed_rows(idx, tower, rows)
    by_id = {int(r.id): r for r in rows}
    for i, why in failed.items():
        unusable[i] = DroppedImage(i, by_id[i].external_id, by_id[i].source_name, why)
    return ids, vecs


def _bulk_passes(
    idx: SiameseIndex,
    vid: int,
    tower: _TargetTower,
    unusable: dict[int, DroppedImage],
    todo_total: int,
    batch_size: int,
    progress: Progress | None,
) -> int:
    """Embed in batches WITHOUT the writer lock, each batch in its own write that readers of the
    active version do not see (no change-counter bump), until at most CATCH_UP_UNDER_LOCK images
    are left (enrollments go on meanwhile, hence the passes). Returns how many it embedded."""
    embedded = 0
    while len(rows := _pending(idx.db, vid, unusable)) > CATCH_UP_UNDER_LOCK:
        todo_total = max(todo_total, embedded + len(rows))
        for start in range(0, len(rows), batch_size):
            ids, vecs = _embed_chunk(idx, tower, rows[start : start + batch_size], unusable)
            with idx.db.write(bump=False) as txn:
                embedded += _write_vectors(txn.conn, vid, ids, vecs)
            if progress is not None:
                progress(embedded, todo_total, "re-embedding")
            _test_pause()
    return embedded


def _move_active_flag(conn: Connection, from_version: int, vid: int) -> int:
    """Inside the switching transaction: `vid` becomes the active version, the previous one is
    kept (activated_at stays), the index generation is bumped. Returns the new generation."""
    now = now_iso()
    conn.execute(
        update(model_versions)
        .where(model_versions.c.active == 1)
        .values(active=0, activated_at=func.coalesce(model_versions.c.activated_at, now))
    )
    conn.execute(update(model_versions).where(model_versions.c.id == vid).values(active=1, activated_at=now))
    generation = int(Database.get_meta(conn, "index_generation", "1") or "1") + 1
    Database.set_meta(conn, "index_generation", str(generation))
    Database.set_meta(
        conn,
        "last_switch",
        json.dumps({"from": from_version, "to": vid, "at": now, "generation": generation}),
    )
    return generation


def _switch(
    idx: SiameseIndex, vid: int, from_version: int, ids: list[int], vecs: np.ndarray, drop: dict[int, DroppedImage]
) -> tuple[int, int, list[Path]]:
    """ONE transaction: the last vectors, the dropped images gone, every image checked to have a
    vector by `vid`, then the switch. Returns (vectors written, generation, copies to unlink)."""
    unlink: list[Path] = []
    with idx.db.write() as txn:
        conn = txn.conn
        written = _write_vectors(conn, vid, ids, vecs)
        if drop:
            gone = conn.execute(select(images).where(images.c.id.in_(list(drop)))).all()
            unlink = idx.delete_images(conn, gone)
        left = conn.execute(select(func.count()).select_from(_missing_stmt(vid).subquery())).scalar()
        if left:
            raise ModelError(f"{left} images still lack an embedding by version {vid}; nothing was switched")
        generation = _move_active_flag(conn, from_version, vid)
    return written, generation, unlink


def _serve_new(idx: SiameseIndex, tower: _TargetTower, unlink: list[Path]) -> None:
    """After the committed switch, still under the writer lock: rebuild and save FAISS for the
    new version before others write; delete the stored copies of dropped images."""
    try:
        idx.switch_embedder(tower.loaded)
    except Exception:  # noqa: BLE001 - SQLite is committed; the cache is rebuilt on next use
        log.exception("loading the new version's FAISS index failed; it is rebuilt on next use")
        idx.drop_cache()
    if unlink:
        idx.unlink_after_commit(unlink)


def _catch_up_and_switch(
    idx: SiameseIndex,
    vid: int,
    from_version: int,
    tower: _TargetTower,
    unusable: dict[int, DroppedImage],
    drop_unstored: bool,
) -> tuple[int, int]:
    """Under the writer lock (enrollments wait): embed what is left, including photos enrolled
    meanwhile, and switch. Returns (caught up, generation)."""
    with idx.db.lock:
        ids, vecs = _embed_chunk(idx, tower, _pending(idx.db, vid, unusable), unusable)
        if unusable and not drop_unstored:
            raise InvalidData(_unusable_message(vid, unusable))
        caught_up, generation, unlink = _switch(idx, vid, from_version, ids, vecs, unusable)
        _serve_new(idx, tower, unlink)
    return caught_up, generation


def _discard_candidate_vectors(db: Database, version: int) -> None:
    """Drop the embeddings of a version that never served (after a failed activation)."""
    try:
        with db.write(lock_timeout=5, bump=False) as txn:
            row = txn.conn.execute(select(model_versions).where(model_versions.c.id == version)).first()
            if row is not None and not row.active and row.activated_at is None:
                txn.conn.execute(embeddings.delete().where(embeddings.c.model_version == version))
    except Exception:  # noqa: BLE001 - cleanup_leftovers() does it on the next open
        log.warning("could not drop the partial embeddings of version %d; the next open does", version)


def _read_plan(idx: SiameseIndex, ref: int | str) -> tuple[Row[Any], Row[Any], int, list[Row[Any]]]:
    """(target, current, number of images, images lacking a vector by the target)."""
    with idx.db.read() as conn:
        target = resolve_version(conn, ref)
        current = conn.execute(select(model_versions).where(model_versions.c.active == 1)).one()
        total = int(conn.execute(select(func.count()).select_from(images)).scalar_one())
        missing = list(conn.execute(_missing_stmt(int(target.id))).all())
    return target, current, total, missing


def activate(
    idx: SiameseIndex,
    ref: int | str,
    *,
    drop_unstored: bool = False,
    embedder: Embedder | None = None,
    batch_size: int = REEMBED_BATCH,
    progress: Progress | None = None,
) -> ActivationReport:
    """Make model version `ref` (see resolve_version) the one the home serves.

    Re-embeds every enrolled image lacking a vector by that version, while the current version
    keeps answering, then switches in one transaction (see the module notes). embedder: the
    version's embedder when already loaded (default: from its model directory).
    progress(done, total, phase) is called after each batch. Returns an ActivationReport.
    Raises Busy when another retrain or activation runs, InvalidData when images cannot be
    re-embedded (see drop_unstored), ModelError when the version cannot embed.
    """
    idx.ensure_open()
    started = time.perf_counter()
    with holding_version_lock(idx.home):
        target, current, total, missing = _read_plan(idx, ref)
        vid, was = int(target.id), int(current.id)
        report = ActivationReport(
            changed=False,
            from_version=was,
            to_version=vid,
            model_id=target.model_id,
            images=total,
            reused=total - len(missing),
        )
        if vid == was:
            return replace(report, message=f"version {vid} is already active")
        _check_target(idx.home, target, embedder)
        unusable = _unstored(missing)
        if unusable and not drop_unstored:
            raise InvalidData(_unusable_message(vid, unusable))
        tower = _TargetTower(idx.home, target, embedder)
        try:
            bulk = _bulk_passes(idx, vid, tower, unusable, len(missing) - len(unusable), batch_size, progress)
            caught_up, generation = _catch_up_and_switch(idx, vid, was, tower, unusable, drop_unstored)
        except BaseException:
            if not target.active and target.activated_at is None:
                _discard_candidate_vectors(idx.db, vid)
            raise
    log.info("switched the home from model version %d to %d (generation %d)", was, vid, generation)
    return replace(
        report,
        changed=True,
        embedded=bulk + caught_up,
        caught_up=caught_up,
        dropped=tuple(unusable.values()),
        generation=generation,
        seconds=round(time.perf_counter() - started, 2),
    )


def rollback(idx: SiameseIndex, **kwargs: Any) -> ActivationReport:
    """Serve the active version's parent again (its vectors were kept: only photos enrolled since
    the switch are embedded). Same keywords and result as activate()."""
    with idx.db.read() as conn:
        active = conn.execute(select(model_versions).where(model_versions.c.active == 1)).one()
    if active.parent is None:
        raise InvalidData(f"model version {active.id} ({active.model_id}) has no parent to roll back to")
    return activate(idx, int(active.parent), **kwargs)


def reembed(idx: SiameseIndex, model_dir: str | Path, **kwargs: Any) -> ActivationReport:
    """Move the home to the tower in `model_dir`: register it as a version (parent: the active
    one; its directory copied into the home) and activate it. Same keywords as activate();
    the report's `registered` says whether the directory became a new version."""
    vid, created = register_model_dir(idx, model_dir)
    return replace(activate(idx, vid, **kwargs), registered=created)
