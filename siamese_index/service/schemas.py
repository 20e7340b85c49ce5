"""The service's response models (they document the API in /openapi.json).

The answers of the library are its result types (siamese_index.types): FastAPI takes those
frozen dataclasses as response models directly, so a field added to a result type shows up in
the schema and the JSON without a second edit. Only the envelopes the service adds around them
(lists, pages, health) are declared here.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from siamese_index.types import (
    EnrollResult,
    EnrollSummary,
    Identification,
    Person,
    PersonDetails,
    Removed,
    Verification,
)


class BatchOut(BaseModel):
    """POST /v1/identify/batch: one Identification per image, in order."""

    results: list[Identification]


class PeopleOut(BaseModel):
    """GET /v1/identities: one page of identities, ordered by id."""

    total: int
    offset: int
    limit: int
    identities: list[Person]


class EnrollOut(BaseModel):
    """POST /v1/identities and /v1/identities/{id}/images: the identity as it now is, what each
    image became, and the counts."""

    identity: PersonDetails = Field(description="the identity as GET /v1/identities/{id} shows it")
    results: list[EnrollResult]
    summary: EnrollSummary


class RenameIn(BaseModel):
    name: str | None = Field(description="the new display name; null clears it")


class HealthOut(BaseModel):
    status: str = Field(description="ok | loading | error")
    ready: bool
    version: str
    error: str | None = None


# The result types the routes answer with as they are.
IdentificationOut = Identification
VerificationOut = Verification
PersonOut = Person
PersonDetailsOut = PersonDetails  # GET /v1/identities/{id}
RemoveOut = Removed  # DELETE /v1/identities/{id}: what was deleted

__all__ = [
    "BatchOut",
    "EnrollOut",
    "HealthOut",
    "IdentificationOut",
    "PeopleOut",
    "PersonDetailsOut",
    "PersonOut",
    "RemoveOut",
    "RenameIn",
    "VerificationOut",
]
