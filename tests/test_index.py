"""SiameseIndex end to end with a fake embedder: enroll, identify, verify, manage, check, backup."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from siamese_index.errors import InvalidData, InvalidImage, ModelMismatch, NotFound
from siamese_index.index.facade import SiameseIndex
from siamese_index.storage.vectors import VectorIndex, stamp_path
from siamese_index.types import Consistency, Merged, Removed
from tests.conftest import FakeEmbedder, write_identity_image


def _enroll_people(idx, make_image, people, photos=2, start=0):
    for p in people:
        res = idx.enroll(f"P{p}", [make_image(p, v) for v in range(start, start + photos)], name=f"Person {p}")
        assert [r.status for r in res] == ["added"] * photos, res


def _db_rows(home):
    conn = sqlite3.connect(home / "index.db")
    try:
        return {
            t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("identities", "images", "embeddings")
        }
    finally:
        conn.close()


def _stored_embeddings(home):
    conn = sqlite3.connect(home / "index.db")
    try:
        rows = conn.execute(
            "SELECT e.vector, i.external_id FROM embeddings e JOIN images m ON m.id = e.image_id "
            "JOIN identities i ON i.id = m.identity_id"
        ).fetchall()
    finally:
        conn.close()
    return np.stack([np.frombuffer(r[0], "<f4") for r in rows]), np.array([r[1] for r in rows])


def _oracle(queries, vecs, labels, k):
    """Brute force: per query, identities by their nearest image, nearest first."""
    out = []
    for q in queries.astype(np.float64):
        d = np.sqrt(((vecs.astype(np.float64) - q) ** 2).sum(1))
        best = {}
        for lab, dist in zip(labels, d):
            best[lab] = min(dist, best.get(lab, np.inf))
        out.append(sorted(best.items(), key=lambda kv: kv[1])[:k])
    return out


# -- enroll / identify ---------------------------------------------------------------------------
def test_identify_known_and_stranger(index, make_image):
    _enroll_people(index, make_image, range(6))
    known, stranger = index.identify([make_image(3, 9), make_image(150, 0)], k=3)
    assert known.known and known.match.id == "P3" and known.match.name == "Person 3"
    assert known.match.distance < 0.2 and len(known.candidates) == 3
    assert [c.id for c in known.candidates][0] == "P3"
    assert len({c.id for c in known.candidates}) == 3  # distinct identities
    assert not stranger.known and stranger.match is None and stranger.candidates[0].distance > 0.5
    assert known.threshold == pytest.approx(0.5)  # no impostor table, small gallery: the pair threshold
    d = known.to_dict()
    assert d["query"].endswith("id3_v9.png") and d["match"]["id"] == "P3" and d["error"] is None


def test_identify_matches_brute_force_oracle(index, make_image, fake_embedder):
    _enroll_people(index, make_image, range(10), photos=2)
    # one identity with many photos, so that the nearest hits of a query are all the same
    # person and the search must widen to find k distinct identities
    index.enroll("P0", [make_image(0, v) for v in range(2, 30)])
    queries = [make_image(p, 40) for p in (0, 1, 5, 9)] + [make_image(200, 0)]
    got = index.identify(queries, k=5)
    vecs, labels = _stored_embeddings(index.home)
    qv = fake_embedder.embed_batch(np.stack([fake_embedder.prepare(q)[0] for q in queries]))
    for g, want in zip(got, _oracle(qv, vecs, labels, 5)):
        assert [c.id for c in g.candidates] == [w[0] for w in want]
        np.testing.assert_allclose([c.distance for c in g.candidates], [w[1] for w in want], atol=1e-4)
    # and on random vectors, straight through identify_vectors
    rng = np.random.default_rng(5)
    rq = rng.standard_normal((20, 16)).astype(np.float32)
    rq /= np.linalg.norm(rq, axis=1, keepdims=True)
    for g, want in zip(index.identify_vectors(rq, k=4), _oracle(rq, vecs, labels, 4)):
        assert [c.id for c in g.candidates] == [w[0] for w in want]
        np.testing.assert_allclose([c.distance for c in g.candidates], [w[1] for w in want], atol=1e-4)


def test_threshold_and_margin_overrides(index, make_image):
    _enroll_people(index, make_image, range(3))
    [r] = index.identify([make_image(1, 5)], threshold=0.01)
    assert not r.known and r.threshold == 0.01 and r.candidates[0].id == "P1"
    [r] = index.identify([make_image(1, 5)], margin=5.0)  # second identity is never 5 farther
    assert not r.known
    [r] = index.identify([make_image(1, 5)], k=1, margin=0.2)
    assert r.known and len(r.candidates) == 1


def test_unreadable_query_gives_an_error_entry(index, make_image, tmp_path):
    _enroll_people(index, make_image, range(2))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    res = index.identify([make_image(0, 3), bad, tmp_path / "missing.jpg"])
    assert res[0].known and res[0].error is None
    assert not res[1].known and res[1].candidates == () and "readable" in res[1].error
    assert res[2].error == "no such file"


def test_identify_on_empty_index(index, make_image):
    [r] = index.identify([make_image(1, 0)])
    assert not r.known and r.candidates == () and "nobody" in r.warnings[0]


def test_verify(index, make_image, tmp_path):
    same = index.verify(make_image(4, 0), make_image(4, 1))
    assert same.same and same.distance < 0.2 and same.threshold == 0.5
    diff = index.verify(make_image(4, 0), ("other.png", make_image(7, 0).read_bytes()))
    assert not diff.same and diff.image_b == "other.png"
    with pytest.raises(InvalidImage):
        index.verify(make_image(4, 0), tmp_path / "nope.png")


def test_enroll_twice_is_a_noop(index, make_image):
    files = [make_image(1, 0), make_image(1, 1)]
    index.enroll("P1", files)
    counter = index.status().change_counter
    again = index.enroll("P1", files + [files[0]])
    assert [r.status for r in again] == ["exists", "exists", "exists"]
    assert again[0].image_id is not None and again[2].image_id == again[0].image_id
    assert index.status().change_counter == counter  # nothing written
    assert _db_rows(index.home) == {"identities": 1, "images": 2, "embeddings": 2}
    more = index.enroll("P1", [make_image(1, 2)], name="Renamed", meta={"dept": "R&D"})
    assert more[0].status == "added" and more[0].identity == "P1"
    assert index.person("P1").name == "Renamed" and len(index.person("P1").images) == 3
    index.enroll("P1", [files[0]], meta={"floor": 3, "dept": None})  # meta merges; None deletes
    assert index.person("P1").meta == {"floor": 3}


def test_bad_input_leaves_the_database_unchanged(index, make_image, tmp_path):
    index.enroll("P1", [make_image(1, 0)])
    rows, counter = _db_rows(index.home), index.status().change_counter
    files_before = sorted((index.home / "images").rglob("*"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    truncated = tmp_path / "half.png"
    truncated.write_bytes(make_image(2, 0).read_bytes()[:60])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    res = index.enroll("P2", [bad, truncated, empty, tmp_path / "missing.png"])
    assert [r.status for r in res] == ["failed"] * 4 and all(r.reason for r in res)
    for bad_id in ["", "a/b", " lead", "tab\tid", "x" * 300]:
        with pytest.raises(InvalidData):
            index.enroll(bad_id, [make_image(3, 0)])
    with pytest.raises(InvalidData):
        index.enroll("P3", [make_image(3, 0)], meta={"x": object()})
    with pytest.raises(InvalidData):
        index.enroll("P3", [])
    res = index.enroll("P1", [bad], name="Not applied", meta={"x": 1})  # every file fails: no update either
    assert res[0].status == "failed" and index.person("P1").name is None
    assert _db_rows(index.home) == rows and index.status().change_counter == counter
    assert sorted((index.home / "images").rglob("*")) == files_before
    # a mix: the good photo is enrolled, the bad one reported
    res = index.enroll("P2", [make_image(2, 0), bad])
    assert [r.status for r in res] == ["added", "failed"]
    assert index.check().ok


def test_duplicate_identity_warning(index, make_image):
    index.enroll("P1", [make_image(1, 0)])
    [r] = index.enroll("P1-again", [make_image(1, 1)])
    assert r.status == "added" and any("possible duplicate identity" in w and "P1" in w for w in r.warnings)
    [r] = index.enroll("P2", [make_image(2, 0)])
    assert r.warnings == ()


def test_enroll_dir(index, tmp_path):
    staff = tmp_path / "staff"
    for p in range(3):
        for v in range(2):
            write_identity_image(staff / f"E{p}" / f"{v}.png", p, v)
    (staff / "E1" / "notes.txt").write_text("hi")
    (staff / "loose.png").write_bytes(b"x")
    (staff / "E2" / "broken.png").write_bytes(b"not png")
    seen = []
    res = index.enroll_dir(staff, progress=lambda done, total, pid: seen.append((done, total, pid)))
    status = {Path(r.path).name: r.status for r in res}
    assert sum(r.status == "added" for r in res) == 6
    assert status["notes.txt"] == "failed" and status["loose.png"] == "failed" and status["broken.png"] == "failed"
    assert seen[-1] == (3, 3, "E2")
    assert [p.id for p in index.people()] == ["E0", "E1", "E2"] and all(p.images == 2 for p in index.people())


# -- persistence and the FAISS cache -------------------------------------------------------------
def test_persistence_across_reopen(home, make_image):
    with SiameseIndex.open(home, embedder=FakeEmbedder()) as idx:
        _enroll_people(idx, make_image, range(4))
        before = idx.identify([make_image(2, 7)])[0]
    emb = FakeEmbedder()
    with SiameseIndex.open(home, embedder=emb, create=False) as idx:
        st = idx.status()
        assert st.index.last_sync["source"] == "file"  # loaded, not rebuilt
        assert st.counts.identities == 4 and st.consistency.ok
        assert idx.identify([make_image(2, 7)])[0] == before
        assert emb.embedded == 1  # nothing re-embedded on open


@pytest.mark.parametrize("damage", ["missing", "truncated", "stale", "no-stamp"])
def test_damaged_faiss_file_is_rebuilt(home, make_image, damage):
    path = home / "index.faiss"
    with SiameseIndex.open(home, embedder=FakeEmbedder()) as idx:
        _enroll_people(idx, make_image, [1])
        old = path.read_bytes(), stamp_path(path).read_text()
        _enroll_people(idx, make_image, [2])
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "stale":  # a self-consistent file and stamp from before the last enroll
        path.write_bytes(old[0])
        stamp_path(path).write_text(old[1])
    else:
        stamp_path(path).unlink()
    with SiameseIndex.open(home, embedder=FakeEmbedder()) as idx:
        sync = idx.status().index.last_sync
        assert sync["source"] == "rebuilt" and sync["reason"]
        assert idx.identify([make_image(2, 5)])[0].match.id == "P2"
        assert idx.check().ok
    assert VectorIndex.load(path, 16)[0].ntotal == 4  # the rebuilt index was saved
    with SiameseIndex.open(home, embedder=FakeEmbedder()) as idx:
        assert idx.status().index.last_sync["source"] == "file"


def test_model_mismatch_is_refused(home, make_image):
    with SiameseIndex.open(home, embedder=FakeEmbedder()) as idx:
        _enroll_people(idx, make_image, [1])
    with pytest.raises(ModelMismatch, match="fake-1"):
        SiameseIndex.open(home, embedder=FakeEmbedder(model_id="fake-2"))
    with pytest.raises(ModelMismatch, match="embedding size 16"):
        SiameseIndex.open(home, embedder=FakeEmbedder(dim=8))
    # without a model the home uses its recorded one (metadata works without loading a tower)
    with SiameseIndex.open(home) as idx:
        assert idx.model_id == "fake-1" and [p.id for p in idx.people()] == ["P1"]


def test_missing_home_and_foreign_folder(tmp_path, fake_embedder):
    with pytest.raises(NotFound):
        SiameseIndex.open(tmp_path / "nothing", embedder=fake_embedder, create=False)
    assert not (tmp_path / "nothing").exists()
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    with pytest.raises(InvalidData, match="not a siamese-index home"):
        SiameseIndex.open(tmp_path / "photos", embedder=fake_embedder)


# -- people management ---------------------------------------------------------------------------
def test_remove_leaves_nothing(index, make_image):
    _enroll_people(index, make_image, [1, 2])
    index.enroll("ZQX-SECRET-77", [make_image(3, 0), make_image(3, 1)], name="Unforgettable Name")
    secret = index.person("ZQX-SECRET-77")
    files = [index.home / i.stored_path for i in secret.images]
    ids = [i.image_id for i in secret.images]
    assert all(f.is_file() for f in files)
    out = index.remove("ZQX-SECRET-77")
    assert out == Removed(id="ZQX-SECRET-77", images=2, files_deleted=2)
    assert not any(f.exists() for f in files) and not any(f.parent.exists() for f in files)
    assert _db_rows(index.home) == {"identities": 2, "images": 4, "embeddings": 4}
    assert not np.isin(ids, VectorIndex.load(index.home / "index.faiss", 16)[0].ids()).any()
    [r] = index.identify([make_image(3, 2)])
    assert not r.known and "ZQX-SECRET-77" not in [c.id for c in r.candidates]
    with pytest.raises(NotFound):
        index.person("ZQX-SECRET-77")
    for f in index.home.glob("index.db*"):  # secure_delete + checkpoint: no trace in the files
        data = f.read_bytes()
        assert b"ZQX-SECRET-77" not in data and b"Unforgettable" not in data, f
    assert index.check().ok


def test_remove_image(index, make_image):
    files = [make_image(1, v) for v in range(4)]
    res = index.enroll("P1", files)
    info = index.person("P1").images
    out = index.remove_image("P1", res[0].image_id)
    assert out.image_id == res[0].image_id and out.remaining_images == 3 and out.files_deleted == 1
    assert index.remove_image("P1", files[1].name).image_id == res[1].image_id
    assert index.remove_image("P1", info[2].sha256[:8]).image_id == res[2].image_id
    with pytest.raises(NotFound):
        index.remove_image("P1", "no-such-photo.png")
    with pytest.raises(NotFound):
        index.remove_image("P404", 1)
    assert [i.image_id for i in index.person("P1").images] == [res[3].image_id]
    assert index.check().ok


def test_merge(index, make_image):
    shared = make_image(1, 0)
    index.enroll("A", [shared, make_image(1, 1)], name="Ada", meta={"dept": "R&D"})
    index.enroll("B", [shared, make_image(1, 2)], meta={"badge": 7, "dept": "old"})
    out = index.merge("B", "A")
    assert out == Merged(id="B", into="A", moved=1, duplicates_dropped=1)
    a = index.person("A")
    assert len(a.images) == 3 and a.name == "Ada" and a.meta == {"dept": "R&D", "badge": 7}
    assert [p.id for p in index.people()] == ["A"]
    assert (index.home / a.images[0].stored_path).is_file()  # the shared copy stays
    assert index.identify([make_image(1, 2)])[0].match.id == "A"
    with pytest.raises(NotFound):
        index.merge("B", "A")
    index.rename("A", "Ada Lovelace")
    assert index.people()[0].name == "Ada Lovelace"
    assert index.check().ok


# -- readers in other instances ------------------------------------------------------------------
def test_refresh_sees_other_writers_and_stale_hits_are_dropped(index, make_image, home):
    reader = SiameseIndex.open(home, embedder=FakeEmbedder(), create=False)
    try:
        assert reader.identify([make_image(5, 3)])[0].candidates == ()
        _enroll_people(index, make_image, [5, 6])
        assert reader.identify([make_image(5, 3)])[0].match.id == "P5"  # refreshed by itself
        assert not reader.refresh()  # nothing changed since
        index.remove("P5")
        reader.refresh = lambda: False  # a reader that has not caught up yet
        assert 4 == reader.vectors.ntotal
        [r] = reader.identify([make_image(5, 3)])
        assert "P5" not in [c.id for c in r.candidates]  # every hit is joined back to SQLite
    finally:
        reader.close()


def test_a_long_lived_reader_applies_other_writers_changes_incrementally(index, make_image, home):
    reader = SiameseIndex.open(home, embedder=FakeEmbedder(), create=False)
    try:
        _enroll_people(index, make_image, [1, 2])
        assert reader.identify([make_image(1, 3)])[0].match.id == "P1"
        _enroll_people(index, make_image, [3])
        assert reader.identify([make_image(3, 3)])[0].match.id == "P3"
        assert reader.last_sync["source"] == "incremental" and reader.last_sync["added"] == 2
        index.remove("P1")
        [r] = reader.identify([make_image(1, 3)])
        assert "P1" not in [c.id for c in r.candidates]
        assert reader.last_sync == {"source": "incremental", "added": 0, "removed": 2}
        ids, vecs = index.vectors.vectors()
        rids, rvecs = reader.vectors.vectors()
        assert sorted(ids.tolist()) == sorted(rids.tolist())  # the same index as the writer's
    finally:
        reader.close()


# -- status, check, backup -----------------------------------------------------------------------
def test_status(index, make_image):
    _enroll_people(index, make_image, range(3))
    st = index.status()
    assert st.model.model_id == "fake-1" and st.model.dim == 16
    assert st.counts.to_dict() == {
        "identities": 3,
        "identities_with_images": 3,
        "images": 6,
        "embeddings": 6,
        "stored_images": 6,
    }
    assert st.index.stamp["count"] == 6 and st.consistency == Consistency(ok=True, problems=())
    op = st.operating_point
    assert op.gallery_size == 3 and op.threshold == 0.5 and "no impostor table" in op.method


def test_check_and_repair(index, make_image):
    _enroll_people(index, make_image, range(3))
    info = index.person("P1").images
    (index.home / info[0].stored_path).unlink()  # a lost copy
    orphan = index.home / "images" / "ff" / ("f" * 64 + ".png")  # a crash between copy and commit
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"x")
    (index.home / "index.faiss").write_bytes(b"junk")
    report = index.check()
    kinds = {p.kind for p in report.problems}
    assert not report.ok and kinds == {"missing_file", "orphan_file", "index_file"}
    assert report.repaired == () and report.unrepaired
    assert orphan.exists()  # check alone changes nothing
    fixed = index.check(repair=True)
    assert len(fixed.repaired) == 3 and fixed.unrepaired == ()
    assert not orphan.exists() and index.person("P1").images[0].stored_path is None
    again = index.check()
    assert again.ok and again.problems == ()
    assert index.identify([make_image(1, 4)])[0].match.id == "P1"


def test_backup(index, make_image, tmp_path, home):
    _enroll_people(index, make_image, range(3))
    other = SiameseIndex.open(home, embedder=FakeEmbedder())  # in use by someone else meanwhile
    try:
        out = index.backup(tmp_path / "bk")
    finally:
        other.close()
    assert out.identities == 3 and out.images == 6 and out.stored_images == 6
    assert not list((tmp_path / "bk").glob("index.db-*"))  # one self-contained database file
    with SiameseIndex.open(tmp_path / "bk", embedder=FakeEmbedder(), create=False) as copy:
        assert [p.id for p in copy.people()] == ["P0", "P1", "P2"]
        assert copy.identify([make_image(2, 9)])[0].match.id == "P2"
        assert copy.check().ok
    with pytest.raises(InvalidData, match="not empty"):
        index.backup(tmp_path / "bk")
    with pytest.raises(InvalidData, match="inside"):
        index.backup(home / "nested")


# -- two processes writing at once ---------------------------------------------------------------
def _enroll_worker(home, worker, files_by_person, barrier):
    from siamese_index.index.facade import SiameseIndex as Index
    from tests.conftest import FakeEmbedder as Fake

    barrier.wait(30)
    idx = Index.open(home, embedder=Fake())
    try:
        for pid, files in files_by_person.items():
            res = idx.enroll(pid, files)
            assert all(r.status == "added" for r in res), res
    finally:
        idx.close()


def test_concurrent_enrolls_from_two_processes(home, make_image):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    jobs = []
    for w in range(2):
        files = {f"W{w}-{p}": [str(make_image(10 * w + p, v)) for v in range(2)] for p in range(4)}
        jobs.append(ctx.Process(target=_enroll_worker, args=(str(home), w, files, barrier)))
    for j in jobs:
        j.start()
    for j in jobs:
        j.join(120)
    assert [j.exitcode for j in jobs] == [0, 0]
    with SiameseIndex.open(home, embedder=FakeEmbedder(), create=False) as idx:
        st = idx.status()
        assert st.counts.identities == 8 and st.counts.images == 16
        assert st.change_counter >= 9 and st.consistency.ok
        assert idx.check().ok
        assert idx.identify([make_image(12, 5)])[0].match.id == "W1-2"


# -- crash safety, options, calibration in the facade --------------------------------------------
def test_failure_inside_the_write_leaves_nothing(index, make_image, monkeypatch):
    import siamese_index.index.enrollment as index_module  # where enrollment writes the embedding

    index.enroll("P1", [make_image(1, 0)])
    rows, counter = _db_rows(index.home), index.status().change_counter
    files_before = sorted((index.home / "images").rglob("*"))
    calls = []
    real_blob = index_module.vector_blob

    def failing_blob(vec):
        calls.append(1)
        if len(calls) == 2:  # after the first photo's copy and rows were written
            raise OSError("disk full")
        return real_blob(vec)

    monkeypatch.setattr(index_module, "vector_blob", failing_blob)
    with pytest.raises(OSError, match="disk full"):
        index.enroll("P2", [make_image(2, 0), make_image(2, 1)], name="Never")
    assert _db_rows(index.home) == rows and index.status().change_counter == counter
    assert sorted((index.home / "images").rglob("*")) == files_before
    assert not (index.home / ".pending-copies").exists()
    monkeypatch.setattr(index_module, "vector_blob", real_blob)
    assert index.check().ok
    assert [r.status for r in index.enroll("P2", [make_image(2, 0)])] == ["added"]


def test_copies_of_an_interrupted_enrollment_are_removed_on_open(home, make_image):
    with SiameseIndex.open(home, embedder=FakeEmbedder()) as idx:
        _enroll_people(idx, make_image, [1])
        kept = idx.person("P1").images[0].stored_path
    # what a crash between writing a copy and committing leaves behind
    lost = "images/ab/" + "ab" * 32 + ".png"
    (home / lost).parent.mkdir(parents=True, exist_ok=True)
    (home / lost).write_bytes(b"half an enrollment")
    (home / ".pending-copies").write_text(f"{lost}\n{kept}\n")
    with SiameseIndex.open(home, embedder=FakeEmbedder()) as idx:
        assert not (home / lost).exists() and (home / kept).exists()
        assert not (home / ".pending-copies").exists()
        assert idx.check().ok


def test_home_without_image_copies(home, make_image):
    with SiameseIndex.open(home, embedder=FakeEmbedder(), keep_images=False) as idx:
        idx.enroll("P1", [make_image(1, 0)])
        assert idx.person("P1").images[0].stored_path is None
    with SiameseIndex.open(home, embedder=FakeEmbedder(), keep_images=True) as idx:
        assert idx.keep_images is False and idx.status().keep_images is False  # the home's setting
        idx.enroll("P1", [make_image(1, 1)])
        assert idx.check().ok
    assert not list((home / "images").rglob("*.png")) if (home / "images").exists() else True


def test_operating_point_in_a_large_gallery(home, make_image):
    from siamese_index.index import openset as calibration

    table = [[1e-5, 0.55], [1e-3, 0.75], [1e-1, 1.0]]
    emb = FakeEmbedder(threshold=0.9, metrics={"impostor_far_table": table})
    with SiameseIndex.open(home, embedder=emb) as idx:
        for p in range(31):
            idx.enroll(f"P{p}", [make_image(p, 0)])
        op = idx.operating_point()
        assert op.gallery_size == 31 and "gallery check" in op.method and "impostor table" in op.method
        vecs, labels = _stored_embeddings(home)
        emp = calibration.empirical_threshold(calibration.leave_one_identity_out_minima(vecs, labels), 0.01)
        tab = calibration.distance_at_far(table, calibration.per_pair_far(0.01, 31))[0]
        assert op.threshold == pytest.approx(min(0.9, emp, tab), abs=1e-5)
        [r] = idx.identify([make_image(7, 3)])
        assert r.known and r.match.id == "P7" and r.threshold == pytest.approx(op.threshold)
        assert idx.status().operating_point.threshold == pytest.approx(op.threshold)


def test_verify_files_without_a_home(tmp_path, make_image):
    from siamese_index.index.facade import verify_files

    v = verify_files(make_image(1, 0), make_image(1, 1), home=tmp_path / "none", embedder=FakeEmbedder())
    assert v.same and not (tmp_path / "none").exists()


def test_writers_wait_for_the_lock_but_readers_never_do(home, make_image):
    from siamese_index.errors import Busy
    from siamese_index.storage.db import WriterLock

    with SiameseIndex.open(home, embedder=FakeEmbedder(), lock_timeout=0.2) as idx:
        _enroll_people(idx, make_image, [1])
        other_process = WriterLock(home / "write.lock")  # flock: excludes even within one process
        other_process.acquire()
        try:
            with pytest.raises(Busy):
                idx.enroll("P2", [make_image(2, 0)])
            with pytest.raises(Busy):
                idx.remove("P1")
            assert idx.identify([make_image(1, 3)])[0].match.id == "P1"
            with SiameseIndex.open(home, embedder=FakeEmbedder(), create=False) as reader:
                assert [p.id for p in reader.people()] == ["P1"] and reader.status().consistency.ok
        finally:
            other_process.release()
        assert [p.id for p in idx.people()] == ["P1"]
        assert idx.enroll("P2", [make_image(2, 0)])[0].status == "added"


def test_an_injected_near_duplicate_check_warns_and_never_fails_an_enrollment(home, fake_embedder, make_image):
    seen = []

    def check(h, new, others):
        seen.append((Path(h), [label for label, _data, _sha in new], sorted(o.external_id for o in others)))
        return [["injected warning"] for _ in new]

    with SiameseIndex.open(home, embedder=fake_embedder, near_duplicates=check) as idx:
        [first] = idx.enroll("A", [make_image(1, 0)])
        [second] = idx.enroll("B", [make_image(2, 0)])
        assert "injected warning" in first.warnings and "injected warning" in second.warnings
        assert seen[1][0] == idx.home and seen[1][2] == ["A"]  # checked against OTHER ids only

    def broken(h, new, others):
        raise RuntimeError("checker down")

    with SiameseIndex.open(home, embedder=fake_embedder, near_duplicates=broken) as idx:
        [r] = idx.enroll("C", [make_image(3, 0)])
        assert r.status == "added" and not any("injected" in w for w in r.warnings)


def test_results_are_typed_and_serialise_with_the_old_keys(index, make_image):
    from siamese_index.jsonable import to_jsonable
    from siamese_index.types import CheckReport, ImageRecord, PersonDetails, Status

    index.enroll("P1", [make_image(1, 0)], name="Ada")
    p = index.person("P1")
    assert isinstance(p, PersonDetails) and isinstance(p.images[0], ImageRecord) and p.name == "Ada"
    assert to_jsonable(p) == p.to_dict() and set(p.to_dict()["images"][0]) == {
        "image_id", "source_name", "sha256", "width", "height", "bytes", "stored_path", "created",
    }  # fmt: skip
    st = index.status()
    assert isinstance(st, Status) and st.model.model_id == index.model_id and st.counts.images == 1
    assert st.counts.images == 1 and st.to_dict()["keep_images"] is True
    report = index.check()
    assert isinstance(report, CheckReport) and report.ok and report.checked.images == 1


def test_the_storage_layer_does_not_need_fcntl():
    import siamese_index.storage.db as db_module

    assert "fcntl" not in vars(db_module)
