"""Shared test helpers: a fake embedder (no TensorFlow) and small synthetic identity images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from siamese_index.imaging.loading import open_image


class FakeEmbedder:
    """A deterministic stand-in for a tower: 16x16 grayscale -> centred -> seeded projection ->
    unit length. Identities drawn by `make_identity_image` land far apart, photos of one
    identity close together."""

    def __init__(
        self,
        model_id: str = "fake-1",
        dim: int = 16,
        threshold: float | None = 0.5,
        metrics: dict | None = None,
        seed: int = 0,
    ):
        self.model_id = model_id
        self.dim = dim
        self.threshold = threshold
        self.metrics = dict(metrics or {})
        self.projection = np.random.default_rng(seed).standard_normal((256, dim)).astype(np.float32)
        self.embedded = 0  # how many inputs were embedded (tests count model calls)

    def prepare(self, source, name=None, strict_face=False):
        im = open_image(source, name).convert("L").resize((16, 16), Image.Resampling.BILINEAR)
        return np.asarray(im, dtype=np.uint8)[:, :, None], []

    def embed_batch(self, inputs):
        x = np.asarray(inputs, dtype=np.float32).reshape(len(inputs), -1) / 255.0
        x = x - x.mean(axis=1, keepdims=True)
        v = x @ self.projection
        v /= np.linalg.norm(v, axis=1, keepdims=True) + 1e-9
        self.embedded += len(v)
        return v.astype(np.float32)


def identity_array(identity: int, variant: int = 0, size: int = 32) -> np.ndarray:
    """A blocky 8x8 pattern per identity (upscaled), plus a little noise per photo variant."""
    base = np.random.default_rng(1000 + identity).integers(0, 256, (8, 8)).astype(np.float32)
    img = np.kron(base, np.ones((size // 8, size // 8), np.float32))
    noise = np.random.default_rng(100_003 * (identity + 1) + variant).normal(0.0, 6.0, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def write_identity_image(path: Path, identity: int, variant: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(identity_array(identity, variant)).save(path)
    return path


@pytest.fixture
def fake_embedder() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture
def make_image(tmp_path):
    """make_image(identity, variant=0, folder=None, name=None) -> path of a small PNG."""
    root = tmp_path / "photos"

    def make(identity: int, variant: int = 0, folder: str | None = None, name: str | None = None) -> Path:
        name = name or f"id{identity}_v{variant}.png"
        return write_identity_image(root / (folder or f"id{identity}") / name, identity, variant)

    return make


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def index(home, fake_embedder):
    from siamese_index.index.facade import SiameseIndex

    idx = SiameseIndex.open(home, embedder=fake_embedder)
    yield idx
    idx.close()
