"""Model directories: config.json + weights, written atomically, identified by a weights hash;
and what a model records of its training data (same_source)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from siamese_index.errors import ModelError
from siamese_index.imaging.loading import Preprocessing

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.weights.h5"
FORMAT_VERSION = 1


@dataclass
class ModelConfig:
    """Everything needed to rebuild a tower in code and use it the way it was trained."""

    arch: str
    input_shape: tuple[int, ...]
    embedding_dim: int
    preprocessing: Preprocessing | None  # None for vector (dense) inputs
    margin: float = 1.0
    threshold: float | None = None  # the pair threshold: two photos are one person below it
    threshold_method: str | None = None
    augmentation: str = "none"
    model_id: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["preprocessing"] = self.preprocessing.to_dict() if self.preprocessing else None
        return json.dumps(d, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config.json") -> ModelConfig:
        d = dict(d)
        for key in ("arch", "input_shape", "embedding_dim"):
            if key not in d:
                raise ModelError(f"{where}: missing field {key!r}")
        if d.get("format_version", 1) > FORMAT_VERSION:
            raise ModelError(f"{where}: format_version {d['format_version']} is newer than this siamese-index reads")
        d["input_shape"] = tuple(int(v) for v in d["input_shape"])
        if d.get("preprocessing"):
            d["preprocessing"] = Preprocessing.from_dict(d["preprocessing"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def weights_hash(weights: list[np.ndarray]) -> str:
    """A stable id from the weight values themselves (not the h5 file, whose bytes vary)."""
    h = hashlib.sha256()
    for w in weights:
        a = np.ascontiguousarray(w, dtype=np.float32)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def model_id_for(arch: str, weights: list[np.ndarray]) -> str:
    """ "<arch>-<weights hash>"; an ensemble's long arch string is shortened to "ensemble"
    (ids name files and URLs, so they keep to letters, digits and dashes)."""
    return f"{arch.split(':', 1)[0]}-{weights_hash(weights)}"


def library_versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    from siamese_index import __version__

    return {
        "siamese_index": __version__,
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
    }


def same_source(a: object, b: object) -> bool:
    """Whether two recorded data sources (a model's training data, a folder) may be the same data.

    A source is recorded as the user typed it, relative or absolute, from wherever they were, so
    the same folder can read differently: the same folder name is taken as the same data (a
    refusal can be answered with the parent's seed; a silent leak could not be noticed at all).
    """
    if not a or not b:
        return False
    pa, pb = Path(str(a)), Path(str(b))
    return pa.resolve() == pb.resolve() or pa.name == pb.name


def read_config(model_dir: Path) -> ModelConfig:
    model_dir = Path(model_dir)
    cfg_path = model_dir / CONFIG_NAME
    if not model_dir.is_dir():
        raise ModelError(f"{model_dir}: no such model directory")
    if not cfg_path.is_file():
        raise ModelError(f"{model_dir}: not a model directory (no {CONFIG_NAME})")
    if not (model_dir / WEIGHTS_NAME).is_file():
        raise ModelError(f"{model_dir}: missing {WEIGHTS_NAME}")
    try:
        data = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{cfg_path}: not valid JSON ({e})") from e
    return ModelConfig.from_dict(data, where=str(cfg_path))


def write_model_dir(
    out_dir: Path, config: ModelConfig, tower: Any, extra_files: dict[str, bytes] | None = None, overwrite: bool = False
) -> Path:
    """Write weights and config to a temporary directory, then rename it into place."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ModelError(f"{out_dir}: already exists and is not empty (pass overwrite to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    config.model_id = model_id_for(config.arch, tower.get_weights())
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tower.save_weights(str(tmp / WEIGHTS_NAME))
        (tmp / CONFIG_NAME).write_text(config.to_json() + "\n")
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
