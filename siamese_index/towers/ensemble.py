"""Several trained towers as one: embeddings side by side, one model directory.

Towers trained differently make different mistakes; the distance between concatenated unit
vectors (scaled by 1/sqrt(n)) averages the members' squared distances, and averaging evens out
mistakes that are not shared. The result is an ordinary model directory (one tower, one weights
file, one model id), so the index, the service and dedup use it unchanged, at the cost of
running every member on each photo. It has no pair threshold until `calibrate` chooses one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from siamese_index.errors import ModelError
from siamese_index.towers.modeldir import ModelConfig, library_versions, same_source, write_model_dir

if TYPE_CHECKING:
    from siamese_index.towers.embedder import KerasEmbedder


def build_ensemble(member_dirs: list[Path], out_dir: Path, overwrite: bool = False) -> ModelConfig:
    """Write a model directory whose tower runs the members on the same prepared input."""
    from siamese_index.towers.architectures import build_tower, ensemble_arch
    from siamese_index.towers.embedder import KerasEmbedder

    if len(member_dirs) < 2:
        raise ModelError("an ensemble needs at least two models")
    members = [KerasEmbedder(d) for d in member_dirs]
    check_members(members)
    first = members[0]
    arch = ensemble_arch([(m.config.arch, m.dim) for m in members])
    tower = build_tower(arch, first.config.input_shape)
    for i, m in enumerate(members):
        tower.get_layer(f"member{i}").set_weights(m.tower.get_weights())
    config = ModelConfig(
        arch=arch,
        input_shape=tuple(first.config.input_shape),
        embedding_dim=sum(m.dim for m in members),
        preprocessing=first.preprocessing,
        margin=first.config.margin,
        threshold=None,
        threshold_method="none yet: choose a pair threshold with `siamese-index calibrate`",
        augmentation=first.config.augmentation,
        training=ensemble_training_record(members),
        versions=library_versions(),
    )
    write_model_dir(out_dir, config, tower, overwrite=overwrite)
    return config


def check_members(members: list[KerasEmbedder]) -> None:
    """Members must be plain towers that take the same prepared input."""
    from siamese_index.towers.architectures import ENSEMBLE_PREFIX

    first = members[0]
    for m in members:
        if m.config.arch.startswith(ENSEMBLE_PREFIX):
            raise ModelError(f"{m.model_dir}: is itself an ensemble; list its members instead")
        if tuple(m.config.input_shape) != tuple(first.config.input_shape) or m.preprocessing != first.preprocessing:
            raise ModelError(
                f"{m.model_dir}: prepares photos differently from {first.model_dir} (input "
                f"{tuple(m.config.input_shape)} against {tuple(first.config.input_shape)}, or another "
                "crop); ensemble members must take the same input"
            )


def ensemble_training_record(members: list[KerasEmbedder]) -> dict[str, Any]:
    """The members, and (when they record one) their shared data source and held-out people."""
    first = members[0]
    training: dict[str, Any] = {
        "ensemble_of": [{"model_dir": str(m.model_dir), "model_id": m.model_id} for m in members]
    }
    source = first.config.training.get("source")
    if source:
        # calibrate refuses people the model trained on by its one recorded source, so members
        # must share it; then only people none of them trained on count as held out.
        for m in members[1:]:
            if not same_source(source, m.config.training.get("source")):
                raise ModelError(
                    f"{m.model_dir}: trained on {m.config.training.get('source')}, not on {source} "
                    f"like {first.model_dir}; ensemble members must share their training data"
                )
        held = [set(m.config.training.get("val_identity_names") or []) for m in members]
        training.update(source=source, val_identity_names=sorted(set.intersection(*held)))
    return training
