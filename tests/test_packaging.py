"""The wheel a user installs: built from the repository, installed without -e into a fresh venv.

The fresh venv gets the heavy dependencies (TensorFlow, FAISS, ...) from this environment's
site-packages through a .pth file, so nothing is downloaded; the wheel itself goes in with
--no-deps. Everything then runs from a folder outside the repository, so only what the wheel
carries can be found (the shipped towers included).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Import names of the run-time dependencies (pyproject's [project] dependencies).
DEPENDENCIES = (
    "tensorflow",
    "keras",
    "faiss",
    "numpy",
    "PIL",
    "click",
    "sqlalchemy",
    "filelock",
    "cv2",
    "matplotlib",
    "fastapi",
    "uvicorn",
    "multipart",
    "pillow_heif",
)


def build_wheel(out: Path) -> Path:
    """`pip wheel . --no-deps`; without build isolation when this environment can build offline."""
    command = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-w", str(out), "-q"]
    try:
        import setuptools

        if int(setuptools.__version__.split(".")[0]) >= 77:
            command.append("--no-build-isolation")
    except ImportError:
        pass
    subprocess.run(command, check=True, cwd=out, capture_output=True, text=True)
    [wheel] = out.glob("siamese_index-*.whl")
    return wheel


def dependency_dirs() -> list[str]:
    """The site-packages folders this environment loads the dependencies from."""
    found = []
    for name in DEPENDENCIES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        location = Path(spec.origin).parent
        folder = location.parent if spec.submodule_search_locations else location
        if str(folder) not in found:
            found.append(str(folder))
    return found


def fresh_venv(where: Path) -> Path:
    venv.EnvBuilder(with_pip=True, symlinks=os.name != "nt").create(where)  # ensurepip: offline
    python = where / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "siamese_index_test_deps.pth").write_text("\n".join(dependency_dirs()) + "\n")
    return python


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of a fresh venv with the wheel installed, a work folder outside the repository)."""
    base = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(base)
    python = fresh_venv(base / "venv")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True,
        capture_output=True,
        text=True,
    )
    work = base / "work"
    work.mkdir()
    return python, wheel, work


def run(python: Path, work: Path, *args: str) -> subprocess.CompletedProcess:
    script = python.parent / ("siamese-index.exe" if os.name == "nt" else "siamese-index")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SIAMESE_INDEX_HOME", "SIAMESE_INDEX_MODEL")}
    return subprocess.run([str(script), *args], cwd=work, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_wheel_carries_the_package_the_cli_and_the_towers(installed):
    _, wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "siamese_index/py.typed" in names and "siamese_index/cli/main.py" in names
    assert not any(n.startswith(("cli/", "tests/", "models/")) for n in names), "no top-level cli, tests or models"
    for tower in ("faces-v5", "demo-cartoon-v1"):
        assert {f"siamese_index/models/{tower}/config.json", f"siamese_index/models/{tower}/model.weights.h5"} <= names
    assert any(n.endswith("licenses/LICENSE") for n in names)


@pytest.mark.slow
def test_the_installed_wheel_imports_and_knows_its_version(installed):
    python, _, work = installed
    probe = (
        "import siamese_index, sys; from siamese_index import SiameseIndex; "
        "from siamese_index.config import MODELS_DIR, resolve_model_dir; "
        "print(siamese_index.__file__); print(MODELS_DIR); print(resolve_model_dir()); "
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([str(python), "-c", probe], cwd=work, capture_output=True, text=True, check=True)
    package, models, default_model, tf_loaded = out.stdout.split("\n")[:4]
    venv_dir = str(python.parent.parent)
    assert package.startswith(venv_dir) and models.startswith(venv_dir), out.stdout  # not the repository's copy
    assert Path(default_model).name == "faces-v5" and (Path(default_model) / "model.weights.h5").is_file()
    assert tf_loaded == "False"
    from siamese_index import __version__

    version = run(python, work, "--version")
    assert version.returncode == 0 and version.stdout.strip().endswith(__version__)


@pytest.mark.slow
def test_the_installed_demo_runs(installed):
    python, _, work = installed
    result = run(python, work, "demo", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["enrolled"] == 8 and summary["known_right"] >= 6 and summary["strangers_refused"] >= 3
    assert "/site-packages/siamese_index/models/demo-cartoon-v1" in summary["model"].replace("\\", "/")


@pytest.mark.slow
def test_the_installed_cli_identifies_with_the_default_model(installed):
    python, _, work = installed
    from siamese_index.imaging.synthetic import identity_image

    for person in range(3):
        for variant in range(2):
            identity_image(person, variant, 64, "RGB").save(work / f"p{person}_{variant}.png")
    home = str(work / "home")
    for person in range(3):  # synthetic shapes have no face: enrolled whole
        enrolled = run(
            python, work, "enroll", "--id", f"E{person}", f"p{person}_0.png", "--allow-no-face", "--home", home
        )
        assert enrolled.returncode == 0, enrolled.stderr
    found = run(python, work, "identify", "p1_1.png", "--home", home, "--json")
    assert found.returncode == 0, found.stderr
    [answer] = json.loads(found.stdout)
    assert answer["candidates"][0]["id"] == "E1"
    status = json.loads(run(python, work, "status", "--home", home, "--json").stdout)
    assert status["model"]["model_dir"].replace("\\", "/").endswith("site-packages/siamese_index/models/faces-v5")
