"""Find the face to crop in a real photo: OpenCV's Haar cascade, shipped inside the wheel.

The detector needs no download at run time. At lookup a photo with no face falls back to the
whole image with a warning; at enrollment (strict) no face, several faces or a tiny face is
refused with the reason, so the gallery holds one clear face per photo.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from PIL import Image

from siamese_index.errors import InvalidImage

MIN_FACE_PIXELS = 40  # narrower than this, a face carries too little detail to enroll
# A second face this large relative to the largest one makes the photo ambiguous.
SECOND_FACE_RATIO = 0.5
# A face at least this wide relative to the photo means the photo is already a face crop (an ID
# photo, ORL): used whole. Measured: ORL faces fill 72-92% of the width, LFW's 39-61%.
ALREADY_CROPPED = 0.65


# One cascade per thread: a CascadeClassifier shared by threads (the data loader's pool, the
# HTTP service's handlers) now and then returns another thread's boxes, so the same photo
# could be cropped differently from one run to the next.
_local = threading.local()


Box = tuple[int, int, int, int]  # x, y, width, height in pixels (or left, top, right, bottom for crops)
Offsets = tuple[float, float, float, float]


def _cascade() -> Any:
    cascade = getattr(_local, "cascade", None)
    if cascade is None:
        import cv2
        import cv2.data  # the cascade files' folder (a submodule the stubs do not re-export)

        cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        if cascade.empty():
            raise RuntimeError("OpenCV's frontal face cascade could not be loaded")
        _local.cascade = cascade
    return cascade


def detect_faces(im: Image.Image) -> list[Box]:
    """Face boxes (x, y, w, h) in pixels, largest first."""
    gray = np.asarray(im.convert("L"))
    # Detect on a copy at most 640 px wide: faster, and the cascade's scales cover the rest.
    scale = min(1.0, 640.0 / max(gray.shape))
    if scale < 1.0:
        gray = np.asarray(im.convert("L").resize((round(im.width * scale), round(im.height * scale))))
    found = _cascade().detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(20, 20))
    boxes: list[Box] = []
    for box in found if len(found) else []:
        x, y, w, h = (int(round(float(v) / scale)) for v in box)
        boxes.append((x, y, w, h))
    return sorted(boxes, key=lambda b: b[2] * b[3], reverse=True)


def crop_box(face: Box, offsets: Offsets) -> Box:
    """The crop around a face box: offsets from its centre in units of its width."""
    x, y, w, h = face
    cx, cy = x + w / 2, y + h / 2
    l, t, r, b = offsets
    return (round(cx + l * w), round(cy + t * w), round(cx + r * w), round(cy + b * w))


def face_box_for(im: Image.Image, offsets: Offsets, strict: bool, name: str) -> tuple[Box | None, list[str]]:
    """(crop box or None, warnings). strict refuses photos unfit for enrollment."""
    faces = detect_faces(im)
    if not faces:
        if strict:
            raise InvalidImage(name, "no face found (pass --allow-no-face to enroll the whole image)")
        return None, [f"{name}: no face found; using the whole image"]
    largest = faces[0]
    if strict:
        if largest[2] < MIN_FACE_PIXELS:
            raise InvalidImage(
                name,
                f"face too small ({largest[2]} px wide, need {MIN_FACE_PIXELS}); pass --allow-no-face to enroll anyway",
            )
        if len(faces) > 1 and faces[1][2] >= SECOND_FACE_RATIO * largest[2]:
            raise InvalidImage(
                name, f"{len(faces)} faces found; enroll a photo of one person (or pass --allow-no-face)"
            )
    warnings = [f"{name}: {len(faces)} faces found; using the largest"] if len(faces) > 1 else []
    if largest[2] >= ALREADY_CROPPED * im.width:
        return (0, 0, im.width, im.height), warnings
    return crop_box(largest, offsets), warnings
