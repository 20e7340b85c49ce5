"""Errors raised by siamese-index. Every one derives from SiameseIndexError."""

from __future__ import annotations

import os


class SiameseIndexError(Exception):
    """Base class: catch this to handle any siamese-index failure."""


class InvalidImage(SiameseIndexError):
    """A file that is not a readable image (empty, truncated, unknown format, too large)."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class InvalidData(SiameseIndexError):
    """A data set, pair file or argument that cannot be used as given."""


class ModelError(SiameseIndexError):
    """A model directory that is missing, incomplete or inconsistent."""


class ModelMismatch(ModelError):
    """A home or file built with one model was opened with another."""


class NotFound(SiameseIndexError):
    """An identity, image or file that does not exist."""


class IndexStale(SiameseIndexError):
    """The FAISS cache does not match SQLite (rebuilt automatically on open)."""


class Busy(SiameseIndexError):
    """Another writer holds the home's lock longer than we were willing to wait."""
