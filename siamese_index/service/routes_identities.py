"""Identity routes: list and get (read keys); create, add images, rename, delete (admin keys).

What the index returns for person() and remove() goes through to_jsonable as it is (a dict or a
result dataclass alike): the routes never index into it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse

from siamese_index.errors import NotFound
from siamese_index.jsonable import to_jsonable
from siamese_index.service.auth import ADMIN, READ, admin_key, read_key
from siamese_index.service.batcher import set_faiss_threads
from siamese_index.service.deps import live
from siamese_index.service.handlers import error_response
from siamese_index.service.keys import KeyInfo
from siamese_index.service.schemas import EnrollOut, PeopleOut, PersonDetailsOut, PersonOut, RemoveOut, RenameIn
from siamese_index.service.state import Live
from siamese_index.service.uploads import parse_meta, read_uploads
from siamese_index.types import EnrollSummary

router = APIRouter(tags=["identities"])


@router.get("/v1/identities", response_model=PeopleOut, openapi_extra=READ, summary="List enrolled identities")
def list_identities(
    request: Request,
    limit: int = Query(100, ge=1, le=10_000),
    offset: int = Query(0, ge=0),
    _key: KeyInfo = Depends(read_key),
) -> Any:
    """Identities ordered by id, with their image counts."""
    everyone = live(request).index.people()
    page = everyone[offset : offset + limit]
    return {"total": len(everyone), "offset": offset, "limit": limit, "identities": to_jsonable(page)}


@router.get("/v1/identities/{person_id}", response_model=PersonDetailsOut, openapi_extra=READ, summary="One identity")
def get_identity(request: Request, person_id: str, _key: KeyInfo = Depends(read_key)) -> Any:
    """id, name, meta, created, updated and its images."""
    return to_jsonable(live(request).index.person(person_id))


def _enroll(
    s: Live, person_id: str, images: list[UploadFile], allow_no_face: bool, **fields: Any
) -> dict[str, Any] | JSONResponse:
    """Enroll the uploads under `person_id`: the EnrollOut body, or a 422 when every image failed
    (nothing is written then)."""
    set_faiss_threads(s.settings.faiss_threads)
    sources = read_uploads(s.settings, images, "image")
    results = s.index.enroll(person_id, sources, allow_no_face=allow_no_face, **fields)
    items = to_jsonable(results)
    summary = to_jsonable(EnrollSummary.of(results))
    if all(r.status == "failed" for r in results):
        return error_response(422, "no image could be enrolled", results=items, summary=summary)
    return {"identity": to_jsonable(s.index.person(person_id)), "results": items, "summary": summary}


@router.post(
    "/v1/identities",
    response_model=EnrollOut,
    status_code=201,
    openapi_extra=ADMIN,
    summary="Create an identity from images",
    responses={
        409: {"description": "the id exists"},
        422: {"description": "no image could be enrolled"},
        503: {"description": "the writer lock is busy (Retry-After)"},
    },
)
def create_identity(
    request: Request,
    id: str = Form(description="the identity's external id"),
    images: list[UploadFile] = File(description="one or more photos"),
    name: str | None = Form(None, description="display name"),
    meta: str | None = Form(None, description="a JSON object of metadata"),
    allow_no_face: bool = Form(False, description="enroll photos with no single clear face"),
    _key: KeyInfo = Depends(admin_key),
) -> Any:
    """Enroll a new identity. Each image is reported added, exists (same content twice) or failed
    with its reason; when every image fails nothing is written and the answer is 422."""
    s = live(request)
    meta_d = parse_meta(meta)
    try:
        s.index.person(id)
    except NotFound:
        pass
    else:
        raise HTTPException(409, f"identity {id!r} exists; add images with POST /v1/identities/{{id}}/images")
    return _enroll(s, id, images, allow_no_face, name=name, meta=meta_d)


@router.post(
    "/v1/identities/{person_id}/images",
    response_model=EnrollOut,
    openapi_extra=ADMIN,
    summary="Add images to an identity",
    responses={404: {"description": "no such identity"}, 422: {"description": "no image could be enrolled"}},
)
def add_images(
    request: Request,
    person_id: str,
    images: list[UploadFile] = File(),
    allow_no_face: bool = Form(False),
    _key: KeyInfo = Depends(admin_key),
) -> Any:
    """Enroll more photos of an existing identity (content already enrolled is reported as exists)."""
    s = live(request)
    s.index.person(person_id)  # 404 when absent
    return _enroll(s, person_id, images, allow_no_face)


@router.patch("/v1/identities/{person_id}", response_model=PersonOut, openapi_extra=ADMIN, summary="Rename an identity")
def rename_identity(request: Request, person_id: str, body: RenameIn, _key: KeyInfo = Depends(admin_key)) -> Any:
    return to_jsonable(live(request).index.rename(person_id, body.name))


@router.delete(
    "/v1/identities/{person_id}", response_model=RemoveOut, openapi_extra=ADMIN, summary="Delete an identity for good"
)
def delete_identity(request: Request, person_id: str, _key: KeyInfo = Depends(admin_key)) -> Any:
    """Rows, vectors and stored photos; once answered, lookups never return it again."""
    return to_jsonable(live(request).index.remove(person_id))
