"""Uploads under their caps: the request-body limit (an ASGI middleware) and per-image reads."""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException, UploadFile
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from siamese_index.errors import InvalidData
from siamese_index.service.batcher import Upload
from siamese_index.service.settings import ServiceSettings


def _content_length(scope: Scope) -> int | None:
    length = None
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                length = None
    return length


class BodyLimit:
    """Refuses a request body over `limit` bytes with 413: from its Content-Length before it is
    read, or while it arrives when it comes without one."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = int(limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = _content_length(scope)
        if length is not None and length > self.limit:
            response = JSONResponse(
                {"detail": f"request body of {length} bytes is over the cap of {self.limit}"},
                status_code=413,
                headers={"Connection": "close"},
            )
            return await response(scope, receive, send)
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise HTTPException(413, f"request body over the cap of {self.limit} bytes")
            return message

        return await self.app(scope, limited, send)


def read_upload(upload: UploadFile, cap: int, fallback: str) -> Upload:
    """(name, bytes) of one uploaded image; 413 over `cap` bytes. `fallback` names a nameless one."""
    name = (upload.filename or "").strip() or fallback
    if upload.size is not None and upload.size > cap:
        raise HTTPException(413, f"{name}: {upload.size} bytes is over the cap of {cap} bytes per image")
    data = upload.file.read(cap + 1)
    if len(data) > cap:
        raise HTTPException(413, f"{name}: over the cap of {cap} bytes per image")
    return name, data


def read_uploads(settings: ServiceSettings, uploads: list[UploadFile], fallback: str) -> list[Upload]:
    """Every image of a request; 413 for more than max_batch of them or one over the size cap."""
    if len(uploads) > settings.max_batch:
        raise HTTPException(413, f"{len(uploads)} images in one request; the cap is {settings.max_batch}")
    return [read_upload(u, settings.max_upload_bytes, f"{fallback}{i}") for i, u in enumerate(uploads)]


def parse_meta(text: str | None) -> dict[str, Any] | None:
    """The `meta` form field: a JSON object, or None when absent or blank (InvalidData otherwise)."""
    if text is None or not text.strip():
        return None
    try:
        meta = json.loads(text)
    except ValueError as e:
        raise InvalidData(f"meta is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise InvalidData("meta must be a JSON object")
    return meta


__all__ = ["BodyLimit", "parse_meta", "read_upload", "read_uploads"]
