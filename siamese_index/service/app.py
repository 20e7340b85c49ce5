"""The HTTP lookup service: create_app(...) -> a FastAPI app over one home.

The only module of the library that imports the web framework (FastAPI / Starlette). Run it with
`siamese-index serve`, or in code:

    import uvicorn
    from siamese_index.service.app import create_app, ServiceSettings
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
"""

from __future__ import annotations

import dataclasses
import html
import io
import json
import logging
import math
import os
import queue
import threading
import time
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, Field

from siamese_index import __version__
from siamese_index.config import resolve_home
from siamese_index.errors import Busy, InvalidData, InvalidImage, ModelError, NotFound, SiameseIndexError
from siamese_index.service.keys import KeyInfo, KeyStore
from siamese_index.storage.db import DB_NAME
from siamese_index.types import EnrollSummary

log = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
MiB = 1024 * 1024


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------
def _env(name: str, cast, default):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except ValueError:
        raise InvalidData(f"${name}={raw!r} is not a valid {cast.__name__}") from None


@dataclass
class ServiceSettings:
    """Service settings: argument > environment variable (SIAMESE_INDEX_...) > default."""

    home: str | Path | None = None  # config.resolve_home
    model: str | Path | None = None  # only for a new home (config.resolve_model_dir)
    max_upload_bytes: int = 10 * MiB  # per image; more -> 413
    max_batch: int = 32  # images per batch identify; more -> 413
    lock_timeout: float = 5.0  # seconds a write waits for the writer lock; then 503
    retry_after: int = 2  # the Retry-After (seconds) of a 503
    batch_images: int = 64  # most images embedded together by the lookup batcher
    threshold_sync_seconds: float = 0.05
    threshold_min_interval: float = 30.0
    # FAISS's OpenMP threads for searches. One: each lookup batch is small, concurrency comes from
    # requests, and OpenMP teams spinning on a busy machine cost 10-100x on a 1-query search.
    faiss_threads: int = 1
    create: bool = True  # create the home (with `model`) when it does not exist

    @classmethod
    def from_env(cls, **overrides) -> ServiceSettings:
        s = cls(
            home=os.environ.get("SIAMESE_INDEX_HOME") or None,
            model=os.environ.get("SIAMESE_INDEX_MODEL") or None,
            max_upload_bytes=_env("SIAMESE_INDEX_MAX_UPLOAD_BYTES", int, cls.max_upload_bytes),
            max_batch=_env("SIAMESE_INDEX_MAX_BATCH", int, cls.max_batch),
            lock_timeout=_env("SIAMESE_INDEX_LOCK_TIMEOUT", float, cls.lock_timeout),
        )
        for key, value in overrides.items():
            if value is not None:
                setattr(s, key, value)
        return s

    def env(self) -> dict[str, str]:
        """These settings as the environment variables from_env() reads (for uvicorn workers)."""
        out = {
            "SIAMESE_INDEX_MAX_UPLOAD_BYTES": str(self.max_upload_bytes),
            "SIAMESE_INDEX_MAX_BATCH": str(self.max_batch),
            "SIAMESE_INDEX_LOCK_TIMEOUT": str(self.lock_timeout),
        }
        if self.home is not None:
            out["SIAMESE_INDEX_HOME"] = str(Path(self.home).expanduser().absolute())
        if self.model is not None:
            out["SIAMESE_INDEX_MODEL"] = str(self.model)
        return out

    @property
    def max_request_bytes(self) -> int:
        return self.max_upload_bytes * max(self.max_batch, 2) + MiB


# ---------------------------------------------------------------------------------------------
# Response models (they document the API in /openapi.json)
# ---------------------------------------------------------------------------------------------
class MatchOut(BaseModel):
    id: str
    name: str | None
    distance: float = Field(description="plain L2 distance to the identity's nearest image")


class IdentificationOut(BaseModel):
    """One entry of `siamese-index identify --json`."""

    query: str
    known: bool
    match: MatchOut | None
    candidates: list[MatchOut]
    threshold: float
    warnings: list[str] = []
    error: str | None = None


class BatchOut(BaseModel):
    results: list[IdentificationOut]


class VerificationOut(BaseModel):
    image_a: str
    image_b: str
    distance: float
    threshold: float
    same: bool
    warnings: list[str] = []


class PersonOut(BaseModel):
    id: str
    name: str | None
    meta: dict = {}
    images: int = 0
    created: str | None = None


class PeopleOut(BaseModel):
    total: int
    offset: int
    limit: int
    identities: list[PersonOut]


class EnrollItemOut(BaseModel):
    path: str
    status: str = Field(description="added | exists | failed")
    image_id: int | None = None
    reason: str | None = None
    warnings: list[str] = []
    identity: str | None = None


class EnrollOut(BaseModel):
    identity: dict
    results: list[EnrollItemOut]
    summary: dict


class RemoveOut(BaseModel):
    id: str
    images: int
    files_deleted: int


class RenameIn(BaseModel):
    name: str | None = Field(description="the new display name; null clears it")


class HealthOut(BaseModel):
    status: str = Field(description="ok | loading | error")
    ready: bool
    version: str
    error: str | None = None


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def _clean(obj):
    """JSON-safe: NaN/inf -> None, tuples -> lists, numpy scalars -> Python."""
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and not isinstance(obj, (str, bytes)):
        return obj.item()
    return obj


def _warmup_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (32, 32), 128).save(buf, format="PNG")
    return buf.getvalue()


def _faiss_threads(n: int) -> None:
    """Set FAISS's OpenMP team size for searches made by the calling thread (an OpenMP setting
    belongs to the thread that makes it). n <= 0 keeps FAISS's default."""
    if n > 0:
        import faiss

        faiss.omp_set_num_threads(int(n))


class _NeedsThreshold(SiameseIndexError):
    pass


class _Thresholds:
    """Keeps lookups off the quadratic gallery check of SiameseIndex.operating_point().

    While computing the operating point is cheap (under sync_seconds), it is computed here when
    the change counter moves (which fills the facade's own cache) and lookups pass threshold=None:
    the facade then uses exactly the threshold the CLI would. Once it gets slow, lookups pass the
    last computed threshold (for the same model) and it is recomputed in the background, at most
    once per max(min_interval, 4 x its duration)."""

    def __init__(self, index, counter, sync_seconds: float, min_interval: float):
        self._index = index
        self._counter = counter
        self._sync_seconds = sync_seconds
        self._min_interval = min_interval
        self._lock = threading.Lock()
        self._key: int | None = None
        self._model: str | None = None
        self._op = None
        self._duration = 0.0
        self._finished = 0.0
        self._bg: threading.Thread | None = None

    def _compute(self, key: int) -> None:
        t0 = time.perf_counter()
        self._index.refresh()
        model = self._index.model_id
        op = self._index.operating_point()
        self._op, self._key, self._model = op, key, model
        self._duration = time.perf_counter() - t0
        self._finished = time.monotonic()
        log.log(
            logging.INFO if self._duration > self._sync_seconds else logging.DEBUG,
            "operating threshold %s (gallery of %d identities) computed in %.2fs",
            "none" if op.threshold is None else f"{op.threshold:.4g}",
            op.gallery_size,
            self._duration,
        )

    def _background(self, key: int) -> None:
        try:
            self._compute(key)
        except Exception:  # noqa: BLE001 - keep the stale threshold; try again later
            log.exception("recomputing the operating threshold failed")
            self._finished = time.monotonic()
        finally:
            self._bg = None

    def current(self):
        """The last OperatingPoint computed, brought up to date first when that is cheap."""
        key = self._counter()
        with self._lock:
            if self._op is not None and self._key == key:
                return self._op
            slow = self._duration > self._sync_seconds
            if self._op is None or not slow or self._model != self._index.model_id:
                self._compute(key)
                return self._op
            wait = max(self._min_interval, 4 * self._duration)
            if self._bg is None and time.monotonic() - self._finished >= wait:
                self._bg = threading.Thread(target=self._background, args=(key,), name="siamese-threshold", daemon=True)
                self._bg.start()
            return self._op

    def for_lookup(self) -> float | None:
        """The threshold a lookup passes: None (the facade computes the current one, cheaply) or
        the last one computed, when computing it has become slow."""
        op = self.current()
        if self._duration <= self._sync_seconds and self._key == self._counter():
            return None
        if op.threshold is None:
            raise _NeedsThreshold(f"model {self._index.model_id} has no calibrated threshold: pass `threshold`")
        return float(op.threshold)


@dataclass
class _Job:
    sources: list
    k: int
    threshold: float | None
    margin: float | None
    future: Future


class _Batcher:
    """One thread answers every lookup: jobs queued while it works are embedded together."""

    def __init__(self, index, thresholds: _Thresholds, max_images: int, faiss_threads: int = 1):
        self._index = index
        self._faiss_threads = faiss_threads
        self._thresholds = thresholds
        self._max_images = max(1, int(max_images))
        self._queue: queue.Queue = queue.Queue()
        self.lookups = 0
        self.batches = 0
        self._thread = threading.Thread(target=self._run, name="siamese-lookups", daemon=True)
        self._thread.start()

    def identify(self, sources: list, k: int, threshold: float | None, margin: float | None):
        job = _Job(sources, k, threshold, margin, Future())
        self._queue.put(job)
        return job.future.result()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        _faiss_threads(self._faiss_threads)
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs, n, stop = [job], len(job.sources), False
            while n < self._max_images:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                jobs.append(nxt)
                n += len(nxt.sources)
            try:
                self._answer(jobs)
            except BaseException as e:  # noqa: BLE001 - never leave a request waiting forever
                log.exception("the lookup batcher failed")
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
            if stop:
                return

    def _answer(self, jobs: list[_Job]) -> None:
        groups: dict[tuple, list[_Job]] = {}
        for j in jobs:
            groups.setdefault((j.threshold, j.margin), []).append(j)
        for (threshold, margin), group in groups.items():
            try:
                t0 = time.perf_counter()
                t = self._thresholds.for_lookup() if threshold is None else threshold
                t1 = time.perf_counter()
                sources = [s for j in group for s in j.sources]
                answers = self._index.identify(sources, k=max(j.k for j in group), threshold=t, margin=margin)
                self.lookups += len(sources)
                self.batches += 1
                took = time.perf_counter() - t0
                if took > 0.5:
                    log.warning(
                        "a lookup batch of %d images took %.2fs (%.2fs for the threshold)", len(sources), took, t1 - t0
                    )
            except BaseException as e:  # noqa: BLE001 - handed to the waiting request
                for j in group:
                    j.future.set_exception(e)
                continue
            pos = 0
            for j in group:
                mine = answers[pos : pos + len(j.sources)]
                pos += len(j.sources)
                j.future.set_result([dataclasses.replace(a, candidates=a.candidates[: j.k]) for a in mine])


class _State:
    def __init__(self, settings: ServiceSettings, index=None):
        self.settings = settings
        self.index = index
        self.owns_index = index is None
        self.home: Path = Path(index.home) if index is not None else resolve_home(settings.home)
        self.keys: KeyStore | None = None
        self.phase = "loading"
        self.error: str | None = None
        self.started = time.time()
        self.ready_at: float | None = None
        self.batcher: _Batcher | None = None
        self.thresholds: _Thresholds | None = None
        self.loader: threading.Thread | None = None
        self._stop = threading.Event()
        self._keys_lock = threading.Lock()
        self._open_keys()

    def _open_keys(self) -> None:
        with self._keys_lock:
            if self.keys is None and (self.home / DB_NAME).is_file():
                try:
                    self.keys = KeyStore.open(self.home, lock_timeout=self.settings.lock_timeout)
                except SiameseIndexError as e:
                    log.warning("cannot open the key store of %s yet: %s", self.home, e)

    def load(self) -> None:
        """Open the index (unless given), load the model, compute the threshold; then ready."""
        try:
            _faiss_threads(self.settings.faiss_threads)
            if self.index is None:
                from siamese_index.index.facade import SiameseIndex

                deadline = time.monotonic() + 600
                while True:
                    try:
                        self.index = SiameseIndex.open(
                            self.home,
                            model=self.settings.model,
                            create=self.settings.create,
                            lock_timeout=self.settings.lock_timeout,
                        )
                        break
                    except Busy:
                        if self._stop.is_set() or time.monotonic() > deadline:
                            raise
                        log.info("the home is busy with another writer; retrying the open")
                        time.sleep(1.0)
            self._open_keys()
            if self.keys is None:
                raise InvalidData(f"cannot open the key store of {self.home}")
            png = _warmup_png()
            self.index.verify(("warm-up", png), ("warm-up", png), threshold=1.0)  # loads the model
            self.thresholds = _Thresholds(
                self.index,
                self.keys.db.change_counter,
                self.settings.threshold_sync_seconds,
                self.settings.threshold_min_interval,
            )
            self.thresholds.current()
            self.batcher = _Batcher(
                self.index, self.thresholds, self.settings.batch_images, self.settings.faiss_threads
            )
            self.phase, self.ready_at = "ready", time.time()
            log.info("siamese-index service ready: home %s, model %s", self.home, self.index.model_id)
        except Exception as e:  # noqa: BLE001 - reported by /v1/health and /v1/ready
            log.exception("the service could not start")
            self.phase, self.error = "error", f"{type(e).__name__}: {e}"

    def start(self) -> None:
        self.loader = threading.Thread(target=self.load, name="siamese-loader", daemon=True)
        self.loader.start()

    def shutdown(self) -> None:
        self._stop.set()
        if self.loader is not None:
            self.loader.join(timeout=30)
        if self.batcher is not None:
            self.batcher.stop()
        if self.owns_index and self.index is not None:
            self.index.close()
        if self.keys is not None:
            self.keys.close()


# ---------------------------------------------------------------------------------------------
# The upload size cap (an ASGI middleware: refuses before or while the body arrives)
# ---------------------------------------------------------------------------------------------
class _BodyLimit:
    def __init__(self, app, limit: int):
        self.app = app
        self.limit = int(limit)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
        if length is not None and length > self.limit:
            response = JSONResponse(
                {"detail": f"request body of {length} bytes is over the cap of {self.limit}"},
                status_code=413,
                headers={"Connection": "close"},
            )
            return await response(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, f"request body over the cap of {self.limit} bytes")
            return message

        return await self.app(scope, limited, send)


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------
_api_key = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="An API key from `siamese-index keys create` (read or admin)."
)


def _state(request: Request) -> _State:
    return request.app.state.siamese


def _unavailable(state: _State) -> HTTPException:
    if state.phase == "error":
        return HTTPException(
            503,
            f"the service could not start: {state.error}",
            headers={"Retry-After": str(state.settings.retry_after * 5)},
        )
    return HTTPException(
        503, "the model is loading; try again shortly", headers={"Retry-After": str(state.settings.retry_after)}
    )


def _authorize(request: Request, secret: str | None, role: str) -> KeyInfo:
    state = _state(request)
    if not secret:
        raise HTTPException(401, f"missing {API_KEY_HEADER} header", headers={"WWW-Authenticate": API_KEY_HEADER})
    if state.keys is None:
        state._open_keys()
        if state.keys is None:
            raise _unavailable(state)
    info = state.keys.authenticate(secret)
    if info is None:
        raise HTTPException(401, "invalid or revoked API key", headers={"WWW-Authenticate": API_KEY_HEADER})
    if role == "admin" and info.role != "admin":
        raise HTTPException(403, f"key {info.name!r} is a read key; this route writes and needs an admin key")
    return info


def read_key(request: Request, secret: str | None = Security(_api_key)) -> KeyInfo:
    return _authorize(request, secret, "read")


def admin_key(request: Request, secret: str | None = Security(_api_key)) -> KeyInfo:
    return _authorize(request, secret, "admin")


def _ready(request: Request) -> _State:
    state = _state(request)
    if state.phase != "ready":
        raise _unavailable(state)
    return state


def _read_upload(upload: UploadFile, cap: int, fallback: str) -> tuple[str, bytes]:
    name = (upload.filename or "").strip() or fallback
    if upload.size is not None and upload.size > cap:
        raise HTTPException(413, f"{name}: {upload.size} bytes is over the cap of {cap} bytes per image")
    data = upload.file.read(cap + 1)
    if len(data) > cap:
        raise HTTPException(413, f"{name}: over the cap of {cap} bytes per image")
    return name, data


def _uploads(state: _State, uploads: list[UploadFile], fallback: str) -> list[tuple[str, bytes]]:
    if len(uploads) > state.settings.max_batch:
        raise HTTPException(413, f"{len(uploads)} images in one request; the cap is {state.settings.max_batch}")
    return [_read_upload(u, state.settings.max_upload_bytes, f"{fallback}{i}") for i, u in enumerate(uploads)]


def _parse_meta(text: str | None) -> dict | None:
    if text is None or not text.strip():
        return None
    try:
        meta = json.loads(text)
    except ValueError as e:
        raise InvalidData(f"meta is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise InvalidData("meta must be a JSON object")
    return meta


def _enroll_summary(results) -> dict:
    return EnrollSummary.of(results).to_dict()


def _error(status: int, detail: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse(_clean({"detail": detail, **extra}), status_code=status, headers=headers)


_DOCS_CSS = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.5rem}h2{font-size:1.05rem;margin:1.6rem 0 .3rem}code{background:#f3f3f3;padding:0 .25rem}
.m{display:inline-block;min-width:4.2rem;font-weight:bold}.role{color:#666;font-size:.9rem}
table{border-collapse:collapse;margin:.3rem 0 0 1rem;font-size:.9rem}td,th{border:1px solid #ddd;padding:.15rem .5rem;text-align:left}
p{margin:.3rem 0}"""


def _docs_html(schema: dict) -> str:
    """A self-contained page (no script, no CDN) listing every route from the OpenAPI schema."""
    esc = html.escape
    comps = schema.get("components", {}).get("schemas", {})

    def fields(s: dict) -> list[tuple[str, str, bool, str]]:
        if "$ref" in s:
            s = comps.get(s["$ref"].rsplit("/", 1)[-1], {})
        req = set(s.get("required", []))
        out = []
        for name, p in s.get("properties", {}).items():
            kind = p.get("type") or " | ".join(x.get("type", "?") for x in p.get("anyOf", [])) or "object"
            item = p.get("items", {}) if p.get("type") == "array" else p
            if item.get("format") == "binary" or "contentMediaType" in item:
                kind = "files" if item is not p else "file"
            out.append((name, kind, name in req, p.get("description", "")))
        return out

    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(schema['info']['title'])}</title>"
        f"<style>{_DOCS_CSS}</style></head><body>",
        f"<h1>{esc(schema['info']['title'])} {esc(schema['info'].get('version', ''))}</h1>",
        f"<p>{esc(schema['info'].get('description', ''))}</p>",
        f"<p>Machine-readable schema: <a href='/openapi.json'>/openapi.json</a>. "
        f"Send keys in the <code>{API_KEY_HEADER}</code> header.</p>",
    ]
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            role = op.get("x-required-role", "none")
            parts.append(
                f"<h2><span class='m'>{esc(method.upper())}</span> <code>{esc(path)}</code> "
                f"<span class='role'>key: {esc(role)}</span></h2>"
            )
            parts.append(f"<p>{esc(op.get('summary', ''))}</p>")
            desc = (op.get("description") or "").strip()
            if desc:
                parts.append(f"<p>{esc(desc.split(chr(10) + chr(10))[0])}</p>")
            rows = [
                (
                    p["name"],
                    f"{p.get('in', '')} {p.get('schema', {}).get('type', '')}",
                    p.get("required", False),
                    p.get("description", ""),
                )
                for p in op.get("parameters", [])
                if p.get("name") != API_KEY_HEADER
            ]
            body = op.get("requestBody", {}).get("content", {})
            for ctype, spec in body.items():
                rows += [(n, f"{ctype.split('/')[-1]} {k}", r, d) for n, k, r, d in fields(spec.get("schema", {}))]
            if rows:
                parts.append("<table><tr><th>field</th><th>where / type</th><th>required</th><th></th></tr>")
                parts += [
                    f"<tr><td><code>{esc(str(n))}</code></td><td>{esc(str(w))}</td><td>{'yes' if r else ''}</td>"
                    f"<td>{esc(str(d))}</td></tr>"
                    for n, w, r, d in rows
                ]
                parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def create_app(index=None, *, settings: ServiceSettings | None = None, **overrides) -> FastAPI:
    """The HTTP app over `index` (an open SiameseIndex, owned by the caller) or over the home in
    `settings` (opened, with its model loaded, in a background thread when the app starts).

    Keyword overrides set ServiceSettings fields (e.g. home=..., max_upload_bytes=...)."""
    settings = settings or ServiceSettings.from_env()
    for key, value in overrides.items():
        if not hasattr(settings, key):
            raise TypeError(f"unknown setting {key!r}")
        setattr(settings, key, value)
    state = _State(settings, index)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start()
        try:
            yield
        finally:
            state.shutdown()

    app = FastAPI(
        title="siamese-index",
        version=__version__,
        description="One-shot identification and verification over a Siamese-tower embedding index. "
        "Distances are plain L2; two images are the same identity when their distance is "
        "below the threshold.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    app.state.siamese = state
    app.add_middleware(_BodyLimit, limit=settings.max_request_bytes)

    # -- errors --------------------------------------------------------------------------------
    @app.exception_handler(InvalidImage)
    async def _invalid_image(_request, e: InvalidImage):
        return _error(422, str(e), reason=e.reason, file=e.path)

    @app.exception_handler(InvalidData)
    async def _invalid_data(_request, e: InvalidData):
        return _error(400, str(e))

    @app.exception_handler(NotFound)
    async def _not_found(_request, e: NotFound):
        return _error(404, str(e))

    @app.exception_handler(Busy)
    async def _busy(_request, e: Busy):
        return _error(
            503,
            f"the index is busy with another writer; try again ({e})",
            headers={"Retry-After": str(settings.retry_after)},
        )

    @app.exception_handler(_NeedsThreshold)
    async def _needs_threshold(_request, e):
        return _error(422, str(e))

    @app.exception_handler(ModelError)
    async def _model_error(_request, e: ModelError):
        if "no calibrated threshold" in str(e):  # the caller can pass one
            return _error(422, str(e))
        log.error("request failed: %s: %s", type(e).__name__, e)
        return _error(500, f"{type(e).__name__}: {e}")

    @app.exception_handler(SiameseIndexError)
    async def _library_error(_request, e: SiameseIndexError):
        log.error("request failed: %s: %s", type(e).__name__, e)
        return _error(500, f"{type(e).__name__}: {e}")

    @app.exception_handler(RequestValidationError)
    async def _validation(_request, e: RequestValidationError):
        problems = []
        for err in e.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            problems.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return _error(
            422,
            "; ".join(problems) or "invalid request",
            errors=_clean([{k: v for k, v in err.items() if k in ("loc", "msg", "type")} for err in e.errors()]),
        )

    @app.exception_handler(Exception)
    async def _internal(_request, e: Exception):
        log.exception("unexpected error")
        return _error(500, f"internal error ({type(e).__name__})")

    # -- unauthenticated -----------------------------------------------------------------------
    @app.get(
        "/v1/health",
        response_model=HealthOut,
        tags=["service"],
        summary="Liveness (no key)",
        openapi_extra={"x-required-role": "none"},
    )
    def health(request: Request):
        """Always 200 while the process runs; `ready` says whether the model is loaded."""
        s = _state(request)
        status = {"ready": "ok", "loading": "loading"}.get(s.phase, "error")
        return {"status": status, "ready": s.phase == "ready", "version": __version__, "error": s.error}

    @app.get(
        "/v1/ready",
        response_model=HealthOut,
        tags=["service"],
        summary="Readiness (no key)",
        responses={503: {"description": "loading (with Retry-After) or failed"}},
        openapi_extra={"x-required-role": "none"},
    )
    def ready(request: Request):
        """200 once the index is open and the model loaded; 503 with Retry-After before."""
        s = _state(request)
        body = {
            "status": {"ready": "ok", "loading": "loading"}.get(s.phase, "error"),
            "ready": s.phase == "ready",
            "version": __version__,
            "error": s.error,
        }
        if s.phase != "ready":
            return JSONResponse(body, status_code=503, headers={"Retry-After": str(s.settings.retry_after)})
        return body

    @app.get("/docs", include_in_schema=False)
    def docs():
        return HTMLResponse(_docs_html(app.openapi()))

    # -- lookups (read keys) -------------------------------------------------------------------
    read = {"x-required-role": "read"}
    admin = {"x-required-role": "admin"}

    @app.post(
        "/v1/identify",
        response_model=IdentificationOut,
        tags=["lookup"],
        openapi_extra=read,
        summary="Who is in this image?",
        responses={422: {"description": "not a usable image (the reason is given)"}, 413: {"description": "too large"}},
    )
    def identify(
        request: Request,
        image: UploadFile = File(description="the query image"),
        k: int = Form(5, ge=1, le=1000, description="how many candidate identities"),
        threshold: float | None = Form(None, gt=0, description="override the identification threshold (plain L2)"),
        margin: float | None = Form(
            None, ge=0, description="also require this gap between the best and second identity"
        ),
        _key: KeyInfo = Depends(read_key),
    ):
        """The same fields as one entry of `siamese-index identify --json`: known, match (when known),
        candidates (nearest distinct identities), threshold, warnings."""
        s = _ready(request)
        sources = [_read_upload(image, s.settings.max_upload_bytes, "upload")]
        [answer] = s.batcher.identify(sources, k, threshold, margin)
        if answer.error:
            return _error(422, f"{answer.query}: {answer.error}", reason=answer.error, file=answer.query)
        return _clean(answer.to_dict())

    @app.post(
        "/v1/identify/batch",
        response_model=BatchOut,
        tags=["lookup"],
        openapi_extra=read,
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
    ):
        """One result per image, in order, like `siamese-index identify --json`; an unreadable image
        gets known=false and `error` set to the reason, without failing the others."""
        s = _ready(request)
        answers = s.batcher.identify(_uploads(s, images, "image"), k, threshold, margin)
        return {"results": _clean([a.to_dict() for a in answers])}

    @app.post(
        "/v1/verify",
        response_model=VerificationOut,
        tags=["lookup"],
        openapi_extra=read,
        summary="Do two images show the same identity?",
        responses={422: {"description": "not a usable image (the reason is given)"}},
    )
    def verify(
        request: Request,
        image_a: UploadFile = File(),
        image_b: UploadFile = File(),
        threshold: float | None = Form(None, gt=0, description="override the model's pair threshold"),
        _key: KeyInfo = Depends(read_key),
    ):
        """distance < threshold means the same identity (the model's calibrated pair threshold)."""
        s = _ready(request)
        cap = s.settings.max_upload_bytes
        a, b = _read_upload(image_a, cap, "image_a"), _read_upload(image_b, cap, "image_b")
        return _clean(s.index.verify(a, b, threshold).to_dict())

    @app.get("/v1/status", tags=["service"], openapi_extra=read, summary="Model, counts, index and version")
    def status(request: Request, _key: KeyInfo = Depends(read_key)):
        """The home's status (as `siamese-index status --json`) plus the service's own figures."""
        s = _ready(request)
        info = s.index.status()
        return _clean(
            {
                "version": __version__,
                "service": {
                    "ready": True,
                    "uptime_s": round(time.time() - s.started, 1),
                    "max_upload_bytes": s.settings.max_upload_bytes,
                    "max_batch": s.settings.max_batch,
                    "lookups": s.batcher.lookups,
                    "lookup_batches": s.batcher.batches,
                },
                **info,
            }
        )

    @app.get(
        "/v1/identities",
        response_model=PeopleOut,
        tags=["identities"],
        openapi_extra=read,
        summary="List enrolled identities",
    )
    def list_identities(
        request: Request,
        limit: int = Query(100, ge=1, le=10_000),
        offset: int = Query(0, ge=0),
        _key: KeyInfo = Depends(read_key),
    ):
        """Identities ordered by id, with their image counts."""
        s = _ready(request)
        everyone = s.index.people()
        page = everyone[offset : offset + limit]
        return {
            "total": len(everyone),
            "offset": offset,
            "limit": limit,
            "identities": _clean([p.to_dict() for p in page]),
        }

    @app.get("/v1/identities/{person_id}", tags=["identities"], openapi_extra=read, summary="One identity")
    def get_identity(request: Request, person_id: str, _key: KeyInfo = Depends(read_key)):
        """id, name, meta, created, updated and its images."""
        s = _ready(request)
        return _clean(s.index.person(person_id))

    # -- writes (admin keys) -------------------------------------------------------------------
    @app.post(
        "/v1/identities",
        response_model=EnrollOut,
        status_code=201,
        tags=["identities"],
        openapi_extra=admin,
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
    ):
        """Enroll a new identity. Each image is reported added, exists (same content twice) or failed
        with its reason; when every image fails nothing is written and the answer is 422."""
        s = _ready(request)
        _faiss_threads(s.settings.faiss_threads)
        meta_d = _parse_meta(meta)
        try:
            s.index.person(id)
        except NotFound:
            pass
        else:
            raise HTTPException(409, f"identity {id!r} exists; add images with POST /v1/identities/{{id}}/images")
        results = s.index.enroll(id, _uploads(s, images, "image"), name=name, meta=meta_d, allow_no_face=allow_no_face)
        items = _clean([r.to_dict() for r in results])
        if all(r.status == "failed" for r in results):
            return _error(422, "no image could be enrolled", results=items, summary=_enroll_summary(results))
        return {"identity": _clean(s.index.person(id)), "results": items, "summary": _enroll_summary(results)}

    @app.post(
        "/v1/identities/{person_id}/images",
        response_model=EnrollOut,
        tags=["identities"],
        openapi_extra=admin,
        summary="Add images to an identity",
        responses={404: {"description": "no such identity"}, 422: {"description": "no image could be enrolled"}},
    )
    def add_images(
        request: Request,
        person_id: str,
        images: list[UploadFile] = File(),
        allow_no_face: bool = Form(False),
        _key: KeyInfo = Depends(admin_key),
    ):
        """Enroll more photos of an existing identity (content already enrolled is reported as exists)."""
        s = _ready(request)
        _faiss_threads(s.settings.faiss_threads)
        s.index.person(person_id)  # 404 when absent
        results = s.index.enroll(person_id, _uploads(s, images, "image"), allow_no_face=allow_no_face)
        items = _clean([r.to_dict() for r in results])
        if all(r.status == "failed" for r in results):
            return _error(422, "no image could be enrolled", results=items, summary=_enroll_summary(results))
        return {"identity": _clean(s.index.person(person_id)), "results": items, "summary": _enroll_summary(results)}

    @app.patch(
        "/v1/identities/{person_id}",
        response_model=PersonOut,
        tags=["identities"],
        openapi_extra=admin,
        summary="Rename an identity",
    )
    def rename_identity(request: Request, person_id: str, body: RenameIn, _key: KeyInfo = Depends(admin_key)):
        s = _ready(request)
        return _clean(s.index.rename(person_id, body.name).to_dict())

    @app.delete(
        "/v1/identities/{person_id}",
        response_model=RemoveOut,
        tags=["identities"],
        openapi_extra=admin,
        summary="Delete an identity for good",
    )
    def delete_identity(request: Request, person_id: str, _key: KeyInfo = Depends(admin_key)):
        """Rows, vectors and stored photos; once answered, lookups never return it again."""
        s = _ready(request)
        return _clean(s.index.remove(person_id))

    return app


def app_from_environment() -> FastAPI:
    """The uvicorn factory `siamese-index serve` uses (settings from SIAMESE_INDEX_* variables)."""
    return create_app(settings=ServiceSettings.from_env())


__all__ = ["ServiceSettings", "create_app", "app_from_environment", "API_KEY_HEADER"]
