"""Content-addressed copies of enrolled photos: images/ab/abcdef...ext under the home.

A copy is written before the enrollment's transaction commits, so the names about to be written
are listed in .pending-copies first; a copy no row refers to after a crash is deleted on the
next open (recover_pending_copies).
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import func, select

from siamese_index.imaging.sources import Source
from siamese_index.storage.db import Database, images
from siamese_index.storage.durable import atomic_write

log = logging.getLogger(__name__)

IMAGES_DIR = "images"
PENDING_NAME = ".pending-copies"  # copies written by an uncommitted enrollment (crash recovery)


def copy_path(src: Source) -> str:
    """Where a photo's copy lives, relative to the home: named by its content hash."""
    return f"{IMAGES_DIR}/{src.sha256[:2]}/{src.sha256}{src.ext}"


def store_copy(home: Path, src: Source) -> tuple[str, bool]:
    """Write the content-addressed copy (temp + rename). Returns (relative path, created)."""
    rel = copy_path(src)
    path = home / rel
    if path.is_file() and path.stat().st_size == len(src.data):
        return rel, False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    (home / IMAGES_DIR).chmod(0o700)
    atomic_write(path, src.data, mode=0o600)
    return rel, True


def write_pending(home: Path, sources) -> None:
    """List the copies about to be written (before they are), for recover_pending_copies."""
    atomic_write(home / PENDING_NAME, "\n".join(copy_path(s) for s in sources).encode(), mode=0o600)


def unlink_copy(path: Path) -> bool:
    """Delete a stored copy and its two-letter folder when that is left empty."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    try:
        path.parent.rmdir()
    except OSError:
        pass
    return True


def recover_pending_copies(db: Database) -> list[str]:
    """Delete the copies an interrupted enrollment wrote but never committed (caller holds the
    writer lock). The list of such copies is written before they are, and removed after commit."""
    pending = db.path.parent / PENDING_NAME
    if not pending.is_file():
        return []
    removed = []
    with db.read() as conn:
        for rel in pending.read_text().split("\n"):
            rel = rel.strip()
            if not rel or ".." in Path(rel).parts:
                continue
            used = conn.execute(select(func.count()).select_from(images).where(images.c.stored_path == rel)).scalar()
            if not used:
                if unlink_copy(db.path.parent / rel):
                    removed.append(rel)
    pending.unlink()
    if removed:
        log.info("removed %d image copies left by an interrupted enrollment", len(removed))
    return removed
