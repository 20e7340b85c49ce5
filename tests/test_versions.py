"""Model versions: re-embedding into a new generation, the atomic switch, rollback, crash safety."""

import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from siamese_index.errors import InvalidData

from .tiny_towers import photos as _photos
from .tiny_towers import tiny_towers


@pytest.fixture(scope="module")
def towers():
    """Two tiny real towers A and B (B: A nudged), trained once per test process."""
    return tiny_towers()


def _enrolled_home(home, model, photos, **kw):
    from siamese_index.index.facade import SiameseIndex

    idx = SiameseIndex.open(home, model=model, **kw)
    for pid, files in photos.items():
        idx.enroll(pid, files)
    return idx


def _db(home):
    return sqlite3.connect(Path(home) / "index.db")


def _vectors_of(home, version) -> dict[int, np.ndarray]:
    with _db(home) as conn:
        rows = conn.execute("SELECT image_id, vector FROM embeddings WHERE model_version = ?", (version,)).fetchall()
    return {i: np.frombuffer(b, dtype="<f4") for i, b in rows}


def _oracle(home, model_dir, version, query) -> dict[str, float]:
    """Per identity: the nearest distance from `query` embedded by model_dir to that version's vectors."""
    from siamese_index.towers.embedder import KerasEmbedder

    emb = KerasEmbedder(model_dir)
    q = emb.embed_batch(np.stack([emb.prepare(query)[0]]))[0]
    with _db(home) as conn:
        owner = dict(
            conn.execute(
                "SELECT images.id, identities.external_id FROM images "
                "JOIN identities ON identities.id = images.identity_id"
            ).fetchall()
        )
    best: dict[str, float] = {}
    for image_id, v in _vectors_of(home, version).items():
        d = float(np.linalg.norm(v - q))
        who = owner[image_id]
        best[who] = min(best.get(who, np.inf), d)
    return best


def _assert_memory_is_active_version(idx):
    """The loaded FAISS index holds exactly the active version's vectors."""
    assert idx.vectors is not None
    ids, vecs = idx.vectors.vectors()
    stored = _vectors_of(idx.home, idx.version)
    assert sorted(stored) == ids.tolist()
    for i, v in zip(ids, vecs):
        assert np.allclose(stored[int(i)], v)


def test_reembed_switch_rollback_and_removal(towers, tmp_path):
    from siamese_index.lifecycle import versions

    a, b = towers
    home = tmp_path / "home"
    photos = _photos(tmp_path / "photos", range(8), range(2))
    with _enrolled_home(home, a, photos) as idx:
        v_a, gen = idx.version, idx.generation
        rep = versions.reembed(idx, b)
        assert rep.changed and rep.registered and rep.embedded == 16 and rep.generation == gen + 1
        v_b = rep.to_version
        assert idx.version == v_b and idx.model_id == rep.model_id and idx.generation == gen + 1
        assert (home / "models" / str(v_b) / "config.json").is_file()  # the version keeps its own copy
        _assert_memory_is_active_version(idx)
        query = photos["P03"][1]
        [ans] = idx.identify([query])
        oracle = _oracle(home, b, v_b, query)
        assert ans.candidates and all(abs(c.distance - oracle[c.id]) < 1e-4 for c in ans.candidates)
        listed = {r.version: r for r in versions.list_versions(idx)}
        assert listed[v_a].state == "kept" and listed[v_a].embeddings == 16
        assert listed[v_b].state == "active" and listed[v_b].parent == v_a
        again = versions.reembed(idx, b)  # already serving it
        assert (
            again.changed is False and again.registered is False and again.message == f"version {v_b} is already active"
        )

        # Enrolled after the switch: embedded by B only; rollback embeds just that photo.
        extra = _photos(tmp_path / "photos", [9], [0])
        idx.enroll("P09", extra["P09"])
        back = versions.rollback(idx)
        assert back.to_version == v_a and back.reused == 16 and back.embedded == 1
        assert idx.version == v_a and idx.generation == gen + 2
        _assert_memory_is_active_version(idx)
        with pytest.raises(InvalidData, match="no parent"):
            versions.rollback(idx)

        # Removing a person removes their vectors from every version kept.
        image_ids = [im.image_id for im in idx.person("P03").images]
        idx.remove("P03")
        with _db(home) as conn:
            left = conn.execute(
                f"SELECT COUNT(*) FROM embeddings WHERE image_id IN ({','.join('?' * len(image_ids))})", image_ids
            ).fetchone()[0]
            assert left == 0
        assert idx.check().ok
    # The foreign key cascades too (a delete that bypasses remove()).
    with _db(home) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        img = conn.execute("SELECT image_id FROM embeddings WHERE model_version = ? LIMIT 1", (v_b,)).fetchone()[0]
        conn.execute("DELETE FROM images WHERE id = ?", (img,))
        assert conn.execute("SELECT COUNT(*) FROM embeddings WHERE image_id = ?", (img,)).fetchone()[0] == 0


def test_lookups_never_mix_two_models_during_activation(towers, tmp_path, monkeypatch):
    from siamese_index.index.facade import SiameseIndex
    from siamese_index.lifecycle import versions

    a, b = towers
    home = tmp_path / "home"
    photos = _photos(tmp_path / "photos", range(12), range(3))  # 36 photos: more than the catch-up
    x = _enrolled_home(home, a, photos)
    v_a = x.version
    v_b, _ = versions.register_model_dir(x, b)
    y = SiameseIndex.open(home)  # a second reader, as another process would be
    query = photos["P05"][2]
    late = _photos(tmp_path / "late", [20], [0])["P20"]
    y.identify([query])  # warm (tower loaded), so that lookups during the activation are quick
    monkeypatch.setenv(versions.SLEEP_ENV, "0.3")
    done: dict = {}
    t = threading.Thread(target=lambda: done.update(rep=versions.activate(x, v_b, batch_size=6)))
    answers = []
    t.start()
    try:
        while t.is_alive():
            before = y.model_id
            [ans] = y.identify([query])
            answers.append((before, ans))
            if len(answers) == 2:
                y.enroll("P20", late)  # enrolled mid-activation: must reach the new version too
    finally:
        t.join()
    assert done["rep"].changed and done["rep"].embedded >= 30
    [final] = y.identify([query])
    assert y.version == v_b and x.version == v_b
    answers.append((y.model_id, final))
    oracle = {v_a: _oracle(home, a, v_a, query), v_b: _oracle(home, b, v_b, query)}
    served = []
    for _, ans in answers:
        fits = [
            v for v, o in oracle.items() if all(c.id in o and abs(c.distance - o[c.id]) < 1e-4 for c in ans.candidates)
        ]
        assert len(fits) == 1, f"an answer matches no single model's vectors: {ans.candidates}"
        served.append(fits[0])
    assert served[0] == v_a and served[-1] == v_b  # the old version answered during the activation
    assert served == sorted(served, key=lambda v: v != v_a)  # never back and forth
    vb = _vectors_of(home, v_b)
    late_ids = [im.image_id for im in y.person("P20").images]
    assert late_ids and all(i in vb for i in late_ids)  # the photo enrolled meanwhile was embedded by B
    _assert_memory_is_active_version(y)
    assert y.check().ok
    x.close()
    y.close()


def _activate_worker(home, version, marker):
    os.environ["SIAMESE_INDEX_TEST_REEMBED_SLEEP"] = "0.5"
    from siamese_index.index.facade import SiameseIndex
    from siamese_index.lifecycle import versions

    idx = SiameseIndex.open(home)
    versions.activate(idx, version, batch_size=4, progress=lambda *a: Path(marker).touch())


def test_killed_activation_leaves_the_old_version_serving(towers, tmp_path):
    from siamese_index.index.facade import SiameseIndex
    from siamese_index.lifecycle import versions

    a, b = towers
    home = tmp_path / "home"
    photos = _photos(tmp_path / "photos", range(12), range(3))
    with _enrolled_home(home, a, photos) as idx:
        v_a = idx.version
        v_b, _ = versions.register_model_dir(idx, b)
    marker = tmp_path / "batch-written"
    proc = mp.get_context("spawn").Process(target=_activate_worker, args=(str(home), v_b, str(marker)))
    proc.start()
    deadline = time.monotonic() + 90
    while not marker.exists() and proc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the activation never wrote a batch"
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    assert 0 < len(_vectors_of(home, v_b)) < 36  # killed half way: unswitched leftovers

    with SiameseIndex.open(home) as idx:  # the next start cleans up
        assert idx.version == v_a
        assert len(_vectors_of(home, v_b)) == 0
        rows = {r.version: r for r in versions.list_versions(idx)}
        assert rows[v_a].state == "active" and rows[v_b].state == "candidate"
        assert idx.check().ok
        query = photos["P07"][0]
        [ans] = idx.identify([query])
        o = _oracle(home, a, v_a, query)
        assert ans.match is not None and all(abs(c.distance - o[c.id]) < 1e-4 for c in ans.candidates)
        assert versions.activate(idx, v_b).changed  # and it can be activated afterwards
        assert idx.check().ok


def test_unstored_photos_refuse_unless_dropped(towers, tmp_path):
    from siamese_index.index.facade import SiameseIndex
    from siamese_index.lifecycle import versions

    a, b = towers
    home = tmp_path / "home"
    photos = _photos(tmp_path / "photos", range(3), range(2))
    _enrolled_home(home, a, photos).close()
    with SiameseIndex.open(home, keep_images=False) as idx:  # this session keeps no copies
        idx.enroll("P05", _photos(tmp_path / "photos", [5], [0])["P05"])
        v_a = idx.version
        with pytest.raises(InvalidData, match="drop-unstored"):
            versions.reembed(idx, b)
        v_b = next(r.version for r in versions.list_versions(idx) if r.version != v_a)
        assert idx.version == v_a and len(_vectors_of(home, v_b)) == 0  # nothing switched, nothing left
        rep = versions.activate(idx, v_b, drop_unstored=True)
        assert rep.changed and [d.identity for d in rep.dropped] == ["P05"]
        assert rep.to_dict()["dropped"][0]["id"] == "P05"  # the JSON key stays "id"
        assert idx.person("P05").images == () and len(idx.person("P01").images) == 2
        assert idx.check().ok


def test_leftovers_of_an_interrupted_retrain_are_removed_on_open(towers, tmp_path):
    from siamese_index.index.facade import SiameseIndex
    from siamese_index.lifecycle import versions
    from siamese_index.storage.registry import insert_version

    a, _ = towers
    home = tmp_path / "home"
    _enrolled_home(home, a, _photos(tmp_path / "photos", range(2), range(2))).close()
    with SiameseIndex.open(home) as idx:  # as a retrain killed while writing its model directory
        v = insert_version(idx.db, model_id="seed-conv-deadbeef", dim=50, threshold=0.5, parent=idx.version, scores={})
    (home / "models" / f".{v}.x1y2").mkdir(parents=True)
    (home / "models" / f".{v}.x1y2" / "config.json").write_text("{")
    with SiameseIndex.open(home) as idx:
        assert [r.version for r in versions.list_versions(idx)] == [idx.version]
        assert list((home / "models").iterdir()) == []
        assert idx.check().ok


def test_cli_help_does_not_import_tensorflow():
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom siamese_index.cli.main import cli\n"
        "for args in (['retrain', '--help'], ['models', 'list', '--help'], ['feedback', '--help'], "
        "['reembed', '--help']):\n"
        "    r = CliRunner().invoke(cli, args)\n    assert r.exit_code == 0, r.output\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
