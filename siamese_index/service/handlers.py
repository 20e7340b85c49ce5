"""Library errors -> HTTP answers: {"detail": "..."} and the status code each error means.

InvalidImage 422 (with reason and file), InvalidData 400, NotFound 404, Busy 503 + Retry-After,
a missing threshold 422, the service not ready 503 + Retry-After, a malformed request 422 (with
the problems), anything else 500 without a traceback in the body.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from siamese_index.errors import Busy, InvalidData, InvalidImage, ModelError, NotFound, SiameseIndexError
from siamese_index.jsonable import to_jsonable
from siamese_index.service.batcher import NeedsThreshold
from siamese_index.service.settings import ServiceSettings
from siamese_index.service.state import NotReady

log = logging.getLogger(__name__)


def error_response(status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """The service's error body: {"detail": ..., **extra}."""
    return JSONResponse(to_jsonable({"detail": detail, **extra}), status_code=status, headers=headers)


def _validation_body(e: RequestValidationError) -> dict[str, Any]:
    problems = []
    for err in e.errors():
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        problems.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    errors = [{k: v for k, v in err.items() if k in ("loc", "msg", "type")} for err in e.errors()]
    return {"detail": "; ".join(problems) or "invalid request", "errors": errors}


def _server_error(e: Exception) -> JSONResponse:
    log.error("request failed: %s: %s", type(e).__name__, e)
    return error_response(500, f"{type(e).__name__}: {e}")


def install_error_handlers(app: FastAPI, settings: ServiceSettings) -> None:
    """Register the handlers on `app` (Busy's Retry-After comes from `settings`)."""

    @app.exception_handler(InvalidImage)
    async def _invalid_image(_request: Request, e: InvalidImage) -> JSONResponse:
        return error_response(422, str(e), reason=e.reason, file=e.path)

    @app.exception_handler(InvalidData)
    async def _invalid_data(_request: Request, e: InvalidData) -> JSONResponse:
        return error_response(400, str(e))

    @app.exception_handler(NotFound)
    async def _not_found(_request: Request, e: NotFound) -> JSONResponse:
        return error_response(404, str(e))

    @app.exception_handler(Busy)
    async def _busy(_request: Request, e: Busy) -> JSONResponse:
        detail = f"the index is busy with another writer; try again ({e})"
        return error_response(503, detail, headers={"Retry-After": str(settings.retry_after)})

    @app.exception_handler(NotReady)
    async def _not_ready(_request: Request, e: NotReady) -> JSONResponse:
        return error_response(503, str(e), headers={"Retry-After": str(e.retry_after)})

    @app.exception_handler(NeedsThreshold)
    async def _needs_threshold(_request: Request, e: NeedsThreshold) -> JSONResponse:
        return error_response(422, str(e))

    @app.exception_handler(ModelError)
    async def _model_error(_request: Request, e: ModelError) -> JSONResponse:
        if "no calibrated threshold" in str(e):  # the caller can pass one
            return error_response(422, str(e))
        return _server_error(e)

    @app.exception_handler(SiameseIndexError)
    async def _library_error(_request: Request, e: SiameseIndexError) -> JSONResponse:
        return _server_error(e)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, e: RequestValidationError) -> JSONResponse:
        body = _validation_body(e)
        return error_response(422, body["detail"], errors=body["errors"])

    @app.exception_handler(Exception)
    async def _internal(_request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, f"internal error ({type(e).__name__})")


__all__ = ["error_response", "install_error_handlers"]
