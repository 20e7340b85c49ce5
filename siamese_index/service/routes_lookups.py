"""Lookup routes (read keys): identify one image, identify several, verify two."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile

from siamese_index.jsonable import to_jsonable
from siamese_index.service.auth import READ, read_key
from siamese_index.service.deps import live
from siamese_index.service.handlers import error_response
from siamese_index.service.keys import KeyInfo
from siamese_index.service.schemas import BatchOut, IdentificationOut, VerificationOut
from siamese_index.service.uploads import read_upload, read_uploads

router = APIRouter(tags=["lookup"])


@router.post(
    "/v1/identify",
    response_model=IdentificationOut,
    openapi_extra=READ,
    summary="Who is in this image?",
    responses={422: {"description": "not a usable image (the reason is given)"}, 413: {"description": "too large"}},
)
def identify(
    request: Request,
    image: UploadFile = File(description="the query image"),
    k: int = Form(5, ge=1, le=1000, description="how many candidate identities"),
    threshold: float | None = Form(None, gt=0, description="override the identification threshold (plain L2)"),
    margin: float | None = Form(None, ge=0, description="also require this gap between the best and second identity"),
    _key: KeyInfo = Depends(read_key),
) -> Any:
    """The same fields as one entry of `siamese-index identify --json`: known, match (when known),
    candidates (nearest distinct identities), threshold, warnings."""
    s = live(request)
    sources = [read_upload(image, s.settings.max_upload_bytes, "upload")]
    [answer] = s.batcher.identify(sources, k, threshold, margin)
    if answer.error:
        return error_response(422, f"{answer.query}: {answer.error}", reason=answer.error, file=answer.query)
    return to_jsonable(answer)


@router.post(
    "/v1/identify/batch",
    response_model=BatchOut,
    openapi_extra=READ,
    summary="Identify several images",
    responses={413: {"description": "an image over the size cap, or too many images"}},
)
def identify_batch(
    request: Request,
    images: list[UploadFile] = File(description="the query images"),
    k: int = Form(5, ge=1, le=1000),
    threshold: float | None = Form(None, gt=0),
    margin: float | None = Form(None, ge=0),
    _key: KeyInfo = Depends(read_key),
) -> Any:
    """One result per image, in order, like `siamese-index identify --json`; an unreadable image
    gets known=false and `error` set to the reason, without failing the others."""
    s = live(request)
    answers = s.batcher.identify(read_uploads(s.settings, images, "image"), k, threshold, margin)
    return {"results": to_jsonable(answers)}


@router.post(
    "/v1/verify",
    response_model=VerificationOut,
    openapi_extra=READ,
    summary="Do two images show the same identity?",
    responses={422: {"description": "not a usable image (the reason is given)"}},
)
def verify(
    request: Request,
    image_a: UploadFile = File(),
    image_b: UploadFile = File(),
    threshold: float | None = Form(None, gt=0, description="override the model's pair threshold"),
    _key: KeyInfo = Depends(read_key),
) -> Any:
    """distance < threshold means the same identity (the model's calibrated pair threshold)."""
    s = live(request)
    cap = s.settings.max_upload_bytes
    a, b = read_upload(image_a, cap, "image_a"), read_upload(image_b, cap, "image_b")
    return to_jsonable(s.index.verify(a, b, threshold))
