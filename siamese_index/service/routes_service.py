"""Routes about the service itself: liveness, readiness, status and the docs page."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse

from siamese_index import __version__
from siamese_index.jsonable import to_jsonable
from siamese_index.service.auth import NONE, READ, read_key
from siamese_index.service.deps import live, state_of
from siamese_index.service.docs import docs_html
from siamese_index.service.keys import KeyInfo
from siamese_index.service.schemas import HealthOut
from siamese_index.service.state import ServiceState

router = APIRouter()


def _health(state: ServiceState) -> dict[str, Any]:
    return {"status": state.status, "ready": state.phase == "ready", "version": __version__, "error": state.error}


@router.get("/v1/health", response_model=HealthOut, tags=["service"], summary="Liveness (no key)", openapi_extra=NONE)
def health(request: Request) -> dict[str, Any]:
    """Always 200 while the process runs; `ready` says whether the model is loaded."""
    return _health(state_of(request))


@router.get(
    "/v1/ready",
    response_model=HealthOut,
    tags=["service"],
    summary="Readiness (no key)",
    responses={503: {"description": "loading (with Retry-After) or failed"}},
    openapi_extra=NONE,
)
def ready(request: Request) -> Any:
    """200 once the index is open and the model loaded; 503 with Retry-After before."""
    state = state_of(request)
    body = _health(state)
    if state.phase != "ready":
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(state.settings.retry_after)})
    return body


@router.get("/docs", include_in_schema=False)
def docs(request: Request) -> HTMLResponse:
    return HTMLResponse(docs_html(request.app.openapi()))


@router.get("/v1/status", tags=["service"], openapi_extra=READ, summary="Model, counts, index and version")
def status(request: Request, _key: KeyInfo = Depends(read_key)) -> dict[str, Any]:
    """The home's status (as `siamese-index status --json`) plus the service's own figures."""
    s = live(request)
    service = {
        "ready": True,
        "uptime_s": round(time.time() - s.started, 1),
        "max_upload_bytes": s.settings.max_upload_bytes,
        "max_batch": s.settings.max_batch,
        "lookups": s.batcher.lookups,
        "lookup_batches": s.batcher.batches,
    }
    return {"version": __version__, "service": service, **to_jsonable(s.index.status())}
