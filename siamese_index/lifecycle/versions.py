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
directory, a version row whose directory was never written) is removed by cleanup_leftovers()
the next time the home is opened, unless a retrain or activation holds HOME/version.lock.

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
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sqlalchemy import exists, func, select, update
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
from siamese_index.storage.registry import (  # noqa: F401 - re-exported: retrain and thresholds use them
    MODELS_DIR_NAME,
    cleanup_leftovers,
    holding_version_lock,
    insert_version,
    model_path,
    resolve_version,
    version_lock,
)

log = logging.getLogger(__name__)

REEMBED_BATCH = 64
CATCH_UP_UNDER_LOCK = 32  # at most this many images left: embed them under the writer lock and switch
SLEEP_ENV = "SIAMESE_INDEX_TEST_REEMBED_SLEEP"  # test hook: seconds to pause after each re-embedded batch


# ---------------------------------------------------------------------------------------------
# Reading versions
# ---------------------------------------------------------------------------------------------
def _state(row) -> str:
    if row.active:
        return "active"
    return "kept" if row.activated_at else "candidate"


def _describe(row, home: Path, n_embeddings: int, full: bool = False) -> dict:
    scores = json.loads(row.scores or "{}")
    d = {
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
        "model_dir": str(model_path(home, row.model_dir)) if row.model_dir else None,
        "source": scores.get("source", "recorded when the home was created" if row.parent is None else None),
    }
    comparison = scores.get("comparison")
    if comparison:
        d["held_out"] = {k: comparison.get(k) for k in ("judged", "old_auc", "new_auc", "verdict")}
    if full:
        d["scores"] = scores
        p = model_path(home, row.model_dir)
        d["model_dir_ok"] = bool(p and (p / "config.json").is_file())
    return d


def _embedding_counts(conn) -> dict[int, int]:
    rows = conn.execute(select(embeddings.c.model_version, func.count()).group_by(embeddings.c.model_version)).all()
    return {int(v): int(n) for v, n in rows}


def list_versions(idx) -> list[dict]:
    """Every model version of the home, oldest first, with its state (active, kept: served
    before and still has its vectors, candidate: never served), parent and vector count."""
    idx.ensure_open()
    with idx.db.read() as conn:
        rows = conn.execute(select(model_versions).order_by(model_versions.c.id)).all()
        counts = _embedding_counts(conn)
    return [_describe(r, idx.home, counts.get(int(r.id), 0)) for r in rows]


def show_version(idx, ref="active") -> dict:
    """One version in full: list_versions()'s fields plus its scores (retrain comparison,
    calibration) and whether its model directory is intact."""
    idx.ensure_open()
    with idx.db.read() as conn:
        row = resolve_version(conn, ref)
        n = conn.execute(
            select(func.count()).select_from(embeddings).where(embeddings.c.model_version == row.id)
        ).scalar()
        n_images = conn.execute(select(func.count()).select_from(images)).scalar()
    d = _describe(row, idx.home, n, full=True)
    d["images"] = int(n_images)
    d["missing_embeddings"] = int(n_images) - int(n)  # what activating it would embed (roughly)
    return d


# ---------------------------------------------------------------------------------------------
# Registering a new version (a copy of its model directory kept in the home)
# ---------------------------------------------------------------------------------------------
def register_model_dir(idx, model_dir, scores: dict | None = None) -> tuple[int, bool]:
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
        models = idx.home / MODELS_DIR_NAME
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
    log.info("registered %s as model version %d", emb.model_id, vid)
    return vid, True


# ---------------------------------------------------------------------------------------------
# Activation
# ---------------------------------------------------------------------------------------------
def _missing_stmt(version: int):
    has = exists().where(embeddings.c.image_id == images.c.id, embeddings.c.model_version == version)
    return (
        select(
            images.c.id, images.c.stored_path, images.c.source_name, images.c.content_sha256, identities.c.external_id
        )
        .join(identities, identities.c.id == images.c.identity_id)
        .where(~has)
        .order_by(images.c.id)
    )


def _load_embedder(home: Path, row):
    from siamese_index.towers.embedder import KerasEmbedder

    p = model_path(home, row.model_dir)
    if p is None or not p.is_dir():
        raise ModelError(
            f"model version {row.id} ({row.model_id}) has no model directory "
            f"(recorded at {row.model_dir or 'an injected embedder'}); it cannot embed"
        )
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


def _check_model_dir(home: Path, row) -> None:
    """Without loading the tower: the version's directory is there and holds that model."""
    from siamese_index.towers.modeldir import WEIGHTS_NAME, read_config

    p = model_path(home, row.model_dir)
    if p is None or not p.is_dir():
        raise ModelError(
            f"model version {row.id} ({row.model_id}) has no model directory "
            f"(recorded at {row.model_dir or 'an injected embedder'}); it cannot serve"
        )
    cfg = read_config(p)
    if cfg.model_id != row.model_id or int(cfg.embedding_dim) != int(row.dim) or not (p / WEIGHTS_NAME).is_file():
        raise ModelMismatch(
            f"{p} holds model {cfg.model_id} (size {cfg.embedding_dim}); version {row.id} is "
            f"{row.model_id} (size {row.dim})"
        )


def _embed_rows(idx, get_emb, rows) -> tuple[list[int], np.ndarray, dict[int, str]]:
    """Embed images from their stored copies: (ids, vectors, {image id: why it could not be})."""
    if not rows:
        return [], np.zeros((0, 0), np.float32), {}
    emb = get_emb()
    ids, arrays, failed = [], [], {}
    for r in rows:
        if not r.stored_path:
            failed[r.id] = "no stored copy (enrolled without keeping images)"
            continue
        path = idx.home / r.stored_path
        try:
            data = path.read_bytes()
        except OSError:
            failed[r.id] = f"its stored copy {r.stored_path} is missing"
            continue
        if hashlib.sha256(data).hexdigest() != r.content_sha256:
            failed[r.id] = f"its stored copy {r.stored_path} is damaged (content hash differs)"
            continue
        try:
            arr, _ = emb.prepare(data, name=r.source_name or r.stored_path, strict_face=False)
        except InvalidImage as e:
            failed[r.id] = f"its stored copy is unusable by this model ({e.reason})"
            continue
        ids.append(int(r.id))
        arrays.append(arr)
    return ids, idx.embed(arrays, emb), failed


def _write_vectors(conn, version: int, ids: list[int], vecs: np.ndarray) -> int:
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


def _unusable_message(version: int, unusable: dict[int, tuple]) -> str:
    listed = "; ".join(f"image {i} ({who}, {name}): {why}" for i, (who, name, why) in list(unusable.items())[:5])
    more = f" and {len(unusable) - 5} more" if len(unusable) > 5 else ""
    return (
        f"{len(unusable)} enrolled images cannot be embedded by version {version}: {listed}{more}. "
        f"Re-enroll them from the originals, or pass --drop-unstored to remove these images "
        f"(their people stay enrolled with their other photos); nothing was switched"
    )


def _discard_candidate_vectors(db: Database, version: int) -> None:
    """Drop the embeddings of a version that never served (after a failed activation)."""
    try:
        with db.write(lock_timeout=5, bump=False) as txn:
            row = txn.conn.execute(select(model_versions).where(model_versions.c.id == version)).first()
            if row is not None and not row.active and row.activated_at is None:
                txn.conn.execute(embeddings.delete().where(embeddings.c.model_version == version))
    except Exception:  # noqa: BLE001 - cleanup_leftovers() does it on the next open
        log.warning("could not drop the partial embeddings of version %d; the next open does", version)


def activate(
    idx,
    ref,
    *,
    drop_unstored: bool = False,
    embedder=None,
    batch_size: int = REEMBED_BATCH,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict:
    """Make model version `ref` (see resolve_version) the one the home serves.

    Re-embeds every enrolled image lacking a vector by that version, while the current version
    keeps answering, then switches in one transaction (see the module notes). embedder: the
    version's embedder when already loaded (default: from its model directory).
    progress(done, total, phase) is called after each batch.
    Returns {"changed", "from", "to", "model_id", "generation", "images", "reused" (vectors it
    already had), "embedded" (all it embedded), "caught_up" (of those, embedded under the writer
    lock just before the switch: the last batch and photos enrolled meanwhile), "dropped",
    "seconds"}. Raises Busy when another retrain or activation runs, InvalidData when
    images cannot be re-embedded (see drop_unstored), ModelError when the version cannot embed.
    """
    idx.ensure_open()
    db = idx.db
    started = time.perf_counter()
    with holding_version_lock(idx.home):
        with db.read() as conn:
            target = resolve_version(conn, ref)
            current = conn.execute(select(model_versions).where(model_versions.c.active == 1)).one()
            total = int(conn.execute(select(func.count()).select_from(images)).scalar())
            missing = conn.execute(_missing_stmt(int(target.id))).all()
        report = {
            "changed": False,
            "from": int(current.id),
            "to": int(target.id),
            "model_id": target.model_id,
            "images": total,
            "reused": total - len(missing),
            "embedded": 0,
            "caught_up": 0,
            "dropped": [],
            "generation": None,
            "seconds": 0.0,
        }
        if target.id == current.id:
            report["message"] = f"version {target.id} is already active"
            return report
        if embedder is not None:
            if embedder.model_id != target.model_id or int(embedder.dim) != int(target.dim):
                raise ModelMismatch(
                    f"the given embedder is {embedder.model_id}; version {target.id} is {target.model_id}"
                )
        else:
            _check_model_dir(idx.home, target)  # the tower itself is loaded once there is work for it
        loaded = [embedder]

        def get_emb():
            if loaded[0] is None:
                loaded[0] = _load_embedder(idx.home, target)
            return loaded[0]

        unusable: dict[int, tuple] = {
            r.id: (r.external_id, r.source_name, "no stored copy (enrolled without keeping images)")
            for r in missing
            if not r.stored_path
        }
        if unusable and not drop_unstored:
            raise InvalidData(_unusable_message(int(target.id), unusable))
        vid = int(target.id)
        try:
            todo_total = len(missing) - len(unusable)
            while True:  # bulk passes without holding the writer lock
                with db.read() as conn:
                    rows = [r for r in conn.execute(_missing_stmt(vid)).all() if r.id not in unusable]
                if len(rows) <= CATCH_UP_UNDER_LOCK:
                    break
                todo_total = max(todo_total, report["embedded"] + len(rows))
                for start in range(0, len(rows), batch_size):
                    chunk = rows[start : start + batch_size]
                    ids, vecs, failed = _embed_rows(idx, get_emb, chunk)
                    by_id = {r.id: r for r in chunk}
                    unusable.update({i: (by_id[i].external_id, by_id[i].source_name, why) for i, why in failed.items()})
                    with db.write(bump=False) as txn:
                        report["embedded"] += _write_vectors(txn.conn, vid, ids, vecs)
                    if progress is not None:
                        progress(report["embedded"], todo_total, "re-embedding")
                    _test_pause()
            with db.lock:  # enrollments wait from here to the switch
                with db.read() as conn:
                    rows = [r for r in conn.execute(_missing_stmt(vid)).all() if r.id not in unusable]
                ids, vecs, failed = _embed_rows(idx, get_emb, rows)
                by_id = {r.id: r for r in rows}
                unusable.update({i: (by_id[i].external_id, by_id[i].source_name, why) for i, why in failed.items()})
                if unusable and not drop_unstored:
                    raise InvalidData(_unusable_message(vid, unusable))
                unlink: list[Path] = []
                with db.write() as txn:
                    conn = txn.conn
                    report["caught_up"] = _write_vectors(conn, vid, ids, vecs)
                    report["embedded"] += report["caught_up"]
                    if unusable:
                        gone = conn.execute(select(images).where(images.c.id.in_(list(unusable)))).all()
                        unlink = idx.delete_images(conn, gone)
                        report["dropped"] = [
                            {"image_id": int(i), "id": who, "source_name": name, "reason": why}
                            for i, (who, name, why) in unusable.items()
                        ]
                    left = conn.execute(select(func.count()).select_from(_missing_stmt(vid).subquery())).scalar()
                    if left:
                        raise ModelError(
                            f"{left} images still lack an embedding by version {vid}; nothing was switched"
                        )
                    now = now_iso()
                    conn.execute(
                        update(model_versions)
                        .where(model_versions.c.active == 1)
                        .values(active=0, activated_at=func.coalesce(model_versions.c.activated_at, now))
                    )
                    conn.execute(
                        update(model_versions).where(model_versions.c.id == vid).values(active=1, activated_at=now)
                    )
                    generation = int(Database.get_meta(conn, "index_generation", "1")) + 1
                    Database.set_meta(conn, "index_generation", str(generation))
                    Database.set_meta(
                        conn,
                        "last_switch",
                        json.dumps({"from": int(current.id), "to": vid, "at": now, "generation": generation}),
                    )
                # Committed: the new version serves. Rebuild and save FAISS before others write.
                try:
                    idx.switch_embedder(loaded[0])
                except Exception:  # noqa: BLE001 - SQLite is committed; the cache is rebuilt on next use
                    log.exception("loading the new version's FAISS index failed; it is rebuilt on next use")
                    idx.drop_cache()
                if unlink:
                    idx.unlink_after_commit(unlink)
        except BaseException:
            if not target.active and target.activated_at is None:
                _discard_candidate_vectors(db, vid)
            raise
        report.update(changed=True, generation=generation, seconds=round(time.perf_counter() - started, 2))
        log.info("switched the home from model version %d to %d (generation %d)", current.id, vid, generation)
        return report


def rollback(idx, **kwargs) -> dict:
    """Serve the active version's parent again (its vectors were kept: only photos enrolled since
    the switch are embedded). Same keywords and result as activate()."""
    with idx.db.read() as conn:
        active = conn.execute(select(model_versions).where(model_versions.c.active == 1)).one()
    if active.parent is None:
        raise InvalidData(f"model version {active.id} ({active.model_id}) has no parent to roll back to")
    return activate(idx, int(active.parent), **kwargs)


def reembed(idx, model_dir, **kwargs) -> dict:
    """Move the home to the tower in `model_dir`: register it as a version (parent: the active
    one; its directory copied into the home) and activate it. Same keywords as activate()."""
    vid, created = register_model_dir(idx, model_dir)
    report = activate(idx, vid, **kwargs)
    report["registered"] = created
    return report
