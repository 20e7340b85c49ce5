"""Train a tower on identities, calibrate its pair threshold on unseen people, write a model directory.

`train` runs five steps, each a function of its own: split the data by identity
(`split_for_training`), build the tower and its optimiser (`build_optimizer`, `build_training_net`),
run the epoch loop keeping the epoch that verifies unseen people best (`fit`), choose the pair
threshold on the validation people (`calibrate_on_validation`), and write the model directory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from siamese_index.errors import InvalidData
from siamese_index.imaging.loading import Preprocessing
from siamese_index.towers.architectures import DEFAULT_ARCH
from siamese_index.towers.losses import contrastive_loss_np
from siamese_index.towers.modeldir import (
    WEIGHTS_NAME,
    ModelConfig,
    library_versions,
    read_config,
    same_source,
    write_model_dir,
)
from siamese_index.training.datasets import Dataset
from siamese_index.training.metrics import (
    best_threshold,
    impostor_far_table,
    one_shot_split,
    rank_k,
    roc_auc,
    verification_report,
)
from siamese_index.training.pairs import sample_pairs, split_identities

PAIRS_BATCH = 64  # pairs per step in pairs mode


@dataclass
class TrainOptions:
    """How to train: the tower, the loss and its batches, the schedule, and what to start from."""

    arch: str = DEFAULT_ARCH
    epochs: int = 10
    seed: int = 0
    margin: float = 1.0
    embedding_dim: int | None = None
    val_fraction: float = 0.2
    # "batch": every pair inside P x K identity batches (online mining); "pairs": fixed
    # genuine/impostor pairs through the two-input network, as the seed tutorials do.
    mode: str = "batch"
    identities_per_batch: int = 16
    images_per_identity: int = 4
    pairs_per_epoch: int = 4000
    learning_rate: float = 1e-3
    augmentation: str = "none"
    steps_per_epoch: int | None = None
    # Fill batches from one group (alphabet) first, so impostors are the hard, similar ones.
    group_batches: bool = True
    # Weight of the auxiliary CosFace loss on learned identity proxies (batch mode; 0 = off).
    proxy_weight: float = 0.0
    # Start from this model directory's weights (same architecture and input) instead of random.
    init_from: Path | None = None
    # Distillation: an .npz of teacher vectors per image (teacher.py); each training image's
    # embedding is pulled towards its unit-length teacher vector with this weight (batch mode).
    teacher_file: Path | None = None
    teacher_weight: float = 1.0
    # Polyak averaging: validate and keep an exponential moving average of the weights
    # (this momentum per step; 0 = off). It smooths the epoch-to-epoch noise of small batches.
    ema: float = 0.0
    # Recorded only: whether the training images were cut around detected faces (as at lookup)
    # rather than with the fixed crop.
    detect_faces: bool = False


@dataclass(frozen=True)
class EpochReport:
    """One finished epoch, as passed to train's progress callback."""

    epoch: int
    epochs: int
    loss: float
    val_loss: float
    val_auc: float
    seconds: float


@dataclass(frozen=True)
class TrainSplit:
    """An identity-disjoint split: no validation person is ever trained on."""

    train: Dataset
    val: Dataset
    train_ids: np.ndarray  # identity labels of the original data set
    val_ids: np.ndarray
    # Balanced validation pairs (row a, row b, label) over val's rows.
    val_a: np.ndarray
    val_b: np.ndarray
    val_y: np.ndarray

    @property
    def val_names(self) -> list[str]:
        return list(self.val.names)


@dataclass(frozen=True)
class TeacherTargets:
    """Distillation targets per training row: unit vectors, then 1/0 for "has one" as the last column."""

    targets: np.ndarray
    name: str
    file: Path

    @property
    def rows(self) -> int:
        return int(self.targets[:, -1].sum())


@dataclass
class FitResult:
    """The epoch loop's record; the tower holds the best epoch's weights afterwards."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0


def check_options(options: TrainOptions, source: str) -> None:
    """Refuse option combinations that cannot train, before any data is touched."""
    opt = options
    if opt.mode not in ("batch", "pairs"):
        raise InvalidData(f"unknown training mode {opt.mode!r}; choose batch or pairs")
    if opt.proxy_weight > 0 and opt.mode != "batch":
        raise InvalidData("the proxy (CosFace) loss needs batch mode: pairs mode has no identity labels")
    if opt.teacher_file and opt.mode != "batch":
        raise InvalidData("distillation from a teacher needs batch mode")
    if opt.teacher_file and not source:
        raise InvalidData(f"{opt.teacher_file}: distillation needs the data folder (source) its paths are relative to")
    if not 0 <= opt.ema < 1:
        raise InvalidData(f"ema momentum must be in [0, 1), got {opt.ema}")


def split_for_training(data: Dataset, val_fraction: float, seed: int) -> TrainSplit:
    """Hold out val_fraction of the identities, and draw the validation pairs (seed + 1)."""
    train_ids, val_ids = split_identities(data.labels, val_fraction, seed)
    train_set, val_set = data.subset(train_ids), data.subset(val_ids)
    va, vb, vy = sample_pairs(val_set.labels, seed=seed + 1, cap_per_identity=20)
    return TrainSplit(train_set, val_set, train_ids, val_ids, va, vb, vy)


def steps_per_epoch(options: TrainOptions, train_rows: int) -> int:
    """The given steps, or else one pass over the training images (batch) or the epoch's pairs."""
    if options.steps_per_epoch:
        return options.steps_per_epoch
    if options.mode == "batch":
        return max(1, train_rows // (options.identities_per_batch * options.images_per_identity))
    return max(1, options.pairs_per_epoch // PAIRS_BATCH)


def build_optimizer(options: TrainOptions, steps: int) -> Any:
    """Adam on a cosine-decayed learning rate (to 5%), with weight averaging when ema > 0."""
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(
        options.learning_rate, decay_steps=max(1, steps * options.epochs), alpha=0.05
    )
    return keras.optimizers.Adam(schedule, use_ema=options.ema > 0, ema_momentum=options.ema or 0.99)


def pk_batches(
    labels: np.ndarray, p: int, k: int, rng: np.random.Generator, groups: list[str] | None = None
) -> Iterator[np.ndarray]:
    """Endless batches of p identities x up to k images; identities with 2+ images drawn first.

    With groups (Omniglot's alphabets), each batch takes as many identities as it can from one
    group before filling up from the rest: impostors from the same alphabet are the hard ones,
    and telling them apart is exactly the within-alphabet one-shot task.
    """
    rows_of = [np.flatnonzero(labels == lab) for lab in np.unique(labels)]
    multi = [i for i, r in enumerate(rows_of) if len(r) >= 2]
    singles = np.concatenate([r for r in rows_of if len(r) < 2] or [np.zeros(0, np.int64)])
    if len(multi) < 2:
        raise InvalidData("training needs at least two identities with two or more images")
    p = min(p, len(multi))
    group_lists = _group_members(multi, groups)
    while True:
        if group_lists:
            members = group_lists[rng.integers(len(group_lists))]
            first = rng.choice(members, size=min(p, len(members)), replace=False)
            rest = np.setdiff1d(multi, first)
            chosen = np.concatenate([first, rng.choice(rest, size=p - len(first), replace=False)])
        else:
            chosen = rng.choice(multi, size=p, replace=False)
        batch: list[int] = []
        for c in chosen:
            rows = rows_of[c]
            batch.extend(rng.choice(rows, size=min(k, len(rows)), replace=False))
        if len(singles):
            # Single-image identities can only be impostors: a few per batch.
            batch.extend(rng.choice(singles, size=min(len(singles), max(1, p // 4)), replace=False))
        yield np.asarray(batch)


def _group_members(multi: list[int], groups: list[str] | None) -> list[list[int]]:
    """The multi-image identities of each group with two or more of them; [] without groups."""
    by_group: dict[str, list[int]] = {}
    if groups is not None:
        for i in multi:
            by_group.setdefault(groups[i], []).append(i)
    return [g for g in by_group.values() if len(g) >= 2] if len(by_group) > 1 else []


Batches = Iterator[tuple[Any, Any]]


def build_training_net(
    tower: Any, split: TrainSplit, options: TrainOptions, optimizer: Any, teacher: TeacherTargets | None
) -> tuple[Any, Batches]:
    """The compiled network that trains the tower, and the endless batches it is fed (batch mode
    draws them with a generator seeded by options.seed)."""
    from siamese_index.towers.architectures import build_augmenter, with_augmentation

    augmenter = build_augmenter(options.augmentation) if len(tower.input_shape) == 4 else None
    trainee = with_augmentation(tower, augmenter)
    if options.mode == "batch":
        return _batch_mode(trainee, split.train, options, optimizer, teacher, np.random.default_rng(options.seed))
    return _pairs_mode(trainee, split.train, options, optimizer)


def _batch_mode(
    trainee: Any,
    train_set: Dataset,
    options: TrainOptions,
    optimizer: Any,
    teacher: TeacherTargets | None,
    rng: np.random.Generator,
) -> tuple[Any, Batches]:
    """One image input; one output per loss (contrastive, then optional proxy and teacher)."""
    import keras

    from siamese_index.towers.losses import batch_contrastive_loss, build_proxy_head, cosface_loss, distillation_loss

    inp = keras.Input(shape=trainee.input_shape[1:])
    emb = trainee(inp)
    # The proxy head is training-only; the saved tower is unchanged.
    outputs, losses, weights = [emb], [batch_contrastive_loss(options.margin)], [1.0]
    _, class_of = np.unique(train_set.labels, return_inverse=True)
    if options.proxy_weight > 0:
        outputs.append(build_proxy_head(int(class_of.max()) + 1)(emb))
        losses.append(cosface_loss())
        weights.append(options.proxy_weight)
    if teacher is not None:
        outputs.append(keras.layers.Identity(name="distilled")(emb))
        losses.append(distillation_loss())
        weights.append(options.teacher_weight)
    net = keras.Model(inp, outputs)
    net.compile(optimizer=optimizer, loss=losses, loss_weights=weights)
    groups = train_set.groups if options.group_batches else None
    batches = pk_batches(train_set.labels, options.identities_per_batch, options.images_per_identity, rng, groups)

    def feed() -> Batches:
        for rows in batches:
            ys = [train_set.labels[rows]]
            if options.proxy_weight > 0:
                ys.append(class_of[rows])
            if teacher is not None:
                ys.append(teacher.targets[rows])
            yield train_set.x[rows].astype(np.float32), tuple(ys)

    return net, feed()


def _pairs_mode(trainee: Any, train_set: Dataset, options: TrainOptions, optimizer: Any) -> tuple[Any, Batches]:
    """The seeds' two-input network on freshly sampled pairs each epoch (seeds from seed + 100)."""
    from siamese_index.towers.architectures import build_siamese
    from siamese_index.towers.losses import contrastive_loss

    net = build_siamese(trainee)
    net.compile(optimizer=optimizer, loss=contrastive_loss(options.margin))

    def feed() -> Batches:
        epoch_seed = options.seed + 100
        x = train_set.x
        while True:
            a, b, y = sample_pairs(train_set.labels, options.pairs_per_epoch, seed=epoch_seed, cap_per_identity=50)
            epoch_seed += 1
            for s in range(0, len(y) - PAIRS_BATCH + 1, PAIRS_BATCH):
                sl = slice(s, s + PAIRS_BATCH)
                yield (x[a[sl]].astype(np.float32), x[b[sl]].astype(np.float32)), y[sl].astype(np.float32)

    return net, feed()


def validation_distances(tower: Any, split: TrainSplit) -> np.ndarray:
    """L2 distances of the validation pairs under the tower's current weights."""
    emb = embed_rows(tower, split.val.x)
    return np.linalg.norm(emb[split.val_a] - emb[split.val_b], axis=1)


def fit(
    net: Any,
    batches: Batches,
    tower: Any,
    split: TrainSplit,
    options: TrainOptions,
    steps: int,
    progress: Callable[[EpochReport], None] | None = None,
) -> FitResult:
    """Run the epochs, validating after each; leave the tower at the epoch with the best AUC."""
    import keras

    result = FitResult()
    best: dict[str, Any] = {"auc": -1.0, "weights": None}

    class Report(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            d = validation_distances(tower, split)
            rep = EpochReport(
                epoch + 1,
                options.epochs,
                float((logs or {}).get("loss", float("nan"))),
                contrastive_loss_np(d, split.val_y, options.margin),
                roc_auc(d, split.val_y),
                time.perf_counter() - self.t0,
            )
            result.history.append(_history_row(rep))
            if rep.val_auc >= best["auc"]:  # on a tie, the later epoch: it has learnt more
                best.update(auc=rep.val_auc, weights=tower.get_weights())
                result.best_epoch = rep.epoch
            if progress:
                progress(rep)

    started = time.perf_counter()
    # With EMA the averaged weights are swapped in before Report validates and keeps them.
    callbacks = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if options.ema > 0 else []
    # shuffle=False: a generator cannot be shuffled, and saying so keeps Keras from warning about it.
    net.fit(
        batches,
        steps_per_epoch=steps,
        epochs=options.epochs,
        verbose=0,
        shuffle=False,
        callbacks=[*callbacks, Report()],
    )
    result.seconds = time.perf_counter() - started
    if best["weights"] is not None:
        tower.set_weights(best["weights"])  # the epoch that verified unseen people best
    return result


def _history_row(rep: EpochReport) -> dict[str, float]:
    return {
        "epoch": rep.epoch,
        "loss": rep.loss,
        "val_loss": rep.val_loss,
        "val_auc": rep.val_auc,
        "seconds": round(rep.seconds, 2),
    }


def calibrate_on_validation(tower: Any, split: TrainSplit, seed: int) -> tuple[float, dict[str, Any]]:
    """The pair threshold (max accuracy on the validation pairs) and the validation metrics."""
    emb = embed_rows(tower, split.val.x)
    d = np.linalg.norm(emb[split.val_a] - emb[split.val_b], axis=1)
    threshold, _ = best_threshold(d, split.val_y)
    labels = split.val.labels
    metrics: dict[str, Any] = {
        "validation": verification_report(d, split.val_y, threshold),
        "impostor_far_table": impostor_far_table(emb, labels, seed=seed),
    }
    gal, probes = one_shot_split(labels)
    if len(probes):
        metrics["validation_one_shot"] = {
            "identities": int(len(gal)),
            "probes": int(len(probes)),
            **rank_k(emb[gal], labels[gal], emb[probes], labels[probes]),
        }
    return threshold, metrics


def train(
    data: Dataset,
    out_dir: Path,
    options: TrainOptions,
    preprocessing: Preprocessing | None,
    progress: Callable[[EpochReport], None] | None = None,
    source: str = "",
    overwrite: bool = False,
) -> ModelConfig:
    """Train on an identity-disjoint split of data, choose the pair threshold on the held-out
    people, write the model directory; returns its config."""
    import keras

    from siamese_index.towers.architectures import build_tower

    opt = options
    check_options(opt, source)
    keras.utils.set_random_seed(opt.seed)
    split = split_for_training(data, opt.val_fraction, opt.seed)
    tower = build_tower(opt.arch, data.x.shape[1:], opt.embedding_dim)
    parent_id = None
    if opt.init_from:
        parent_id = load_parent_weights(tower, opt.init_from, opt.arch, split.val_names, source)
    teacher = load_teacher(opt.teacher_file, source, split.train, tower) if opt.teacher_file else None
    steps = steps_per_epoch(opt, len(split.train))
    net, batches = build_training_net(tower, split, opt, build_optimizer(opt, steps), teacher)
    fitted = fit(net, batches, tower, split, opt, steps, progress)
    threshold, metrics = calibrate_on_validation(tower, split, opt.seed)
    config = ModelConfig(
        arch=opt.arch,
        input_shape=tuple(int(v) for v in data.x.shape[1:]),
        embedding_dim=int(tower.output_shape[-1]),
        preprocessing=preprocessing,
        margin=opt.margin,
        threshold=threshold,
        threshold_method=(
            f"max accuracy on {len(split.val_y)} balanced pairs of {len(split.val_ids)} "
            "validation identities never trained on"
        ),
        augmentation=opt.augmentation,
        metrics=metrics,
        history=fitted.history,
        training=training_record(opt, split, fitted, steps, source, parent_id, teacher, len(data.skipped)),
        versions=library_versions(),
    )
    write_model_dir(out_dir, config, tower, overwrite=overwrite)
    return config


def training_record(
    opt: TrainOptions,
    split: TrainSplit,
    fitted: FitResult,
    steps: int,
    source: str,
    parent_id: str | None,
    teacher: TeacherTargets | None,
    skipped_files: int,
) -> dict[str, Any]:
    """How the model was trained, as config.json's "training" records it."""
    return {
        "source": source,
        "mode": opt.mode,
        "epochs": opt.epochs,
        "best_epoch": fitted.best_epoch,
        "seed": opt.seed,
        "learning_rate": opt.learning_rate,
        "steps_per_epoch": steps,
        "group_batches": opt.group_batches,
        "proxy_weight": opt.proxy_weight,
        "ema": opt.ema,
        "detect_faces": opt.detect_faces,
        "init_from": parent_id,
        "train_identities": int(len(split.train_ids)),
        "teacher": (
            {"name": teacher.name, "weight": opt.teacher_weight, "file": str(teacher.file), "rows": teacher.rows}
            if teacher is not None
            else None
        ),
        "train_images": int(len(split.train)),
        "val_identities": int(len(split.val_ids)),
        "val_images": int(len(split.val)),
        "val_identity_names": split.val_names,
        "seconds": round(fitted.seconds, 1),
        "skipped_files": skipped_files,
    }


def load_teacher(teacher_file: Path, source: str, train_set: Dataset, tower: Any) -> TeacherTargets:
    """The teacher vectors of the training rows, checked against the tower's embedding size."""
    from siamese_index.training.teacher import teacher_targets

    targets, mask, name = teacher_targets(teacher_file, Path(source), train_set.paths)
    dim = int(tower.output_shape[-1])
    if targets.shape[1] != dim:
        raise InvalidData(
            f"{teacher_file}: teacher vectors are {targets.shape[1]}-d but the tower's embedding "
            f"is {dim}-d; pass --embedding-dim {targets.shape[1]}"
        )
    # The mask rides along as the last column: rows without a teacher vector add no loss.
    stacked = np.concatenate([targets, mask[:, None].astype(np.float32)], axis=1)
    return TeacherTargets(stacked, name, Path(teacher_file))


def load_parent_weights(tower: Any, parent_dir: Path, arch: str, val_names: list[str], source: str) -> str | None:
    """Load a parent model directory's weights into tower; returns the parent's model id.

    Refuses a parent that trained on any of this run's validation people (same data source):
    the pair threshold calibrated on them would then flatter the tower.
    """
    parent_dir = Path(parent_dir)
    parent = read_config(parent_dir)
    shape, dim = tuple(tower.input_shape[1:]), int(tower.output_shape[-1])
    if parent.arch != arch or tuple(parent.input_shape) != shape or int(parent.embedding_dim) != dim:
        raise InvalidData(
            f"{parent_dir}: its tower ({parent.arch}, input {tuple(parent.input_shape)}, "
            f"{parent.embedding_dim}-d) does not match this run's ({arch}, input {shape}, {dim}-d)"
        )
    held = parent.training.get("val_identity_names")
    if held is not None and same_source(parent.training.get("source"), source):
        leaked = sorted(set(val_names) - set(held))
        if leaked:
            raise InvalidData(
                f"{parent_dir} trained on {len(leaked)} of this run's validation identities "
                f"(e.g. {leaked[0]}) from the same data ({parent.training.get('source')}); "
                f"use the parent's --seed and --val-fraction"
            )
    tower.load_weights(str(parent_dir / WEIGHTS_NAME))
    return parent.model_id


def embed_rows(tower: Any, x: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """The tower's embeddings of prepared rows, in inference mode, as float32."""
    out = [
        np.asarray(tower.predict_on_batch(x[s : s + batch_size].astype(np.float32)))
        for s in range(0, len(x), batch_size)
    ]
    return np.concatenate(out).astype(np.float32)
