"""Frozen result types returned by the library (and serialised by the CLI and service)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


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
    threshold: float
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
