"""Frozen result types returned by the library (and serialised by the CLI and service).

Each has `to_dict()`; JSON is made from them by siamese_index.jsonable.to_jsonable. The results of
the index's maintenance and people operations also answer `result["key"]` (and `**result`), the
dict they were before, for callers not yet moved to attributes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


class _DictView(Mapping[str, Any]):
    """Read-only dict-style access to a result dataclass's to_dict() (`r["ok"]`, `**r`, and
    validation as a dict by pydantic), for callers written against the dict results."""

    def to_dict(self) -> dict:
        from siamese_index.jsonable import to_jsonable

        return to_jsonable(self)

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


@dataclass(frozen=True)
class Match:
    """One enrolled identity and its L2 distance to a query (nearest of its images)."""

    id: str
    name: str | None
    distance: float


@dataclass(frozen=True)
class Identification:
    """The answer for one query image: the best match if it is known, and the candidates."""

    query: str
    known: bool
    match: Match | None
    candidates: tuple[Match, ...]
    threshold: float | None  # None only when no query was usable and no threshold is calibrated
    warnings: tuple[str, ...] = ()
    # Set when the query could not be used (unreadable image): known False, no candidates.
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Verification:
    """Whether two images show the same identity: distance < threshold."""

    image_a: str
    image_b: str
    distance: float
    threshold: float
    same: bool
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EnrollResult:
    """What one enrolled file became: added, already present, or refused with a reason."""

    path: str
    status: str  # "added" | "exists" | "failed"
    image_id: int | None = None
    reason: str | None = None
    warnings: tuple[str, ...] = ()
    identity: str | None = None  # the external id the file was enrolled under

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Person:
    id: str
    name: str | None
    meta: dict = field(default_factory=dict)
    images: int = 0
    created: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EnrollSummary:
    """How many files of one enrollment were added, were already enrolled, or failed."""

    added: int = 0
    exists: int = 0
    failed: int = 0

    @classmethod
    def of(cls, results) -> EnrollSummary:
        """Count a sequence of EnrollResult by status."""
        statuses = [r.status for r in results]
        return cls(statuses.count("added"), statuses.count("exists"), statuses.count("failed"))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class OperatingPoint:
    """The threshold used to call a query known, and how it was obtained (for users to read)."""

    threshold: float | None
    method: str
    gallery_size: int
    target_far: float
    margin: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# -- people --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageRecord(_DictView):
    """One enrolled photo: its image number (the FAISS id), source, content hash, size, copy."""

    image_id: int
    source_name: str | None
    sha256: str
    width: int | None
    height: int | None
    bytes: int | None
    stored_path: str | None  # relative to the home; None when no copy is kept
    created: str


@dataclass(frozen=True)
class PersonDetails(_DictView):
    """One identity in full (SiameseIndex.person): id, name, meta, times and its photos."""

    id: str
    name: str | None
    meta: dict
    created: str
    updated: str
    images: tuple[ImageRecord, ...] = ()


@dataclass(frozen=True)
class Removed(_DictView):
    """SiameseIndex.remove: the identity, how many photos it had, stored copies deleted."""

    id: str
    images: int
    files_deleted: int


@dataclass(frozen=True)
class RemovedImage(_DictView):
    """SiameseIndex.remove_image: which photo went and how many the identity has left."""

    id: str
    image_id: int
    source_name: str | None
    remaining_images: int
    files_deleted: int


@dataclass(frozen=True)
class Merged(_DictView):
    """SiameseIndex.merge: `id` moved into `into`; photos moved, duplicates dropped."""

    id: str
    into: str
    moved: int
    duplicates_dropped: int


# -- maintenance ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelStatus(_DictView):
    """The served model version (status()["model"])."""

    version: int
    model_id: str
    model_dir: str | None
    dim: int
    threshold: float | None
    threshold_method: str | None


@dataclass(frozen=True)
class Counts(_DictView):
    """What the home holds (status()["counts"])."""

    identities: int
    identities_with_images: int
    images: int
    embeddings: int
    stored_images: int


@dataclass(frozen=True)
class IndexState(_DictView):
    """The FAISS cache (status()["index"]): its file's stamp, vectors loaded and expected."""

    path: str
    stamp: dict | None
    loaded: int
    vectors: int
    generation: int
    last_sync: dict


@dataclass(frozen=True)
class Consistency(_DictView):
    """status()'s quick consistency check."""

    ok: bool
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Status(_DictView):
    """SiameseIndex.status: home, schema, model, counts, FAISS cache, operating point, consistency."""

    home: str
    database: str
    schema_version: int
    change_counter: int
    keep_images: bool
    model: ModelStatus
    counts: Counts
    index: IndexState
    operating_point: OperatingPoint
    consistency: Consistency


@dataclass(frozen=True)
class Problem(_DictView):
    """One finding of check(). kind: database, index_file, index_memory, bad_embedding,
    missing_embedding, missing_file, corrupt_file or orphan_file."""

    kind: str
    detail: str


@dataclass(frozen=True)
class Checked(_DictView):
    """How much check() looked at."""

    images: int
    embeddings: int
    stored_files: int


@dataclass(frozen=True)
class CheckReport(_DictView):
    """SiameseIndex.check: ok when nothing was wrong; what was found, repaired, left for a person."""

    ok: bool
    problems: tuple[Problem, ...]
    repaired: tuple[str, ...]
    unrepaired: tuple[str, ...]
    checked: Checked


@dataclass(frozen=True)
class BackupResult(_DictView):
    """SiameseIndex.backup: where the copy went and what it holds."""

    path: str
    identities: int
    images: int
    stored_images: int
    missing_images: int
    bytes: int
