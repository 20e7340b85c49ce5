"""Choose a model's pair threshold again, on people from the cameras it will serve.

`train` calibrates the threshold on its own validation people, photographed like its training
set. A threshold transfers imperfectly to another camera: ORL's evenly lit studio photos of
one person vary less than LFW's press photos, so their genuine pairs sit closer together
(median distance 0.17 against 0.26 for faces-v5) while impostor distances barely move, and the
threshold that maximises accuracy there is lower. `calibrate` picks it again on
identity-labelled photos of people the tower never trained on, from one or more sets (cameras)
that each weigh the same, and writes a new model directory: the same weights (so the same model id and the same vectors in
any index), the new threshold, a new impostor table for the unknown-person decision, and a
record of how they were chosen.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from siamese_index.errors import InvalidData
from siamese_index.towers.modeldir import ModelConfig, write_model_dir
from siamese_index.training.datasets import Dataset
from siamese_index.training.metrics import (
    accuracy_at,
    best_threshold,
    impostor_far_table,
    least_regret_threshold,
    verification_report,
)
from siamese_index.training.pairs import sample_pairs
from siamese_index.training.trainer import same_source


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


def calibrate(
    embedder,
    sets: list[CalibrationSet],
    out_dir: Path,
    *,
    seed: int = 0,
    cap_per_identity: int = 20,
    overwrite: bool = False,
) -> ModelConfig:
    """Pick the threshold on balanced pairs from each set; write a new model dir.

    One set: its max-accuracy threshold. Several (cameras): the threshold at which the set
    that loses most accuracy against its own best threshold loses least, so no camera is
    given up for another. Each set contributes as many pairs as the smallest one. Returns the
    written config; config.training["calibration"] says per set how accuracy moved from the
    old threshold to the new one, and what it gives up against its own best.
    """
    if not sets:
        raise InvalidData("calibration needs at least one set of identities")
    config = embedder.config
    pairs = []
    for cal in sets:
        check_never_trained_on(config, cal, str(embedder.model_dir))
        try:
            a, _, _ = sample_pairs(cal.data.labels, seed=seed, cap_per_identity=cap_per_identity)
        except InvalidData as e:
            raise InvalidData(f"{cal.source}: {e}") from e
        pairs.append(len(a))
    n = min(pairs)
    dist, labels, per_set = [], [], []
    widest = max(sets, key=lambda c: c.data.n_identities)
    for cal in sets:
        emb = embedder.embed_batch(cal.data.x)
        if cal is widest:
            table = impostor_far_table(emb, cal.data.labels, seed=seed)
        a, b, y = sample_pairs(cal.data.labels, n_pairs=n, seed=seed, cap_per_identity=cap_per_identity)
        d = np.linalg.norm(emb[a] - emb[b], axis=1)
        dist.append(d)
        labels.append(y)
        per_set.append((cal, d, y))
    d_all, y_all = np.concatenate(dist), np.concatenate(labels)
    threshold, losses = least_regret_threshold(list(zip(dist, labels)))
    rule = "max accuracy" if len(sets) == 1 else "least accuracy lost by the worst set against its own best threshold"
    new = copy.deepcopy(config)
    new.threshold = float(threshold)
    new.threshold_method = (
        f"{rule} on {len(y_all)} balanced pairs of {sum(c.data.n_identities for c in sets)} "
        f"identities never trained on, from {', '.join(c.source for c in sets)} (calibrate)"
    )
    new.training["calibration"] = {
        "previous_threshold": config.threshold,
        "previous_method": config.threshold_method,
        "seed": seed,
        "cap_per_identity": cap_per_identity,
        "sets": [
            {
                "source": c.source,
                "identities": int(c.data.n_identities),
                "pairs": int(len(y)),
                "accuracy_before": accuracy_at(d, y, config.threshold) if config.threshold is not None else None,
                "accuracy_after": accuracy_at(d, y, threshold),
                "best_threshold": float(best_threshold(d, y)[0]),
                "accuracy_lost": loss,
            }
            for (c, d, y), loss in zip(per_set, losses)
        ],
    }
    new.metrics["calibration"] = verification_report(d_all, y_all, threshold)
    # The open-set threshold (calibration.py) reads its far tail of impostor distances from
    # this table, where a small shift with the camera matters. Impostors within one set only:
    # across sets they are too easy.
    new.metrics["impostor_far_table"] = table
    new.training["calibration"]["impostor_table_from"] = widest.source
    write_model_dir(out_dir, new, embedder.tower, overwrite=overwrite)
    return new
