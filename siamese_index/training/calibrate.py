"""Choose a model's pair threshold again, on people from the cameras it will serve.

`train` calibrates the pair threshold on its own validation people, photographed like its training
set. A threshold transfers imperfectly to another camera: ORL's evenly lit studio photos of
one person vary less than LFW's press photos, so their genuine pairs sit closer together
(median distance 0.17 against 0.26 for faces-v5) while impostor distances barely move, and the
threshold that maximises accuracy there is lower. `calibrate` picks it again on
identity-labelled photos of people the tower never trained on, from one or more sets (cameras)
that each weigh the same, and writes a new model directory: the same weights (so the same model
id and the same vectors in any index), the new pair threshold, a new impostor table for the
unknown-person decision (the identification threshold reads it), and a record of how they were
chosen.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from siamese_index.errors import InvalidData
from siamese_index.imaging.loading import Preprocessing
from siamese_index.towers.modeldir import ModelConfig, same_source, write_model_dir
from siamese_index.training.datasets import Dataset, load_dataset
from siamese_index.training.metrics import (
    accuracy_at,
    best_threshold,
    impostor_far_table,
    least_regret_threshold,
    verification_report,
)
from siamese_index.training.pairs import sample_pairs

if TYPE_CHECKING:
    from siamese_index.towers.embedder import KerasEmbedder


@dataclass
class CalibrationSet:
    """Photos of identities from one data folder; source is recorded as given."""

    source: str
    data: Dataset


def held_out_patterns(config: ModelConfig) -> tuple[str, ...]:
    """Shell patterns matching exactly the identities the model held out of its training."""
    names = config.training.get("val_identity_names") or []
    # Names are matched literally: escape the shell-pattern characters they may contain.
    return tuple(n.replace("[", "[[]").replace("*", "[*]").replace("?", "[?]") for n in names)


def check_never_trained_on(config: ModelConfig, cal: CalibrationSet, model_name: str) -> None:
    """Refuse identities the model trained on: a threshold chosen on them would be too loose."""
    if not same_source(config.training.get("source"), cal.source):
        return
    held = set(config.training.get("val_identity_names") or [])
    trained = sorted(set(cal.data.names) - held)
    if trained:
        raise InvalidData(
            f"{cal.source}: {len(trained)} of its identities (e.g. {trained[0]}) are people {model_name} "
            f"trained on; calibrate on people it never saw (--held-out keeps only the ones it held out)"
        )


def load_calibration_sets(
    config: ModelConfig,
    data_dirs: Sequence[Path | str],
    preprocessing: Preprocessing | None,
    *,
    model_name: str,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    held_out: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[CalibrationSet]:
    """One calibration set per folder; with held_out, the folder the model trained on keeps only
    the identities it held out of training (the other folders are taken whole)."""
    source = config.training.get("source")
    if held_out and not any(same_source(source, str(d)) for d in data_dirs):
        raise InvalidData(f"--held-out: none of the folders is the one {model_name} trained on ({source})")
    sets = []
    for data_dir in data_dirs:
        keep = tuple(include)
        if held_out and same_source(source, str(data_dir)):
            patterns = held_out_patterns(config)
            if not patterns:
                raise InvalidData(f"{model_name} records no held-out identities")
            keep += patterns
        data = load_dataset(data_dir, preprocessing, progress=progress, include=keep, exclude=exclude)
        sets.append(CalibrationSet(str(data_dir), data))
    return sets


@dataclass(frozen=True)
class _Measured:
    """One set's balanced pairs under the model: distances and labels (1 = same)."""

    cal: CalibrationSet
    distances: np.ndarray
    labels: np.ndarray


def calibrate(
    embedder: KerasEmbedder,
    sets: list[CalibrationSet],
    out_dir: Path,
    *,
    seed: int = 0,
    cap_per_identity: int = 20,
    overwrite: bool = False,
) -> ModelConfig:
    """Choose the model's pair threshold on balanced pairs from each set; write a new model directory.

    One set: its max-accuracy threshold. Several (cameras): the threshold at which the set
    that loses most accuracy against its own best threshold loses least, so no camera is
    given up for another. Each set contributes as many pairs as the smallest one. Returns the
    written config; config.training["calibration"] says per set how accuracy moved from the
    old threshold to the new one, and what it gives up against its own best.
    """
    if not sets:
        raise InvalidData("calibration needs at least one set of identities")
    config = embedder.config
    for cal in sets:
        check_never_trained_on(config, cal, str(embedder.model_dir))
    n = min(_pair_count(cal, seed, cap_per_identity) for cal in sets)
    widest = max(sets, key=lambda c: c.data.n_identities)
    measured: list[_Measured] = []
    table: list[list[float]] = []
    for cal in sets:
        emb = embedder.embed_batch(cal.data.x)
        if cal is widest:
            table = impostor_far_table(emb, cal.data.labels, seed=seed)
        a, b, y = sample_pairs(cal.data.labels, n_pairs=n, seed=seed, cap_per_identity=cap_per_identity)
        measured.append(_Measured(cal, np.linalg.norm(emb[a] - emb[b], axis=1), y))
    threshold, losses = least_regret_threshold([(m.distances, m.labels) for m in measured])
    new = _calibrated_config(config, measured, losses, float(threshold), seed, cap_per_identity)
    # The open-set threshold (index/openset.py) reads its far tail of impostor distances from
    # this table, where a small shift with the camera matters. Impostors within one set only:
    # across sets they are too easy.
    new.metrics["impostor_far_table"] = table
    new.training["calibration"]["impostor_table_from"] = widest.source
    write_model_dir(out_dir, new, embedder.tower, overwrite=overwrite)
    return new


def _pair_count(cal: CalibrationSet, seed: int, cap_per_identity: int) -> int:
    """How many balanced pairs the set gives (InvalidData naming the set when it gives none)."""
    try:
        a, _, _ = sample_pairs(cal.data.labels, seed=seed, cap_per_identity=cap_per_identity)
    except InvalidData as e:
        raise InvalidData(f"{cal.source}: {e}") from e
    return len(a)


def _calibrated_config(
    config: ModelConfig, measured: list[_Measured], losses: list[float], threshold: float, seed: int, cap: int
) -> ModelConfig:
    """A copy of config with the new pair threshold and the record of how it was chosen."""
    d_all = np.concatenate([m.distances for m in measured])
    y_all = np.concatenate([m.labels for m in measured])
    sets = [m.cal for m in measured]
    rule = "max accuracy" if len(sets) == 1 else "least accuracy lost by the worst set against its own best threshold"
    new = copy.deepcopy(config)
    new.threshold = threshold
    new.threshold_method = (
        f"{rule} on {len(y_all)} balanced pairs of {sum(c.data.n_identities for c in sets)} "
        f"identities never trained on, from {', '.join(c.source for c in sets)} (calibrate)"
    )
    new.training["calibration"] = {
        "previous_threshold": config.threshold,
        "previous_method": config.threshold_method,
        "seed": seed,
        "cap_per_identity": cap,
        "sets": [_set_record(m, config.threshold, threshold, loss) for m, loss in zip(measured, losses)],
    }
    new.metrics["calibration"] = verification_report(d_all, y_all, threshold)
    return new


def _set_record(m: _Measured, before: float | None, after: float, loss: float) -> dict[str, Any]:
    d, y = m.distances, m.labels
    return {
        "source": m.cal.source,
        "identities": int(m.cal.data.n_identities),
        "pairs": int(len(y)),
        "accuracy_before": accuracy_at(d, y, before) if before is not None else None,
        "accuracy_after": accuracy_at(d, y, after),
        "best_threshold": float(best_threshold(d, y)[0]),
        "accuracy_lost": loss,
    }
