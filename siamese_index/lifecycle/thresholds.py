"""Give a home's model version another threshold, without re-embedding anything.

`calibrate` writes a directory with the same weights (and model id) and a threshold chosen on
the user's own people. A home already serving those weights adopts that calibration here, or a
threshold chosen by hand. The choice is recorded in SQLite (model_versions.threshold, the
impostor table and method in its scores, and scores["threshold_set"]: where from, when); from
then on it outranks the model directory's config.json for that version. The write bumps the
change counter, so every process serving the home adopts it on its next request.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from sqlalchemy import update

from siamese_index.errors import InvalidData, ModelMismatch
from siamese_index.storage.db import model_versions, now_iso
from siamese_index.storage.registry import SET_KEY, resolve_version


def set_calibration(idx, ref="active", *, model_dir=None, threshold: float | None = None) -> dict:
    """Record a new pair threshold for version `ref`: `model_dir`'s calibration (threshold,
    impostor table and method; it must hold the same model id) or `threshold` by hand (the
    impostor table stays, being a property of the weights). Returns what changed."""
    if (model_dir is None) == (threshold is None):
        raise InvalidData("give either a recalibrated model directory or a threshold")
    idx.ensure_open()
    if model_dir is not None:
        from siamese_index.towers.modeldir import read_config

        cfg = read_config(Path(model_dir))
        if cfg.threshold is None:
            raise InvalidData(f"{model_dir}: has no threshold (run `calibrate` on it first)")
    else:
        threshold = float(threshold)
        if not math.isfinite(threshold) or threshold <= 0:
            raise InvalidData(f"threshold must be a positive distance, got {threshold}")
    with idx.db.write() as txn:
        row = resolve_version(txn.conn, ref)
        current = idx.recorded_info(row)
        if model_dir is not None:
            if cfg.model_id != row.model_id:
                raise ModelMismatch(
                    f"{model_dir} holds model {cfg.model_id} but version {row.id} is {row.model_id}: only a "
                    f"recalibrated copy of the same weights can lend its threshold (a new tower goes through reembed)"
                )
            new = {
                "threshold": float(cfg.threshold),
                "threshold_method": cfg.threshold_method,
                "impostor_far_table": (cfg.metrics or {}).get("impostor_far_table"),
                "source": str(Path(model_dir).resolve()),
            }
        else:
            new = {
                "threshold": threshold,
                "threshold_method": "set by hand",
                "impostor_far_table": current.metrics.get("impostor_far_table"),
                "source": "by hand",
            }
        scores = json.loads(row.scores or "{}")
        # The table and method sit where a version's record always keeps them; SET_KEY says why.
        scores.update(
            {
                "impostor_far_table": new.pop("impostor_far_table"),
                "threshold_method": new["threshold_method"],
                SET_KEY: {"source": new["source"], "previous_threshold": current.threshold, "set_at": now_iso()},
            }
        )
        txn.conn.execute(
            update(model_versions)
            .where(model_versions.c.id == row.id)
            .values(threshold=new["threshold"], scores=json.dumps(scores))
        )
    return {
        "version": int(row.id),
        "model_id": row.model_id,
        "active": bool(row.active),
        "previous_threshold": current.threshold,
        "threshold": new["threshold"],
        "threshold_method": new["threshold_method"],
        "source": new["source"],
    }
