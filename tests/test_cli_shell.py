"""The command line's shell: --help by task, one error format, a quiet TensorFlow, --verbose."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from siamese_index.cli.main import OTHER_SECTION, SECTIONS, cli
from siamese_index.config import MODELS_DIR
from siamese_index.imaging.synthetic import cartoon_face

# What TensorFlow's C++ start-up writes on a machine like this one (any of them).
TF_NOISE = re.compile(r"absl::InitializeLog|cuda|cuInit|oneDNN|cpu_feature_guard|TensorFlow binary|tensorflow", re.I)


def invoke(*args: str) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


def help_sections(text: str) -> dict[str, list[str]]:
    """{section title: [command names]} from the group's --help."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = line[:-1]
            sections[current] = []
        elif current and line.startswith("  ") and not line.startswith("   "):
            sections[current].append(line.split()[0])
    return {k: v for k, v in sections.items() if k not in ("Options",)}


def test_help_lists_every_command_once_by_task():
    result = invoke("--help")
    assert result.exit_code == 0
    sections = help_sections(result.output)
    assert list(sections) == list(SECTIONS), "sections in the designed order, no 'Other commands'"
    listed = [name for names in sections.values() for name in names]
    assert sorted(listed) == sorted(cli.commands), "every command appears"
    assert len(listed) == len(set(listed)), "and in exactly one section"
    assert sections["People"][:2] == ["enroll", "enroll-dir"] and "identify" in sections["Lookup"]
    assert OTHER_SECTION not in result.output


def test_every_command_is_placed_in_a_section():
    placed = [name for names in SECTIONS.values() for name in names]
    assert sorted(placed) == sorted(cli.commands), f"unplaced: {set(cli.commands) - set(placed)}"


def test_help_never_imports_tensorflow():
    names = sorted(cli.commands)
    probe = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from siamese_index.cli.main import cli\n"
        f"for args in [['--help'], ['--version'], *[[n, '--help'] for n in {names!r}]]:\n"
        "    r = CliRunner().invoke(cli, args)\n"
        "    assert r.exit_code == 0, (args, r.output)\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'fastapi', 'faiss') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=120)


# -- errors ---------------------------------------------------------------------------------------
MISSING_HOME_COMMANDS = [
    ["status"],
    ["people", "list"],
    ["check"],
    ["models", "list"],
    ["keys", "list"],
    ["backup", "{tmp}/copy"],
]


@pytest.mark.parametrize("args", MISSING_HOME_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_a_library_error_is_one_error_line_or_json(args, tmp_path):
    args = [a.format(tmp=tmp_path) for a in args] + ["--home", str(tmp_path / "no-home")]
    plain = invoke(*args)
    assert plain.exit_code == 1
    assert plain.stdout == "" and plain.stderr.startswith("error: no siamese-index home at ")
    assert plain.stderr.count("error:") == 1 and "Traceback" not in plain.stderr
    as_json = invoke(*args, "--json")
    assert as_json.exit_code == 1 and as_json.stderr == ""
    error = json.loads(as_json.stdout)["error"]
    assert error["type"] == "NotFound" and error["message"].startswith("no siamese-index home at ")
    assert "file" not in error


def test_a_bad_image_names_its_file_in_json(tmp_path):
    missing = tmp_path / "nobody.png"
    result = CliRunner(env={"SIAMESE_INDEX_HOME": str(tmp_path / "h")}).invoke(
        cli, ["verify", str(missing), str(missing), "--json"]
    )
    error = json.loads(result.stdout)["error"]
    assert result.exit_code == 1
    assert error == {"type": "InvalidImage", "message": f"{missing}: no such file", "file": str(missing)}


def test_a_usage_error_exits_2_with_the_same_prefix():
    plain = invoke("identify", "--no-such-option", "x.png")
    assert plain.exit_code == 2
    assert plain.stderr.startswith("error: No such option") and "Usage: " in plain.stderr
    as_json = invoke("status", "--json", "--no-such-option")
    assert as_json.exit_code == 2
    assert json.loads(as_json.stdout)["error"]["type"] == "UsageError"
    missing_argument = invoke("verify", "only-one.png")
    assert missing_argument.exit_code == 2 and missing_argument.stderr.startswith("error: Missing argument")


def test_an_unknown_command_is_a_usage_error():
    result = invoke("identfy")
    assert result.exit_code == 2 and result.stderr.startswith("error: No such command 'identfy'")


def test_an_operating_system_error_is_one_line(tmp_path):
    from click import command

    from siamese_index.cli.output import handle_errors

    @command()
    @handle_errors
    def explode():
        raise PermissionError(13, "Permission denied", str(tmp_path / "locked"))

    result = CliRunner().invoke(explode, [])
    assert result.exit_code == 1
    assert result.stderr == f"error: {tmp_path / 'locked'}: Permission denied\n"


# -- a quiet TensorFlow ---------------------------------------------------------------------------
def embed_in_a_subprocess(tmp_path: Path, *global_options: str) -> subprocess.CompletedProcess:
    photo = tmp_path / "face.png"
    cartoon_face(100_001, 0, 32).save(photo)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "GRPC_"))}  # as a user's shell
    command = [sys.executable, "-m", "siamese_index.cli", *global_options, "embed", str(photo)]
    command += ["--model", str(MODELS_DIR / "demo-cartoon-v1")]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_embed_prints_nothing_from_tensorflow(tmp_path):
    result = embed_in_a_subprocess(tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[0])["embedding"]
    assert result.stderr == "", f"stderr should be empty, got:\n{result.stderr}"


@pytest.mark.slow  # trains or starts TensorFlow in a subprocess: seconds; CI runs it
def test_verbose_lets_tensorflow_speak(tmp_path):
    result = embed_in_a_subprocess(tmp_path, "--verbose")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[0])["embedding"]
    assert TF_NOISE.search(result.stderr), f"expected TensorFlow's start-up lines, got:\n{result.stderr}"


def test_stderr_muted_restores_the_descriptor(capfd):
    from siamese_index.cli.output import stderr_muted

    with stderr_muted():
        os.write(2, b"hidden\n")
    os.write(2, b"shown\n")
    assert capfd.readouterr().err == "shown\n"
