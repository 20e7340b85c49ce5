"""A small SQLite cache for dedup and enroll's near-duplicate check, keyed by content.

vectors: (content sha256, kind) -> float32 vector and the picture's (width, height, colour);
files: (path, size, mtime) -> sha256, so a rerun need not re-read unchanged files;
pairs: near distances of checked pairs, so a rerun need not decode pictures again;
thumbnails: near thumbnails (PNG) of enrolled photos. Deleting the file only costs time.
"""

from __future__ import annotations

import io
import logging
import math
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from siamese_index.errors import InvalidData

# The picture's (width, height, colour: 1 colour, 0 grayscale), None where unknown: --keep largest's keys.
PictureInfo = tuple[int | None, int | None, int | None]
NO_INFO: PictureInfo = (None, None, None)  # a picture whose size could not be read

log = logging.getLogger(__name__)

CACHE_SCHEMA = 1


# ---------------------------------------------------------------------------------------------
def default_cache_path() -> Path:
    """SIAMESE_INDEX_DEDUP_CACHE, else $XDG_CACHE_HOME (or ~/.cache)/siamese-index/dedup-cache.sqlite."""
    env = os.environ.get("SIAMESE_INDEX_DEDUP_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "siamese-index" / "dedup-cache.sqlite"


class VectorCache:
    """A small SQLite file of vectors keyed by (content sha256, kind). Safe to delete at any time.

    kind is near.VERSION for near descriptors, "identity:<model_id>" for tower embeddings.
    Also remembers (path, size, mtime) -> sha256 so a rerun need not re-read unchanged files,
    and near distances of checked pairs so a rerun need not decode pictures again."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            if self._conn.execute("PRAGMA user_version").fetchone()[0] != CACHE_SCHEMA:
                # An older layout: it is only a cache, start it again.
                self._conn.executescript(
                    "DROP TABLE IF EXISTS files; DROP TABLE IF EXISTS vectors; "
                    "DROP TABLE IF EXISTS pairs; DROP TABLE IF EXISTS thumbnails;"
                )
                self._conn.execute(f"PRAGMA user_version={CACHE_SCHEMA}")
            self._conn.executescript(
                """
                CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER NOT NULL,
                    mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL);
                CREATE TABLE IF NOT EXISTS vectors (sha256 TEXT NOT NULL, kind TEXT NOT NULL,
                    vector BLOB NOT NULL, width INTEGER, height INTEGER, color INTEGER, PRIMARY KEY (sha256, kind));
                CREATE TABLE IF NOT EXISTS pairs (a TEXT NOT NULL, b TEXT NOT NULL, kind TEXT NOT NULL,
                    distance REAL, PRIMARY KEY (a, b, kind));
                CREATE TABLE IF NOT EXISTS thumbnails (sha256 TEXT NOT NULL, kind TEXT NOT NULL, png BLOB NOT NULL,
                    PRIMARY KEY (sha256, kind));
                """
            )
        except sqlite3.DatabaseError as e:
            self._conn.close()
            raise InvalidData(f"{self.path}: not a usable dedup cache ({e}); delete it or pass another --cache") from e

    def close(self) -> None:
        self._conn.close()

    def sha_for(self, paths_stats: Sequence[tuple[str, int, int]]) -> dict[str, str]:
        out = {}
        with self._lock:
            for path, size, mtime in paths_stats:
                row = self._conn.execute(
                    "SELECT sha256 FROM files WHERE path=? AND size=? AND mtime_ns=?", (path, size, mtime)
                ).fetchone()
                if row:
                    out[path] = row[0]
        return out

    def vectors_for(self, shas: Iterable[str], kind: str) -> dict[str, tuple[bytes, PictureInfo]]:
        """sha -> (float32 vector bytes, the picture's (width, height, colour)) of the cached ones."""
        out = {}
        with self._lock:
            for sha in shas:
                row = self._conn.execute(
                    "SELECT vector, width, height, color FROM vectors WHERE sha256=? AND kind=?", (sha, kind)
                ).fetchone()
                if row:
                    out[sha] = (row[0], (row[1], row[2], row[3]))
        return out

    def all_vectors(self, kind: str) -> dict[str, bytes]:
        with self._lock:
            return {
                sha: blob
                for sha, blob in self._conn.execute("SELECT sha256, vector FROM vectors WHERE kind=?", (kind,))
            }

    def thumbnail(self, sha: str, kind: str) -> np.ndarray | None:
        with self._lock:
            row = self._conn.execute("SELECT png FROM thumbnails WHERE sha256=? AND kind=?", (sha, kind)).fetchone()
        if row is None:
            return None
        from PIL import Image

        with Image.open(io.BytesIO(row[0])) as im:
            return np.asarray(im.convert("L"), dtype=np.uint8)

    def store_thumbnail(self, sha: str, kind: str, gray: np.ndarray) -> None:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(gray).save(buf, "PNG", optimize=False, compress_level=6)
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO thumbnails VALUES (?, ?, ?)", (sha, kind, buf.getvalue()))

    def pair_distances(self, pairs: Iterable[tuple[str, str]], kind: str) -> dict[tuple[str, str], float]:
        out = {}
        with self._lock:
            for a, b in pairs:
                row = self._conn.execute(
                    "SELECT distance FROM pairs WHERE a=? AND b=? AND kind=?", (a, b, kind)
                ).fetchone()
                if row:
                    out[(a, b)] = math.inf if row[0] is None else float(row[0])
        return out

    def store(self, files: Iterable = (), vectors: Iterable = (), pairs: Iterable = ()) -> None:
        """files: (path, size, mtime_ns, sha); vectors: (sha, kind, blob, (w, h, color)); pairs: (a, b, kind, d)."""
        with self._lock:
            try:
                self._conn.execute("BEGIN")
                self._conn.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", list(files))
                self._conn.executemany(
                    "INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?, ?, ?)",
                    [(sha, k, blob, *info) for sha, k, blob, info in vectors],
                )
                self._conn.executemany(
                    "INSERT OR REPLACE INTO pairs VALUES (?, ?, ?, ?)",
                    [(a, b, k, None if not math.isfinite(d) else d) for a, b, k, d in pairs],
                )
                self._conn.execute("COMMIT")
            except sqlite3.Error as e:  # a cache that cannot be written only costs time
                try:
                    self._conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                log.warning("could not write the dedup cache %s: %s", self.path, e)


class NoCache:
    """cache=False: remembers nothing, so every run reads and describes every file."""

    path = None

    def close(self) -> None:
        pass

    def sha_for(self, paths_stats: Sequence[tuple[str, int, int]]) -> dict[str, str]:
        return {}

    def vectors_for(self, shas: Iterable[str], kind: str) -> dict[str, tuple[bytes, PictureInfo]]:
        return {}

    def pair_distances(self, pairs: Iterable[tuple[str, str]], kind: str) -> dict[tuple[str, str], float]:
        return {}

    def store(self, files: Iterable = (), vectors: Iterable = (), pairs: Iterable = ()) -> None:
        pass


Store = VectorCache | NoCache  # what the dedup steps read and write through


def open_cache(cache: str | os.PathLike[str] | bool | None) -> Store:
    """cache: None (the default file), False (no cache), or a path."""
    if cache is False:
        return NoCache()
    return VectorCache(default_cache_path() if cache is None or cache is True else cache)
