"""The first step: find the image files under the sources, and read and hash them.

Folders are walked recursively (hidden names skipped, symbolic links counted and left alone),
in argument order then path order: that order is what --keep first means.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from siamese_index.duplicates.report import Skipped
from siamese_index.imaging.loading import is_image_file
from siamese_index.storage.descriptor_cache import NO_INFO, PictureInfo

READ_CHUNK = 1 << 20
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "F")


@dataclass
class ScannedFile:
    """One image file found by the scan. The later steps fill in its content hash (None when it
    cannot be read or decoded) and its picture's size."""

    path: str
    size: int
    mtime_ns: int
    order: int  # position in argument and path order
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    color: int | None = None  # 1 colour, 0 grayscale


@dataclass
class ScanResult:
    files: list[ScannedFile] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    not_images: int = 0  # files ignored for their suffix
    links: int = 0  # symbolic links ignored

    def add(self, path: Path, seen: set[str]) -> None:
        """Record one image file, once (by real path); unreadable and empty files are skipped."""
        key = os.path.realpath(path)
        if key in seen:
            return
        seen.add(key)
        try:
            st = path.stat()
        except OSError as e:
            self.skipped.append(Skipped(str(path), f"cannot read ({e.strerror or e})"))
            return
        if st.st_size == 0:
            self.skipped.append(Skipped(str(path), "empty file"))
            return
        self.files.append(ScannedFile(str(path), int(st.st_size), int(st.st_mtime_ns), len(self.files)))


def _walk(root: Path) -> Iterable[Path]:
    """Every non-hidden file under root, folders and names in sorted order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def scan(sources: Iterable[str | os.PathLike[str]]) -> ScanResult:
    """Image files under the given folders (recursively, hidden names skipped) and files, in
    argument order then path order, with what was skipped or ignored."""
    out = ScanResult()
    seen: set[str] = set()
    for src in sources:
        root = Path(src).expanduser()
        if root.is_symlink() and root.is_file():
            out.links += 1
        elif root.is_file():
            out.add(root, seen)
        elif root.is_dir():
            for p in _walk(root):
                if p.is_symlink():
                    out.links += 1
                elif not is_image_file(p):
                    out.not_images += 1
                else:
                    out.add(p, seen)
        else:
            out.skipped.append(Skipped(str(root), "no such file or folder"))
    return out


def sha256_file(path: str) -> tuple[str, bytes]:
    """(sha256 hex digest, the file's bytes), read in chunks."""
    h = hashlib.sha256()
    chunks = []
    with open(path, "rb") as f:
        while b := f.read(READ_CHUNK):
            h.update(b)
            chunks.append(b)
    return h.hexdigest(), b"".join(chunks)


def image_info(data: bytes) -> PictureInfo:
    """(width, height, colour) from the header, EXIF orientation applied: --keep largest's keys."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            color = int(im.mode not in _GRAY_MODES)
            orientation = im.getexif().get(0x0112, 1)
        return (h, w, color) if orientation in (5, 6, 7, 8) else (w, h, color)
    except Exception:  # noqa: BLE001 - a size is only a tie-breaker for --keep largest
        return NO_INFO
