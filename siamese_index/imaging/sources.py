"""What a user hands over as an image: a path, bytes or (name, bytes), read once and hashed.

Enrollment, lookup, retrain and feedback all read their inputs here, so the size cap, the
error for a missing or empty file and the content hash are the same everywhere.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

from siamese_index.errors import InvalidImage

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


@dataclass
class Source:
    label: str
    data: bytes
    sha256: str
    ext: str
    width: int | None
    height: int | None


def as_list(sources) -> list:
    """One source (path, bytes, or (name, bytes)) or a sequence of them -> a list."""
    if isinstance(sources, (str, os.PathLike, bytes, bytearray)):
        return [sources]
    if isinstance(sources, tuple) and len(sources) == 2 and isinstance(sources[1], (bytes, bytearray, memoryview)):
        return [sources]
    return list(sources)


def read_source(source) -> Source:
    """Read a path, bytes or (name, bytes); hash it; peek at its header. Raises InvalidImage."""
    if isinstance(source, tuple) and len(source) == 2:
        label, data = str(source[0]), bytes(source[1])
    elif isinstance(source, (bytes, bytearray, memoryview)):
        label, data = "<bytes>", bytes(source)
    else:
        path = Path(source)
        label = str(source)
        if not path.exists():
            raise InvalidImage(label, "no such file")
        if not path.is_file():
            raise InvalidImage(label, "not a regular file")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InvalidImage(label, f"file too large ({size} bytes, cap {MAX_FILE_BYTES})")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise InvalidImage(label, f"cannot read ({e.strerror or e})") from e
    if not data:
        raise InvalidImage(label, "empty file")
    if len(data) > MAX_FILE_BYTES:
        raise InvalidImage(label, f"file too large ({len(data)} bytes, cap {MAX_FILE_BYTES})")
    fmt, width, height = None, None, None
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            fmt, (width, height) = im.format, im.size
    except Exception:  # noqa: BLE001 - the embedder's prepare() reports unreadable images properly
        pass
    ext = FORMAT_EXT.get(fmt or "", "." + fmt.lower() if fmt else ".img")
    return Source(label, data, hashlib.sha256(data).hexdigest(), ext, width, height)
