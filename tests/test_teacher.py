"""Distillation from a teacher: teacher files, the loss, a real training run, dlib's teacher."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from siamese_index.cli.main import cli
from siamese_index.errors import InvalidData, InvalidImage
from siamese_index.imaging.loading import Preprocessing, open_image
from siamese_index.imaging.synthetic import make_face_folder, make_identity_folder
from siamese_index.towers.embedder import KerasEmbedder
from siamese_index.training.datasets import load_dataset
from siamese_index.training.teacher import compute_teacher_file, teacher_targets
from siamese_index.training.trainer import TrainOptions, train

from .shared_data import shared_path

PREP = Preprocessing(24, 24, 1)


class MeanTeacher:
    """A stand-in teacher: an image's 4 quadrant means, so equal images get equal vectors."""

    name = "quadrant-means"

    def embed(self, path):
        a = np.asarray(open_image(path).convert("L"), np.float32)
        h, w = a.shape[0] // 2, a.shape[1] // 2
        return np.array([a[:h, :w].mean(), a[:h, w:].mean(), a[h:, :w].mean(), a[h:, w:].mean()]) + 1.0, True


def _write_teacher(path, paths, vectors):
    np.savez(path, paths=np.array(paths), vectors=np.asarray(vectors, np.float32))
    return path


def test_teacher_file_rows_are_matched_by_relative_path(tmp_path):
    root = make_identity_folder(tmp_path / "ids", identities=3, per_identity=2)
    data = load_dataset(root, PREP)
    # Teacher vectors for two of the six images only, listed out of order, not unit length.
    f = _write_teacher(tmp_path / "t.npz", ["person02/01.png", "person00/00.png"], [[0, 3, 4], [2, 0, 0]])
    targets, mask, _ = teacher_targets(f, root, data.paths)
    rel = [p.split("ids/")[1] for p in data.paths]
    assert mask.tolist() == [r in ("person02/01.png", "person00/00.png") for r in rel]
    np.testing.assert_allclose(targets[rel.index("person02/01.png")], [0, 0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(targets[rel.index("person00/00.png")], [1, 0, 0])
    assert not targets[~mask].any()


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"paths": np.array(["a.png"])}, "missing array 'vectors'"),
        ({"paths": np.array(["a.png", "b.png"]), "vectors": np.ones((3, 4))}, "one row per path"),
        ({"paths": np.array(["person00/00.png"]), "vectors": np.zeros((1, 4))}, "non-zero"),
        ({"paths": np.array(["elsewhere/x.png"]), "vectors": np.ones((1, 4))}, "relative to the data folder"),
    ],
)
def test_bad_teacher_files_are_refused_by_name(tmp_path, arrays, message):
    root = make_identity_folder(tmp_path / "ids", identities=2, per_identity=2)
    f = tmp_path / "bad.npz"
    np.savez(f, **arrays)
    with pytest.raises(InvalidData, match=message) as err:
        teacher_targets(f, root, load_dataset(root, PREP).paths)
    assert "bad.npz" in str(err.value)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InvalidData, match="junk.npz: not a readable"):
        teacher_targets(tmp_path / "junk.npz", root, [])


def test_distillation_loss_matches_a_hand_computed_value():
    from siamese_index.towers.losses import distillation_loss

    emb = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
    # Targets, then the has-a-teacher flag: the third row has none and must not count.
    y = np.array([[0.0, 1.0, 1.0], [0.0, 1.0, 1.0], [-1.0, 0.0, 0.0]], np.float32)
    # Row 1: (1-0)^2 + (0-1)^2 = 2; row 2: 0; mean over the two rows with a teacher = 1.
    assert float(distillation_loss()(y, emb)) == pytest.approx(1.0)


def test_compute_teacher_file_skips_bad_images_and_round_trips(tmp_path):
    root = make_identity_folder(tmp_path / "ids", identities=3, per_identity=2)
    (root / "person01" / "broken.png").write_bytes(b"\x89PNG truncated")
    seen = []
    summary = compute_teacher_file(
        root, tmp_path / "out" / "t.npz", teacher=MeanTeacher(), progress=lambda d, t: seen.append((d, t))
    )
    assert summary.images == 6 and summary.dim == 4 and summary.faces_detected == 6
    assert [s["path"].endswith("broken.png") for s in summary.skipped] == [True]
    assert set(summary.to_dict()) == {"out", "images", "faces_detected", "dim", "skipped"}
    assert seen[-1] == (7, 7)
    saved = np.load(tmp_path / "out" / "t.npz")
    assert sorted(saved["paths"].tolist())[0] == "person00/00.png" and str(saved["teacher"]) == "quadrant-means"
    assert not list((tmp_path / "out").glob("*.tmp*")), "the file is written whole or not at all"
    targets, mask, name = teacher_targets(tmp_path / "out" / "t.npz", root, load_dataset(root, PREP).paths)
    assert mask.all() and name == "quadrant-means"
    np.testing.assert_allclose(np.linalg.norm(targets, axis=1), 1.0, rtol=1e-6)


def _distance_to_teacher(model_dir, x, targets):
    emb = KerasEmbedder(model_dir).embed_batch(x)
    return float(np.mean(np.sum((emb - targets) ** 2, axis=1)))


@pytest.mark.slow  # trains or starts TensorFlow in a subprocess: seconds; CI runs it
def test_distillation_pulls_embeddings_towards_the_teacher(tmp_path):
    root = make_identity_folder(tmp_path / "ids", identities=12, per_identity=4)
    data = load_dataset(root, PREP)
    # The teacher gives each person a random direction, each photo a little noise around it.
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, 16))
    vectors = centres[data.labels] + 0.1 * rng.normal(size=(len(data), 16))
    rel = [p.split("ids/")[1] for p in data.paths]
    f = _write_teacher(tmp_path / "t.npz", rel, vectors)
    targets, _, _ = teacher_targets(f, root, data.paths)
    base = dict(
        arch="facenet-s",
        embedding_dim=16,
        epochs=6,
        seed=0,
        val_fraction=0.25,
        identities_per_batch=6,
        images_per_identity=4,
        steps_per_epoch=8,
        learning_rate=3e-3,
        augmentation="none",
    )
    plain = train(data, tmp_path / "plain", TrainOptions(**base), PREP, source=str(root))
    taught = train(
        data, tmp_path / "taught", TrainOptions(**base, teacher_file=f, teacher_weight=20.0), PREP, source=str(root)
    )
    assert taught.training["teacher"]["rows"] == 36 and plain.training["teacher"] is None
    # Training rows only were distilled; their embeddings must now sit near the teacher's.
    train_rows = ~np.isin(np.array(data.names)[data.labels], taught.training["val_identity_names"])
    x, t = data.x[train_rows], targets[train_rows]
    assert _distance_to_teacher(tmp_path / "taught", x, t) < 0.5 * _distance_to_teacher(tmp_path / "plain", x, t)


def test_distillation_checks_dimension_and_mode(tmp_path):
    root = make_identity_folder(tmp_path / "ids", identities=10, per_identity=3)
    data = load_dataset(root, PREP)
    f = _write_teacher(tmp_path / "t.npz", [p.split("ids/")[1] for p in data.paths], np.ones((len(data), 8)))
    with pytest.raises(InvalidData, match="--embedding-dim 8"):
        train(
            data,
            tmp_path / "m",
            TrainOptions(arch="facenet-s", embedding_dim=16, epochs=1, steps_per_epoch=1, teacher_file=f),
            PREP,
            source=str(root),
        )
    with pytest.raises(InvalidData, match="batch mode"):
        train(
            data,
            tmp_path / "m",
            TrainOptions(arch="facenet-s", mode="pairs", epochs=1, steps_per_epoch=1, teacher_file=f),
            PREP,
            source=str(root),
        )
    with pytest.raises(InvalidData, match="needs the data folder"):
        train(
            data,
            tmp_path / "m",
            TrainOptions(arch="facenet-s", embedding_dim=8, epochs=1, steps_per_epoch=1, teacher_file=f),
            PREP,
        )
    assert not (tmp_path / "m").exists()


def test_dlib_teacher_through_the_cli(tmp_path):
    pytest.importorskip("dlib", reason='the teacher extra is not installed: pip install -e ".[teacher]"')
    root = make_face_folder(tmp_path / "faces", identities=2, per_identity=2, size=96)
    out = tmp_path / "teacher.npz"
    result = CliRunner().invoke(cli, ["teacher", str(root), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["images"] == 4 and summary["dim"] == 128
    saved = np.load(out)
    assert saved["vectors"].shape == (4, 128) and np.all(np.isfinite(saved["vectors"]))
    assert str(saved["teacher"]) == "dlib_face_recognition_resnet_model_v1"
    (tmp_path / "empty").mkdir()
    bad = CliRunner().invoke(cli, ["teacher", str(tmp_path / "empty"), "--out", str(tmp_path / "x.npz")])
    assert bad.exit_code == 1 and "no images found" in bad.output and not (tmp_path / "x.npz").exists()


def test_dlib_teacher_tells_orl_people_apart():
    pytest.importorskip("dlib", reason='the teacher extra is not installed: pip install -e ".[teacher]"')
    from siamese_index.training.teacher import DlibTeacher

    orl = shared_path("orl_faces")
    teacher = DlibTeacher()
    vec = {(p, i): teacher.embed(orl / p / f"{i}.pgm")[0] for p in ("s1", "s2") for i in (1, 2, 3)}
    genuine = [np.linalg.norm(vec[p, 1] - vec[p, i]) for p in ("s1", "s2") for i in (2, 3)]
    impostor = [np.linalg.norm(vec["s1", i] - vec["s2", j]) for i in (1, 2, 3) for j in (1, 2, 3)]
    assert max(genuine) < min(impostor)
    with pytest.raises(InvalidImage):
        teacher.embed(orl / "README")
