"""What a user hands over as an image, read once and hashed.

A source is a path (str or os.PathLike), bytes, a (name, bytes) pair, a PIL image or a numpy
array. Enrollment, lookup, verification, retrain and feedback all read their inputs here, so the
size cap, the error for a missing or empty file and the content hash are the same everywhere.
An in-memory image (PIL or numpy) is encoded once as PNG: its bytes are what is hashed and
stored, and its name, "<image 1a2b3c4d5e6f>" or "<array ...>", comes from that hash, so the same
pixels always get the same name and hash.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from siamese_index.errors import InvalidData, InvalidImage
from siamese_index.imaging.loading import array_to_image, to_mode

MAX_FILE_BYTES = int(os.environ.get("SIAMESE_INDEX_MAX_FILE_BYTES", 256 * 1024 * 1024))
# File extension for a stored copy, by the format Pillow recognises.
FORMAT_EXT = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "PPM": ".pnm",
    "BMP": ".bmp",
    "WEBP": ".webp",
    "TIFF": ".tif",
    "GIF": ".gif",
    "HEIF": ".heic",
    "MPO": ".jpg",
}
ACCEPTED = "a path, bytes, a PIL image or a numpy array"
# Pillow modes PNG stores as they are; anything else is converted to L or RGB first.
PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"})


@dataclass(frozen=True)
class Source:
    """One image as read: a name for messages, its bytes, their SHA-256 and a file extension."""

    label: str
    data: bytes
    sha256: str
    ext: str
    width: int | None
    height: int | None


def is_single(source: object) -> bool:
    """True for one image (as opposed to a sequence of them)."""
    if isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray)):
        return True
    return is_named_bytes(source)


def is_named_bytes(source: object) -> bool:
    return isinstance(source, tuple) and len(source) == 2 and isinstance(source[1], (bytes, bytearray, memoryview))


def as_list(sources: Any, what: str = "images") -> list[Any]:
    """One source or an iterable of them -> a list. Anything else is InvalidData naming `what`."""
    if is_single(sources):
        return [sources]
    if not isinstance(sources, Iterable):
        raise InvalidData(f"{what}: expected {ACCEPTED}, or a list of them; got {type(sources).__name__}")
    return list(sources)


def read_source(source: Any, what: str = "image") -> Source:
    """Read any accepted source; hash it; peek at its header. Raises InvalidImage naming it."""
    if isinstance(source, (Image.Image, np.ndarray)):
        return _in_memory(source)
    label, data = _read_bytes(source, what)
    if not data:
        raise InvalidImage(label, "empty file")
    if len(data) > MAX_FILE_BYTES:
        raise InvalidImage(label, f"file too large ({len(data)} bytes, cap {MAX_FILE_BYTES})")
    fmt, width, height = None, None, None
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (width, height) = im.format, im.size
    except Exception:  # noqa: BLE001 - the embedder's prepare() reports unreadable images properly
        pass
    ext = FORMAT_EXT.get(fmt or "", "." + fmt.lower() if fmt else ".img")
    return Source(label, data, hashlib.sha256(data).hexdigest(), ext, width, height)


def _read_bytes(source: Any, what: str) -> tuple[str, bytes]:
    """(label, bytes) of a (name, bytes) pair, bytes, or a file."""
    if is_named_bytes(source):
        return str(source[0]), bytes(source[1])
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>", bytes(source)
    if not isinstance(source, (str, os.PathLike)):
        shown = repr(source)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise InvalidImage(f"{what} {shown}", f"expected {ACCEPTED}, got {type(source).__name__}")
    path, label = Path(source), str(source)
    if not path.exists():
        raise InvalidImage(label, "no such file")
    if not path.is_file():
        raise InvalidImage(label, "not a regular file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise InvalidImage(label, f"file too large ({size} bytes, cap {MAX_FILE_BYTES})")
    try:
        return label, path.read_bytes()
    except OSError as e:
        raise InvalidImage(label, f"cannot read ({e.strerror or e})") from e


def _in_memory(source: Image.Image | np.ndarray) -> Source:
    """A PIL image or an array, encoded as PNG and named by its content hash."""
    kind = "image" if isinstance(source, Image.Image) else "array"
    try:
        im = source if isinstance(source, Image.Image) else array_to_image(source)
        if im.width == 0 or im.height == 0:
            raise ValueError("it has no pixels")
        if im.mode not in PNG_MODES:
            im = to_mode(im, 3 if len(im.getbands()) >= 3 else 1)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    except (ValueError, TypeError, OSError) as e:
        shape = f" of shape {source.shape}" if isinstance(source, np.ndarray) else f" ({source.mode})"
        raise InvalidImage(f"<{kind}{shape}>", f"not usable as an image ({e})") from e
    data = buf.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    return Source(f"<{kind} {sha[:12]}>", data, sha, ".png", im.width, im.height)
