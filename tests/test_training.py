"""A real short training run on small real image files, and model directories."""

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from siamese_index.errors import InvalidData, ModelError
from siamese_index.imaging.loading import Preprocessing
from siamese_index.imaging.synthetic import make_identity_folder
from siamese_index.towers.embedder import KerasEmbedder
from siamese_index.towers.modeldir import CONFIG_NAME, read_config
from siamese_index.training.datasets import load_dataset
from siamese_index.training.evaluate import evaluate
from siamese_index.training.trainer import TrainOptions, train

PREP = Preprocessing(24, 24, 1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = make_identity_folder(tmp_path_factory.mktemp("ids"), identities=12, per_identity=5)
    data = load_dataset(root, PREP)
    out = tmp_path_factory.mktemp("models") / "tower"
    epochs = []
    opts = TrainOptions(
        arch="seed-conv",
        epochs=6,
        seed=0,
        val_fraction=0.25,
        identities_per_batch=8,
        images_per_identity=4,
        steps_per_epoch=8,
        learning_rate=3e-3,
        augmentation="none",
    )
    config = train(data, out, opts, PREP, progress=epochs.append, source=str(root))
    return root, data, out, config, epochs


def test_training_lowers_the_loss(trained):
    _, _, _, config, epochs = trained
    assert len(epochs) == 6 and [e.epoch for e in epochs] == list(range(1, 7))
    assert epochs[-1].loss < epochs[0].loss
    assert [h["epoch"] for h in config.history] == list(range(1, 7))


def test_model_directory_is_complete(trained):
    _, data, out, config, _ = trained
    saved = json.loads((out / CONFIG_NAME).read_text())
    for key in (
        "arch",
        "input_shape",
        "embedding_dim",
        "preprocessing",
        "margin",
        "threshold",
        "threshold_method",
        "model_id",
        "metrics",
        "history",
        "versions",
    ):
        assert key in saved, key
    assert saved["model_id"].startswith("seed-conv-")
    assert saved["training"]["val_identities"] == 3
    val_names = set(saved["training"]["val_identity_names"])
    assert len(val_names) == 3 and val_names <= set(data.names)
    assert 0 < saved["threshold"] and "validation identities never trained on" in saved["threshold_method"]
    assert saved["metrics"]["impostor_far_table"]
    with h5py.File(out / "model.weights.h5") as h5:
        assert "optimizer" not in h5, "a model directory holds the tower's weights, not the optimizer's state"


def test_save_load_gives_identical_embeddings(trained):
    _, data, out, config, _ = trained
    a = KerasEmbedder(out).embed_batch(data.x[:7])
    b = KerasEmbedder(out).embed_batch(data.x[:7])
    assert a.shape == (7, 50) and np.array_equal(a, b)
    assert KerasEmbedder(out).model_id == config.model_id


def test_tampered_weights_are_detected(trained, tmp_path):
    _, _, out, _, _ = trained
    cfg = json.loads((out / CONFIG_NAME).read_text())
    cfg["model_id"] = "seed-conv-0000000000000000"
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / CONFIG_NAME).write_text(json.dumps(cfg))
    (copy / "model.weights.h5").write_bytes((out / "model.weights.h5").read_bytes())
    with pytest.raises(ModelError, match="does not match"):
        KerasEmbedder(copy)
    with pytest.raises(ModelError, match="not a model directory"):
        read_config(tmp_path)


def test_evaluate_reports_on_trained_identities(trained):
    _, data, out, _, _ = trained
    report = evaluate(KerasEmbedder(out), data, seed=1)
    assert report.one_shot["identities"] == 12 and report.one_shot["probes"] == 48
    # Synthetic identities are easy: a trained tower must do far better than chance (1/12).
    assert report.one_shot["rank1"] > 0.5
    assert report.verification["auc"] > 0.8


def test_refuses_to_overwrite_a_model(trained):
    root, data, out, _, _ = trained
    with pytest.raises(ModelError, match="already exists"):
        train(data, out, TrainOptions(arch="seed-gap", epochs=1, steps_per_epoch=1), PREP)


def test_pairs_mode_with_augmentation_trains(tmp_path):
    root = make_identity_folder(tmp_path / "ids", identities=8, per_identity=4)
    data = load_dataset(root, PREP)
    seen = []
    opts = TrainOptions(
        arch="seed-conv",
        mode="pairs",
        epochs=2,
        seed=0,
        val_fraction=0.25,
        pairs_per_epoch=256,
        steps_per_epoch=3,
        augmentation="faces",
    )
    config = train(data, tmp_path / "m", opts, PREP, progress=seen.append)
    assert len(seen) == 2 and config.training["mode"] == "pairs" and config.threshold > 0


def test_proxy_loss_and_init_from_a_parent(trained, tmp_path):
    root, data, out, config, _ = trained
    seen = []
    opts = TrainOptions(
        arch="seed-conv",
        epochs=3,
        seed=0,
        val_fraction=0.25,
        identities_per_batch=8,
        images_per_identity=4,
        steps_per_epoch=6,
        learning_rate=1e-3,
        proxy_weight=1.0,
        init_from=out,
    )
    child = train(data, tmp_path / "child", opts, PREP, progress=seen.append, source=str(root))
    assert child.training["init_from"] == config.model_id and child.training["proxy_weight"] == 1.0
    # Starting from the parent's weights, the child starts near the parent's validation AUC.
    assert seen[0].val_auc >= config.metrics["validation"]["auc"] - 0.15
    assert KerasEmbedder(tmp_path / "child").embed_batch(data.x[:2]).shape == (2, 50)


@pytest.mark.slow  # trains or starts TensorFlow in a subprocess: seconds; CI runs it
def test_ema_keeps_the_averaged_weights(trained, tmp_path):
    root, data, out, _, _ = trained

    def embeddings(steps, ema=0.0):
        opts = TrainOptions(
            arch="seed-conv",
            epochs=1,
            seed=0,
            val_fraction=0.25,
            identities_per_batch=8,
            images_per_identity=4,
            steps_per_epoch=steps,
            learning_rate=1e-3,
            init_from=out,
            ema=ema,
        )
        child = train(data, tmp_path / f"s{steps}e{ema}", opts, PREP, source=str(root))
        assert child.training["ema"] == ema
        return KerasEmbedder(tmp_path / f"s{steps}e{ema}").embed_batch(data.x[:20])

    # Keras starts the average at the weights after the first step; at momentum 0.9999 the
    # next 11 steps move it about 0.1% of their way, so the saved tower is nearly the
    # one-step tower, while plain training has moved on.
    one_step = embeddings(1)
    assert np.abs(embeddings(12, ema=0.9999) - one_step).max() < 0.1 * np.abs(embeddings(12) - one_step).max()
    with pytest.raises(InvalidData, match="ema"):
        train(data, tmp_path / "bad", TrainOptions(arch="seed-conv", epochs=1, steps_per_epoch=1, ema=1.0), PREP)


def test_init_from_a_parent_that_trained_on_the_validation_people_is_refused(trained, tmp_path):
    root, data, out, _, _ = trained
    opts = TrainOptions(arch="seed-conv", epochs=1, seed=7, val_fraction=0.25, steps_per_epoch=1, init_from=out)
    with pytest.raises(InvalidData, match="validation identities"):
        train(data, tmp_path / "leaky", opts, PREP, source=str(root))
    # The same folder typed another way (relative, from elsewhere) is still the same data.
    with pytest.raises(InvalidData, match="validation identities"):
        train(data, tmp_path / "leaky2", opts, PREP, source=os.path.relpath(root))
    with pytest.raises(InvalidData, match="does not match"):
        train(
            data,
            tmp_path / "other",
            TrainOptions(arch="seed-gap", epochs=1, steps_per_epoch=1, init_from=out),
            PREP,
            source=str(root),
        )


def test_proxy_loss_needs_batch_mode(trained, tmp_path):
    _, data, _, _, _ = trained
    with pytest.raises(InvalidData, match="batch mode"):
        train(
            data,
            tmp_path / "p",
            TrainOptions(arch="seed-conv", mode="pairs", epochs=1, steps_per_epoch=1, proxy_weight=1.0),
            PREP,
        )


@pytest.mark.slow  # trains or starts TensorFlow in a subprocess: seconds; CI runs it
def test_init_accepts_a_parent_with_thousands_of_validation_people(tmp_path):
    # Every validation name is recorded: a parent with more than a few thousand of them is
    # still recognised as having held out this run's validation people (same seed and split).
    from siamese_index.training.datasets import Dataset

    n_ids = 2600
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(n_ids), 2)
    x = (rng.normal(size=(n_ids, 8))[labels] + 0.1 * rng.normal(size=(len(labels), 8))).astype(np.float32)
    data = Dataset(x, labels, [f"p{i}" for i in range(n_ids)], [""] * n_ids, [f"row{i}" for i in range(len(labels))])
    opts = dict(arch="dense", epochs=1, seed=3, val_fraction=0.8, steps_per_epoch=1)
    parent = train(data, tmp_path / "parent", TrainOptions(**opts), None, source="vectors.npz")
    assert len(parent.training["val_identity_names"]) == parent.training["val_identities"] > 2000
    child = train(
        data, tmp_path / "child", TrainOptions(**opts, init_from=tmp_path / "parent"), None, source="vectors.npz"
    )
    assert child.training["init_from"] == parent.model_id


# The steps of train, each on its own (no TensorFlow needed for these).


def _vector_data(n_ids: int = 10, per_id: int = 3, groups: list[str] | None = None):
    from siamese_index.training.datasets import Dataset

    labels = np.repeat(np.arange(n_ids), per_id)
    x = np.random.default_rng(0).normal(size=(len(labels), 4)).astype(np.float32)
    return Dataset(
        x, labels, [f"p{i}" for i in range(n_ids)], groups or [""] * n_ids, [f"r{i}" for i in range(len(labels))]
    )


def test_split_for_training_holds_out_whole_people_and_balanced_pairs():
    from siamese_index.training.trainer import split_for_training

    data = _vector_data()
    split = split_for_training(data, 0.3, seed=5)
    assert len(split.val_ids) == 3 and not set(split.train.names) & set(split.val.names)
    assert sorted(split.train.names + split.val_names) == sorted(data.names)
    assert len(split.train) + len(split.val) == len(data)
    # Validation pairs index the validation rows; as many genuine as impostor pairs.
    assert split.val_a.max() < len(split.val) and split.val_b.max() < len(split.val)
    assert split.val_y.sum() * 2 == len(split.val_y) > 0
    same = split.val.labels[split.val_a] == split.val.labels[split.val_b]
    assert np.array_equal(same, split.val_y == 1)
    again = split_for_training(data, 0.3, seed=5)
    assert again.val_names == split.val_names and np.array_equal(again.val_a, split.val_a)


def test_steps_per_epoch():
    from siamese_index.training.trainer import steps_per_epoch

    assert steps_per_epoch(TrainOptions(steps_per_epoch=7), 10_000) == 7
    assert steps_per_epoch(TrainOptions(identities_per_batch=4, images_per_identity=5), 100) == 5
    assert steps_per_epoch(TrainOptions(identities_per_batch=4, images_per_identity=5), 3) == 1
    assert steps_per_epoch(TrainOptions(mode="pairs", pairs_per_epoch=640), 3) == 10


@pytest.mark.parametrize(
    "options,source,message",
    [
        (TrainOptions(mode="triplets"), "", "unknown training mode"),
        (TrainOptions(mode="pairs", proxy_weight=1.0), "", "batch mode"),
        (TrainOptions(mode="pairs", teacher_file=Path("t.npz")), "data", "batch mode"),
        (TrainOptions(teacher_file=Path("t.npz")), "", "data folder"),
        (TrainOptions(ema=1.0), "", "ema"),
        (TrainOptions(ema=-0.1), "", "ema"),
    ],
)
def test_check_options_refuses_what_cannot_train(options, source, message):
    from siamese_index.training.trainer import check_options

    with pytest.raises(InvalidData, match=message):
        check_options(options, source)
    check_options(TrainOptions(), "")  # the defaults train


def test_pk_batches_draw_p_identities_of_k_images_one_group_first():
    from siamese_index.training.trainer import pk_batches

    groups = ["a"] * 5 + ["b"] * 5
    data = _vector_data(groups=groups)
    batches = pk_batches(data.labels, 4, 2, np.random.default_rng(0), groups)
    for _ in range(20):
        rows = next(batches)
        ids = data.labels[rows]
        assert len(rows) == 8 and len(set(ids.tolist())) == 4
        assert all((ids == i).sum() == 2 for i in set(ids.tolist()))
        # Both groups have 5 identities, enough for a whole batch: it comes from one group.
        assert len({groups[i] for i in ids}) == 1
    with pytest.raises(InvalidData, match="two identities"):
        next(pk_batches(np.array([0, 0, 1]), 4, 2, np.random.default_rng(0)))


def test_evaluation_report_keeps_the_pairs_out_of_its_json(fake_embedder):
    from siamese_index.imaging.synthetic import identity_image
    from siamese_index.jsonable import to_jsonable
    from siamese_index.training.datasets import Dataset

    labels = np.repeat(np.arange(6), 3)
    x = np.stack([np.asarray(identity_image(int(i), v % 3, 16))[:, :, None] for v, i in enumerate(labels)])
    data = Dataset(
        x, labels, [f"p{i}" for i in range(6)], [""] * 6, [f"r{i}" for i in range(len(x))], [("bad.png", "x")]
    )
    report = evaluate(fake_embedder, data, seed=2)
    assert report.model_id == "fake-1" and report.threshold == 0.5
    assert report.pairs is not None and len(report.pairs.distances) == report.verification["pairs"] == 36
    same = data.labels[report.pairs.rows_a] == data.labels[report.pairs.rows_b]
    assert np.array_equal(same, report.pairs.labels == 1)
    d = np.linalg.norm(
        fake_embedder.embed_batch(x[report.pairs.rows_a]) - fake_embedder.embed_batch(x[report.pairs.rows_b]), axis=1
    )
    np.testing.assert_allclose(report.pairs.distances, d, rtol=1e-5)
    out = report.to_dict()
    assert set(out) == {"model_id", "threshold", "verification", "one_shot", "skipped"}  # no n_way asked
    assert out["skipped"] == [{"path": "bad.png", "reason": "x"}]
    assert json.loads(json.dumps(to_jsonable(out))) == to_jsonable(out)
