"""The public API: `import siamese_index` is light, its names are complete, images come in any form."""

from __future__ import annotations

import ast
import inspect
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import siamese_index
from siamese_index import errors, types
from siamese_index.imaging.sources import as_list, read_source
from tests.conftest import identity_array


def test_import_loads_neither_tensorflow_nor_the_web_framework():
    probe = (
        "import sys, siamese_index\n"
        "from siamese_index import SiameseIndexError, Identification, InvalidImage, __version__\n"
        "siamese_index.to_jsonable\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'fastapi', 'starlette', 'uvicorn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=120)


def test_dir_and_all_agree():
    assert sorted(dir(siamese_index)) == sorted(siamese_index.__all__)
    assert len(set(siamese_index.__all__)) == len(siamese_index.__all__)
    for name in ("SiameseIndex", "verify", "dedup", "retrain", "__version__"):
        assert name in siamese_index.__all__


def test_every_result_type_and_error_is_public():
    for module in (types, errors):
        for name, value in vars(module).items():
            if isinstance(value, type) and value.__module__ == module.__name__ and not name.startswith("_"):
                assert getattr(siamese_index, name) is value, name
    assert issubclass(siamese_index.InvalidImage, siamese_index.SiameseIndexError)


def test_every_lazy_name_resolves():
    """Each name of the lazy map loads (in a subprocess: this imports TensorFlow and FastAPI)."""
    probe = "import siamese_index\nfor name in siamese_index.__all__:\n    getattr(siamese_index, name)\n"
    subprocess.run([sys.executable, "-c", probe], check=True, timeout=300)
    with pytest.raises(AttributeError, match="no attribute 'no_such_thing'"):
        siamese_index.no_such_thing  # noqa: B018


def test_type_checkers_see_every_lazy_name():
    """The TYPE_CHECKING block imports exactly the lazy names, from the modules the map names."""
    tree = ast.parse(inspect.getsource(siamese_index))
    [block] = [n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"]
    seen = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom)
        for alias in node.names:
            if alias.name != "*":
                seen[alias.asname or alias.name] = f"{node.module}:{alias.name}"
    assert seen == siamese_index._LAZY  # noqa: SLF001 - the module's own map, read by its test


def test_the_version_is_the_one_the_package_metadata_reports():
    from importlib.metadata import version

    assert version("siamese-index") == siamese_index.__version__


# -- images in any form, through the real facade ---------------------------------------------------
def png_bytes(identity: int, variant: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(identity_array(identity, variant)).save(buf, format="PNG")
    return buf.getvalue()


def test_enroll_and_identify_take_paths_bytes_pil_images_and_arrays(index, make_image):
    kinds = {
        "E0": make_image(0, 0),  # a path
        "E1": png_bytes(1, 0),  # bytes
        "E2": Image.fromarray(identity_array(2, 0)),  # a PIL image
        "E3": identity_array(3, 0),  # a uint8 array
    }
    for person, image in kinds.items():
        [result] = index.enroll(person, image)
        assert result.status == "added", (person, result)
    queries = [
        str(make_image(0, 1)),
        ("upload.png", png_bytes(1, 1)),
        Image.fromarray(identity_array(2, 1)).convert("RGB"),
        identity_array(3, 1).astype(np.float32) / 255.0,  # floats in [0, 1]
    ]
    answers = index.identify(queries)
    assert [a.match.id if a.match else None for a in answers] == ["E0", "E1", "E2", "E3"]
    assert answers[1].query == "upload.png"
    assert answers[2].query.startswith("<image ") and answers[3].query.startswith("<array ")


def test_an_in_memory_image_has_a_stable_name_and_hash(index):
    first, again = read_source(identity_array(4, 0)), read_source(identity_array(4, 0).copy())
    assert first.label == again.label and first.sha256 == again.sha256
    assert first.label == f"<array {first.sha256[:12]}>" and first.ext == ".png"
    assert read_source(Image.fromarray(identity_array(4, 0))).sha256 == first.sha256  # same pixels, same hash
    assert read_source(identity_array(5, 0)).sha256 != first.sha256
    [added] = index.enroll("E4", identity_array(4, 0))
    [repeat] = index.enroll("E4", Image.fromarray(identity_array(4, 0)))
    assert added.status == "added" and repeat.status == "exists" and repeat.image_id == added.image_id


def test_verify_takes_images_in_memory(index):
    same = index.verify(Image.fromarray(identity_array(6, 0)), identity_array(6, 1))
    different = index.verify(identity_array(6, 0), png_bytes(7, 0))
    assert same.same and not different.same
    assert same.image_a.startswith("<image ") and same.image_b.startswith("<array ")


@pytest.mark.parametrize("bad", [42, 3.5, object(), None], ids=["int", "float", "object", "None"])
def test_anything_else_is_a_clear_error_not_a_type_error(index, bad):
    with pytest.raises(siamese_index.InvalidImage, match="expected a path, bytes, a PIL image or a numpy array"):
        index.verify(bad, identity_array(0, 0))
    with pytest.raises(siamese_index.InvalidData, match="images: expected a path, bytes"):
        as_list(bad)
    [result] = index.enroll("E9", [bad])  # inside a list: that one file fails, with the reason
    assert result.status == "failed" and "expected a path, bytes, a PIL image or a numpy array" in result.reason
    [answer] = index.identify([bad])
    assert not answer.known and "expected a path" in answer.error


@pytest.mark.parametrize(
    "array",
    [np.zeros((0, 5), np.uint8), np.zeros((4, 4, 2), np.uint8), np.full((4, 4), np.nan), np.zeros((2, 3, 4, 5))],
    ids=["empty", "two-channels", "nan", "4d"],
)
def test_an_unusable_array_is_an_invalid_image(array):
    with pytest.raises(siamese_index.InvalidImage, match="not usable as an image") as caught:
        read_source(array)
    assert caught.value.path.startswith("<array of shape ")


def test_paths_still_read_as_before(tmp_path):
    path = Path(tmp_path / "p.png")
    Image.fromarray(identity_array(1, 0)).save(path)
    src = read_source(path)
    assert src.label == str(path) and src.ext == ".png" and src.data == path.read_bytes()
    with pytest.raises(siamese_index.InvalidImage, match="no such file"):
        read_source(tmp_path / "missing.png")
    assert as_list(path) == [path] and as_list([path, path]) == [path, path]
    assert as_list(("name.png", b"x")) == [("name.png", b"x")]
