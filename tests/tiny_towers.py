"""Tiny real towers shared by the retrain and version tests, trained once per test process."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from siamese_index.imaging.loading import Preprocessing
from siamese_index.imaging.synthetic import identity_image, make_identity_folder

PREP = Preprocessing(24, 24, 1)


@functools.cache
def tiny_towers() -> tuple[Path, Path]:
    """(A, B): A trained for a few seconds on 24 synthetic identities; B is A with its weights
    nudged (a different model id and slightly different vectors, as good as A)."""
    from siamese_index.towers.embedder import KerasEmbedder
    from siamese_index.towers.modeldir import write_model_dir
    from siamese_index.training.datasets import load_dataset
    from siamese_index.training.trainer import TrainOptions, train

    work = Path(tempfile.mkdtemp(prefix="tiny-towers-"))
    atexit.register(shutil.rmtree, work, True)
    root = make_identity_folder(work / "ids", identities=24, per_identity=5)
    a = work / "a"
    opts = TrainOptions(
        arch="seed-conv",
        epochs=4,
        seed=0,
        val_fraction=0.25,
        identities_per_batch=12,
        images_per_identity=4,
        steps_per_epoch=6,
        learning_rate=3e-3,
        augmentation="none",
    )
    train(load_dataset(root, PREP), a, opts, PREP)
    emb = KerasEmbedder(a)
    rng = np.random.default_rng(1)
    emb.tower.set_weights(
        [w + rng.normal(0, 0.05 * (float(w.std()) or 1e-3), w.shape).astype(w.dtype) for w in emb.tower.get_weights()]
    )
    b = work / "b"
    write_model_dir(b, replace(emb.config, model_id=None), emb.tower)
    return a, b


def photos(folder: Path, people, variants, offset: int = 0) -> dict[str, list[Path]]:
    """Synthetic photos: {"P03": [paths]} for identity offset + 3, one file per variant."""
    out: dict[str, list[Path]] = {}
    for p in people:
        for v in variants:
            path = Path(folder) / f"person{p:02d}" / f"{v}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            identity_image(offset + p, v, 32).save(path)
            out.setdefault(f"P{p:02d}", []).append(path)
    return out
