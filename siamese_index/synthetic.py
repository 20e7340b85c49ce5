"""Small synthetic identity images for the demo and the tests (no data set needed).

Each identity is a distinct arrangement of shapes; each of its photos is shifted, brightened
and noised a little, so identities are learnable but photos are never identical.
"""
from __future__ import annotations

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


def make_identity_folder(root: Path, identities: int = 6, per_identity: int = 5, size: int = 32, fmt: str = "png") -> Path:
    root = Path(root)
    for i in range(identities):
        d = root / f"person{i:02d}"
        d.mkdir(parents=True, exist_ok=True)
        for v in range(per_identity):
            identity_image(i, v, size).save(d / f"{v:02d}.{fmt}")
    return root
