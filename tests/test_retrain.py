"""retrain: pair-file validation, fine-tuning, the held-out comparison and its guard, feedback."""

import json
import sqlite3
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from siamese_index.errors import InvalidData, NotFound
from siamese_index.imaging.synthetic import identity_image
from siamese_index.training.pairs import write_pairs_csv

from .tiny_towers import photos, tiny_towers


@pytest.fixture(scope="module")
def tower():
    return tiny_towers()[0]


@pytest.fixture
def idx(tower, tmp_path):
    from siamese_index.index.facade import SiameseIndex

    index = SiameseIndex.open(tmp_path / "home", model=tower)
    for pid, files in photos(tmp_path / "enrolled", range(6), range(2)).items():
        index.enroll(pid, files)
    yield index
    index.close()


def _pairs_csv(folder: Path, people: int, per_person: int = 5, offset: int = 100, seed: int = 0) -> Path:
    """Photos of `people` new identities and a CSV of all their genuine pairs plus as many impostors."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {p: [] for p in range(people)}
    for p in range(people):
        for v in range(per_person):
            rel = f"img/p{p}_{v}.png"
            (folder / "img").mkdir(exist_ok=True)
            identity_image(offset + p, v, 32).save(folder / rel)
            files[p].append(rel)
    rows = [(a, b, 1) for p in files for a, b in combinations(files[p], 2)]
    rng = np.random.default_rng(seed)
    n_gen = len(rows)
    while len(rows) < 2 * n_gen:
        p, q = rng.choice(people, 2, replace=False)
        rows.append((files[p][rng.integers(per_person)], files[q][rng.integers(per_person)], 0))
    return write_pairs_csv(folder / "new_pairs.csv", rows)


def _versions(home):
    with sqlite3.connect(Path(home) / "index.db") as conn:
        return conn.execute("SELECT id, parent, active, activated_at FROM model_versions ORDER BY id").fetchall()


def _never(*_a, **_k):
    raise AssertionError("training must not start")


def _collapse(value: float):
    """A 'fine-tune' that ruins the tower: every image gets the same vector (the guard must catch it)."""

    def tune(tower, *_a, **_k):
        weights = [np.zeros_like(w) for w in tower.get_weights()]
        weights[-1][:] = value  # the last bias: a constant output, different per value
        tower.set_weights(weights)
        return [{"epoch": 1, "loss": 9.9}]

    return tune


def _nudge(tower, *_a, **_k):
    rng = np.random.default_rng(3)
    tower.set_weights([w + rng.normal(0, 1e-3, w.shape).astype(w.dtype) for w in tower.get_weights()])
    return []


# -- the pairs file --------------------------------------------------------------------------------
def test_bad_rows_are_reported_with_line_numbers_before_training(idx, tmp_path):
    from siamese_index.lifecycle.retrain import retrain

    d = tmp_path / "csv"
    d.mkdir()
    identity_image(1, 0).save(d / "a.png")
    identity_image(2, 0).save(d / "b.png")
    (d / "junk.png").write_bytes(b"this is not an image")
    (tmp_path / "outside.png").write_bytes((d / "a.png").read_bytes())
    before = _versions(idx.home)

    bad = d / "bad.csv"
    bad.write_text(
        "image_a,image_b,label\na.png,b.png,1\na.png,b.png,2\na.png,../outside.png,0\na.png,missing.png,1\na.png,,0\n"
    )
    with pytest.raises(InvalidData) as e:
        retrain(idx, bad, _fine_tune=_never)
    msg = str(e.value)
    assert "line 3" in msg and "label" in msg
    assert "line 4" in msg and "leaves the CSV's folder" in msg
    assert "line 5" in msg and "does not exist" in msg
    assert "line 6" in msg and "empty" in msg
    assert "line 2" not in msg

    unreadable = d / "unreadable.csv"
    unreadable.write_text("image_a,image_b,label\na.png,b.png,0\nb.png,junk.png,1\n")
    with pytest.raises(InvalidData, match=r"line 3: image_b 'junk.png' is not a usable image"):
        retrain(idx, unreadable, _fine_tune=_never)

    no_column = d / "nocol.csv"
    no_column.write_text("image_a,label\na.png,1\n")
    with pytest.raises(InvalidData, match=r"line 1: missing column\(s\) image_b"):
        retrain(idx, no_column, _fine_tune=_never)
    assert _versions(idx.home) == before  # nothing recorded

    r = CliRunner().invoke(
        __import__("cli.main", fromlist=["cli"]).cli, ["retrain", "--pairs", str(bad), "--home", str(idx.home)]
    )
    assert r.exit_code == 1 and "line 3" in r.output and "line 5" in r.output and "Traceback" not in r.output


# -- fine-tuning and the guard ------------------------------------------------------------------------
def test_retrain_fine_tunes_compares_and_activates(idx, tmp_path):
    from siamese_index.lifecycle import versions
    from siamese_index.lifecycle.retrain import RetrainOptions, retrain

    parent = idx.version
    pairs = _pairs_csv(tmp_path / "new", people=14)
    lines = []
    rep = retrain(idx, pairs, options=RetrainOptions(epochs=2, learning_rate=1e-3, seed=0), progress=lines.append)
    c = rep.comparison
    assert c.judged and c.held_out_genuine >= 10 and c.held_out_impostor >= 10
    assert rep.pairs.csv == rep.pairs.total == rep.pairs.train + rep.pairs.held_out + rep.pairs.dropped_crossing
    assert c.old is not None and c.new is not None and c.worse is not None
    for s in (c.old, c.new):  # both scores, whatever the decision
        assert 0 <= s.auc <= 1 and s.accuracy is not None
    assert c.new.threshold == rep.threshold and len(rep.history) == 2
    assert any("epoch 2/2" in line for line in lines)
    v = rep.version
    cfg = json.loads((idx.home / "models" / str(v) / "config.json").read_text())
    assert cfg["model_id"] == rep.model_id and cfg["threshold"] == rep.threshold
    assert cfg["training"]["parent_model_id"] == rep.parent.model_id
    assert cfg["metrics"]["retrain"] == c.to_dict()  # the comparison, verdict included, kept with the model
    row = {r.version: r for r in versions.list_versions(idx)}[v]
    assert row.parent == parent and row.held_out is not None and row.held_out.verdict == c.verdict
    shown = versions.show_version(idx, v)
    assert shown.scores["comparison"]["old"]["auc"] == c.old.auc
    if c.worse:
        assert not rep.activated and idx.version == parent and "not activated" in rep.decision
    else:
        assert rep.activated and idx.version == v and rep.activation is not None and rep.activation.embedded == 12
        assert idx.check().ok


def test_a_worse_tower_is_not_activated_unless_forced(idx, tmp_path):
    from siamese_index.lifecycle.retrain import RetrainOptions, retrain

    parent = idx.version
    pairs = _pairs_csv(tmp_path / "new", people=14)
    rep = retrain(idx, pairs, options=RetrainOptions(epochs=1), _fine_tune=_collapse(0.1))
    c = rep.comparison
    assert c.judged and c.worse and c.old is not None and c.new is not None and c.new.auc < c.old.auc
    assert not rep.activated and "not activated" in rep.decision and "--force" in rep.decision
    assert idx.version == parent
    rows = {r[0]: r for r in _versions(idx.home)}
    assert rows[rep.version][2] == 0 and rows[rep.version][3] is None  # kept as a candidate
    forced = retrain(idx, pairs, options=RetrainOptions(epochs=1, force=True), _fine_tune=_collapse(0.2))
    assert forced.activated and "force" in forced.decision and idx.version == forced.version
    fc = forced.comparison
    assert fc.old is not None and fc.new is not None and fc.old.auc > fc.new.auc  # both shown


def test_too_few_held_out_pairs_is_said_plainly(idx, tmp_path):
    from siamese_index.lifecycle.retrain import RetrainOptions, retrain

    parent = idx.version
    pairs = _pairs_csv(tmp_path / "few", people=3, per_person=3)
    rep = retrain(idx, pairs, options=RetrainOptions(epochs=1), _fine_tune=_nudge)
    c = rep.comparison
    assert not c.judged and c.reason is not None and "too few held-out pairs to judge" in c.reason
    assert rep.pairs.train == rep.pairs.total and "optimistic" in rep.threshold_method
    assert not rep.activated and idx.version == parent
    assert c.old is None and "old" not in c.to_dict() and "worse" not in c.to_dict()  # no scores to show


# -- pairs from the home: enrolled photos and feedback ------------------------------------------------
def test_feedback_and_pairs_from_the_home(idx, tmp_path):
    from siamese_index.lifecycle import feedback
    from siamese_index.lifecycle.pairsets import PairSet, add_enrolled_pairs, add_feedback_pairs, split_pairs
    from siamese_index.towers.embedder import KerasEmbedder

    q = tmp_path / "q.png"
    identity_image(2, 7, 32).save(q)  # a new photo of P02
    got = feedback.record(idx, q, is_id="P02")
    assert got.label == "is" and got.identity == "P02" and got.distance is not None and not got.replaced
    again = feedback.record(idx, q, is_not="P02")  # the same photo about the same person: replaced
    assert again.replaced and again.feedback_id == got.feedback_id
    feedback.record(idx, q, is_id="P02")
    feedback.record(idx, q, is_not="P04")
    with pytest.raises(NotFound):
        feedback.record(idx, q, is_id="nobody")
    with pytest.raises(InvalidData, match="exactly one"):
        feedback.record(idx, q, is_id="P02", is_not="P04")
    assert [(r.identity, r.label) for r in feedback.list_feedback(idx)] == [("P02", "is"), ("P04", "is-not")]

    ps = PairSet(KerasEmbedder(idx.model_dir))
    add_enrolled_pairs(idx, ps, per_identity=10, seed=0)
    add_feedback_pairs(idx, ps, per_query=5)
    assert ps.counts["enrolled"] == 12 and ps.counts["feedback"] == 4  # 6 genuine + 6 impostor; 2 + 2
    fb = [p for p in ps.pairs if p.origin.startswith("feedback")]
    assert sorted(p.label for p in fb) == [0, 0, 1, 1]
    # The query joined P02's identity; P04's photos stayed another one.
    qkey = next(k for k, n in ps.names.items() if n.startswith("feedback"))
    p02 = next(k for k, n in ps.names.items() if n.startswith("P02/"))
    p04 = next(k for k, n in ps.names.items() if n.startswith("P04/"))
    assert ps.graph.find(qkey) == ps.graph.find(p02) != ps.graph.find(p04)
    train, held, crossing, _ = split_pairs(ps, 0.5, seed=0)
    comp = {k: ps.graph.find(k) for k in ps.arrays}
    held_ids = {comp[p.a] for p in held} | {comp[p.b] for p in held}
    assert held and all(comp[p.a] not in held_ids and comp[p.b] not in held_ids for p in train)

    idx.remove("P02")  # removing a person removes their feedback too
    assert [r.identity for r in feedback.list_feedback(idx)] == ["P04"]

    cli = __import__("cli.main", fromlist=["cli"]).cli
    r = CliRunner().invoke(cli, ["feedback", str(q), "--is-not", "P05", "--home", str(idx.home), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["label"] == "is-not"
    r = CliRunner().invoke(cli, ["models", "list", "--home", str(idx.home), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["versions"][0]["state"] == "active"


# -- the old-vs-new judge, on hand-made distances ----------------------------------------------------
_Y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
_FOLD = np.array([0, 0, 1, 1, 0, 0, 1, 1])
_SEPARATED = np.array([0.1, 0.2, 0.15, 0.25, 0.8, 0.9, 0.85, 0.95])  # every genuine pair closer than every impostor
_MIXED = np.array([0.1, 0.7, 0.15, 0.75, 0.5, 0.9, 0.55, 0.95])  # two genuine pairs farther than two impostors


def test_the_judge_calls_a_tower_worse_only_beyond_the_tolerances():
    from siamese_index.lifecycle.judge import Tolerances, judge

    better = judge(_MIXED, _SEPARATED, _Y, old_threshold=0.6, new_threshold=0.5, fold=_FOLD)
    assert better.new.auc == 1.0 and better.old.auc == 0.75 and better.worse == ()
    assert better.new.accuracy == 1.0 and better.old.accuracy == 0.5  # each at its own threshold
    assert better.new.mean_genuine_distance == pytest.approx(0.175)
    assert better.new.mean_impostor_distance == pytest.approx(0.875)

    worse = judge(_SEPARATED, _MIXED, _Y, old_threshold=0.5, new_threshold=0.6, fold=_FOLD)
    assert len(worse.worse) == 2 and worse.worse[0].startswith("held-out AUC 0.7500 < 1.0000")
    assert worse.worse[1].startswith("held-out 2-fold accuracy")
    # The same drop within generous tolerances is not worse; without folds there is no 2-fold score.
    lenient = judge(_SEPARATED, _MIXED, _Y, old_threshold=0.5, new_threshold=0.6, tolerances=Tolerances(0.25, 0.5))
    assert lenient.worse == () and lenient.new.accuracy_2fold is None
    # A collapsed tower (one distance for every pair) separates nothing; without a threshold, no accuracy.
    flat = judge(_SEPARATED, np.full(8, 0.3), _Y, old_threshold=0.5, new_threshold=None)
    assert flat.new.auc <= 0.5 and flat.worse[0].startswith("held-out AUC") and flat.new.accuracy is None


def test_two_fold_accuracy_needs_both_labels_in_each_fold():
    from siamese_index.lifecycle.judge import two_fold_accuracy

    assert two_fold_accuracy(_SEPARATED, _Y, _FOLD) == 1.0
    one_sided = np.array([0, 0, 0, 0, 1, 1, 1, 1])  # fold 0 has only genuine pairs
    assert two_fold_accuracy(_SEPARATED, _Y, one_sided) is None


@pytest.mark.parametrize(
    ("judged", "worse", "force", "activate", "go", "words"),
    [
        (True, (), False, True, True, "activated: not worse on the held-out pairs"),
        (True, ("held-out AUC 0.5 < 0.9",), False, True, False, "not activated: the new tower is worse: held-out AUC"),
        (True, ("held-out AUC 0.5 < 0.9",), True, True, True, "activated with --force although worse"),
        (False, (), False, True, False, "not activated: too few held-out pairs to judge"),
        (False, (), True, True, True, "activated with --force, unjudged"),
        (True, (), False, False, False, "recorded, not activated (--no-activate); verdict: not worse"),
        (True, ("x",), True, False, False, "recorded, not activated (--no-activate); verdict: worse: x"),
    ],
)
def test_the_decision_follows_the_verdict(judged, worse, force, activate, go, words):
    from siamese_index.lifecycle.judge import decide

    d = decide(judged, worse, force=force, activate=activate)
    assert d.activate is go and d.decision.startswith(words)
    assert d.verdict == (
        "not judged: too few held-out pairs"
        if not judged
        else ("worse: " + "; ".join(worse) if worse else "not worse on the held-out pairs")
    )


def test_reports_keep_the_json_keys_the_cli_printed():
    from siamese_index.types import ActivationReport, DroppedImage

    idle = ActivationReport(
        changed=False, from_version=2, to_version=2, model_id="m", images=3, reused=3, message="already"
    )
    assert list(idle.to_dict()) == [
        "changed", "from", "to", "model_id", "images", "reused", "embedded", "caught_up", "dropped",
        "generation", "seconds", "message",
    ]  # fmt: skip
    switched = ActivationReport(
        changed=True,
        from_version=1,
        to_version=2,
        model_id="m",
        images=3,
        reused=1,
        embedded=2,
        dropped=(DroppedImage(7, "E1", "a.jpg", "no stored copy"),),
        generation=5,
        registered=True,
    )
    d = switched.to_dict()
    assert "message" not in d and d["registered"] is True and d["from"] == 1 and d["to"] == 2
    assert d["dropped"] == [{"image_id": 7, "id": "E1", "source_name": "a.jpg", "reason": "no stored copy"}]
    assert switched.to_version == 2 and switched.message is None
