"""Pair sampling, identity-disjoint splits and pair files."""

import numpy as np
import pytest

from siamese_index.errors import InvalidData
from siamese_index.training.pairs import read_pairs_file, sample_pairs, split_identities


def test_pairs_are_balanced_correct_and_deterministic():
    labels = np.repeat(np.arange(10), 5)
    a, b, y = sample_pairs(labels, seed=3)
    assert y.sum() * 2 == len(y)
    assert np.all((labels[a] == labels[b]) == (y == 1))
    assert np.all(a != b)
    a2, b2, y2 = sample_pairs(labels, seed=3)
    assert np.array_equal(a, a2) and np.array_equal(b, b2) and np.array_equal(y, y2)
    assert not np.array_equal(a, sample_pairs(labels, seed=4)[0])


def test_cap_keeps_one_large_identity_from_dominating():
    labels = np.array([0] * 100 + [1, 1, 2, 2, 3, 3])
    a, b, y = sample_pairs(labels, seed=0, cap_per_identity=5)
    genuine_of_0 = np.sum((y == 1) & (labels[a] == 0))
    assert genuine_of_0 == 5 and y.sum() == 8


def test_split_is_identity_disjoint():
    labels = np.repeat(np.arange(50), 3)
    labels = np.concatenate([labels, np.arange(50, 60)])  # ten single-image identities
    train, val = split_identities(labels, 0.2, seed=1)
    assert set(train).isdisjoint(val)
    assert set(train) | set(val) == set(range(60))
    assert len(val) == 10 and all(v < 50 for v in val)  # held-out people can give genuine pairs


def test_needs_two_images_for_genuine_pairs():
    with pytest.raises(InvalidData, match="two images"):
        sample_pairs(np.arange(5))


def _img(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def test_csv_rows_and_errors_with_line_numbers(tmp_path):
    for name in ("a.png", "b.png"):
        _img(tmp_path / name)
    good = tmp_path / "pairs.csv"
    good.write_text("image_a,image_b,label\na.png,b.png,1\nb.png,a.png,0\n")
    rows = read_pairs_file(good)
    assert [(r.line, r.label) for r in rows] == [(2, 1), (3, 0)]
    bad = tmp_path / "bad.csv"
    bad.write_text("image_a,image_b,label\na.png,b.png,1\na.png,missing.png,1\na.png,b.png,yes\n../x.png,a.png,0\n")
    with pytest.raises(InvalidData) as err:
        read_pairs_file(bad)
    msg = str(err.value)
    assert "line 3" in msg and "missing.png" in msg
    assert "line 4" in msg and "label" in msg
    assert "line 5" in msg and "leaves the CSV's folder" in msg
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("image_a,label\na.png,1\n")
    with pytest.raises(InvalidData, match="missing column"):
        read_pairs_file(nocol)


def test_lfw_pairs_format(tmp_path):
    f = tmp_path / "pairs.txt"
    f.write_text("2\nAnn\t1\t2\nAnn\t1\tBob\t3\n")
    rows = read_pairs_file(f, tmp_path / "imgs")
    assert rows[0].label == 1 and rows[0].image_b.name == "Ann_0002.jpg"
    assert rows[1].label == 0 and rows[1].image_b == tmp_path / "imgs" / "Bob" / "Bob_0003.jpg"


def test_large_identities_are_sampled_without_listing_every_pair():
    labels = np.repeat(np.arange(3), 5000)  # 12.5 million pairs per identity if listed
    a, b, y = sample_pairs(labels, seed=0, cap_per_identity=50)
    assert y.sum() == 150 and len(y) == 300
    genuine = {(int(i), int(j)) for i, j, l in zip(a, b, y) if l == 1}
    assert len(genuine) == 150 and all(labels[i] == labels[j] and i < j for i, j in genuine)
