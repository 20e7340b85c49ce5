"""Safe image loading and the preprocessing every model applies identically.

Preprocessing turns any readable image into a uint8 array of the model's input shape;
scaling to floats happens inside the model graph, so training, enrollment and lookup
cannot disagree about it.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from siamese_index.errors import InvalidImage

IMAGE_SUFFIXES = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".png",
        ".pgm",
        ".ppm",
        ".pbm",
        ".pnm",
        ".bmp",
        ".webp",
        ".tif",
        ".tiff",
        ".gif",
        ".heic",
        ".heif",
    }
)
# 64 megapixels: far above any camera photo we expect, far below a decompression bomb.
MAX_PIXELS = int(os.environ.get("SIAMESE_INDEX_MAX_PIXELS", 64_000_000))


def _register_heif() -> None:
    """Read HEIC/HEIF phone photos when pillow-heif is installed (optional)."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return
    register_heif_opener()


_register_heif()


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input: optional crop, resize, channel count."""

    height: int
    width: int
    channels: int = 1
    # Fractional box (left, top, right, bottom) cut before resizing, e.g. the centre of LFW.
    crop: tuple[float, float, float, float] | None = None
    # Detect the largest face and crop around it (see faces.py) instead of `crop`.
    face_crop: bool = False
    # The crop around a detected face, as (left, top, right, bottom) offsets from the face
    # box's centre in units of its width. The default was measured on LFW so that a detected
    # face is framed like the LFW training crop (0.28, 0.22, 0.72, 0.78).
    face_box: tuple[float, float, float, float] = (-0.47, -0.60, 0.47, 0.60)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["crop"] = list(self.crop) if self.crop else None
        d["face_box"] = list(self.face_box)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("crop", "face_box"):
            if d.get(key) is not None:
                d[key] = tuple(float(v) for v in d[key])
        return cls(**d)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def source_label(source: Any, name: str | None = None) -> str:
    """How errors name an image: the given name, else the path, else "<upload>" for bytes."""
    return name or str(source if not isinstance(source, (bytes, bytearray)) else "<upload>")


def source_opener(source: Any, label: str) -> Callable[[], IO[bytes]]:
    """A callable opening the image's bytes (a path or bytes); missing or empty is InvalidImage."""
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise InvalidImage(label, "empty file")
        return lambda: io.BytesIO(source)
    path = Path(source)
    if not path.is_file():
        raise InvalidImage(label, "no such file")
    if path.stat().st_size == 0:
        raise InvalidImage(label, "empty file")
    return lambda: path.open("rb")


def open_image(source: Any, name: str | None = None, draft_gray: int | None = None) -> Image.Image:
    """Open and fully decode an image from a path or bytes, EXIF orientation applied.

    draft_gray: let a JPEG decode straight to grayscale at a reduced scale (no smaller than
    that many pixels a side), several times cheaper for thumbnails.
    Raises InvalidImage naming the file for anything that is not a whole, sane image.
    """
    label = source_label(source, name)
    try:
        opener = source_opener(source, label)
        with opener() as fp, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise InvalidImage(label, f"image too large ({w}x{h} pixels, cap {MAX_PIXELS})")
                if draft_gray and im.format == "JPEG" and im.mode in ("RGB", "L", "YCbCr", "CMYK"):
                    im.draft("L", (draft_gray, draft_gray))
                im.load()
                return ImageOps.exif_transpose(im).copy()
    except InvalidImage:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InvalidImage(label, f"not a readable image ({e.__class__.__name__})") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Pillow reports truncated data and corrupt headers as OSError/SyntaxError/EOFError.
        raise InvalidImage(label, f"corrupt or truncated image ({e})") from e


def to_mode(im: Image.Image, channels: int) -> Image.Image:
    """L (channels 1) or RGB; 16-bit and float images stretched to 0-255, transparency on white."""
    if im.mode in ("I;16", "I;16B", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo or 1.0) * 255.0
        im = Image.fromarray(arr.astype(np.uint8))
    if im.mode in ("RGBA", "LA", "P", "PA"):
        # Composite transparency on white so a transparent background is not black.
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    return im.convert("L" if channels == 1 else "RGB")


def crop_fraction(im: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    w, h = im.size
    l, t, r, b = box
    return im.crop((round(l * w), round(t * h), round(r * w), round(b * h)))


def preprocess(im: Image.Image, prep: Preprocessing, face_box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Crop, convert and resize an image to a uint8 array of shape prep.shape."""
    if face_box is not None:
        im = im.crop(face_box)
    elif prep.crop:
        im = crop_fraction(im, prep.crop)
    im = to_mode(im, prep.channels)
    im = im.resize((prep.width, prep.height), Image.Resampling.BILINEAR, reducing_gap=2.0)
    arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def array_to_image(arr: np.ndarray) -> Image.Image:
    """An in-memory image array ((h, w) or (h, w, c), any numeric range) as a PIL image.

    uint8 is taken as it is; other types are scaled to 0-255 when their maximum is at most 1,
    then clipped. Raises ValueError for an empty, non-finite or oddly shaped array.
    """
    a = np.asarray(arr)
    if a.size == 0 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise ValueError(f"expected an (h, w) or (h, w, 1|3|4) array, got shape {a.shape}")
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.number) and a.dtype != np.bool_:
            raise ValueError(f"expected numbers, got dtype {a.dtype}")
        a = a.astype(np.float64)
        if not np.isfinite(a).all():
            raise ValueError("it holds NaN or infinite values")
        if a.max() <= 1.0:
            a = a * 255.0
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    return Image.fromarray(a)


def array_to_input(arr: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """Fit an in-memory image array ((h, w) or (h, w, c), any numeric range) to prep.shape."""
    return preprocess(array_to_image(arr), prep)


def load_input(path: Any, prep: Preprocessing) -> np.ndarray:
    """Open a file and preprocess it with the fixed crop only (aligned training images)."""
    return preprocess(open_image(path), prep)


def prepare(
    source: Any, prep: Preprocessing, name: str | None = None, strict_face: bool = False
) -> tuple[np.ndarray, list[str]]:
    """Open a user's image and make it a model input, exactly as enrollment and lookup do.

    With face_crop on, the largest face is detected and framed like the training crop; when
    none is found (and not strict) the whole image is used, with a warning.
    """
    label = source_label(source, name)
    im = open_image(source, label)
    if not prep.face_crop:
        return preprocess(im, prep), []
    from siamese_index.imaging.faces import face_box_for

    box, notes = face_box_for(im, prep.face_box, strict=strict_face, name=label)
    # No face found: the whole image (the fixed crop only suits aligned training images).
    return preprocess(im, prep, face_box=box or (0, 0, im.width, im.height)), notes
