"""Embedders turn prepared inputs into float32 vectors. KerasEmbedder loads a model directory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from siamese_index.errors import ModelError
from siamese_index.imaging.loading import Preprocessing, prepare
from siamese_index.towers.modeldir import WEIGHTS_NAME, ModelConfig, model_id_for, read_config


class Embedder(Protocol):
    """What the index needs from a model: an id, a size, input preparation and batch embedding."""

    model_id: str
    dim: int
    threshold: float | None  # the model's pair threshold (None until one is calibrated)

    def prepare(
        self, source: object, name: str | None = None, strict_face: bool = False
    ) -> tuple[np.ndarray, list[str]]:
        """Load one image (path or bytes) into a model input; returns (array, warnings)."""

    def embed_batch(self, inputs: np.ndarray) -> np.ndarray:
        """(n, *input_shape) -> (n, dim) float32."""


class FileEmbedder(Embedder, Protocol):
    """An embedder that also embeds image files by path, skipping the unreadable ones."""

    def embed_files(self, paths: Sequence[str | Path]) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
        """(vectors, embedded paths, [(failed path, reason)])."""


class KerasEmbedder:
    """A tower rebuilt in code from config.json with its weights loaded (never a pickled model)."""

    def __init__(self, model_dir: Path | str, batch_size: int = 64) -> None:
        self.model_dir = Path(model_dir)
        self.config: ModelConfig = read_config(self.model_dir)
        from siamese_index.towers.architectures import build_tower

        cfg = self.config
        try:
            self.tower = build_tower(cfg.arch, cfg.input_shape, cfg.embedding_dim)
            self.tower.load_weights(str(self.model_dir / WEIGHTS_NAME))
        except ValueError as e:
            raise ModelError(f"{self.model_dir}: weights do not fit architecture {cfg.arch!r} ({e})") from e
        actual = model_id_for(cfg.arch, self.tower.get_weights())
        if cfg.model_id and actual != cfg.model_id:
            raise ModelError(f"{self.model_dir}: weights hash {actual} does not match config model_id {cfg.model_id}")
        self.model_id = cfg.model_id or actual
        self.dim = int(cfg.embedding_dim)
        self.threshold = cfg.threshold
        self.batch_size = batch_size

    @property
    def preprocessing(self) -> Preprocessing | None:
        return self.config.preprocessing

    def prepare(
        self, source: object, name: str | None = None, strict_face: bool = False
    ) -> tuple[np.ndarray, list[str]]:
        if self.preprocessing is None:
            raise ModelError(f"{self.model_dir}: a vector model cannot embed image files")
        return prepare(source, self.preprocessing, name=name, strict_face=strict_face)

    def embed_batch(self, inputs: np.ndarray) -> np.ndarray:
        x = np.asarray(inputs)
        if x.shape[1:] != tuple(self.config.input_shape):
            raise ModelError(f"inputs of shape {x.shape[1:]} do not fit the model's {tuple(self.config.input_shape)}")
        out = []
        for start in range(0, len(x), self.batch_size):
            batch = x[start : start + self.batch_size].astype(np.float32)
            out.append(np.asarray(self.tower.predict_on_batch(batch), dtype=np.float32))
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(out)

    def embed_files(self, paths: Sequence[str | Path]) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
        """Embed files in batches; returns (vectors, embedded paths, [(failed path, reason)])."""
        from siamese_index.errors import InvalidImage

        arrays, ok, failed = [], [], []
        for p in paths:
            try:
                arr, _ = self.prepare(p, name=str(p))
            except InvalidImage as e:
                failed.append((str(p), e.reason))
                continue
            arrays.append(arr)
            ok.append(str(p))
        vecs = self.embed_batch(np.stack(arrays)) if arrays else np.zeros((0, self.dim), np.float32)
        return vecs, ok, failed
