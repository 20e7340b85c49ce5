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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, update

from siamese_index.errors import InvalidData, ModelMismatch
from siamese_index.storage.db import model_versions, now_iso
from siamese_index.storage.registry import SET_KEY, resolve_version
from siamese_index.types import ThresholdChange

if TYPE_CHECKING:
    from siamese_index.index.facade import SiameseIndex
    from siamese_index.towers.modeldir import ModelConfig


@dataclass(frozen=True)
class _Calibration:
    """A threshold to record, with its method, impostor table and where it came from."""

    threshold: float
    method: str | None
    impostor_far_table: Any
    source: str


def _read_recalibrated(model_dir: str | Path) -> ModelConfig:
    """A directory written by `calibrate`: its config, which must hold a threshold."""
    from siamese_index.towers.modeldir import read_config

    cfg = read_config(Path(model_dir))
    if cfg.threshold is None:
        raise InvalidData(f"{model_dir}: has no threshold (run `calibrate` on it first)")
    return cfg


def _by_hand(threshold: float) -> float:
    value = float(threshold)
    if not math.isfinite(value) or value <= 0:
        raise InvalidData(f"threshold must be a positive distance, got {value}")
    return value


def _from_directory(cfg: ModelConfig, model_dir: str | Path, row: Any) -> _Calibration:
    """The recalibrated directory's calibration, for the version `row` of the same weights."""
    if cfg.model_id != row.model_id:
        raise ModelMismatch(
            f"{model_dir} holds model {cfg.model_id} but version {row.id} is {row.model_id}: only a "
            f"recalibrated copy of the same weights can lend its threshold (a new tower goes through reembed)"
        )
    assert cfg.threshold is not None  # _read_recalibrated checked it
    table = (cfg.metrics or {}).get("impostor_far_table")
    return _Calibration(float(cfg.threshold), cfg.threshold_method, table, str(Path(model_dir).resolve()))


def _write(conn: Connection, row: Any, new: _Calibration, previous: float | None) -> None:
    """The threshold on the version's row; the table and method where a version's record always
    keeps them (its scores); SET_KEY says where from and when."""
    scores = json.loads(row.scores or "{}")
    scores.update(
        {
            "impostor_far_table": new.impostor_far_table,
            "threshold_method": new.method,
            SET_KEY: {"source": new.source, "previous_threshold": previous, "set_at": now_iso()},
        }
    )
    conn.execute(
        update(model_versions)
        .where(model_versions.c.id == row.id)
        .values(threshold=new.threshold, scores=json.dumps(scores))
    )


def set_calibration(
    idx: SiameseIndex, ref: int | str = "active", *, model_dir: str | Path | None = None, threshold: float | None = None
) -> ThresholdChange:
    """Record a new pair threshold for version `ref`: `model_dir`'s calibration (threshold,
    impostor table and method; it must hold the same model id) or `threshold` by hand (the
    impostor table stays, being a property of the weights). Returns what changed."""
    if (model_dir is None) == (threshold is None):
        raise InvalidData("give either a recalibrated model directory or a threshold")
    idx.ensure_open()
    cfg = _read_recalibrated(model_dir) if model_dir is not None else None
    by_hand = _by_hand(threshold) if threshold is not None else None
    with idx.db.write() as txn:
        row = resolve_version(txn.conn, ref)
        current = idx.recorded_info(row)
        if cfg is not None and model_dir is not None:
            new = _from_directory(cfg, model_dir, row)
        else:
            assert by_hand is not None  # exactly one of the two was given
            new = _Calibration(by_hand, "set by hand", current.metrics.get("impostor_far_table"), "by hand")
        _write(txn.conn, row, new, current.threshold)
    return ThresholdChange(
        version=int(row.id),
        model_id=row.model_id,
        active=bool(row.active),
        previous_threshold=current.threshold,
        threshold=new.threshold,
        threshold_method=new.method,
        source=new.source,
    )
