"""The storage layer: schema and migrations, transactions and the writer lock, the FAISS cache."""

import sqlite3

import numpy as np
import pytest
from sqlalchemy import insert, inspect, select
from sqlalchemy.exc import IntegrityError

from siamese_index.errors import Busy, IndexStale, InvalidData
from siamese_index.storage import db as dbm
from siamese_index.storage.db import SCHEMA_VERSION, Database, WriterLock
from siamese_index.storage.vectors import (
    VectorIndex,
    id_set_sha256,
    load_or_rebuild,
    squared_to_l2,
    stamp_path,
)


@pytest.fixture
def db(tmp_path):
    d = Database(tmp_path / "index.db", lock_timeout=0.3)
    d.migrate()
    yield d
    d.close()


# -- schema ------------------------------------------------------------------------------------
def test_migrations_build_the_declared_schema(tmp_path, db):
    assert db.schema_version() == SCHEMA_VERSION
    assert db.migrate() == []  # idempotent
    insp = inspect(db.engine)
    for table in dbm.metadata.sorted_tables:
        actual = {c["name"] for c in insp.get_columns(table.name)}
        assert actual == {c.name for c in table.columns}, table.name
    with db.read() as conn:
        assert Database.get_counter(conn) == 1  # the migration itself was one write
        assert Database.get_meta(conn, "index_generation") == "1"


def test_newer_schema_is_refused(tmp_path, db):
    with db.write() as txn:
        txn.conn.execute(insert(dbm.schema_version_table).values(version=SCHEMA_VERSION + 1, applied_at="x"))
    with pytest.raises(InvalidData, match="newer"):
        Database(tmp_path / "index.db").migrate()


def test_pragmas(db):
    with db.read() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000


def _add_identity(conn, ext="E1"):
    return conn.execute(
        insert(dbm.identities).values(external_id=ext, name=None, meta="{}", created_at="t", updated_at="t")
    ).inserted_primary_key[0]


def test_write_bumps_counter_once_and_rolls_back_on_error(db):
    before = db.change_counter()
    with db.write() as txn:
        _add_identity(txn.conn, "A")
        _add_identity(txn.conn, "B")
    assert txn.before == before and txn.after == before + 1 == db.change_counter()
    with pytest.raises(RuntimeError):
        with db.write() as txn:
            _add_identity(txn.conn, "C")
            raise RuntimeError("boom")
    assert db.change_counter() == before + 1
    with db.read() as conn:
        assert sorted(conn.execute(select(dbm.identities.c.external_id)).scalars()) == ["A", "B"]


def test_foreign_keys_and_ids_never_reused(db):
    with db.write() as txn:
        pk = _add_identity(txn.conn)
        img = txn.conn.execute(
            insert(dbm.images).values(identity_id=pk, content_sha256="h", created_at="t")
        ).inserted_primary_key[0]
    with db.write() as txn:
        txn.conn.execute(dbm.images.delete())
        img2 = txn.conn.execute(
            insert(dbm.images).values(identity_id=pk, content_sha256="h", created_at="t")
        ).inserted_primary_key[0]
    assert img2 > img  # AUTOINCREMENT: a FAISS id is never handed out twice
    with pytest.raises(IntegrityError):
        with db.write() as txn:
            txn.conn.execute(insert(dbm.images).values(identity_id=999, content_sha256="x", created_at="t"))


def test_writer_lock_excludes_other_holders_and_is_reentrant(tmp_path, db):
    other = WriterLock(db.lock.path, timeout=0.2)
    with db.lock:
        with db.lock:  # re-entrant in one thread
            with pytest.raises(Busy):
                other.acquire()
        with pytest.raises(Busy):
            other.acquire(timeout=0)
    other.acquire()
    try:
        with pytest.raises(Busy, match="another process"):
            with db.write():
                pass
    finally:
        other.release()


def test_write_transactions_begin_immediate(db):
    """A write transaction holds SQLite's write lock from its first statement."""
    raw = sqlite3.connect(db.path, timeout=0, isolation_level=None)
    try:
        with db.write():
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                raw.execute("BEGIN IMMEDIATE")
        with db.read():  # readers take no write lock
            raw.execute("BEGIN IMMEDIATE")
            raw.execute("ROLLBACK")
    finally:
        raw.close()


# -- FAISS -------------------------------------------------------------------------------------
def _brute(queries, ids, vecs, k):
    d = np.sqrt(((queries[:, None, :].astype(np.float64) - vecs[None].astype(np.float64)) ** 2).sum(-1))
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(d, order, 1)


def test_squared_to_plain_l2():
    assert squared_to_l2(np.array([4.0, 0.0, -1e-7])).tolist() == [2.0, 0.0, 0.0]


def test_search_matches_brute_force_oracle():
    rng = np.random.default_rng(0)
    ids = rng.choice(100_000, 400, replace=False).astype(np.int64)
    vecs = rng.standard_normal((400, 16)).astype(np.float32)
    vi = VectorIndex.build(16, ids, vecs)
    gone = ids[::7]
    assert vi.remove(gone) == len(gone)
    keep = ~np.isin(ids, gone)
    queries = rng.standard_normal((30, 16)).astype(np.float32)
    got_ids, got_d = vi.search(queries, 10)
    want_ids, want_d = _brute(queries, ids[keep], vecs[keep], 10)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_d, want_d, rtol=1e-4, atol=1e-4)  # plain L2, not squared
    assert np.array_equal(vi.ids(), np.sort(ids[keep]))
    small = VectorIndex.build(16, ids[:3], vecs[:3])
    assert small.search(queries[:2], 10)[0].shape == (2, 3)  # k capped, never padded with -1
    with pytest.raises(ValueError, match="duplicate"):
        small.add(ids[:1], vecs[:1])


def test_save_load_and_stamp(tmp_path):
    rng = np.random.default_rng(1)
    ids = np.arange(1, 51, dtype=np.int64)
    vecs = rng.standard_normal((50, 8)).astype(np.float32)
    path = tmp_path / "index.faiss"
    stamp = VectorIndex.build(8, ids, vecs).save(path, model_id="m", generation=3, change_counter=7)
    assert stamp["count"] == 50 and stamp["ids_sha256"] == id_set_sha256(ids[::-1]) and stamp["generation"] == 3
    vi, loaded = VectorIndex.load(path, 8)
    assert loaded == stamp and np.array_equal(vi.ids(), ids)
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(IndexStale, match="dimension"):
        VectorIndex.load(path, 16)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(IndexStale, match="truncated"):
        VectorIndex.load(path, 8)


def test_load_or_rebuild_detects_every_kind_of_staleness(tmp_path):
    rng = np.random.default_rng(2)
    ids = np.arange(10, 30, dtype=np.int64)
    vecs = rng.standard_normal((20, 8)).astype(np.float32)
    path = tmp_path / "index.faiss"
    fetched = []

    def fetch():
        fetched.append(1)
        return ids, vecs

    def load(model_id="m", generation=1, expected=ids):
        return load_or_rebuild(
            path, model_id=model_id, dim=8, generation=generation, expected_ids=expected, fetch=fetch
        )

    vi, info = load()
    assert info["source"] == "rebuilt" and "missing" in info["reason"]
    vi.save(path, model_id="m", generation=1, change_counter=1)
    assert load()[1]["source"] == "file"
    assert load(model_id="other")[1]["source"] == "rebuilt"
    assert load(generation=2)[1]["source"] == "rebuilt"
    _, info = load(expected=ids[:-1])  # SQLite lost a row since the file was saved
    assert info["source"] == "rebuilt" and "SQLite" in info["reason"]
    # garbage that matches its stamp's hash: FAISS itself refuses it
    import hashlib
    import json

    garbage = b"\x00" * 64
    path.write_bytes(garbage)
    st = json.loads(stamp_path(path).read_text())
    st["file_sha256"] = hashlib.sha256(garbage).hexdigest()
    stamp_path(path).write_text(json.dumps(st))
    _, info = load()
    assert info["source"] == "rebuilt" and "unreadable" in info["reason"]
    stamp_path(path).unlink()
    assert load()[1]["source"] == "rebuilt"
    assert len(fetched) == 6
