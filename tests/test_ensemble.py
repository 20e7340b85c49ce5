"""`ensemble`: trained towers joined into one model directory, through the CLI."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from siamese_index.cli.main import cli
from siamese_index.imaging.synthetic import make_identity_folder
from siamese_index.towers.architectures import ensemble_members
from siamese_index.towers.embedder import KerasEmbedder
from siamese_index.training.datasets import load_dataset


def _train(root, out, *extra):
    result = CliRunner().invoke(
        cli,
        [
            "train",
            str(root),
            "--out",
            str(out),
            "--arch",
            "seed-conv",
            "--epochs",
            "1",
            "--steps-per-epoch",
            "2",
            "--augment",
            "none",
            "--val-fraction",
            "0.3",
            "--seed",
            "3",
            *extra,
        ],
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    root = make_identity_folder(tmp_path_factory.mktemp("ids"), identities=10, per_identity=4)
    models = tmp_path_factory.mktemp("m")
    a = _train(root, models / "a", "--size", "24x24")
    b = _train(root, models / "b", "--size", "24x24", "--lr", "3e-3")
    other = _train(root, models / "other", "--size", "28x28")
    elsewhere = make_identity_folder(tmp_path_factory.mktemp("ids") / "elsewhere", identities=10, per_identity=4)
    foreign = _train(elsewhere, models / "foreign", "--size", "24x24")
    return root, a, b, other, foreign


def test_ensemble_embeds_as_its_members_side_by_side(members, tmp_path):
    root, a, b, _, _ = members
    out = tmp_path / "ens"
    result = CliRunner().invoke(cli, ["ensemble", str(a), str(b), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)
    assert config["embedding_dim"] == 100 and config["threshold"] is None
    assert config["model_id"].startswith("ensemble-") and "/" not in config["model_id"]
    assert [m["model_dir"] for m in config["training"]["ensemble_of"]] == [str(a), str(b)]
    ens, ea, eb = KerasEmbedder(out), KerasEmbedder(a), KerasEmbedder(b)  # loading checks the weights hash
    x = load_dataset(root, ens.preprocessing).x[:6]
    expected = np.concatenate([ea.embed_batch(x), eb.embed_batch(x)], axis=1) / np.sqrt(2)
    assert np.allclose(ens.embed_batch(x), expected, atol=1e-5)
    # Both members held out the same people (same seed), so the ensemble may be calibrated on them.
    assert config["training"]["val_identity_names"] == ea.config.training["val_identity_names"]
    result = CliRunner().invoke(
        cli, ["calibrate", str(root), "--held-out", "--model", str(out), "--out", str(tmp_path / "cal"), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert KerasEmbedder(tmp_path / "cal").threshold == json.loads(result.stdout)["threshold"] > 0


def test_ensemble_refuses_members_that_do_not_fit_together(members, tmp_path):
    _, a, _, other, foreign = members
    result = CliRunner().invoke(cli, ["ensemble", str(a), str(other), "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and str(other) in result.output and "same input" in result.output
    # Which people are unseen is known only when the members trained on the same data.
    result = CliRunner().invoke(cli, ["ensemble", str(a), str(foreign), "--out", str(tmp_path / "x")])
    assert result.exit_code != 0 and str(foreign) in result.output and "share their training data" in result.output
    result = CliRunner().invoke(cli, ["ensemble", str(a), "--out", str(tmp_path / "y")])
    assert result.exit_code != 0 and "at least two" in result.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_ensemble_arch_strings_are_checked():
    assert ensemble_members("ensemble:facenet-s/128+seed-conv/50") == [("facenet-s", 128), ("seed-conv", 50)]
    for bad in ("ensemble:facenet-s/128", "ensemble:nope/3+facenet-s/128", "ensemble:facenet-s+facenet-s"):
        with pytest.raises(ValueError, match="malformed"):
            ensemble_members(bad)
