"""Face cropping on real photos where the face is off-centre (needs ../shared/data/lfw)."""

import pytest
from PIL import Image

from siamese_index.errors import InvalidImage
from siamese_index.imaging.faces import crop_box, detect_faces, face_box_for
from siamese_index.imaging.loading import Preprocessing, open_image
from siamese_index.imaging.synthetic import identity_image

from .shared_data import shared_path

OFFSETS = Preprocessing(48, 40).face_box


def _lfw_photo():
    return open_image(shared_path("lfw", "lfw-deepfunneled", "AJ_Cook", "AJ_Cook_0001.jpg"))


def test_off_centre_face_is_found_where_it_was_put():
    face = _lfw_photo()
    canvas = Image.new("RGB", (900, 600), (90, 120, 90))
    canvas.paste(face, (600, 300))  # bottom-right corner
    boxes = detect_faces(canvas)
    assert boxes, "no face detected"
    x, y, w, h = boxes[0]
    assert 600 <= x and x + w <= 850 and 300 <= y and y + h <= 550
    box, warnings = face_box_for(canvas, OFFSETS, strict=True, name="party.jpg")
    cx = (box[0] + box[2]) / 2
    assert 650 < cx < 800 and not warnings


def test_crop_matches_the_training_framing_on_lfw():
    im = _lfw_photo()
    box, _ = face_box_for(im, OFFSETS, strict=True, name="aj.jpg")
    train_crop = (0.28 * 250, 0.22 * 250, 0.72 * 250, 0.78 * 250)
    assert all(abs(a - b) < 25 for a, b in zip(box, train_crop))


def test_no_face_falls_back_at_lookup_and_is_refused_at_enrollment():
    blank = identity_image(1, 0, 200, "RGB")
    box, warnings = face_box_for(blank, OFFSETS, strict=False, name="shapes.png")
    assert box is None and "no face found" in warnings[0]
    with pytest.raises(InvalidImage, match="no face found"):
        face_box_for(blank, OFFSETS, strict=True, name="shapes.png")


def test_tiny_and_multiple_faces_are_refused_at_enrollment():
    face = _lfw_photo()
    small = face.resize((60, 60))
    canvas = Image.new("RGB", (400, 300), (0, 0, 0))
    canvas.paste(small, (170, 120))
    # A face this small is either not detected or refused as too small: never enrolled.
    with pytest.raises(InvalidImage, match="too small|no face"):
        face_box_for(canvas, OFFSETS, strict=True, name="far.jpg")
    two = Image.new("RGB", (520, 260), (0, 0, 0))
    two.paste(face, (0, 5))
    two.paste(face.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (265, 5))
    assert len(detect_faces(two)) >= 2
    with pytest.raises(InvalidImage, match="faces found"):
        face_box_for(two, OFFSETS, strict=True, name="two.jpg")
    box, warnings = face_box_for(two, OFFSETS, strict=False, name="two.jpg")
    assert box is not None and "faces found" in warnings[0]


def test_crop_box_arithmetic():
    assert crop_box((100, 100, 50, 50), (-0.5, -0.5, 0.5, 0.5)) == (100, 100, 150, 150)


def test_a_photo_that_is_already_a_face_crop_is_used_whole():
    im = _lfw_photo()
    x, y, w, h = detect_faces(im)[0]
    tight = im.crop((x - w // 10, y - h // 10, x + w + w // 10, y + h + h // 5))  # like an ID photo or ORL
    box, _ = face_box_for(tight, OFFSETS, strict=True, name="id.jpg")
    assert box == (0, 0, tight.width, tight.height)


def test_detection_from_many_threads_matches_one_thread():
    # The data loader and the HTTP service detect faces from several threads at once.
    from concurrent.futures import ThreadPoolExecutor

    face = _lfw_photo()
    photos = []
    for i in range(12):
        canvas = Image.new("RGB", (420 + 20 * i, 380), (40 + 10 * i, 90, 120))
        canvas.paste(face.resize((200 + 5 * i, 200 + 5 * i)), (10 * i, 15 + 5 * i))
        photos.append(canvas)
    expected = [detect_faces(p) for p in photos]
    assert all(expected)
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(10):
            assert list(pool.map(detect_faces, photos)) == expected


def test_training_with_detect_faces_cuts_photos_as_lookup_does(tmp_path):
    import json

    import numpy as np
    from click.testing import CliRunner

    from siamese_index.cli.main import cli
    from siamese_index.imaging.loading import prepare
    from siamese_index.training.datasets import load_dataset

    face = _lfw_photo()
    for person, corner in (("left", (20, 20)), ("right", (600, 300)), ("middle", (300, 150)), ("top", (500, 10))):
        (tmp_path / "ids" / person).mkdir(parents=True)
        for v in range(3):
            canvas = Image.new("RGB", (900, 600), (90 + 40 * v, 120, 90))
            canvas.paste(face, corner)
            canvas.save(tmp_path / "ids" / person / f"{v}.jpg")
    prep = Preprocessing(48, 40, 1, (0.28, 0.22, 0.72, 0.78), True)
    first = tmp_path / "ids" / "left" / "0.jpg"
    detected = load_dataset(tmp_path / "ids", prep, detect_faces=True)
    fixed = load_dataset(tmp_path / "ids", prep, detect_faces=False)
    assert np.array_equal(detected.x[0], prepare(first, prep)[0])
    assert not np.array_equal(fixed.x[0], detected.x[0])  # the fixed crop misses the off-centre face
    args = [
        "train",
        str(tmp_path / "ids"),
        "--arch",
        "seed-conv",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "1",
        "--batch-identities",
        "2",
        "--images-per-identity",
        "2",
        "--val-fraction",
        "0.5",
        "--size",
        "48x40",
        "--crop",
        "0.28,0.22,0.72,0.78",
        "--face-crop",
        "--detect-faces",
        "--json",
    ]
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["training"]["detect_faces"] is True
    no_crop = [a for a in args if a != "--face-crop"]
    result = CliRunner().invoke(cli, [*no_crop, "--out", str(tmp_path / "m2")])
    assert result.exit_code != 0 and "--detect-faces needs --face-crop" in result.output
