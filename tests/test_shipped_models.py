"""Every model shipped in models/ loads, has a complete config, and embeds."""

import json

import numpy as np
import pytest

from siamese_index.config import DEFAULT_MODEL_NAME, MODELS_DIR, resolve_model_dir
from siamese_index.imaging.synthetic import identity_image
from siamese_index.towers.embedder import KerasEmbedder

SHIPPED = sorted(p for p in MODELS_DIR.iterdir() if (p / "config.json").is_file()) if MODELS_DIR.is_dir() else []


def test_the_default_face_model_is_shipped():
    assert resolve_model_dir(None) == MODELS_DIR / DEFAULT_MODEL_NAME
    assert (MODELS_DIR / DEFAULT_MODEL_NAME) in SHIPPED


@pytest.mark.parametrize("model_dir", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_model_loads_and_embeds(model_dir, tmp_path):
    config = json.loads((model_dir / "config.json").read_text())
    for key in (
        "arch",
        "input_shape",
        "embedding_dim",
        "preprocessing",
        "threshold",
        "threshold_method",
        "model_id",
        "metrics",
        "history",
        "training",
        "versions",
    ):
        assert key in config, key
    assert config["metrics"]["impostor_far_table"], "needed to calibrate the unknown-person threshold"
    readme = (model_dir / "README.md").read_text()
    assert "siamese-index train" in readme, "each shipped model documents the command that made it"
    assert (model_dir / "model.weights.h5").stat().st_size < 25 * 1024 * 1024
    embedder = KerasEmbedder(model_dir)  # also checks the weights hash against model_id
    assert embedder.model_id == config["model_id"]
    path = tmp_path / "photo.png"
    identity_image(3, 0, 120, "RGB").save(path)
    arr, _ = embedder.prepare(path)
    assert arr.shape == tuple(config["input_shape"])
    vec = embedder.embed_batch(np.stack([arr, arr]))
    assert vec.shape == (2, config["embedding_dim"]) and np.all(np.isfinite(vec))
    assert np.allclose(vec[0], vec[1])
