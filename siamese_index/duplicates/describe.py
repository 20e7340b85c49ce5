"""The second step: hash every file, and give every distinct content its vector.

exact: hashes only. near: near.describe of the picture's grayscale thumbnail (its two views,
flattened). identity: the face tower's embedding. Files are read in batches of BATCH in a few
threads; hashes (by path, size and mtime) and vectors (by content) come from the cache when it
has them, so a rerun reads no image again. A file that cannot be read or decoded is skipped with
its reason, never raised.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from siamese_index.duplicates.report import DedupWarning, Skipped
from siamese_index.duplicates.scan import NO_INFO, ScannedFile, image_info, sha256_file
from siamese_index.duplicates.verify import Thumbnails
from siamese_index.errors import InvalidImage, ModelError
from siamese_index.imaging import near
from siamese_index.storage.descriptor_cache import PictureInfo, Store

if TYPE_CHECKING:
    from siamese_index.towers.embedder import Embedder

BATCH = 256
STAGES = {"exact": "hash", "near": "describe", "identity": "embed"}  # progress stage per level
Progress = Callable[[str, int, int], None]
VectorRow = tuple[str, str, bytes, PictureInfo]  # (sha, kind, float32 bytes, picture info): a cache row


@dataclass
class _Read:
    """What reading one file gave: its hash, and a vector (near) or its bytes to embed (identity)."""

    file: ScannedFile
    sha: str | None = None  # None: the file could not be read
    error: str | None = None  # why the file cannot be used
    vector: np.ndarray | None = None
    data: bytes | None = None
    info: PictureInfo = NO_INFO


@dataclass
class Described:
    """The step's answer: vectors by content sha256 (none at the exact level), and what happened."""

    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    computed: int = 0  # files hashed (exact) or contents described / embedded
    cached: int = 0  # files whose hash and vector came from the cache
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[DedupWarning] = field(default_factory=list)


class Describer:
    """Fills each file's sha256 and picture size, and computes (or looks up) each content's vector.

    kind: the cache key of the vectors (near.VERSION, "identity:<model id>"), None at the exact level."""

    def __init__(
        self,
        level: str,
        kind: str | None,
        store: Store,
        embedder: Embedder | None = None,
        thumbnails: Thumbnails | None = None,
    ):
        if level == "identity" and embedder is None:
            raise ModelError("the identity level needs a face tower (embedder)")
        self.level, self.kind, self.store, self.embedder = level, kind, store, embedder
        self.thumbnails = thumbnails if thumbnails is not None else Thumbnails()
        self.out = Described()
        self.info: dict[str, PictureInfo] = {}

    def run(self, files: Sequence[ScannedFile], progress: Progress | None = None, workers: int = 1) -> Described:
        """Every file, in batches; progress(stage, done, total) after each."""
        stage, total = STAGES[self.level], len(files)
        pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
        try:
            for start in range(0, total, BATCH):
                self._batch(files[start : start + BATCH], pool)
                if progress:
                    progress(stage, min(start + BATCH, total), total)
        finally:
            if pool:
                pool.shutdown()
        return self.out

    # -- one batch ---------------------------------------------------------------------------
    def _batch(self, batch: Sequence[ScannedFile], pool: ThreadPoolExecutor | None) -> None:
        vectors = self.out.vectors
        self._from_cache(batch)
        todo = [f for f in batch if f.sha256 is None or (self.kind and f.sha256 not in vectors)]
        results = list(pool.map(self._read, todo)) if pool else [self._read(f) for f in todo]
        new_files: list[tuple[str, int, int, str]] = []
        new_vectors: list[VectorRow] = []
        to_embed = self._take(results, new_files, new_vectors)
        if to_embed:
            new_vectors += self._embed(to_embed)
        for f in batch:
            if f.sha256 is not None and self.kind and f.sha256 not in vectors:
                # Same content as a file that failed to decode in this batch.
                self.out.skipped.append(Skipped(f.path, "not a readable image"))
                f.sha256 = None
        todo_ids = {id(f) for f in todo}
        self.out.cached += sum(1 for f in batch if id(f) not in todo_ids and f.sha256 is not None)
        self.store.store(files=new_files, vectors=new_vectors)
        for f in batch:
            if f.sha256 is not None and f.sha256 in self.info:
                f.width, f.height, f.color = self.info[f.sha256]

    def _from_cache(self, batch: Sequence[ScannedFile]) -> None:
        """Hashes of unchanged files, and vectors of known contents, from the cache."""
        known = self.store.sha_for([(os.path.abspath(f.path), f.size, f.mtime_ns) for f in batch])
        for f in batch:
            f.sha256 = known.get(os.path.abspath(f.path))
        if not self.kind:
            return
        cached = self.store.vectors_for({f.sha256 for f in batch if f.sha256}, self.kind)
        for sha, (blob, info) in cached.items():
            if sha not in self.out.vectors:
                self.out.vectors[sha] = np.frombuffer(blob, dtype="<f4").copy()
                self.info[sha] = info

    def _read(self, f: ScannedFile) -> _Read:
        """Hash one file and, at the near level, describe it (runs in the worker threads)."""
        try:
            sha, data = sha256_file(f.path)
        except OSError as e:
            return _Read(f, error=f"cannot read ({e.strerror or e})")
        if self.level == "exact" or (self.kind and sha in self.out.vectors):
            return _Read(f, sha)
        if self.level == "near":
            try:
                gray = near.load_gray(data, name=f.path)
            except InvalidImage as e:
                return _Read(f, sha, error=e.reason)
            self.thumbnails.keep(sha, gray)
            return _Read(f, sha, vector=near.describe(gray).reshape(-1), info=image_info(data))
        return _Read(f, sha, data=data, info=image_info(data))  # identity: embedded in order, in _embed

    def _take(
        self, results: list[_Read], new_files: list[tuple[str, int, int, str]], new_vectors: list[VectorRow]
    ) -> list[_Read]:
        """Record what the reads gave (hashes, near vectors, skipped files); returns the reads to embed."""
        to_embed = []
        for r in results:
            f = r.file
            if r.sha is None:
                self.out.skipped.append(Skipped(f.path, r.error or "cannot read"))
                continue
            f.sha256 = r.sha
            new_files.append((os.path.abspath(f.path), f.size, f.mtime_ns, r.sha))
            if self.level == "exact":
                self.out.computed += 1
            if r.error is not None:
                self.out.skipped.append(Skipped(f.path, r.error))
                f.sha256 = None
            elif r.vector is not None and r.sha not in self.out.vectors:
                new_vectors.append(self._add(r.sha, r.vector, r.info))
            elif r.data is not None and r.sha not in self.out.vectors:
                to_embed.append(r)
        return to_embed

    def _add(self, sha: str, vector: np.ndarray, info: PictureInfo) -> VectorRow:
        """Keep a computed vector; returns its cache row."""
        assert self.kind is not None  # only the near and identity levels compute vectors
        self.out.vectors[sha] = vector
        self.info[sha] = info
        self.out.computed += 1
        return (sha, self.kind, np.ascontiguousarray(vector, "<f4").tobytes(), info)

    def _embed(self, reads: list[_Read]) -> list[VectorRow]:
        """The identity level: prepare each distinct content (face found, aligned) and embed them in one batch."""
        assert self.embedder is not None
        arrays, keys = [], []
        prepared: set[str] = set()
        for r in reads:
            assert r.sha is not None and r.data is not None
            if r.sha in prepared:
                continue
            try:
                arr, warns = self.embedder.prepare(r.data, name=r.file.path, strict_face=False)
            except InvalidImage as e:
                self.out.skipped.append(Skipped(r.file.path, e.reason))
                r.file.sha256 = None
                continue
            self.out.warnings += [DedupWarning(r.file.path, w) for w in warns or []]
            arrays.append(arr)
            keys.append((r.sha, r.info))
            prepared.add(r.sha)
        if not arrays:
            return []
        vecs = np.asarray(self.embedder.embed_batch(np.stack(arrays)), dtype=np.float32)
        if vecs.shape[0] != len(arrays) or not np.isfinite(vecs).all():
            raise ModelError("the model returned unusable embeddings")
        return [self._add(sha, v, info) for (sha, info), v in zip(keys, vecs)]
