"""Image loading: formats, orientation, modes, and clear errors for bad files."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from siamese_index.errors import InvalidImage
from siamese_index.imaging import loading as images
from siamese_index.imaging.loading import Preprocessing, load_input, open_image, preprocess
from siamese_index.imaging.synthetic import identity_image, make_identity_folder
from siamese_index.training.datasets import load_dataset

PREP = Preprocessing(16, 12, 1)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "PPM", "BMP", "WEBP", "TIFF"])
def test_reads_each_format_to_the_model_shape(tmp_path, fmt):
    path = tmp_path / f"img.{fmt.lower()}"
    identity_image(1, 0, 40, "RGB").save(path, format=fmt)
    arr = load_input(path, PREP)
    assert arr.shape == (16, 12, 1) and arr.dtype == np.uint8
    assert arr.std() > 5  # the picture survived, not a blank


def test_reads_pgm_like_orl(tmp_path):
    path = tmp_path / "1.pgm"
    identity_image(2, 0, 40).save(path)
    assert load_input(path, Preprocessing(20, 20, 3)).shape == (20, 20, 3)


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("L", (40, 20), 0)
    im.paste(255, (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rot.jpg"
    im.save(path, exif=exif.tobytes())
    out = open_image(path)
    assert out.size == (20, 40)  # portrait once orientation is honoured
    arr = np.asarray(out)
    assert arr[:20].mean() > 200 and arr[20:].mean() < 50  # white half now on top


def test_transparency_and_16_bit_modes(tmp_path):
    rgba = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    p = tmp_path / "t.png"
    rgba.save(p)
    assert load_input(p, PREP).min() == 255  # transparent composites on white
    a16 = np.arange(100, dtype=np.uint16).reshape(10, 10) * 600
    p16 = tmp_path / "deep.png"
    Image.fromarray(a16).save(p16)
    arr = load_input(p16, PREP)
    assert arr.min() < 30 and arr.max() > 220


@pytest.mark.parametrize(
    "content,reason",
    [(b"", "empty file"), (b"this is not an image", "not a readable image")],
)
def test_bad_files_name_the_file(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(InvalidImage) as err:
        open_image(path)
    assert str(path) in str(err.value) and reason in str(err.value)


def test_truncated_file_is_reported(tmp_path):
    buf = io.BytesIO()
    identity_image(3, 0, 64, "RGB").save(buf, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(InvalidImage, match="cut.jpg"):
        open_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(InvalidImage, match="no such file"):
        open_image(tmp_path / "nope.png")


def test_pixel_cap_refuses_decompression_bombs(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    path = tmp_path / "big.png"
    Image.new("L", (20, 20)).save(path)
    with pytest.raises(InvalidImage, match="too large"):
        open_image(path)


def test_bytes_input_and_crop():
    buf = io.BytesIO()
    im = Image.new("L", (100, 100), 0)
    im.paste(255, (25, 25, 75, 75))
    im.save(buf, format="PNG")
    arr = preprocess(open_image(buf.getvalue(), "upload.png"), Preprocessing(10, 10, 1, crop=(0.25, 0.25, 0.75, 0.75)))
    assert arr.min() == 255  # only the white centre is left


def test_dataset_skips_and_reports_bad_files(tmp_path):
    root = make_identity_folder(tmp_path / "ids", identities=3, per_identity=3)
    (root / "person01" / "broken.png").write_bytes(b"\x89PNG garbage")
    data = load_dataset(root, PREP)
    assert len(data) == 9 and data.n_identities == 3
    assert data.names == ["person00", "person01", "person02"]
    assert [Path(p).name for p, _ in data.skipped] == ["broken.png"]


def test_dataset_nested_groups_and_filters(tmp_path):
    for alpha in ("Greek", "Latin"):
        make_identity_folder(tmp_path / "omni" / alpha, identities=2, per_identity=2)
    data = load_dataset(tmp_path / "omni", PREP)
    assert data.names == ["Greek/person00", "Greek/person01", "Latin/person00", "Latin/person01"]
    assert data.groups == ["Greek", "Greek", "Latin", "Latin"]
    only = load_dataset(tmp_path / "omni", PREP, include=["Latin/*"], exclude=["*01"])
    assert only.names == ["Latin/person00"]


def test_npz_vectors_and_images(tmp_path):
    vec = tmp_path / "v.npz"
    np.savez(vec, X=np.random.default_rng(0).normal(size=(10, 100)), y=np.arange(10) % 3)
    d = load_dataset(vec, None)
    assert d.x.shape == (10, 100) and d.x.dtype == np.float32 and d.n_identities == 3
    img = tmp_path / "i.npz"
    np.savez(
        img, X=np.random.default_rng(0).integers(0, 255, (6, 28, 28), dtype=np.uint8), y=np.array([0, 0, 1, 1, 2, 2])
    )
    d = load_dataset(img, PREP)
    assert d.x.shape == (6, 16, 12, 1)
