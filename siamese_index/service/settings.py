"""The service's settings: argument > environment variable (SIAMESE_INDEX_...) > default.

No web framework here: the CLI builds these before it imports uvicorn.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from siamese_index.errors import InvalidData

API_KEY_HEADER = "X-API-Key"
MiB = 1024 * 1024

T = TypeVar("T", int, float)


def _env(name: str, cast: Callable[[str], T], default: T) -> T:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except ValueError:
        raise InvalidData(f"${name}={raw!r} is not a valid {getattr(cast, '__name__', 'value')}") from None


@dataclass
class ServiceSettings:
    """Service settings: argument > environment variable (SIAMESE_INDEX_...) > default."""

    home: str | Path | None = None  # config.resolve_home
    model: str | Path | None = None  # only for a new home (config.resolve_model_dir)
    max_upload_bytes: int = 10 * MiB  # per image; more -> 413
    max_batch: int = 32  # images per batch identify; more -> 413
    lock_timeout: float = 5.0  # seconds a write waits for the writer lock; then 503
    retry_after: int = 2  # the Retry-After (seconds) of a 503
    batch_images: int = 64  # most images embedded together by the lookup batcher
    threshold_sync_seconds: float = 0.05
    threshold_min_interval: float = 30.0
    # FAISS's OpenMP threads for searches. One: each lookup batch is small, concurrency comes from
    # requests, and OpenMP teams spinning on a busy machine cost 10-100x on a 1-query search.
    faiss_threads: int = 1
    create: bool = True  # create the home (with `model`) when it does not exist

    @classmethod
    def from_env(cls, **overrides: Any) -> ServiceSettings:
        """Settings from SIAMESE_INDEX_* variables; overrides that are not None win."""
        s = cls(
            home=os.environ.get("SIAMESE_INDEX_HOME") or None,
            model=os.environ.get("SIAMESE_INDEX_MODEL") or None,
            max_upload_bytes=_env("SIAMESE_INDEX_MAX_UPLOAD_BYTES", int, cls.max_upload_bytes),
            max_batch=_env("SIAMESE_INDEX_MAX_BATCH", int, cls.max_batch),
            lock_timeout=_env("SIAMESE_INDEX_LOCK_TIMEOUT", float, cls.lock_timeout),
        )
        for key, value in overrides.items():
            if value is not None:
                setattr(s, key, value)
        return s

    def update(self, **overrides: Any) -> ServiceSettings:
        """Set fields by keyword (create_app's overrides); an unknown name is a TypeError."""
        for key, value in overrides.items():
            if not hasattr(self, key):
                raise TypeError(f"unknown setting {key!r}")
            setattr(self, key, value)
        return self

    def env(self) -> dict[str, str]:
        """These settings as the environment variables from_env() reads (for uvicorn workers)."""
        out = {
            "SIAMESE_INDEX_MAX_UPLOAD_BYTES": str(self.max_upload_bytes),
            "SIAMESE_INDEX_MAX_BATCH": str(self.max_batch),
            "SIAMESE_INDEX_LOCK_TIMEOUT": str(self.lock_timeout),
        }
        if self.home is not None:
            out["SIAMESE_INDEX_HOME"] = str(Path(self.home).expanduser().absolute())
        if self.model is not None:
            out["SIAMESE_INDEX_MODEL"] = str(self.model)
        return out

    @property
    def max_request_bytes(self) -> int:
        """The cap on a whole request body: a full batch of images at the cap, plus the form."""
        return self.max_upload_bytes * max(self.max_batch, 2) + MiB


__all__ = ["API_KEY_HEADER", "MiB", "ServiceSettings"]
