"""Settings resolved in one place: argument > environment variable > default."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# An installed wheel carries the shipped towers as package data (siamese_index/models); a source
# checkout (editable install, or the tests) keeps them in the repository's models/ folder.
MODELS_DIR = PACKAGE_DIR / "models" if (PACKAGE_DIR / "models").is_dir() else PACKAGE_DIR.parent / "models"
DEFAULT_MODEL_NAME = "faces-v5"


def default_home() -> Path:
    """Where an index lives when neither --home nor SIAMESE_INDEX_HOME is given."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "siamese-index"


def resolve_home(home: str | os.PathLike[str] | None = None) -> Path:
    """The home: the argument, else SIAMESE_INDEX_HOME, else default_home()."""
    return Path(home or os.environ.get("SIAMESE_INDEX_HOME") or default_home()).expanduser()


def resolve_model_dir(model: str | os.PathLike[str] | None = None) -> Path:
    """A model given by path, or by name under models/; else SIAMESE_INDEX_MODEL; else the default."""
    chosen = model or os.environ.get("SIAMESE_INDEX_MODEL") or DEFAULT_MODEL_NAME
    path = Path(chosen).expanduser()
    if not path.exists() and (MODELS_DIR / str(chosen)).is_dir():
        return MODELS_DIR / str(chosen)
    return path
