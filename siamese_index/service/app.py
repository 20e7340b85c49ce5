"""The HTTP lookup service: create_app(...) -> a FastAPI app over one home.

Run it with `siamese-index serve`, or in code:

    import uvicorn
    from siamese_index import ServiceSettings, create_app
    uvicorn.run(create_app(settings=ServiceSettings(home="~/faces")), host="127.0.0.1", port=8080)

Routes (all JSON, all under /v1/; the OpenAPI schema at /openapi.json, a self-contained docs
page at /docs that loads nothing from the internet):

    GET    /v1/health                         none    liveness; says whether the model is loaded
    GET    /v1/ready                          none    200 when ready, 503 + Retry-After while loading
    GET    /v1/status                         read    model, counts, index, operating point, version
    POST   /v1/identify                       read    one image (multipart: image, k, threshold, margin)
    POST   /v1/identify/batch                 read    several images (multipart: images[], k, ...)
    POST   /v1/verify                         read    two images (multipart: image_a, image_b, threshold)
    GET    /v1/identities                     read    list (limit, offset)
    GET    /v1/identities/{id}                read    one identity with its images
    POST   /v1/identities                     admin   create an identity: id, name, meta, images[]
    POST   /v1/identities/{id}/images         admin   add images to an identity
    PATCH  /v1/identities/{id}                admin   rename ({"name": ...})
    DELETE /v1/identities/{id}                admin   remove the identity, its vectors and photos

Keys: every route but health/ready/docs needs X-API-Key (see keys.py); it is checked against
the database on every request, so a revoked key stops at once. No key or an unknown or revoked
key: 401; a read key on a write route: 403.

Errors: {"detail": "..."} with 400 (bad argument), 401/403 (keys), 404 (no such identity), 409
(identity exists), 413 (upload over the size cap, or too many images), 422 (not a usable image,
with the reason; or a malformed form), 503 + Retry-After (the model is still loading, or a write
could not get the home's writer lock within lock_timeout). Never a 500 for a bad upload.

Concurrency: one SiameseIndex per process (the facade is thread-safe), the model loaded once in
a background thread at start-up (readiness says when). Lookups from all request threads go
through one batcher thread, which embeds whatever queued up while it was busy in one model call
and searches them together; the facade refreshes its FAISS cache from SQLite's change counter
before each search, so other processes' enrollments and deletions are seen at once, and every
hit is joined back to SQLite (a deleted identity never comes back). Lookups take no writer
lock. Writes run in their request thread and wait at most lock_timeout for the writer lock.

The identification threshold is SiameseIndex.operating_point() (the model's pair threshold, its
impostor table and a gallery check), exactly as the CLI uses it, while computing that is cheap.
The gallery check is quadratic in the number of enrolled images (minutes at 100,000): once one
computation takes longer than `threshold_sync_seconds`, lookups use the last threshold computed
for the same model while it is recomputed in the background, at most once per
max(threshold_min_interval, 4 x its last duration). /v1/status shows the operating point.

The parts, one job each: settings.py (ServiceSettings), keys.py (the KeyStore), batcher.py (the
lookup batcher and the threshold), state.py (loading and readiness), auth.py (key checks),
uploads.py (size caps), handlers.py (errors -> status codes), schemas.py (the response models,
the result types themselves where there is one), docs.py (the /docs page), routes_*.py (one router
per concern: service, lookups, identities). This module assembles them. Only the modules that need it import FastAPI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from siamese_index import __version__
from siamese_index.service import routes_identities, routes_lookups, routes_service
from siamese_index.service.handlers import install_error_handlers
from siamese_index.service.settings import API_KEY_HEADER, ServiceSettings
from siamese_index.service.state import ServiceState
from siamese_index.service.uploads import BodyLimit

if TYPE_CHECKING:
    from siamese_index import SiameseIndex

DESCRIPTION = (
    "One-shot identification and verification over a Siamese-tower embedding index. "
    "Distances are plain L2; two images are the same identity when their distance is "
    "below the threshold."
)


def create_app(
    index: SiameseIndex | None = None, *, settings: ServiceSettings | None = None, **overrides: Any
) -> FastAPI:
    """The HTTP app over `index` (an open SiameseIndex, owned by the caller) or over the home in
    `settings` (opened, with its model loaded, in a background thread when the app starts).

    Keyword overrides set ServiceSettings fields (e.g. home=..., max_upload_bytes=...)."""
    settings = (settings or ServiceSettings.from_env()).update(**overrides)
    state = ServiceState(settings, index)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state.start()
        try:
            yield
        finally:
            state.shutdown()

    app = FastAPI(
        title="siamese-index",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    app.state.siamese = state
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    install_error_handlers(app, settings)
    for routes in (routes_service, routes_lookups, routes_identities):
        app.include_router(routes.router)
    return app


def app_from_environment() -> FastAPI:
    """The uvicorn factory `siamese-index serve` uses (settings from SIAMESE_INDEX_* variables)."""
    return create_app(settings=ServiceSettings.from_env())


__all__ = ["API_KEY_HEADER", "ServiceSettings", "app_from_environment", "create_app"]
