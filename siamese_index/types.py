"""Frozen result types returned by the library (and serialised by the CLI and service).

Each has `to_dict()`; JSON is made from them in one place, siamese_index.jsonable.to_jsonable, which
also honours the field options below (a JSON key that differs from the attribute, a part left out
when absent), so the CLI, the service and reports print a result the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from siamese_index.jsonable import to_jsonable


class Result:
    """Base of every result type: `to_dict()` is its JSON-ready form, made by to_jsonable."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = to_jsonable(self)
        return out


def omitted_if_none(**kwargs: Any) -> Any:
    """An optional part left out of the JSON when absent (None). (A field printed under another
    key is `field(metadata={"json": "key"})`: `from` is a Python keyword, say.)"""
    return field(default=None, metadata={"omit_none": True}, **kwargs)


@dataclass(frozen=True)
class Match(Result):
    """One enrolled identity and its L2 distance to a query (nearest of its images)."""

    id: str
    name: str | None
    distance: float


@dataclass(frozen=True)
class Identification(Result):
    """The answer for one query image: the best match if it is known, and the candidates."""

    query: str
    known: bool
    match: Match | None
    candidates: tuple[Match, ...]
    threshold: float | None  # None only when no query was usable and no threshold is calibrated
    warnings: tuple[str, ...] = ()
    # Set when the query could not be used (unreadable image): known False, no candidates.
    error: str | None = None


@dataclass(frozen=True)
class Verification(Result):
    """Whether two images show the same identity: distance < threshold."""

    image_a: str
    image_b: str
    distance: float
    threshold: float
    same: bool
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class EnrollResult(Result):
    """What one enrolled file became: added, already present, or refused with a reason."""

    path: str
    status: str  # "added" | "exists" | "failed"
    image_id: int | None = None
    reason: str | None = None
    warnings: tuple[str, ...] = ()
    identity: str | None = None  # the external id the file was enrolled under


@dataclass(frozen=True)
class Person(Result):
    id: str
    name: str | None
    meta: dict = field(default_factory=dict)
    images: int = 0
    created: str | None = None


@dataclass(frozen=True)
class EnrollSummary(Result):
    """How many files of one enrollment were added, were already enrolled, or failed."""

    added: int = 0
    exists: int = 0
    failed: int = 0

    @classmethod
    def of(cls, results) -> EnrollSummary:
        """Count a sequence of EnrollResult by status."""
        statuses = [r.status for r in results]
        return cls(statuses.count("added"), statuses.count("exists"), statuses.count("failed"))


@dataclass(frozen=True)
class OperatingPoint(Result):
    """The threshold used to call a query known, and how it was obtained (for users to read)."""

    threshold: float | None
    method: str
    gallery_size: int
    target_far: float
    margin: float = 0.0


# -- people --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageRecord(Result):
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
class PersonDetails(Result):
    """One identity in full (SiameseIndex.person): id, name, meta, times and its photos."""

    id: str
    name: str | None
    meta: dict
    created: str
    updated: str
    images: tuple[ImageRecord, ...] = ()


@dataclass(frozen=True)
class Removed(Result):
    """SiameseIndex.remove: the identity, how many photos it had, stored copies deleted."""

    id: str
    images: int
    files_deleted: int


@dataclass(frozen=True)
class RemovedImage(Result):
    """SiameseIndex.remove_image: which photo went and how many the identity has left."""

    id: str
    image_id: int
    source_name: str | None
    remaining_images: int
    files_deleted: int


@dataclass(frozen=True)
class Merged(Result):
    """SiameseIndex.merge: `id` moved into `into`; photos moved, duplicates dropped."""

    id: str
    into: str
    moved: int
    duplicates_dropped: int


# -- maintenance ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelStatus(Result):
    """The served model version (status()["model"])."""

    version: int
    model_id: str
    model_dir: str | None
    dim: int
    threshold: float | None
    threshold_method: str | None


@dataclass(frozen=True)
class Counts(Result):
    """What the home holds (status()["counts"])."""

    identities: int
    identities_with_images: int
    images: int
    embeddings: int
    stored_images: int


@dataclass(frozen=True)
class IndexState(Result):
    """The FAISS cache (status()["index"]): its file's stamp, vectors loaded and expected."""

    path: str
    stamp: dict | None
    loaded: int
    vectors: int
    generation: int
    last_sync: dict


@dataclass(frozen=True)
class Consistency(Result):
    """status()'s quick consistency check."""

    ok: bool
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class Status(Result):
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
class Problem(Result):
    """One finding of check(). kind: database, index_file, index_memory, bad_embedding,
    missing_embedding, missing_file, corrupt_file or orphan_file."""

    kind: str
    detail: str


@dataclass(frozen=True)
class Checked(Result):
    """How much check() looked at."""

    images: int
    embeddings: int
    stored_files: int


@dataclass(frozen=True)
class CheckReport(Result):
    """SiameseIndex.check: ok when nothing was wrong; what was found, repaired, left for a person."""

    ok: bool
    problems: tuple[Problem, ...]
    repaired: tuple[str, ...]
    unrepaired: tuple[str, ...]
    checked: Checked


@dataclass(frozen=True)
class BackupResult(Result):
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
# -- model versions ----------------------------------------------------------------------------
@dataclass(frozen=True)
class HeldOutSummary(Result):
    """What the retrain that made a version measured on held-out pairs (its verdict)."""

    judged: bool | None
    old_auc: float | None
    new_auc: float | None
    verdict: str | None


@dataclass(frozen=True, kw_only=True)
class ModelVersion(Result):
    """One model version of a home (list_versions). state: active, kept (served before and
    still has its vectors) or candidate (never served)."""

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
    held_out: HeldOutSummary | None = omitted_if_none()


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
class DroppedImage(Result):
    """An enrolled image removed by an activation with drop_unstored (its person stays)."""

    image_id: int
    identity: str = field(metadata={"json": "id"})
    source_name: str | None
    reason: str


@dataclass(frozen=True, kw_only=True)
class ActivationReport(Result):
    """What activate / rollback / reembed did. reused: vectors the target already had;
    embedded: all it embedded; caught_up: of those, embedded under the writer lock just before
    the switch; generation: the FAISS index generation after the switch (None: no switch)."""

    changed: bool
    from_version: int = field(metadata={"json": "from"})
    to_version: int = field(metadata={"json": "to"})
    model_id: str
    images: int
    reused: int
    embedded: int = 0
    caught_up: int = 0
    dropped: tuple[DroppedImage, ...] = ()
    generation: int | None = None
    seconds: float = 0.0
    message: str | None = omitted_if_none()  # why nothing changed
    registered: bool | None = omitted_if_none()  # reembed: whether the model directory became a new version


# -- retrain ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelScores(Result):
    """One tower measured on the held-out pairs. accuracy: at its own threshold; accuracy_2fold:
    threshold chosen on one half of the held-out identities, measured on the other."""

    auc: float
    threshold: float | None
    accuracy: float | None
    accuracy_2fold: float | None
    mean_genuine_distance: float | None
    mean_impostor_distance: float | None


@dataclass(frozen=True, kw_only=True)
class Comparison(Result):
    """Old against new on the held-out pairs (also kept in the version's scores["comparison"]).
    Unjudged (too few held-out pairs): `reason` says so and the scores are absent."""

    judged: bool
    held_out_pairs: int
    held_out_genuine: int
    held_out_impostor: int
    held_out_identities: int
    min_held_out_each: int
    reason: str | None = omitted_if_none()
    old: ModelScores | None = omitted_if_none()
    new: ModelScores | None = omitted_if_none()
    worse: tuple[str, ...] | None = omitted_if_none()  # why the new tower is worse; () when it is not
    old_auc: float | None = omitted_if_none()
    new_auc: float | None = omitted_if_none()
    note: str | None = omitted_if_none()
    verdict: str = ""


@dataclass(frozen=True)
class PairCounts(Result):
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
class ParentVersion(Result):
    version: int
    model_id: str


@dataclass(frozen=True, kw_only=True)
class RetrainReport(Result):
    """What a retrain did: the version it recorded, the pairs, old against new, the decision and
    why, and the activation (None when not activated; activation_error when it failed)."""

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
    activation_error: str | None = omitted_if_none()
    seconds: float = 0.0


# -- feedback and thresholds ----------------------------------------------------------------------
@dataclass(frozen=True)
class FeedbackRecorded(Result):
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
class FeedbackEntry(Result):
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
class ThresholdChange(Result):
    """set_calibration: a version's pair threshold, before and after, and where it came from."""

    version: int
    model_id: str
    active: bool
    previous_threshold: float | None
    threshold: float
    threshold_method: str | None
    source: str
