"""train, evaluate and embed through click's test runner; --help never imports TensorFlow."""

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from siamese_index.cli.main import cli
from siamese_index.imaging.synthetic import make_identity_folder


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    root = make_identity_folder(tmp_path_factory.mktemp("ids"), identities=10, per_identity=4)
    (root / "person03" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
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
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    return root, out, result


def test_train_writes_a_model_and_reports_skips(cli_model):
    root, out, result = cli_model
    config = json.loads(result.stdout)
    assert config["arch"] == "seed-conv" and config["input_shape"] == [24, 24, 1]
    assert (out / "config.json").is_file() and (out / "model.weights.h5").is_file()
    assert "corrupt.jpg" in result.stderr and "epoch 2/2" in result.stderr


def test_evaluate_json_keys(cli_model, tmp_path):
    root, out, _ = cli_model
    plot = tmp_path / "roc.png"
    grid = tmp_path / "pairs.png"
    result = CliRunner().invoke(
        cli,
        [
            "evaluate",
            str(root),
            "--model",
            str(out),
            "--json",
            "--plot",
            str(plot),
            "--pairs-figure",
            str(grid),
            "--n-way",
            "3",
            "--tasks",
            "20",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for key in ("accuracy", "best_accuracy", "auc", "eer", "tar_at_far_1pct"):
        assert key in report["verification"]
    assert report["one_shot"]["identities"] == 10 and report["one_shot"]["probes"] == 30
    assert {"rank1", "rank5"} <= set(report["one_shot"])
    assert report["n_way"]["tasks"] == 20 and 0 <= report["n_way"]["accuracy"] <= 1
    assert any("corrupt.jpg" in s["path"] for s in report["skipped"])
    assert plot.stat().st_size > 1000 and grid.stat().st_size > 1000


def test_evaluate_text_and_given_pairs(cli_model, tmp_path):
    root, out, _ = cli_model
    csv = root / "pairs.csv"
    csv.write_text("image_a,image_b,label\nperson00/00.png,person00/01.png,1\nperson00/00.png,person01/00.png,0\n")
    result = CliRunner().invoke(cli, ["evaluate", "--pairs", str(csv), "--model", str(out)])
    assert result.exit_code == 0, result.output
    assert "verification on 2 given pairs" in result.output and "optimistic" in result.output


def test_embed_json_lines_and_npy(cli_model, tmp_path):
    root, out, _ = cli_model
    files = [str(root / "person00" / "00.png"), str(root / "person01" / "00.png")]
    result = CliRunner().invoke(cli, ["embed", *files, "--model", str(out)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(l) for l in result.stdout.splitlines()]
    assert [l["path"] for l in lines] == files and len(lines[0]["embedding"]) == 50
    npy = tmp_path / "v.npy"
    result = CliRunner().invoke(cli, ["embed", *files, "--model", str(out), "--out", str(npy)])
    assert result.exit_code == 0 and np.load(npy).shape == (2, 50)
    assert np.allclose(np.load(npy)[0], lines[0]["embedding"], atol=1e-5)


def test_clear_errors(cli_model, tmp_path):
    root, out, _ = cli_model
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    result = CliRunner().invoke(cli, ["embed", str(bad), "--model", str(out)])
    assert result.exit_code == 1 and "bad.png" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["evaluate", str(root), "--model", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "no such model directory" in result.output
    result = CliRunner().invoke(cli, ["train", str(root), "--out", str(out)])
    assert result.exit_code == 1 and "already exists" in result.output


def _all_commands(group, prefix=()):
    for name, cmd in group.commands.items():
        yield (*prefix, name), cmd
        if hasattr(cmd, "commands"):
            yield from _all_commands(cmd, (*prefix, name))


def test_every_command_has_help_text():
    for path, cmd in _all_commands(cli):
        assert cmd.help, f"{' '.join(path)} has no help"
        result = CliRunner().invoke(cli, [*path, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output


def test_help_and_import_do_not_import_tensorflow():
    code = (
        "import sys, siamese_index, siamese_index.index.facade\n"
        "from click.testing import CliRunner\n"
        "from siamese_index.cli.main import cli\n"
        "r = CliRunner().invoke(cli, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "for name in ['train', 'evaluate']:\n"
        "    assert CliRunner().invoke(cli, [name, '--help']).exit_code == 0\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'fastapi', 'uvicorn')]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_evaluate_held_out_uses_only_people_never_trained_on(cli_model):
    root, out, result = cli_model
    held_out = json.loads(result.stdout)["training"]["val_identity_names"]
    report = json.loads(
        CliRunner().invoke(cli, ["evaluate", str(root), "--model", str(out), "--held-out", "--json"]).stdout
    )
    assert report["one_shot"]["identities"] == len(held_out) == 3


def test_embed_skips_a_bad_file_and_exits_1(cli_model, tmp_path):
    root, out, _ = cli_model
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    good = str(root / "person00" / "00.png")
    result = CliRunner().invoke(cli, ["embed", good, str(bad), "--model", str(out)])
    assert result.exit_code == 1 and "bad.png" in result.stderr
    assert [json.loads(l)["path"] for l in result.stdout.splitlines()] == [good]
