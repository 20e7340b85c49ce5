"""API keys for the HTTP service, kept in the home's database (table api_keys).

    store = KeyStore.open("~/faces")
    info, secret = store.create("read", name="kiosk")   # the secret is shown once, never stored
    store.authenticate(secret)                          # -> KeyInfo, or None (unknown or revoked)
    store.revoke("kiosk")

A key is "sik_" + 43 url-safe characters (256 random bits). Only its SHA-256 is stored: a
secret with that much entropy needs no salt or slow hash, and the digest lets a lookup use the
table's unique index. The digest found is compared once more with hmac.compare_digest.
authenticate() reads the database on every call (one indexed SELECT), so a revoked key stops
working at the next request, in every process that serves the home.

Roles: "read" may look up (identify, verify, list, status); "admin" may also write (enroll,
rename, delete). No web framework here: the service and the CLI both use this module.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import asdict, dataclass

from sqlalchemy import exc as sa_exc
from sqlalchemy import insert, select, update

from siamese_index.config import resolve_home
from siamese_index.errors import InvalidData, NotFound
from siamese_index.storage.db import DB_NAME, LOCK_NAME, Database, api_keys, home_exists, now_iso

ROLES = ("read", "admin")
KEY_PREFIX = "sik_"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


@dataclass(frozen=True)
class KeyInfo:
    """What is known about a key (never its secret)."""

    name: str
    role: str
    created_at: str
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def can_write(self) -> bool:
        return self.role == "admin" and self.active

    def to_dict(self) -> dict:
        return {**asdict(self), "active": self.active}


def hash_key(secret: str) -> str:
    """The stored form of a key: hex SHA-256 of its text."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _info(row) -> KeyInfo:
    return KeyInfo(row.name, row.role, row.created_at, row.revoked_at)


class KeyStore:
    """The api_keys table of one home. Thread-safe (one SQLAlchemy engine)."""

    def __init__(self, db: Database, owns_db: bool = False):
        self.db = db
        self._owns_db = owns_db

    @classmethod
    def open(cls, home=None, lock_timeout: float = 10.0) -> KeyStore:
        """The key store of an existing home (config.resolve_home). Raises NotFound when there is none."""
        home = resolve_home(home)
        if not home_exists(home):
            raise NotFound(
                f"no siamese-index home at {home}: create it first (siamese-index enroll ..., "
                f"or siamese-index serve --home {home}), or pass the right --home"
            )
        db = Database(home / DB_NAME, home / LOCK_NAME, lock_timeout=lock_timeout)
        try:
            db.migrate()
        except BaseException:
            db.close()
            raise
        return cls(db, owns_db=True)

    def close(self) -> None:
        if self._owns_db:
            self.db.close()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- management ----------------------------------------------------------------------------
    def create(self, role: str, name: str | None = None) -> tuple[KeyInfo, str]:
        """Create a key; returns (its info, the secret). The secret cannot be shown again."""
        if role not in ROLES:
            raise InvalidData(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        if name is not None and not _NAME_RE.match(name):
            raise InvalidData(
                f"key name {name!r}: 1 to 64 letters, digits, '.', '_', '-' or '@', starting with a letter or digit"
            )
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        now = now_iso()
        with self.db.write() as txn:
            if name is None:
                taken = set(txn.conn.execute(select(api_keys.c.name)).scalars())
                n = 1
                while f"{role}-{n}" in taken:
                    n += 1
                name = f"{role}-{n}"
            elif txn.conn.execute(select(api_keys.c.id).where(api_keys.c.name == name)).first() is not None:
                raise InvalidData(f"a key named {name!r} already exists (names stay taken after a revoke)")
            try:
                txn.conn.execute(
                    insert(api_keys).values(
                        name=name, role=role, key_hash=hash_key(secret), created_at=now, revoked_at=None
                    )
                )
            except sa_exc.IntegrityError as e:  # pragma: no cover - a 256-bit collision
                raise InvalidData(f"could not store key {name!r}: {e.orig}") from e
        return KeyInfo(name, role, now, None), secret

    def list(self, include_revoked: bool = True) -> list[KeyInfo]:
        """Every key, oldest first."""
        stmt = select(api_keys).order_by(api_keys.c.id)
        if not include_revoked:
            stmt = stmt.where(api_keys.c.revoked_at.is_(None))
        with self.db.read() as conn:
            return [_info(r) for r in conn.execute(stmt).all()]

    def revoke(self, name: str) -> KeyInfo:
        """Revoke a key by name (at once: the service checks every request). Revoking a revoked
        key changes nothing. Raises NotFound for an unknown name."""
        with self.db.write() as txn:
            row = txn.conn.execute(select(api_keys).where(api_keys.c.name == name)).first()
            if row is None:
                raise NotFound(f"no API key named {name!r}")
            if row.revoked_at is None:
                txn.conn.execute(update(api_keys).where(api_keys.c.id == row.id).values(revoked_at=now_iso()))
            row = txn.conn.execute(select(api_keys).where(api_keys.c.id == row.id)).one()
        return _info(row)

    # -- checking ------------------------------------------------------------------------------
    def authenticate(self, secret: str | None) -> KeyInfo | None:
        """The active key whose secret this is, else None (missing, malformed, unknown, revoked)."""
        if not secret or not isinstance(secret, str) or len(secret) > 200:
            return None
        digest = hash_key(secret)
        with self.db.read() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.key_hash == digest)).first()
        if row is None or not hmac.compare_digest(row.key_hash, digest) or row.revoked_at is not None:
            return None
        if row.role not in ROLES:
            return None
        return _info(row)

    def has_keys(self) -> bool:
        with self.db.read() as conn:
            return (
                conn.execute(select(api_keys.c.id).where(api_keys.c.revoked_at.is_(None)).limit(1)).first() is not None
            )


__all__ = ["ROLES", "KEY_PREFIX", "KeyInfo", "KeyStore", "hash_key"]
