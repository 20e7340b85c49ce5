"""`calibrate`: a model's threshold chosen again on people it never trained on, through the CLI."""

import json
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner

from siamese_index.cli.main import cli
from siamese_index.imaging.synthetic import identity_image, make_identity_folder
from siamese_index.towers.embedder import KerasEmbedder
from siamese_index.training.datasets import load_dataset
from siamese_index.training.metrics import accuracy_at, best_threshold, impostor_far_table
from siamese_index.training.pairs import sample_pairs


def _new_people(root, first: int, count: int, per_identity: int):
    """Folders of people the model never saw (identity numbers from first on)."""
    for i in range(first, first + count):
        d = root / f"stranger{i}"
        d.mkdir(parents=True)
        for v in range(per_identity):
            identity_image(i, v, 32).save(d / f"{v:02d}.png")
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = make_identity_folder(tmp_path_factory.mktemp("ids"), identities=10, per_identity=4)
    out = tmp_path_factory.mktemp("m") / "tower"
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
            "2",
            "--size",
            "24x24",
            "--steps-per-epoch",
            "3",
            "--augment",
            "none",
            "--val-fraction",
            "0.3",
            "--seed",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    return root, out


def _calibrate(*args):
    return CliRunner().invoke(cli, ["calibrate", *map(str, args)])


def test_calibrate_on_new_people_keeps_the_weights_and_records_the_choice(model, tmp_path):
    _, out = model
    small = _new_people(tmp_path / "small", 100, 4, 3)
    large = _new_people(tmp_path / "large", 200, 12, 5)
    new = tmp_path / "calibrated"
    result = _calibrate(small, large, "--model", out, "--out", new, "--seed", 4, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    old, cal = KerasEmbedder(out), KerasEmbedder(new)
    assert cal.model_id == old.model_id == record["model_id"]
    assert record["previous_threshold"] == old.threshold and cal.threshold == record["threshold"]
    # Each set weighs the same: the large one is cut to the small one's number of pairs.
    assert [s["pairs"] for s in record["sets"]] == [24, 24]
    assert [s["identities"] for s in record["sets"]] == [4, 12]
    # Two sets: no threshold leaves the worse-served set closer to its own best accuracy.
    # Recomputed here the slow way, over every pooled distance as a threshold.
    sets = []
    for folder in (small, large):
        data = load_dataset(folder, cal.preprocessing)
        emb = cal.embed_batch(data.x)
        a, b, y = sample_pairs(data.labels, n_pairs=24, seed=4)
        sets.append((np.linalg.norm(emb[a] - emb[b], axis=1), y))
    best = [best_threshold(d, y)[1] for d, y in sets]

    def worst_loss(t):
        return max(b - accuracy_at(d, y, t) for (d, y), b in zip(sets, best))

    pooled = np.concatenate([d for d, _ in sets])
    assert worst_loss(cal.threshold) == pytest.approx(min(worst_loss(t) for t in [*pooled, pooled.max() + 1]))
    assert [s["accuracy_lost"] for s in record["sets"]] == pytest.approx(
        [b - accuracy_at(d, y, cal.threshold) for (d, y), b in zip(sets, best)]
    )
    # The unknown-person impostor table comes from the set with the most people.
    assert record["impostor_table_from"] == str(large)
    assert np.allclose(cal.config.metrics["impostor_far_table"], impostor_far_table(emb, data.labels, seed=4))
    assert "calibrate" in cal.config.threshold_method and cal.config.training["calibration"]["seed"] == 4
    x = load_dataset(small, cal.preprocessing).x[:3]
    assert np.array_equal(cal.embed_batch(x), old.embed_batch(x))


def test_calibrate_refuses_people_the_model_trained_on(model, tmp_path):
    root, out = model
    result = _calibrate(root, "--model", out, "--out", tmp_path / "leaky")
    assert result.exit_code != 0
    assert "7 of its identities" in result.output and "trained" in result.output and "--held-out" in result.output
    assert not (tmp_path / "leaky").exists()
    # Its held-out people are fair game (with new people beside them: three alone are few).
    strangers = _new_people(tmp_path / "s", 300, 5, 3)
    result = _calibrate(root, strangers, "--held-out", "--model", out, "--out", tmp_path / "ok", "--json")
    assert result.exit_code == 0, result.output
    held = json.loads((out / "config.json").read_text())["training"]["val_identity_names"]
    assert json.loads(result.stdout)["sets"][0]["identities"] == len(held) == 3
    # --held-out with none of the folders the model trained on would filter nothing: refused.
    result = _calibrate(strangers, "--held-out", "--model", out, "--out", tmp_path / "none")
    assert result.exit_code != 0 and "--held-out" in result.output and str(root) in result.output


def test_calibrate_errors_name_the_problem_and_keep_what_exists(model, tmp_path):
    _, out = model
    singles = _new_people(tmp_path / "singles", 400, 5, 1)
    result = _calibrate(singles, "--model", out, "--out", tmp_path / "x")
    assert result.exit_code != 0 and str(singles) in result.output and "two images" in result.output
    people = _new_people(tmp_path / "people", 500, 4, 3)
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    result = _calibrate(people, "--model", out, "--out", existing)
    assert result.exit_code != 0 and "already exists" in result.output
    assert (existing / "keep.txt").read_text() == "mine"
    result = _calibrate(people, "--model", out, "--out", tmp_path / "new")
    assert result.exit_code == 0 and "threshold" in result.output and "accuracy" in result.output


def _stored_vectors(home):
    with sqlite3.connect(home / "index.db") as conn:
        return conn.execute("SELECT image_id, model_version, vector FROM embeddings ORDER BY image_id").fetchall()


def _set_threshold(home, *args):
    return CliRunner().invoke(cli, ["models", "set-threshold", *map(str, args), "--home", str(home)])


def test_a_home_adopts_a_recalibrated_threshold_without_re_embedding(model, tmp_path):
    from siamese_index.index.facade import SiameseIndex

    root, out = model
    people = _new_people(tmp_path / "enrolled", 600, 3, 2)
    home = tmp_path / "home"
    serving = SiameseIndex.open(home, model=out)
    for folder in sorted(people.iterdir()):
        serving.enroll(folder.name, [folder / "00.png"])
    vectors_before = _stored_vectors(home)
    new = tmp_path / "calibrated"
    assert _calibrate(_new_people(tmp_path / "cal", 700, 8, 4), "--model", out, "--out", new).exit_code == 0
    chosen = KerasEmbedder(new).threshold
    old = KerasEmbedder(out).threshold
    assert chosen != old

    result = _set_threshold(home, "--from", new, "--json")
    assert result.exit_code == 0, result.output
    rep = json.loads(result.stdout)
    assert (rep["version"], rep["previous_threshold"], rep["threshold"]) == (1, old, chosen)
    # The open index (another process's view) adopts it on its next request; the vectors stay.
    probe = people / "stranger600" / "01.png"
    serving.refresh()
    assert serving.threshold == chosen
    assert serving.operating_point().threshold <= chosen
    # A home opened later, even with the old directory named, serves the home's choice.
    with SiameseIndex.open(home, model=out, create=False) as again:
        assert again.threshold == chosen
        d = again.identify([probe])[0].candidates[0].distance
    show = json.loads(CliRunner().invoke(cli, ["models", "show", "--home", str(home), "--json"]).stdout)
    assert show["threshold"] == chosen and show["scores"]["threshold_set"]["source"] == str(new.resolve())

    # By hand, just under the probe's distance to its own person: the answer becomes "unknown".
    assert _set_threshold(home, "--value", d * 0.9).exit_code == 0
    answer = serving.identify([probe])[0]
    assert not answer.known and answer.threshold <= d * 0.9
    serving.close()
    assert _stored_vectors(home) == vectors_before  # nothing was re-embedded or touched


def test_set_threshold_refuses_other_weights_and_bad_values(model, tmp_path):
    from siamese_index.index.facade import SiameseIndex

    root, out = model
    home = tmp_path / "home"
    photo = tmp_path / "someone.png"
    identity_image(900, 0, 32).save(photo)
    with SiameseIndex.open(home, model=out) as idx:
        idx.enroll("someone", [photo])
    other = tmp_path / "other"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            str(root),
            "--out",
            str(other),
            "--arch",
            "seed-conv",
            "--epochs",
            "1",
            "--size",
            "24x24",
            "--steps-per-epoch",
            "1",
            "--augment",
            "none",
            "--val-fraction",
            "0.3",
            "--seed",
            "9",
        ],
    )
    assert result.exit_code == 0, result.output
    before = json.loads(CliRunner().invoke(cli, ["models", "show", "--home", str(home), "--json"]).stdout)
    result = _set_threshold(home, "--from", other)
    assert result.exit_code == 1 and str(other) in result.output and "same weights" in result.output
    for args, words in (
        (["--value", "-0.2"], "positive"),
        (["--value", "nan"], "positive"),
        ([], "--from DIR or --value"),
        (["--value", "0.3", "--from", other], "--from DIR or --value"),
        (["7", "--value", "0.3"], "no model version 7"),
    ):
        result = _set_threshold(home, *args)
        assert result.exit_code != 0 and words in result.output, (args, result.output)
    after = json.loads(CliRunner().invoke(cli, ["models", "show", "--home", str(home), "--json"]).stdout)
    assert after == before
