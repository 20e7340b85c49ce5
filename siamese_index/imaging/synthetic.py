"""Small synthetic identity images for the demo and the tests (no data set needed).

Each identity is a distinct arrangement of shapes; each of its photos is shifted, brightened
and noised a little, so identities are learnable but photos are never identical.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def identity_image(identity: int, variant: int, size: int = 32, mode: str = "L") -> Image.Image:
    rng = np.random.default_rng(identity * 7919 + 13)
    vr = np.random.default_rng(identity * 104729 + variant * 31 + 1)
    im = Image.new("L", (size, size), int(rng.integers(30, 90)))
    draw = ImageDraw.Draw(im)
    dx, dy = (int(v) for v in vr.integers(-2, 3, size=2))
    for _ in range(3):
        x0, y0 = (int(v) for v in rng.integers(0, size - 10, size=2))
        w, h = (int(v) for v in rng.integers(5, 12, size=2))
        shade = int(rng.integers(140, 255))
        box = (x0 + dx, y0 + dy, x0 + dx + w, y0 + dy + h)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=shade)
    arr = np.asarray(im, dtype=np.float64) * vr.uniform(0.85, 1.15) + vr.normal(0, 6, (size, size))
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return out.convert(mode)


def _write_people(
    root: Path,
    identities: int,
    per_identity: int,
    draw: Callable[[int, int], Image.Image],
    digits: int,
    fmt: str = "png",
) -> Path:
    """One folder per person (person00, person01, ...) of per_identity drawings each."""
    root = Path(root)
    for i in range(identities):
        d = root / f"person{i:0{digits}d}"
        d.mkdir(parents=True, exist_ok=True)
        for v in range(per_identity):
            draw(i, v).save(d / f"{v:02d}.{fmt}")
    return root


def make_identity_folder(
    root: Path, identities: int = 6, per_identity: int = 5, size: int = 32, fmt: str = "png"
) -> Path:
    """One folder per synthetic identity (person00, ...), per_identity shifted, re-lit photos each."""
    return _write_people(root, identities, per_identity, lambda i, v: identity_image(i, v, size), 2, fmt)


DEMO_FIRST_PERSON = 100_000  # demo people are numbered from here; training people below


def cartoon_face(identity: int, variant: int, size: int = 32) -> Image.Image:
    """A synthetic "person" for the demo: a cartoon face whose proportions are the identity.

    Head shape, eye spacing and size, nose length, mouth width and hair line are drawn from the
    identity's seed; each photo moves, scales and re-lights the face a little and adds noise.
    Continuous, shared features are what a tower can learn to measure on people it never saw.
    """
    # Five levels per proportion: two people rarely share more than a few, so no near-twins.
    p = np.random.default_rng(identity * 7919 + 5).integers(0, 5, 8) / 4.0
    v = np.random.default_rng(identity * 104729 + variant * 31 + 7)
    s = size / 32.0
    im = Image.new("L", (size, size), 40)
    draw = ImageDraw.Draw(im)
    cx, cy = size / 2 + v.uniform(-1.5, 1.5) * s, size / 2 + v.uniform(-1.5, 1.5) * s
    hw, hh = (8 + 6 * p[0]) * s, (10 + 5 * p[1]) * s
    draw.ellipse((cx - hw, cy - hh, cx + hw, cy + hh), fill=170)
    draw.rectangle((cx - hw, cy - hh, cx + hw, cy - hh + (2 + 7 * p[2]) * s), fill=70)  # hair line
    ex, ey, er = (2.5 + 5 * p[3]) * s, cy - (0.5 + 4 * p[4]) * s, (1 + 2 * p[5]) * s
    for sx in (-1, 1):
        draw.ellipse((cx + sx * ex - er, ey - er, cx + sx * ex + er, ey + er), fill=20)
    draw.line((cx, ey + 1 * s, cx, ey + (2 + 6 * p[6]) * s), fill=110, width=max(1, round(s)))
    mw, my = (1.5 + 6.5 * p[7]) * s, cy + (5 + 2 * p[1]) * s
    draw.line((cx - mw, my, cx + mw, my), fill=60, width=max(1, round(s)))
    arr = np.asarray(im, dtype=np.float64) * v.uniform(0.8, 1.2) + v.uniform(-15, 15) + v.normal(0, 5, (size, size))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_face_folder(root: Path, identities: int, per_identity: int, size: int = 32) -> Path:
    """Training people 0..identities-1 (never the demo's, which start at DEMO_FIRST_PERSON).

    python -c "from siamese_index.imaging.synthetic import make_face_folder; make_face_folder('cartoon', 400, 6)"
    """
    return _write_people(root, identities, per_identity, lambda i, v: cartoon_face(i, v, size), 3)
