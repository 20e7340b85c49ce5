"""The open-set threshold, checked against values computed by hand."""

import math

import numpy as np
import pytest

from siamese_index.index.openset import (
    OperatingPoint,
    distance_at_far,
    empirical_threshold,
    is_known,
    leave_one_identity_out_minima,
    operating_point,
    per_pair_far,
)

TABLE = [[0.0, 0.3], [1e-4, 0.5], [1e-3, 0.7], [1e-2, 0.9], [1e-1, 1.1]]


def test_per_pair_far_by_hand():
    assert per_pair_far(0.01, 1) == pytest.approx(0.01)
    # 1 - 0.99 ** (1/100) = 1 - exp(ln(0.99) / 100) = 1 - exp(-1.005033585e-4)
    #                     = 1.005033585e-4 - (1.005033585e-4) ** 2 / 2 = 1.00498308e-4
    assert per_pair_far(0.01, 100) == pytest.approx(1.00498308e-4, rel=1e-7)
    # 1 - 0.9 ** (1/2) = 0.0513167
    assert per_pair_far(0.1, 2) == pytest.approx(0.05131670, rel=1e-6)
    assert per_pair_far(0.01, 0) == pytest.approx(0.01)  # an empty gallery counts as one
    # tiny rates stay accurate (no cancellation): ~ alpha / N
    assert per_pair_far(1e-9, 10**6) == pytest.approx(1e-15, rel=1e-6)
    with pytest.raises(ValueError):
        per_pair_far(0.0, 10)


def test_distance_at_far_interpolates_in_log_far():
    assert distance_at_far(TABLE, 1e-2)[0] == pytest.approx(0.9)
    assert distance_at_far(TABLE, 1e-3)[0] == pytest.approx(0.7)
    # half-way in log10 between 1e-3 and 1e-2 -> half-way in distance
    assert distance_at_far(TABLE, 10**-2.5)[0] == pytest.approx(0.8)
    # log10(1.00498308e-4) = -4 + 0.00215876; 0.5 + 0.2 * 0.00215876 = 0.50043175
    d, note = distance_at_far(TABLE, 1.00498308e-4)
    assert d == pytest.approx(0.50043175, abs=1e-7) and note == ""


def test_distance_at_far_outside_the_table():
    d, note = distance_at_far(TABLE, 1e-6)  # below resolution: the far-0 point
    assert d == pytest.approx(0.3) and "resolution" in note
    d, note = distance_at_far(TABLE[1:], 1e-6)  # no far-0 point: the smallest point, said so
    assert d == pytest.approx(0.5) and "may be higher" in note
    d, note = distance_at_far(TABLE, 0.5)
    assert d == pytest.approx(1.1) and "above" in note
    with pytest.raises(ValueError):
        distance_at_far([[0.1, 0.5], [0.01, 0.9]], 0.05)  # far decreasing with distance


def test_operating_point_uses_table_and_never_exceeds_pair_threshold():
    op = operating_point(1.0, 1, 0.01, TABLE)
    assert isinstance(op, OperatingPoint)
    assert op.threshold == pytest.approx(0.9) and op.gallery_size == 1 and op.target_far == 0.01
    assert "impostor table" in op.method
    op = operating_point(1.0, 100, 0.01, TABLE)
    assert op.threshold == pytest.approx(0.50043175, abs=1e-7)
    op = operating_point(0.6, 1, 0.01, TABLE)  # the table says 0.9: capped by the pair threshold
    assert op.threshold == pytest.approx(0.6) and "pair threshold" in op.method.split("using")[-1]


def test_operating_point_without_table_falls_back_and_says_so():
    op = operating_point(0.75, 400, 0.01, None)
    assert op.threshold == pytest.approx(0.75)
    assert "no impostor table" in op.method
    op = operating_point(None, 10, 0.01, None)
    assert op.threshold is None and "not calibrated" in op.method


def test_leave_one_identity_out_minima_by_hand():
    # identity 0 at x=0 and x=1; identity 1 at x=3; identity 2 at x=10 (1-D vectors)
    v = np.array([[0.0], [1.0], [3.0], [10.0]])
    labels = ["a", "a", "b", "c"]
    m = leave_one_identity_out_minima(v, labels, chunk=2)
    assert m.tolist() == pytest.approx([2.0, 2.0, 7.0])  # a: 1->3; b: 3->1; c: 10->3
    assert np.isinf(leave_one_identity_out_minima(v[:2], ["a", "a"])).all()


def test_empirical_check_applies_from_30_identities():
    minima = np.arange(1, 41) / 10.0  # 0.1 .. 4.0, 40 identities
    # lower 1% quantile of 40 values: position 0.39 -> index 0 -> 0.1; 10%: 3.9 -> index 3 -> 0.4
    assert empirical_threshold(minima, 0.01) == pytest.approx(0.1)
    assert empirical_threshold(minima, 0.10) == pytest.approx(0.4)
    op = operating_point(1.0, 40, 0.10, None, minima=minima)
    assert op.threshold == pytest.approx(0.4) and "gallery check" in op.method
    op = operating_point(1.0, 29, 0.10, None, minima=minima[:29])  # too small a gallery
    assert op.threshold == pytest.approx(1.0) and "skipped" in op.method
    op = operating_point(0.3, 40, 0.10, None, minima=minima)  # the pair threshold is smaller
    assert op.threshold == pytest.approx(0.3)


def test_margin_rule():
    assert is_known(0.2, 0.5, 0.4, margin=0.0)
    assert not is_known(0.45, None, 0.4)
    assert is_known(0.2, 0.35, 0.4, margin=0.1)
    assert not is_known(0.2, 0.25, 0.4, margin=0.1)
    assert is_known(0.2, None, 0.4, margin=0.1)  # a single identity: no second to compare
    assert operating_point(0.5, 3, margin=0.05).margin == 0.05
    assert math.isclose(operating_point(0.5, 3).to_dict()["threshold"], 0.5)


def test_gallery_check_samples_strangers_in_large_galleries():
    import numpy as np

    from siamese_index.index.openset import leave_one_identity_out_minima

    x = np.random.default_rng(0).normal(size=(300, 16)).astype("float32")
    labels = np.arange(300) // 3  # 100 identities
    full = leave_one_identity_out_minima(x, labels)
    sampled = leave_one_identity_out_minima(x, labels, max_identities=50, seed=0)
    chosen = np.sort(np.random.default_rng(0).choice(100, 50, replace=False))
    assert len(full) == 100 and len(sampled) == 50
    # Each sampled stranger's minimum is exact: computed against the whole gallery.
    assert np.allclose(sampled, full[chosen], atol=1e-5)
