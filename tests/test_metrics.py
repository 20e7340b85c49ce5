"""Metrics against values computed by hand."""

import numpy as np
import pytest

from siamese_index.training.metrics import (
    accuracy_at,
    best_threshold,
    eer,
    impostor_far_table,
    least_regret_threshold,
    n_way_accuracy,
    one_shot_split,
    rank_k,
    roc_auc,
    tar_at_far,
)

# Genuine pairs at 0.1, 0.2, 0.6; impostors at 0.4, 0.8, 0.9.
D = np.array([0.1, 0.2, 0.6, 0.4, 0.8, 0.9])
Y = np.array([1, 1, 1, 0, 0, 0])


def test_accuracy_at_threshold():
    assert accuracy_at(D, Y, 0.5) == pytest.approx(4 / 6)  # 0.6 rejected, 0.4 accepted
    assert accuracy_at(D, Y, 0.7) == pytest.approx(5 / 6)


def test_best_threshold_is_a_midpoint():
    t, acc = best_threshold(D, Y)
    assert acc == pytest.approx(5 / 6)
    assert t in (pytest.approx(0.3), pytest.approx(0.7))


def test_least_regret_threshold_serves_both_sets_where_pooled_accuracy_would_not():
    # Set a (tight genuine pairs) is perfect only in (0.3, 0.4]; set b only in (0.55, 0.65].
    a = ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [1, 1, 1, 0, 0, 0])
    b = ([0.35, 0.45, 0.55, 0.65, 0.7, 0.75], [1, 1, 1, 0, 0, 0])
    # Pooled, three intervals tie at mean accuracy 5/6 and the first, perfect for a, wins.
    pooled, _ = best_threshold(a[0] + b[0], a[1] + b[1])
    assert pooled == pytest.approx(0.375)
    # In (0.45, 0.5] each set loses 1/6 against its own best; everywhere else one loses 2/6 or more.
    t, losses = least_regret_threshold([a, b])
    assert t == pytest.approx(0.475)
    assert losses == [pytest.approx(1 / 6), pytest.approx(1 / 6)]
    assert accuracy_at(*a, t) == pytest.approx(5 / 6) and accuracy_at(*b, t) == pytest.approx(5 / 6)


def test_least_regret_threshold_of_one_set_is_its_max_accuracy_threshold():
    rng = np.random.default_rng(0)
    d = np.round(rng.random(200), 2)  # rounded: ties between distances must be handled
    y = (d + rng.normal(0, 0.2, 200) < 0.5).astype(int)
    t, losses = least_regret_threshold([(d, y)])
    # Checked the slow way: every sample distance (and one above them all) as a threshold.
    cuts = [*np.unique(d), d.max() + 1]
    best = max(accuracy_at(d, y, c) for c in cuts)
    first = min(c for c in cuts if accuracy_at(d, y, c) == best)  # accepted pairs end just below it
    assert losses == [0.0] and accuracy_at(d, y, t) == best
    assert t < first and t > max([v for v in np.unique(d) if v < first], default=-np.inf)
    assert best_threshold(d, y) == (t, best)


def test_auc_by_hand():
    # 9 genuine/impostor comparisons; only (0.6 vs 0.4) is ordered wrongly.
    assert roc_auc(D, Y) == pytest.approx(8 / 9)
    assert roc_auc([0.5, 0.5], [1, 0]) == pytest.approx(0.5)  # a tie counts one half


def test_eer_and_tar_at_far():
    assert eer(D, Y) == pytest.approx(1 / 3)
    assert tar_at_far(D, Y, 0.0) == pytest.approx(2 / 3)
    assert tar_at_far(D, Y, 1 / 3) == pytest.approx(1.0)


def test_perfect_separation():
    d = np.array([0.1, 0.2, 0.9, 1.0])
    y = np.array([1, 1, 0, 0])
    assert roc_auc(d, y) == 1.0 and eer(d, y) == 0.0 and best_threshold(d, y)[1] == 1.0


def test_one_shot_rank_k():
    gallery = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = np.array([0, 1, 2])
    probes = np.array([[0.1, 0.0], [0.9, 0.1], [0.6, 0.0]])
    truth = np.array([0, 1, 2])  # the third is nearest to identity 1, second-nearest 0
    r = rank_k(gallery, labels, probes, truth, ks=(1, 2, 3))
    assert r == {"rank1": pytest.approx(2 / 3), "rank2": pytest.approx(2 / 3), "rank3": 1.0}


def test_one_shot_split_enrolls_first_of_each():
    gal, probes = one_shot_split(np.array([0, 0, 1, 2, 2, 2]))
    assert gal.tolist() == [0, 2, 3] and probes.tolist() == [1, 4, 5]


def test_n_way_on_separable_clusters():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(30, 8)) * 10
    labels = np.repeat(np.arange(30), 3)
    emb = centres[labels] + rng.normal(size=(90, 8)) * 0.01
    groups = ["a"] * 15 + ["b"] * 15
    r = n_way_accuracy(emb, labels, groups, 5, 50, seed=0)
    assert r["accuracy"] == 1.0 and r["tasks"] == 50
    assert n_way_accuracy(emb, labels, groups, 20, 5, seed=0)["accuracy"] is None  # no group has 20


def test_impostor_far_table_counts_only_impostors():
    emb = np.array([[0.0], [0.0], [1.0], [3.0]])
    labels = np.array([0, 0, 1, 2])
    # Impostor distances: 1, 1, 3, 3, 2 -> sorted 1, 1, 2, 3, 3.
    table = dict(impostor_far_table(emb, labels))
    assert table[0.3] == 1.0 and table[0.5] == 2.0
