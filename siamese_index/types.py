"""Frozen result types returned by the library (and serialised by the CLI and service).

Each has `to_dict()`; JSON is made from them by siamese_index.jsonable.to_jsonable. The results of
the index's maintenance and people operations also answer `result["key"]` (and `**result`), the
dict they were before, for callers not yet moved to attributes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar


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


# -- model versions, retrain, feedback, thresholds (siamese_index.lifecycle) --------------------
# Their dicts keep the keys the CLI has always printed: a few differ from the attribute names
# (`from` is a Python keyword: from_version), and optional parts a report does not always carry
# (a message, a reason, the held-out scores) are left out when absent.
def _plain(value: Any) -> Any:
    """Nested results by their own to_dict() (so that their key names apply), sequences item by item."""
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class _Result(_DictView):
    """A _DictView whose to_dict() renames some keys and leaves optional parts out when None."""

    _KEYS: ClassVar[dict[str, str]] = {}  # attribute -> JSON key, where they differ
    _OPTIONAL: ClassVar[frozenset[str]] = frozenset()  # attributes left out of the dict when None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in self._OPTIONAL:
                continue
            out[self._KEYS.get(f.name, f.name)] = _plain(value)
        from siamese_index.jsonable import to_jsonable

        result: dict[str, Any] = to_jsonable(out)
        return result


# -- model versions ----------------------------------------------------------------------------
@dataclass(frozen=True)
class HeldOutSummary(_Result):
    """What the retrain that made a version measured on held-out pairs (its verdict)."""

    judged: bool | None
    old_auc: float | None
    new_auc: float | None
    verdict: str | None


@dataclass(frozen=True, kw_only=True)
class ModelVersion(_Result):
    """One model version of a home (list_versions). state: active, kept (served before and
    still has its vectors) or candidate (never served)."""

    _OPTIONAL = frozenset({"held_out"})

    version: int
    model_id: str
    state: str
    active: bool
    parent: int | None
    dim: int
    threshold: float | None
    created: str
    activated: str | None
    embeddings: int
    model_dir: str | None
    source: str | None
    held_out: HeldOutSummary | None = None


@dataclass(frozen=True, kw_only=True)
class VersionDetails(ModelVersion):
    """One version in full (show_version): its recorded scores, whether its model directory is
    intact, and how many enrolled images activating it would embed (roughly)."""

    scores: dict[str, Any]
    model_dir_ok: bool
    images: int
    missing_embeddings: int


# -- activation ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DroppedImage(_Result):
    """An enrolled image removed by an activation with drop_unstored (its person stays)."""

    _KEYS = {"identity": "id"}

    image_id: int
    identity: str
    source_name: str | None
    reason: str


@dataclass(frozen=True, kw_only=True)
class ActivationReport(_Result):
    """What activate / rollback / reembed did. reused: vectors the target already had;
    embedded: all it embedded; caught_up: of those, embedded under the writer lock just before
    the switch; generation: the FAISS index generation after the switch (None: no switch)."""

    _KEYS = {"from_version": "from", "to_version": "to"}
    _OPTIONAL = frozenset({"message", "registered"})

    changed: bool
    from_version: int
    to_version: int
    model_id: str
    images: int
    reused: int
    embedded: int = 0
    caught_up: int = 0
    dropped: tuple[DroppedImage, ...] = ()
    generation: int | None = None
    seconds: float = 0.0
    message: str | None = None  # why nothing changed
    registered: bool | None = None  # reembed: whether the model directory became a new version


# -- retrain ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelScores(_Result):
    """One tower measured on the held-out pairs. accuracy: at its own threshold; accuracy_2fold:
    threshold chosen on one half of the held-out identities, measured on the other."""

    auc: float
    threshold: float | None
    accuracy: float | None
    accuracy_2fold: float | None
    mean_genuine_distance: float | None
    mean_impostor_distance: float | None


@dataclass(frozen=True, kw_only=True)
class Comparison(_Result):
    """Old against new on the held-out pairs (also kept in the version's scores["comparison"]).
    Unjudged (too few held-out pairs): `reason` says so and the scores are absent."""

    _OPTIONAL = frozenset({"reason", "old", "new", "worse", "old_auc", "new_auc", "note"})

    judged: bool
    held_out_pairs: int
    held_out_genuine: int
    held_out_impostor: int
    held_out_identities: int
    min_held_out_each: int
    reason: str | None = None
    old: ModelScores | None = None
    new: ModelScores | None = None
    worse: tuple[str, ...] | None = None  # why the new tower is worse; () when it is not
    old_auc: float | None = None
    new_auc: float | None = None
    note: str | None = None
    verdict: str = ""


@dataclass(frozen=True)
class PairCounts(_Result):
    """The pairs a retrain used: by origin, in total, and how they were split."""

    csv: int
    enrolled: int
    feedback: int
    total: int
    photos: int
    train: int
    held_out: int
    dropped_crossing: int  # impostor pairs joining a held-out and a training identity: used by neither
    conflicting: int  # impostor pairs inside one identity as the genuine pairs link it


@dataclass(frozen=True)
class ParentVersion(_Result):
    version: int
    model_id: str


@dataclass(frozen=True, kw_only=True)
class RetrainReport(_Result):
    """What a retrain did: the version it recorded, the pairs, old against new, the decision and
    why, and the activation (None when not activated; activation_error when it failed)."""

    _OPTIONAL = frozenset({"activation_error"})

    version: int
    model_id: str
    model_dir: str
    parent: ParentVersion
    pairs: PairCounts
    comparison: Comparison
    threshold: float
    threshold_method: str
    history: tuple[dict[str, Any], ...]
    decision: str
    activated: bool
    activation: ActivationReport | None
    warnings: tuple[str, ...]
    activation_error: str | None = None
    seconds: float = 0.0


# -- feedback and thresholds ----------------------------------------------------------------------
@dataclass(frozen=True)
class FeedbackRecorded(_Result):
    """A recorded correction. distance: from the query to the person's nearest photo under the
    serving version; model_agreed: whether its pair threshold already gave this answer."""

    feedback_id: int
    query: str
    sha256: str
    identity: str
    label: str  # "is" | "is-not"
    distance: float | None
    threshold: float | None
    model_version: int
    model_agreed: bool | None
    replaced: bool


@dataclass(frozen=True)
class FeedbackEntry(_Result):
    """One recorded correction as list_feedback shows it (without the photo)."""

    feedback_id: int
    identity: str
    label: str
    query: str | None
    sha256: str
    model_version: int | None
    distance: float | None
    created: str


@dataclass(frozen=True)
class ThresholdChange(_Result):
    """set_calibration: a version's pair threshold, before and after, and where it came from."""

    version: int
    model_id: str
    active: bool
    previous_threshold: float | None
    threshold: float
    threshold_method: str | None
    source: str
