"""Towers' shapes and the contrastive loss against hand-computed values."""

import numpy as np
import pytest

from siamese_index.towers.architectures import ARCHITECTURES, build_siamese, build_tower
from siamese_index.towers.losses import (
    batch_contrastive_loss,
    build_proxy_head,
    contrastive_loss,
    contrastive_loss_np,
    cosface_loss,
)


@pytest.mark.parametrize(
    "arch,shape,dim",
    [
        ("dense", (100,), 128),
        ("seed-conv", (56, 46, 1), 50),
        ("seed-gap", (28, 28, 1), 48),
        ("facenet-s", (48, 40, 1), 128),
    ],
)
def test_each_architecture_output_shape(arch, shape, dim):
    tower = build_tower(arch, shape)
    out = np.asarray(tower.predict_on_batch(np.zeros((3, *shape), np.float32) + 7))
    assert out.shape == (3, dim)
    assert set(ARCHITECTURES) == {"dense", "seed-conv", "seed-gap", "facenet-s"}


def test_default_tower_embeddings_are_unit_length():
    tower = build_tower("facenet-s", (48, 40, 1), 16)
    x = np.random.default_rng(0).integers(0, 255, (4, 48, 40, 1)).astype(np.float32)
    out = np.asarray(tower.predict_on_batch(x))
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_tower("resnet-9000", (10, 10, 1))


def test_contrastive_loss_by_hand():
    # same pair at d=0.5: 0.25; different pair at d=0.3, margin 1: 0.7^2 = 0.49; different at 1.5: 0.
    d = np.array([0.5, 0.3, 1.5])
    y = np.array([1, 0, 0])
    expected = (0.25 + 0.49 + 0.0) / 3
    assert contrastive_loss_np(d, y) == pytest.approx(expected)
    keras_value = float(contrastive_loss(1.0)(y.astype("float32"), d.astype("float32")))
    assert keras_value == pytest.approx(expected, rel=1e-5)
    assert contrastive_loss_np(d, y, margin=2.0) == pytest.approx((0.25 + 1.7**2 + 0.5**2) / 3)


def test_batch_loss_matches_brute_force():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(6, 4)).astype("float32") * 0.4
    labels = np.array([0, 0, 1, 1, 2, 2])
    gen, imp = [], []
    for i in range(6):
        for j in range(6):
            if i == j:
                continue
            d = np.linalg.norm(emb[i] - emb[j])
            (gen if labels[i] == labels[j] else imp).append(d)
    imp_terms = [max(1 - d, 0) ** 2 for d in imp]
    expected = np.mean(np.square(gen)) + sum(imp_terms) / max(1, sum(t > 0 for t in imp_terms))
    got = float(batch_contrastive_loss(1.0)(labels, emb))
    assert got == pytest.approx(expected, rel=1e-4)


def test_siamese_outputs_plain_l2_distance():
    tower = build_tower("dense", (5,))
    net = build_siamese(tower)
    a = np.random.default_rng(2).normal(size=(4, 5)).astype("float32")
    b = np.random.default_rng(3).normal(size=(4, 5)).astype("float32")
    d = np.asarray(net.predict_on_batch([a, b])).ravel()
    ea, eb = np.asarray(tower.predict_on_batch(a)), np.asarray(tower.predict_on_batch(b))
    assert np.allclose(d, np.linalg.norm(ea - eb, axis=1), atol=1e-3)


def test_cosface_loss_by_hand():
    # Two samples, three classes; the true class's cosine loses the margin before the softmax.
    cos = np.array([[0.9, 0.1, -0.2], [0.3, 0.5, 0.4]], dtype="float32")
    labels = np.array([0, 2])
    scale, margin = 10.0, 0.2
    expected = []
    for row, y in zip(cos, labels):
        logits = scale * (row - margin * (np.arange(3) == y))
        expected.append(-(logits[y] - np.log(np.exp(logits).sum())))
    got = float(cosface_loss(scale, margin)(labels, cos))
    assert got == pytest.approx(np.mean(expected), rel=1e-5)


def test_proxy_head_gives_cosines():
    head = build_proxy_head(5)
    emb = np.random.default_rng(2).normal(size=(3, 8)).astype("float32")
    cos = np.asarray(head(emb))
    w = np.asarray(head.proxies)
    expected = (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0, keepdims=True))
    assert cos.shape == (3, 5) and np.allclose(cos, expected, atol=1e-5)


def test_same_source_reads_one_folder_typed_two_ways(tmp_path, monkeypatch):
    from siamese_index.towers.modeldir import same_source

    (tmp_path / "faces").mkdir()
    monkeypatch.chdir(tmp_path)
    assert same_source(str(tmp_path / "faces"), "faces")
    assert same_source("/elsewhere/faces", "faces")  # the same folder name is taken as the same data
    assert not same_source("faces", "orl") and not same_source(None, "faces") and not same_source("", "")


def test_towers_never_import_training():
    import ast
    from pathlib import Path

    import siamese_index.towers as towers

    for path in Path(towers.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("siamese_index.training"), f"{path.name} imports {node.module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("siamese_index.training") for a in node.names), path.name
