"""The model version a home serves: its record, its calibration and (loaded lazily) its tower.

`ServedModel` is the one place that knows which version answers lookups. It changes only when
the sync of the FAISS cache (cache.py) sees another version become active, or a threshold set
for this home (lifecycle/thresholds.py). Everything here runs under the index's state lock,
which the facade shares with the cache.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from siamese_index.config import MODELS_DIR
from siamese_index.errors import ModelError, ModelMismatch
from siamese_index.imaging.sources import Source
from siamese_index.storage.registry import set_stamp

if TYPE_CHECKING:
    from siamese_index.towers.embedder import Embedder

log = logging.getLogger(__name__)

EMBED_BATCH = 256


@dataclass
class ModelInfo:
    """A model's identity and calibration as the index needs them (from an embedder, a model
    directory's config.json, or the home's record)."""

    model_id: str
    dim: int
    threshold: float | None
    model_dir: str | None
    metrics: dict = field(default_factory=dict)
    threshold_method: str | None = None


def _dir_of(home: Path | None, model_dir: str | Path) -> Path:
    """A recorded model directory: absolute, or (a version kept in the home) relative to the home."""
    p = Path(model_dir)
    return p if p.is_absolute() or home is None else Path(home) / p


def info_from_embedder(embedder: Embedder) -> ModelInfo:
    """The identity and calibration of an injected embedder."""
    cfg = getattr(embedder, "config", None)
    metrics = getattr(cfg, "metrics", None) or getattr(embedder, "metrics", None) or {}
    model_dir = getattr(embedder, "model_dir", None)
    return ModelInfo(
        model_id=str(embedder.model_id),
        dim=int(embedder.dim),
        threshold=None if embedder.threshold is None else float(embedder.threshold),
        model_dir=str(Path(model_dir).resolve()) if model_dir else None,
        metrics=dict(metrics),
        threshold_method=getattr(cfg, "threshold_method", None),
    )


def info_from_model_dir(model_dir: Path) -> tuple[ModelInfo, Embedder | None]:
    """Read a model directory's config (cheap: no TensorFlow unless the config lacks its id)."""
    from siamese_index.towers.modeldir import read_config

    cfg = read_config(model_dir)
    if cfg.preprocessing is None:
        raise ModelError(f"{model_dir}: a vector model; an index needs a model that embeds images")
    embedder: Embedder | None = None
    model_id = cfg.model_id
    if not model_id:
        from siamese_index.towers.embedder import KerasEmbedder

        keras = KerasEmbedder(model_dir)
        embedder, model_id = keras, keras.model_id
    info = ModelInfo(
        model_id,
        int(cfg.embedding_dim),
        cfg.threshold,
        str(Path(model_dir).resolve()),
        dict(cfg.metrics or {}),
        cfg.threshold_method,
    )
    return info, embedder


def recorded_info(row: Any, home: Path | None = None) -> ModelInfo:
    """A version row's calibration: the record when a threshold was set for this home
    (thresholds.set_calibration), else its config.json when readable (cheap), else the record."""
    scores = json.loads(row.scores or "{}")
    info = ModelInfo(
        row.model_id,
        int(row.dim),
        row.threshold,
        row.model_dir,
        {"impostor_far_table": scores.get("impostor_far_table")},
        scores.get("threshold_method"),
    )
    if not row.model_dir or set_stamp(row):
        return info
    try:
        from siamese_index.towers.modeldir import read_config

        cfg = read_config(_dir_of(home, row.model_dir))
    except (ModelError, OSError):
        return info
    if cfg.model_id != row.model_id or int(cfg.embedding_dim) != int(row.dim):
        return info
    return ModelInfo(
        row.model_id, int(row.dim), cfg.threshold, row.model_dir, dict(cfg.metrics or {}), cfg.threshold_method
    )


class ServedModel:
    """The active model version: id, size, directory, pair threshold, impostor table, tower."""

    def __init__(self, home: Path, row: Any, info: ModelInfo, embedder: Embedder | None, lock: threading.RLock):
        self.home = home
        self._lock = lock
        self.version = int(row.id)
        self.model_id: str = row.model_id
        self.dim = int(row.dim)
        self.model_dir: str | None = row.model_dir
        self.threshold: float | None = info.threshold  # the model's pair threshold
        self.far_table: list | None = info.metrics.get("impostor_far_table")
        self.threshold_stamp = set_stamp(row)
        self._dir_hint = info.model_dir  # a directory given to open() for this model
        self._embedder = embedder

    def adopt(self, row: Any, embedder: Embedder | None = None) -> None:
        """Serve version `row` from now on: its tower, threshold and (once synced) vectors."""
        info = recorded_info(row, self.home)
        log.info("model version %d (%s) is now the home's model", row.id, row.model_id)
        self.version = int(row.id)
        self.model_id, self.dim, self.model_dir = row.model_id, int(row.dim), row.model_dir
        self.threshold = info.threshold
        self.far_table = info.metrics.get("impostor_far_table")
        self.threshold_stamp = set_stamp(row)
        self._dir_hint = None
        self._embedder = embedder if embedder is not None and embedder.model_id == row.model_id else None

    def adopt_threshold(self, row: Any) -> None:
        """The served version was given another threshold (thresholds.set_calibration)."""
        info = recorded_info(row, self.home)
        self.threshold, self.far_table = info.threshold, info.metrics.get("impostor_far_table")
        self.threshold_stamp = set_stamp(row)

    def offer_embedder(self, embedder: Embedder | None) -> None:
        """Keep an already loaded tower of the served model (saves loading it again)."""
        with self._lock:
            if embedder is not None and self._embedder is None and embedder.model_id == self.model_id:
                self._embedder = embedder

    def embedder(self) -> Embedder:
        """The served model's tower, loaded from its directory on first use."""
        with self._lock:
            if self._embedder is None:
                self._embedder = self._load()
            return self._embedder

    def _load(self) -> Embedder:
        from siamese_index.towers.embedder import KerasEmbedder

        candidates = [_dir_of(self.home, p) for p in (self._dir_hint, self.model_dir) if p]
        if self.model_dir:
            candidates.append(MODELS_DIR / Path(self.model_dir).name)
        found = next((p for p in candidates if p.is_dir()), None)
        if found is None:
            raise ModelError(
                f"this home's model {self.model_id} is not available "
                f"(recorded at {self.model_dir or 'an injected embedder'})"
            )
        emb = KerasEmbedder(found)
        if emb.model_id != self.model_id or emb.dim != self.dim:
            raise ModelMismatch(
                f"{found} now holds model {emb.model_id} (size {emb.dim}); this home was built "
                f"with {self.model_id} (size {self.dim})"
            )
        return emb

    def prepare(self, src: Source, strict_face: bool, embedder: Embedder | None = None) -> tuple[np.ndarray, list[str]]:
        """One source as a model input of `embedder` (default: the served tower), with warnings."""
        emb = embedder if embedder is not None else self.embedder()
        arr, warnings = emb.prepare(src.data, name=src.label, strict_face=strict_face)
        return arr, list(warnings or [])

    def embed(self, arrays: list[np.ndarray], embedder: Embedder | None = None) -> np.ndarray:
        """Prepared inputs -> (n, dim) float32, in batches; ModelError for a wrong or non-finite output."""
        emb = embedder if embedder is not None else self.embedder()
        dim = int(emb.dim)
        if not arrays:
            return np.zeros((0, dim), np.float32)
        out = []
        for start in range(0, len(arrays), EMBED_BATCH):
            out.append(np.asarray(emb.embed_batch(np.stack(arrays[start : start + EMBED_BATCH])), dtype=np.float32))
        vecs = np.concatenate(out)
        if vecs.shape != (len(arrays), dim):
            raise ModelError(f"the model returned vectors of shape {vecs.shape}, expected ({len(arrays)}, {dim})")
        if not np.isfinite(vecs).all():
            raise ModelError("the model returned non-finite embeddings")
        return vecs
