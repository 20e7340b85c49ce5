"""Measure a model: verification at its pair threshold, closed-set one-shot rank-1/5, N-way tasks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from siamese_index.training.datasets import Dataset
from siamese_index.training.metrics import n_way_accuracy, one_shot_split, rank_k, verification_report
from siamese_index.training.pairs import PairRow, sample_pairs

if TYPE_CHECKING:
    from siamese_index.towers.embedder import FileEmbedder


@dataclass(frozen=True)
class EvaluatedPairs:
    """The verified pairs themselves, for figures; never part of the JSON report."""

    distances: np.ndarray
    labels: np.ndarray  # 1 = same identity
    # Rows of the evaluated data set's x for each pair (sampled pairs only; None for given pairs,
    # whose images are files outside the data set).
    rows_a: np.ndarray | None = None
    rows_b: np.ndarray | None = None


@dataclass(frozen=True)
class EvaluationReport:
    """What `evaluate` measured. to_dict() is the JSON the CLI prints; `pairs` stays in memory."""

    model_id: str
    threshold: float | None  # the model's pair threshold
    verification: dict[str, Any] | None = None
    one_shot: dict[str, Any] | None = None
    n_way: dict[str, Any] | None = None
    skipped: tuple[dict[str, str], ...] = ()  # {"path", "reason"} per file that could not be used
    pairs: EvaluatedPairs | None = field(default=None, repr=False, compare=False, metadata={"json": False})

    def to_dict(self) -> dict[str, Any]:
        """The report's JSON keys; sections that were not measured are left out."""
        out: dict[str, Any] = {"model_id": self.model_id, "threshold": self.threshold}
        for key in ("verification", "one_shot", "n_way"):
            value = getattr(self, key)
            if value is not None:
                out[key] = dict(value)
        out["skipped"] = [dict(s) for s in self.skipped]
        return out


def evaluate(
    embedder: FileEmbedder,
    data: Dataset | None,
    *,
    seed: int = 0,
    cap_per_identity: int = 20,
    pair_rows: Sequence[PairRow] | None = None,
    n_way: int | None = None,
    tasks: int = 400,
) -> EvaluationReport:
    """Verification (given pairs, else pairs sampled from data), one-shot rank-1/5, optional N-way.

    Given pairs are verified instead of sampled ones; data, when given, also gives the one-shot
    and N-way measures.
    """
    verification: dict[str, Any] | None = None
    pairs: EvaluatedPairs | None = None
    skipped: list[dict[str, str]] = []
    if pair_rows is not None:
        verification, pairs, skipped = verify_given_pairs(embedder, pair_rows)
    one_shot: dict[str, Any] | None = None
    n_way_result: dict[str, Any] | None = None
    if data is not None:
        emb = embedder.embed_batch(data.x)
        if pair_rows is None:
            verification, pairs = verify_sampled_pairs(emb, data.labels, embedder.threshold, seed, cap_per_identity)
        one_shot = one_shot_report(emb, data.labels)
        if n_way:
            n_way_result = n_way_accuracy(emb, data.labels, data.groups, n_way, tasks, seed)
        skipped = [{"path": p, "reason": r} for p, r in data.skipped] + skipped
    return EvaluationReport(
        model_id=embedder.model_id,
        threshold=embedder.threshold,
        verification=verification,
        one_shot=one_shot,
        n_way=n_way_result,
        skipped=tuple(skipped),
        pairs=pairs,
    )


def verify_given_pairs(
    embedder: FileEmbedder, pair_rows: Sequence[PairRow]
) -> tuple[dict[str, Any], EvaluatedPairs, list[dict[str, str]]]:
    """Verify listed pairs of image files; pairs with an unreadable image are left out (and listed)."""
    files = sorted({str(p) for r in pair_rows for p in (r.image_a, r.image_b)})
    vecs, ok, failed = embedder.embed_files(files)
    where = {p: i for i, p in enumerate(ok)}
    keep = [r for r in pair_rows if str(r.image_a) in where and str(r.image_b) in where]
    a = np.array([where[str(r.image_a)] for r in keep], dtype=np.int64)
    b = np.array([where[str(r.image_b)] for r in keep], dtype=np.int64)
    y = np.array([r.label for r in keep], dtype=np.int64)
    d = np.linalg.norm(vecs[a] - vecs[b], axis=1)
    report = verification_report(d, y, embedder.threshold)
    report["source"] = "given pairs"
    return report, EvaluatedPairs(d, y), [{"path": p, "reason": r} for p, r in failed]


def verify_sampled_pairs(
    emb: np.ndarray, labels: np.ndarray, threshold: float | None, seed: int, cap_per_identity: int
) -> tuple[dict[str, Any], EvaluatedPairs]:
    """Verify balanced pairs sampled from embedded rows (at most cap genuine pairs per identity)."""
    a, b, y = sample_pairs(labels, seed=seed, cap_per_identity=cap_per_identity)
    d = np.linalg.norm(emb[a] - emb[b], axis=1)
    report = verification_report(d, y, threshold)
    report["source"] = f"sampled pairs (seed {seed}, at most {cap_per_identity} genuine per identity)"
    return report, EvaluatedPairs(d, y, a, b)


def one_shot_report(emb: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Closed-set one-shot identification: each identity's first image enrolled, the rest probes."""
    gal, probes = one_shot_split(labels)
    return {
        "identities": int(len(gal)),
        "probes": int(len(probes)),
        **rank_k(emb[gal], labels[gal], emb[probes], labels[probes]),
    }
