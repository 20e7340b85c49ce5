"""Genuine/impostor pair sampling, identity-disjoint splits, and pair files (CSV, LFW)."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from siamese_index.errors import InvalidData


def split_identities(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split identity labels into disjoint train and validation sets (no person in both).

    Only identities with two or more images can give genuine pairs, so the validation share is
    taken from those; the single-image identities stay in training as extra impostors.
    """
    ids, counts = np.unique(labels, return_counts=True)
    multi = ids[counts >= 2]
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(multi)
    n_val = max(1, int(round(len(multi) * val_fraction))) if val_fraction > 0 else 0
    if n_val >= len(multi):
        raise InvalidData(f"cannot hold out {n_val} of {len(multi)} identities with two or more images")
    val = np.sort(shuffled[:n_val])
    train = np.setdiff1d(ids, val)
    return train, val


def sample_pairs(
    labels: np.ndarray, n_pairs: int | None = None, seed: int = 0, cap_per_identity: int = 20
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balanced pairs (idx_a, idx_b, label) over row indices, deterministic for a seed.

    Genuine pairs: up to cap_per_identity per identity, so one large identity cannot dominate.
    Impostor pairs: as many, each joining rows of two different identities.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    by_id: dict[int, np.ndarray] = {}
    for lab in np.unique(labels):
        by_id[int(lab)] = np.flatnonzero(labels == lab)
    genuine = []
    for rows in by_id.values():
        if len(rows) < 2:
            continue
        genuine.extend(_genuine_pairs(rows, cap_per_identity, rng))
    if not genuine:
        raise InvalidData("no identity has two images: cannot make genuine pairs")
    if len(by_id) < 2:
        raise InvalidData("only one identity: cannot make impostor pairs")
    genuine = [genuine[i] for i in rng.permutation(len(genuine))]
    n_each = len(genuine) if n_pairs is None else min(len(genuine), n_pairs // 2)
    genuine = genuine[:n_each]
    impostor: list[tuple[int, int]] = []
    n = len(labels)
    while len(impostor) < n_each:
        a, b = rng.integers(0, n, size=2)
        if labels[a] != labels[b]:
            impostor.append((int(a), int(b)))
    pairs = np.array(genuine + impostor, dtype=np.int64)
    y = np.array([1] * n_each + [0] * n_each, dtype=np.int64)
    order = rng.permutation(len(y))
    return pairs[order, 0], pairs[order, 1], y[order]


LIST_PAIRS_UP_TO = 1_000_000  # below this many pairs, list them all (the sampling every model used)


def _genuine_pairs(rows: np.ndarray, cap: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Up to cap distinct pairs of one identity's rows, without listing all n(n-1)/2 of them
    when the identity is large (a Fashion-MNIST class has 6,000 images: 18 million pairs)."""
    n = len(rows)
    if n * (n - 1) // 2 <= max(LIST_PAIRS_UP_TO, 4 * cap):
        combos = list(combinations(rows.tolist(), 2))
        return [combos[i] for i in rng.permutation(len(combos))[:cap]]
    seen: set[tuple[int, int]] = set()
    while len(seen) < cap:
        i, j = rng.choice(n, size=2, replace=False)
        seen.add((int(rows[min(i, j)]), int(rows[max(i, j)])))
    return sorted(seen)


@dataclass(frozen=True)
class PairRow:
    line: int
    image_a: Path
    image_b: Path
    label: int


def read_pairs_file(path: Path, image_root: Path | None = None) -> list[PairRow]:
    """Read our CSV (image_a,image_b,label) or LFW's pairs.txt; every bad row is reported by line."""
    path = Path(path)
    if not path.is_file():
        raise InvalidData(f"{path}: no such pairs file")
    text = path.read_text(encoding="utf-8", errors="replace")
    first = text.lstrip().split("\n", 1)[0]
    if "image_a" in first and "," in first:
        return read_pairs_csv(path)
    return _read_lfw(path, image_root or path.parent / "lfw-deepfunneled")


def write_pairs_csv(path: Path, rows: Iterable[Sequence[object]]) -> Path:
    """Write (image_a, image_b, label) rows as the CSV that retrain --pairs and evaluate --pairs read."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_a", "image_b", "label"])
        writer.writerows(rows)
    return path


def read_pairs_csv(path: Path) -> list[PairRow]:
    """Our CSV (image_a,image_b,label; paths relative to its folder); every bad row is reported by line."""
    root = path.parent.resolve()
    rows, errors = [], []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"image_a", "image_b", "label"} - set(reader.fieldnames or [])
        if missing:
            raise InvalidData(f"{path}: line 1: missing column(s) {', '.join(sorted(missing))}")
        for row in reader:
            line = reader.line_num
            try:
                label = row["label"].strip() if row["label"] is not None else ""
                if label not in ("0", "1"):
                    raise ValueError(f"label must be 1 (same) or 0 (different), got {label!r}")
                paths = []
                for col in ("image_a", "image_b"):
                    rel = (row[col] or "").strip()
                    if not rel:
                        raise ValueError(f"{col} is empty")
                    p = (root / rel).resolve()
                    if not p.is_relative_to(root):
                        raise ValueError(f"{col} {rel!r} leaves the CSV's folder")
                    if not p.is_file():
                        raise ValueError(f"{col} {rel!r} does not exist")
                    paths.append(p)
                rows.append(PairRow(line, paths[0], paths[1], int(label)))
            except ValueError as e:
                errors.append(f"{path}: line {line}: {e}")
    if errors:
        raise InvalidData("\n".join(errors))
    if not rows:
        raise InvalidData(f"{path}: no pairs")
    return rows


# The old private name, while lifecycle/retrain.py still imports it.


def _read_lfw(path: Path, root: Path) -> list[PairRow]:
    """LFW format: a header line, then 'name i j' (same) or 'name1 i name2 j' (different)."""
    rows, errors = [], []
    lines = path.read_text().splitlines()

    def img(name: str, num: str) -> Path:
        return root / name / f"{name}_{int(num):04d}.jpg"

    for line_no, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) == 3:
                rows.append(PairRow(line_no, img(parts[0], parts[1]), img(parts[0], parts[2]), 1))
            elif len(parts) == 4:
                rows.append(PairRow(line_no, img(parts[0], parts[1]), img(parts[2], parts[3]), 0))
            else:
                raise ValueError(f"expected 3 or 4 fields, got {len(parts)}")
        except ValueError as e:
            errors.append(f"{path}: line {line_no}: {e}")
    if errors:
        raise InvalidData("\n".join(errors))
    return rows
