"""Key checks: the X-API-Key header against the home's KeyStore, on every request.

No key, an unknown or a revoked key: 401. A read key on a write route: 403. Keys are checked
while the model is still loading, too (the key store opens before the model).
"""

from __future__ import annotations

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from siamese_index.service.deps import state_of
from siamese_index.service.keys import KeyInfo
from siamese_index.service.settings import API_KEY_HEADER

api_key_header = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="An API key from `siamese-index keys create` (read or admin)."
)

READ = {"x-required-role": "read"}  # openapi_extra of a route: the docs page shows the key it needs
ADMIN = {"x-required-role": "admin"}
NONE = {"x-required-role": "none"}


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": API_KEY_HEADER})


def authorize(request: Request, secret: str | None, role: str) -> KeyInfo:
    """The key's info when `secret` is an active key allowed `role`; else the 401/403 (or 503)."""
    if not secret:
        raise _unauthorized(f"missing {API_KEY_HEADER} header")
    state = state_of(request)
    keys = state.keys or state.open_keys()
    if keys is None:
        raise state.unavailable()
    info = keys.authenticate(secret)
    if info is None:
        raise _unauthorized("invalid or revoked API key")
    if role == "admin" and info.role != "admin":
        raise HTTPException(403, f"key {info.name!r} is a read key; this route writes and needs an admin key")
    return info


def read_key(request: Request, secret: str | None = Security(api_key_header)) -> KeyInfo:
    """Dependency: a read or admin key."""
    return authorize(request, secret, "read")


def admin_key(request: Request, secret: str | None = Security(api_key_header)) -> KeyInfo:
    """Dependency: an admin key."""
    return authorize(request, secret, "admin")


__all__ = ["ADMIN", "NONE", "READ", "admin_key", "api_key_header", "authorize", "read_key"]
