"""The old-vs-new judge of a retrain: scores of both towers on the same held-out pairs, whether
the new one is worse, and what the run does about it.

Pure functions on distances and labels (no TensorFlow, no home), so that a verdict can be
checked on hand-made distances. The held-out pairs are of identities the new tower was not
trained on (retrain.split_pairs); label 1 = same person, "same" means distance < threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from siamese_index.training.metrics import accuracy_at, best_threshold, roc_auc
from siamese_index.types import ModelScores

NOTE = (
    "accuracy: each model at its own threshold (the new one is calibrated on these same pairs, so "
    "optimistic); accuracy_2fold: threshold chosen on one half of the held-out identities, measured "
    "on the other (fair to both)"
)


@dataclass(frozen=True)
class Tolerances:
    """How much worse the new tower may score before it is called worse."""

    auc: float = 0.005
    accuracy: float = 0.01


@dataclass(frozen=True)
class Judgement:
    """Both towers' scores on the held-out pairs and why the new one is worse (empty: it is not)."""

    old: ModelScores
    new: ModelScores
    worse: tuple[str, ...]


@dataclass(frozen=True)
class Decision:
    """The verdict (what the held-out pairs say, kept with the version) and the decision (what
    this run does about it)."""

    verdict: str
    decision: str
    activate: bool


def two_fold_accuracy(d: np.ndarray, y: np.ndarray, fold: np.ndarray) -> float | None:
    """Threshold chosen on one fold of identities, accuracy measured on the other, averaged.
    fold: 0 or 1 per pair (-1: a pair joining the two folds, used by neither). None when a fold
    lacks genuine or impostor pairs."""
    accs = []
    for f in (0, 1):
        cal, test = fold == f, fold == 1 - f
        for part in (cal, test):
            if not (y[part] == 1).any() or not (y[part] == 0).any():
                return None
        t, _ = best_threshold(d[cal], y[cal])
        accs.append(accuracy_at(d[test], y[test], t))
    return float(np.mean(accs))


def model_scores(d: np.ndarray, y: np.ndarray, own_threshold: float | None, fold: np.ndarray | None) -> ModelScores:
    """One tower's scores on the held-out pairs (distances d, labels y)."""
    return ModelScores(
        auc=roc_auc(d, y),
        threshold=own_threshold,
        accuracy=None if own_threshold is None else accuracy_at(d, y, own_threshold),
        accuracy_2fold=None if fold is None else two_fold_accuracy(d, y, fold),
        mean_genuine_distance=float(d[y == 1].mean()) if (y == 1).any() else None,
        mean_impostor_distance=float(d[y == 0].mean()) if (y == 0).any() else None,
    )


def worse_reasons(old: ModelScores, new: ModelScores, tol: Tolerances) -> tuple[str, ...]:
    """Why `new` is worse than `old`: its AUC dropped by more than tol.auc, or its 2-fold
    accuracy (when both have one) by more than tol.accuracy. Empty when it is not worse."""
    worse = []
    if not (new.auc >= old.auc - tol.auc):  # a NaN AUC counts as worse
        worse.append(f"held-out AUC {new.auc:.4f} < {old.auc:.4f}")
    if (
        old.accuracy_2fold is not None
        and new.accuracy_2fold is not None
        and new.accuracy_2fold < old.accuracy_2fold - tol.accuracy
    ):
        worse.append(f"held-out 2-fold accuracy {new.accuracy_2fold:.4f} < {old.accuracy_2fold:.4f}")
    return tuple(worse)


def judge(
    d_old: np.ndarray,
    d_new: np.ndarray,
    y: np.ndarray,
    *,
    old_threshold: float | None,
    new_threshold: float | None,
    fold: np.ndarray | None = None,
    tolerances: Tolerances = Tolerances(),
) -> Judgement:
    """Old and new towers on the same held-out pairs: each at its own threshold, and fairly by
    2-fold (see two_fold_accuracy); the new one is worse as worse_reasons() says."""
    old = model_scores(np.asarray(d_old, np.float64), np.asarray(y), old_threshold, fold)
    new = model_scores(np.asarray(d_new, np.float64), np.asarray(y), new_threshold, fold)
    return Judgement(old, new, worse_reasons(old, new, tolerances))


def decide(judged: bool, worse: tuple[str, ...], *, force: bool, activate: bool = True) -> Decision:
    """What a retrain does with the new tower: activate it when judged and not worse; when
    unjudged or worse, only with force; never with activate=False (--no-activate)."""
    if not judged:
        verdict = "not judged: too few held-out pairs"
        decision = (
            "activated with --force, unjudged"
            if force
            else "not activated: too few held-out pairs to judge (--force activates it anyway)"
        )
        go = force
    elif worse:
        verdict = "worse: " + "; ".join(worse)
        decision = (
            f"activated with --force although {verdict}"
            if force
            else f"not activated: the new tower is {verdict} (--force activates it anyway)"
        )
        go = force
    else:
        verdict = "not worse on the held-out pairs"
        decision, go = f"activated: {verdict}", True
    if not activate and go:
        decision, go = f"recorded, not activated (--no-activate); verdict: {verdict}", False
    return Decision(verdict, decision, go)
