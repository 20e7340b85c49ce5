"""The FAISS cache: IndexIDMap2 over IndexFlatL2, ids = SQLite images.id.

The file HOME/index.faiss is only a cache of the embeddings held in SQLite. It is written to a
temporary file and renamed into place, with a sidecar stamp HOME/index.faiss.stamp.json
(model id, count, sha256 of the sorted id set, generation, change counter, sha256 of the file).
On open it is loaded and compared with SQLite; missing, truncated, corrupt or mismatched means
it is rebuilt from SQLite (see `load_or_rebuild`).

FAISS returns squared L2 distances. `squared_to_l2` is the one place they become plain L2;
everything above this module sees plain L2 only.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from siamese_index.errors import IndexStale
from siamese_index.storage.db import now_iso
from siamese_index.storage.durable import atomic_write

log = logging.getLogger(__name__)

INDEX_NAME = "index.faiss"
STAMP_FORMAT = 1


def squared_to_l2(squared: np.ndarray) -> np.ndarray:
    """FAISS's squared L2 -> plain L2 (the only place this conversion happens).

    Tiny negative values from floating-point cancellation are clipped to 0.
    """
    return np.sqrt(np.maximum(np.asarray(squared, dtype=np.float32), 0.0))


def id_set_sha256(ids) -> str:
    """A stable digest of a set of ids (sorted, int64 little-endian)."""
    arr = np.unique(np.asarray(ids, dtype=np.int64)).astype("<i8")
    return hashlib.sha256(arr.tobytes()).hexdigest()


def stamp_path(index_path: Path) -> Path:
    index_path = Path(index_path)
    return index_path.with_name(index_path.name + ".stamp.json")


class VectorIndex:
    """An exact L2 index of float32 vectors keyed by int64 ids (the SQLite image keys)."""

    def __init__(self, dim: int, index=None):
        self.dim = int(dim)
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatL2(self.dim))
        if self.index.d != self.dim:
            raise ValueError(f"index dimension {self.index.d} != {self.dim}")

    @classmethod
    def build(cls, dim: int, ids, vectors) -> VectorIndex:
        vi = cls(dim)
        vi.add(ids, vectors)
        return vi

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    def ids(self) -> np.ndarray:
        """The ids held, sorted."""
        return np.sort(faiss.vector_to_array(self.index.id_map).astype(np.int64))

    def _check_vectors(self, vectors) -> np.ndarray:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"vectors of shape {x.shape} do not fit an index of dimension {self.dim}")
        return x

    def add(self, ids, vectors) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        x = self._check_vectors(vectors)
        if len(ids) != len(x):
            raise ValueError(f"{len(ids)} ids for {len(x)} vectors")
        if not len(ids):
            return
        if len(np.unique(ids)) != len(ids) or (self.ntotal and np.isin(ids, self.ids()).any()):
            raise ValueError("duplicate ids: FAISS ids are SQLite keys and must be unique")
        self.index.add_with_ids(x, ids)

    def remove(self, ids) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if not len(ids) or not self.ntotal:
            return 0
        return int(self.index.remove_ids(ids))

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k nearest ids and their plain L2 distances, nearest first.

        Returns (ids, distances), both (n, min(k, ntotal)); never padded with -1.
        """
        q = self._check_vectors(queries)
        k = min(int(k), self.ntotal)
        if k <= 0 or not len(q):
            return np.zeros((len(q), 0), np.int64), np.zeros((len(q), 0), np.float32)
        squared, ids = self.index.search(q, k)
        return ids.astype(np.int64), squared_to_l2(squared)

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """All (ids, vectors) held, sorted by id."""
        ids = self.ids()
        if not len(ids):
            return ids, np.zeros((0, self.dim), np.float32)
        return ids, np.stack([self.index.reconstruct(int(i)) for i in ids]).astype(np.float32)

    # -- persistence ---------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        return faiss.serialize_index(self.index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, dim: int) -> VectorIndex:
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as e:
            raise IndexStale(f"unreadable FAISS data ({str(e).splitlines()[0][:120]})") from e
        if not isinstance(index, faiss.IndexIDMap2):
            raise IndexStale(f"not an IndexIDMap2 ({type(index).__name__})")
        if index.d != dim:
            raise IndexStale(f"dimension {index.d}, expected {dim}")
        return cls(dim, index)

    def save(self, path: Path, *, model_id: str, generation: int, change_counter: int) -> dict:
        """Write the index then its stamp, each through a temporary file and a rename."""
        path = Path(path)
        data = self.to_bytes()
        ids = self.ids()
        stamp = {
            "format": STAMP_FORMAT,
            "model_id": model_id,
            "dim": self.dim,
            "count": int(len(ids)),
            "ids_sha256": id_set_sha256(ids),
            "generation": int(generation),
            "change_counter": int(change_counter),
            "file_sha256": hashlib.sha256(data).hexdigest(),
            "saved_at": now_iso(),
        }
        atomic_write(path, data)
        atomic_write(stamp_path(path), (json.dumps(stamp, indent=2, sort_keys=True) + "\n").encode())
        return stamp

    @classmethod
    def load(cls, path: Path, dim: int) -> tuple[VectorIndex, dict]:
        """Load a saved index and check it against its own stamp. Raises IndexStale saying why."""
        path = Path(path)
        if not path.is_file():
            raise IndexStale("the index file is missing")
        stamp = read_stamp(path)
        if stamp is None:
            raise IndexStale("the index stamp is missing or unreadable")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != stamp.get("file_sha256"):
            raise IndexStale("the index file does not match its stamp (truncated, corrupt or replaced)")
        vi = cls.from_bytes(data, dim)
        ids = vi.ids()
        if len(ids) != stamp.get("count") or id_set_sha256(ids) != stamp.get("ids_sha256"):
            raise IndexStale("the index content does not match its stamp")
        return vi, stamp


def read_stamp(index_path: Path) -> dict | None:
    try:
        stamp = json.loads(stamp_path(index_path).read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def stale_reasons(stamp: dict, *, model_id: str, dim: int, generation: int, expected_ids) -> list[str]:
    """Why a (self-consistent) saved index does not describe SQLite's current state."""
    reasons = []
    if stamp.get("model_id") != model_id:
        reasons.append(f"built with model {stamp.get('model_id')!r}, the home uses {model_id!r}")
    if stamp.get("dim") != dim:
        reasons.append(f"dimension {stamp.get('dim')}, expected {dim}")
    if stamp.get("generation") != generation:
        reasons.append(f"generation {stamp.get('generation')}, expected {generation}")
    expected = np.asarray(expected_ids, dtype=np.int64)
    if stamp.get("count") != len(expected) or stamp.get("ids_sha256") != id_set_sha256(expected):
        reasons.append(f"holds {stamp.get('count')} vectors that are not SQLite's {len(expected)}")
    return reasons


def load_or_rebuild(
    path: Path,
    *,
    model_id: str,
    dim: int,
    generation: int,
    expected_ids,
    fetch: Callable[[], tuple[np.ndarray, np.ndarray]],
) -> tuple[VectorIndex, dict]:
    """The saved index if it matches SQLite, else one rebuilt from `fetch()` -> (ids, vectors).

    Returns (index, info); info["source"] is "file" or "rebuilt", info["reason"] why it was
    rebuilt, info["stamp"] the stamp of a loaded file. Saving a rebuilt index is the caller's
    job (it needs the writer lock).
    """
    try:
        vi, stamp = VectorIndex.load(path, dim)
        reasons = stale_reasons(stamp, model_id=model_id, dim=dim, generation=generation, expected_ids=expected_ids)
        if not reasons:
            return vi, {"source": "file", "reason": None, "stamp": stamp}
        reason = "; ".join(reasons)
    except IndexStale as e:
        reason = str(e)
    log.info("rebuilding the FAISS index from SQLite: %s", reason)
    ids, vectors = fetch()
    return VectorIndex.build(dim, ids, vectors), {"source": "rebuilt", "reason": reason, "stamp": None}
