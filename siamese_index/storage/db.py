"""The SQLite database (SQLAlchemy 2.x Core): schema, migrations, transactions, the writer lock.

SQLite is the source of truth. It holds every identity, image and embedding; the FAISS file is a
cache rebuilt from it. Conventions:

- One writer at a time across processes: `WriterLock` (a `filelock` lock on a file in the home)
  around every write transaction, which itself starts with BEGIN IMMEDIATE. Readers use plain
  (deferred) transactions and, thanks to WAL, never block and never see half a write.
- Every write transaction increments meta.change_counter, so a long-lived reader can notice
  another process's writes with one cheap SELECT.
- The schema is versioned: `MIGRATIONS` is an ordered list of functions, migration n brings the
  database from version n-1 to n. Each migration is frozen DDL (never `metadata.create_all`),
  so a database created today and one migrated step by step end up identical.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout
from sqlalchemy import (
    Column,
    Connection,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
)
from sqlalchemy import (
    exc as sa_exc,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from siamese_index.errors import Busy, InvalidData

log = logging.getLogger(__name__)

DB_NAME = "index.db"
LOCK_NAME = "write.lock"
BUSY_TIMEOUT_MS = 15_000


def home_exists(home) -> bool:
    """Whether `home` holds an index (its database file), as opposed to an empty or new folder."""
    return (Path(home) / DB_NAME).is_file()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# Table objects used by queries. They describe the schema that MIGRATIONS produce; a test checks
# that the two agree column for column.
# --------------------------------------------------------------------------------------------
metadata = MetaData()

identities = Table(
    "identities",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("external_id", Text, nullable=False, unique=True),
    Column("name", Text),
    Column("meta", Text, nullable=False),  # JSON object
    Column("created_at", Text, nullable=False),
    Column("updated_at", Text, nullable=False),
)

images = Table(
    "images",
    metadata,
    Column("id", Integer, primary_key=True),  # = the FAISS id; AUTOINCREMENT: never reused
    Column("identity_id", Integer, ForeignKey("identities.id", ondelete="CASCADE"), nullable=False),
    Column("content_sha256", Text, nullable=False),
    Column("source_name", Text),
    Column("width", Integer),
    Column("height", Integer),
    Column("bytes", Integer),
    Column("stored_path", Text),  # relative to the home; NULL when no copy is kept
    Column("created_at", Text, nullable=False),
    UniqueConstraint("identity_id", "content_sha256"),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("model_id", Text, nullable=False, unique=True),
    Column("model_dir", Text),
    Column("dim", Integer, nullable=False),
    Column("threshold", Float),
    Column("parent", Integer, ForeignKey("model_versions.id")),
    Column("created_at", Text, nullable=False),
    Column("active", Integer, nullable=False),
    Column("scores", Text, nullable=False),  # JSON: calibration and evaluation figures
    Column("activated_at", Text),  # last activation; NULL = never served (its embeddings are leftovers)
)


def inserted_id(result: Any) -> int:
    """The primary key an INSERT of one row gave it."""
    key = result.inserted_primary_key
    if key is None:
        raise RuntimeError("the INSERT returned no primary key")
    return int(key[0])


def in_chunks(seq, n: int = 500):
    """Slices of at most n items: an IN (...) list stays under SQLite's variable limit."""
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def vector_blob(vector) -> bytes:
    """An embedding as stored in embeddings.vector: little-endian float32."""
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def blob_vector(blob: bytes, dim: int | None = None) -> np.ndarray | None:
    """A stored embedding back as float32; with dim, None unless it is dim finite values."""
    if dim is not None and (blob is None or len(blob) != dim * 4):
        return None
    v = np.frombuffer(blob, dtype="<f4").astype(np.float32)
    return v if dim is None or np.isfinite(v).all() else None


embeddings = Table(
    "embeddings",
    metadata,
    Column("image_id", Integer, ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    Column("model_version", Integer, ForeignKey("model_versions.id"), primary_key=True),
    Column("vector", LargeBinary, nullable=False),  # little-endian float32, dim * 4 bytes
    Column("created_at", Text, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("role", Text, nullable=False),
    Column("key_hash", Text, nullable=False, unique=True),
    Column("created_at", Text, nullable=False),
    Column("revoked_at", Text),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("identity_id", Integer, ForeignKey("identities.id", ondelete="CASCADE"), nullable=False),
    Column("label", Integer, nullable=False),  # 1: the query IS this identity; 0: it is NOT
    Column("query_sha256", Text, nullable=False),
    Column("query_name", Text),
    Column("query_image", LargeBinary, nullable=False),  # the query photo itself (pairs need it)
    Column("model_version", Integer, ForeignKey("model_versions.id")),  # the version that answered
    Column("distance", Float),  # query to the identity's nearest image under that version
    Column("created_at", Text, nullable=False),
    UniqueConstraint("identity_id", "query_sha256"),
)

meta_table = Table(
    "meta",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text),
)

schema_version_table = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", Text, nullable=False),
)

# --------------------------------------------------------------------------------------------
# Migrations
# --------------------------------------------------------------------------------------------
_SCHEMA_VERSION_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_version ( version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
)

_V1 = [
    """CREATE TABLE identities (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        external_id TEXT NOT NULL UNIQUE,
        name TEXT,
        meta TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL)""",
    """CREATE TABLE images (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        identity_id INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
        content_sha256 TEXT NOT NULL,
        source_name TEXT,
        width INTEGER,
        height INTEGER,
        bytes INTEGER,
        stored_path TEXT,
        created_at TEXT NOT NULL,
        UNIQUE (identity_id, content_sha256))""",
    "CREATE INDEX ix_images_content ON images(content_sha256)",
    "CREATE INDEX ix_images_stored_path ON images(stored_path)",
    """CREATE TABLE model_versions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        model_id TEXT NOT NULL UNIQUE,
        model_dir TEXT,
        dim INTEGER NOT NULL,
        threshold REAL,
        parent INTEGER REFERENCES model_versions(id),
        created_at TEXT NOT NULL,
        active INTEGER NOT NULL DEFAULT 0,
        scores TEXT NOT NULL DEFAULT '{}')""",
    # At most one active model version.
    "CREATE UNIQUE INDEX ux_model_versions_active ON model_versions(active) WHERE active = 1",
    """CREATE TABLE embeddings (
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        model_version INTEGER NOT NULL REFERENCES model_versions(id),
        vector BLOB NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (image_id, model_version))""",
    "CREATE INDEX ix_embeddings_model ON embeddings(model_version)",
    """CREATE TABLE api_keys (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        revoked_at TEXT)""",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
    "INSERT INTO meta (key, value) VALUES ('change_counter', '0')",
    "INSERT INTO meta (key, value) VALUES ('index_generation', '1')",
]


def _migration_v1(conn: Connection) -> None:
    """Version 1: every table of the first release."""
    for stmt in _V1:
        conn.exec_driver_sql(stmt)


_V2 = [
    "ALTER TABLE model_versions ADD COLUMN activated_at TEXT",
    "UPDATE model_versions SET activated_at = created_at WHERE active = 1",
    """CREATE TABLE feedback (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        identity_id INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
        label INTEGER NOT NULL CHECK (label IN (0, 1)),
        query_sha256 TEXT NOT NULL,
        query_name TEXT,
        query_image BLOB NOT NULL,
        model_version INTEGER REFERENCES model_versions(id),
        distance REAL,
        created_at TEXT NOT NULL,
        UNIQUE (identity_id, query_sha256))""",
    "CREATE INDEX ix_feedback_identity ON feedback(identity_id)",
]


def _migration_v2(conn: Connection) -> None:
    """Version 2 (retraining): when each model version last started serving (NULL: never), and
    operators' corrections of identify answers."""
    for stmt in _V2:
        conn.exec_driver_sql(stmt)


# Ordered: MIGRATIONS[n - 1] brings a database from version n - 1 to n. Append, never edit.
MIGRATIONS: list[Callable[[Connection], None]] = [_migration_v1, _migration_v2]
SCHEMA_VERSION = len(MIGRATIONS)


# --------------------------------------------------------------------------------------------
# The cross-process writer lock
# --------------------------------------------------------------------------------------------
class WriterLock:
    """An exclusive lock on a file, re-entrant within one thread, shared safely between threads.

    The file lock is the `filelock` package's (flock on POSIX, msvcrt.locking on Windows), so the
    library imports and locks on every platform. Each WriterLock holds its own open file, so two
    WriterLock objects on the same path exclude each other even inside one process. Waits up to
    `timeout` seconds, then raises Busy.
    """

    def __init__(self, path: Path, timeout: float = 60.0):
        self.path = Path(path)
        self.timeout = float(timeout)
        self._thread_lock = threading.RLock()
        # thread_local=False: our RLock already keeps other threads out; the file lock is then
        # owned by this object, and preserve_lock_file keeps the path stable for waiters.
        self._file_lock = FileLock(self.path, mode=0o600, thread_local=False, preserve_lock_file=True)
        self._depth = 0

    @property
    def held(self) -> bool:
        return self._depth > 0

    def acquire(self, timeout: float | None = None) -> None:
        wait = self.timeout if timeout is None else float(timeout)
        got = self._thread_lock.acquire(timeout=wait) if wait > 0 else self._thread_lock.acquire(blocking=False)
        if not got:
            raise Busy(f"another writer in this process holds {self.path} (waited {wait:g}s)")
        if self._depth:
            self._depth += 1
            return
        try:
            self._file_lock.acquire(timeout=max(wait, 0.0), poll_interval=0.01)
        except Timeout:
            self._thread_lock.release()
            raise Busy(
                f"another process is writing to this index; gave up after {wait:g}s waiting for {self.path}"
            ) from None
        except BaseException:
            self._thread_lock.release()
            raise
        self._depth = 1

    def release(self) -> None:
        if self._depth <= 0:
            raise RuntimeError("WriterLock released more often than acquired")
        self._depth -= 1
        try:
            if self._depth == 0:
                self._file_lock.release()
        finally:
            self._thread_lock.release()

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# --------------------------------------------------------------------------------------------
# The database
# --------------------------------------------------------------------------------------------
class WriteTxn:
    """A write transaction: its connection and the change counter before and after it."""

    def __init__(self, conn: Connection, before: int):
        self.conn = conn
        self.before = before
        self.after: int | None = None


def _is_locked_error(e: BaseException) -> bool:
    msg = str(getattr(e, "orig", e)).lower()
    return "database is locked" in msg or "database table is locked" in msg or "busy" in msg


class Database:
    """One SQLite file with its writer lock. Thread-safe; open one per process."""

    def __init__(self, path: Path, lock_path: Path | None = None, lock_timeout: float = 60.0):
        self.path = Path(path)
        self.lock = WriterLock(lock_path or self.path.with_name(LOCK_NAME), timeout=lock_timeout)
        self.engine = create_engine(
            f"sqlite:///{self.path}",
            connect_args={"timeout": BUSY_TIMEOUT_MS / 1000.0},
        )
        event.listen(self.engine, "connect", self._on_connect)
        event.listen(self.engine, "begin", self._on_begin)

    # -- connection setup ----------------------------------------------------------------------
    @staticmethod
    def _on_connect(dbapi_conn, _record) -> None:
        # Take transaction control away from the sqlite3 module: SQLAlchemy emits BEGIN itself.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as e:  # read-only media: keep the existing mode
            log.debug("could not switch %s to WAL: %s", dbapi_conn, e)
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA secure_delete=ON")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.close()

    @staticmethod
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("siamese_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")

    def close(self) -> None:
        self.engine.dispose()

    # -- transactions --------------------------------------------------------------------------
    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction: one consistent snapshot; never blocks writers (WAL)."""
        with self.engine.connect() as conn:
            with conn.begin():
                yield conn

    @contextmanager
    def write(self, lock_timeout: float | None = None, bump: bool = True) -> Iterator[WriteTxn]:
        """Writer lock + BEGIN IMMEDIATE; bumps change_counter; commits when the block ends.

        An exception inside the block rolls everything back (the counter included).
        bump=False is for writes that no reader of the active generation can see (embeddings of a
        version not yet switched to, feedback rows, version records): readers then have nothing
        to reload.
        """
        self.lock.acquire(lock_timeout)
        try:
            with self.engine.connect().execution_options(siamese_write=True) as conn:
                try:
                    with conn.begin():
                        before = self.get_counter(conn)
                        txn = WriteTxn(conn, before)
                        yield txn
                        if bump:
                            txn.after = before + 1
                            self.set_meta(conn, "change_counter", str(txn.after))
                        else:
                            txn.after = before
                except sa_exc.OperationalError as e:
                    if _is_locked_error(e):
                        raise Busy(f"{self.path}: the database stayed locked by another program ({e.orig})") from e
                    raise
        finally:
            self.lock.release()

    # -- meta ----------------------------------------------------------------------------------
    @staticmethod
    def get_meta(conn: Connection, key: str, default: str | None = None) -> str | None:
        value = conn.execute(select(meta_table.c.value).where(meta_table.c.key == key)).scalar_one_or_none()
        return default if value is None else value

    @staticmethod
    def set_meta(conn: Connection, key: str, value: str | None) -> None:
        stmt = sqlite_insert(meta_table).values(key=key, value=value)
        conn.execute(stmt.on_conflict_do_update(index_elements=["key"], set_={"value": value}))

    @classmethod
    def get_counter(cls, conn: Connection) -> int:
        return int(cls.get_meta(conn, "change_counter") or 0)

    def change_counter(self) -> int:
        """The current change counter: one indexed SELECT (what refresh() polls)."""
        with self.read() as conn:
            return self.get_counter(conn)

    # -- schema --------------------------------------------------------------------------------
    def schema_version(self, conn: Connection | None = None) -> int:
        if conn is None:
            with self.read() as c:
                return self.schema_version(c)
        exists = conn.exec_driver_sql(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).first()
        if not exists:
            return 0
        return int(conn.exec_driver_sql("SELECT COALESCE(MAX(version), 0) FROM schema_version").scalar() or 0)

    def migrate(self) -> list[int]:
        """Bring the schema to SCHEMA_VERSION; returns the versions applied (empty if current)."""
        current = self.schema_version()
        self._refuse_newer(current)
        if current == SCHEMA_VERSION:
            return []
        applied: list[int] = []
        with self.lock, self.engine.connect().execution_options(siamese_write=True) as conn:
            with conn.begin():  # DDL is transactional in SQLite: all migrations or none
                conn.exec_driver_sql(_SCHEMA_VERSION_DDL)
                current = self.schema_version(conn)  # again, under the lock
                self._refuse_newer(current)
                for version in range(current + 1, SCHEMA_VERSION + 1):
                    log.info("migrating %s to schema version %d", self.path, version)
                    MIGRATIONS[version - 1](conn)
                    conn.execute(schema_version_table.insert().values(version=version, applied_at=now_iso()))
                    applied.append(version)
                if applied:
                    self.set_meta(conn, "change_counter", str(self.get_counter(conn) + 1))
        return applied

    def _refuse_newer(self, current: int) -> None:
        if current > SCHEMA_VERSION:
            raise InvalidData(
                f"{self.path}: schema version {current} was written by a newer siamese-index "
                f"(this one reads up to {SCHEMA_VERSION}); upgrade siamese-index"
            )

    # -- maintenance ---------------------------------------------------------------------------
    def _raw(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000.0, isolation_level=None)
        conn.execute("PRAGMA secure_delete=ON")
        return conn

    def checkpoint(self) -> bool:
        """Fold the WAL into the database and truncate it (so deleted rows leave no old copies).

        Returns False when a reader still holds an old snapshot (the WAL is then kept until a
        later checkpoint).
        """
        conn = self._raw()
        try:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            return busy == 0
        except sqlite3.Error as e:
            log.debug("checkpoint of %s failed: %s", self.path, e)
            return False
        finally:
            conn.close()

    def integrity_problems(self) -> list[str]:
        conn = self._raw()
        try:
            rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
            problems = [r for r in rows if r != "ok"]
            for table, rowid, parent, _ in conn.execute("PRAGMA foreign_key_check").fetchall():
                problems.append(f"{table} row {rowid} refers to a missing {parent} row")
            return problems
        finally:
            conn.close()

    def backup_to(self, target: Path) -> None:
        """A consistent copy of the database through SQLite's online backup API."""
        src = self._raw()
        dst = sqlite3.connect(target, isolation_level=None)
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
