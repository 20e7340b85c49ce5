"""Train a tower on identities, calibrate its threshold on unseen people, write a model dir."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from siamese_index.errors import InvalidData
from siamese_index.imaging.loading import Preprocessing
from siamese_index.towers.architectures import DEFAULT_ARCH, contrastive_loss_np
from siamese_index.towers.modeldir import WEIGHTS_NAME, ModelConfig, library_versions, read_config, write_model_dir
from siamese_index.training.datasets import Dataset
from siamese_index.training.metrics import (
    best_threshold,
    impostor_far_table,
    n_way_accuracy,
    one_shot_split,
    rank_k,
    verification_report,
)
from siamese_index.training.pairs import sample_pairs, split_identities


@dataclass
class TrainOptions:
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


@dataclass
class EpochReport:
    epoch: int
    epochs: int
    loss: float
    val_loss: float
    val_auc: float
    seconds: float


def _pk_batches(labels: np.ndarray, p: int, k: int, rng: np.random.Generator, groups: list[str] | None = None):
    """Endless batches of p identities x up to k images; identities with 2+ images drawn first.

    With groups (Omniglot's alphabets), each batch takes as many identities as it can from one
    group before filling up from the rest: impostors from the same alphabet are the hard ones,
    and telling them apart is exactly the within-alphabet one-shot task.
    """
    rows_of = [np.flatnonzero(labels == l) for l in np.unique(labels)]
    multi = [i for i, r in enumerate(rows_of) if len(r) >= 2]
    singles = np.concatenate([r for r in rows_of if len(r) < 2] or [np.zeros(0, np.int64)])
    if len(multi) < 2:
        raise InvalidData("training needs at least two identities with two or more images")
    p = min(p, len(multi))
    by_group: dict[str, list[int]] = {}
    if groups is not None:
        for i in multi:
            by_group.setdefault(groups[i], []).append(i)
    group_lists = [g for g in by_group.values() if len(g) >= 2] if len(by_group) > 1 else []
    while True:
        if group_lists:
            members = group_lists[rng.integers(len(group_lists))]
            first = rng.choice(members, size=min(p, len(members)), replace=False)
            rest = np.setdiff1d(multi, first)
            chosen = np.concatenate([first, rng.choice(rest, size=p - len(first), replace=False)])
        else:
            chosen = rng.choice(multi, size=p, replace=False)
        batch = []
        for c in chosen:
            rows = rows_of[c]
            batch.extend(rng.choice(rows, size=min(k, len(rows)), replace=False))
        if len(singles):
            # Single-image identities can only be impostors: a few per batch.
            batch.extend(rng.choice(singles, size=min(len(singles), max(1, p // 4)), replace=False))
        yield np.asarray(batch)


def train(
    data: Dataset,
    out_dir: Path,
    options: TrainOptions,
    preprocessing: Preprocessing | None,
    progress: Callable[[EpochReport], None] | None = None,
    source: str = "",
    overwrite: bool = False,
) -> ModelConfig:
    """Train on an identity-disjoint split of data, calibrate on the held-out people, save."""
    import keras

    from siamese_index.towers.architectures import (
        batch_contrastive_loss,
        build_augmenter,
        build_proxy_head,
        build_siamese,
        build_tower,
        contrastive_loss,
        cosface_loss,
        distillation_loss,
        with_augmentation,
    )

    opt = options
    if opt.proxy_weight > 0 and opt.mode != "batch":
        raise InvalidData("the proxy (CosFace) loss needs batch mode: pairs mode has no identity labels")
    if opt.teacher_file and opt.mode != "batch":
        raise InvalidData("distillation from a teacher needs batch mode")
    if opt.teacher_file and not source:
        raise InvalidData(f"{opt.teacher_file}: distillation needs the data folder (source) its paths are relative to")
    keras.utils.set_random_seed(opt.seed)
    rng = np.random.default_rng(opt.seed)
    train_ids, val_ids = split_identities(data.labels, opt.val_fraction, opt.seed)
    train_set, val_set = data.subset(train_ids), data.subset(val_ids)
    va, vb, vy = sample_pairs(val_set.labels, seed=opt.seed + 1, cap_per_identity=20)

    input_shape = data.x.shape[1:]
    tower = build_tower(opt.arch, input_shape, opt.embedding_dim)
    parent_id = _load_init_weights(tower, opt, data, val_ids, source) if opt.init_from else None
    teacher = None
    if opt.teacher_file:
        from siamese_index.training.teacher import teacher_targets

        targets, mask, teacher_name = teacher_targets(opt.teacher_file, Path(source), train_set.paths)
        if targets.shape[1] != tower.output_shape[-1]:
            raise InvalidData(
                f"{opt.teacher_file}: teacher vectors are {targets.shape[1]}-d but the tower's embedding "
                f"is {tower.output_shape[-1]}-d; pass --embedding-dim {targets.shape[1]}"
            )
        # The mask rides along as the last column: rows without a teacher vector add no loss.
        teacher = np.concatenate([targets, mask[:, None].astype(np.float32)], axis=1)
    aug = build_augmenter(opt.augmentation) if len(input_shape) == 3 else None
    steps = opt.steps_per_epoch
    if opt.mode == "batch":
        batch_size = opt.identities_per_batch * opt.images_per_identity
        steps = steps or max(1, len(train_set) // batch_size)
    else:
        steps = steps or max(1, opt.pairs_per_epoch // 64)
    schedule = keras.optimizers.schedules.CosineDecay(
        opt.learning_rate, decay_steps=max(1, steps * opt.epochs), alpha=0.05
    )
    if not 0 <= opt.ema < 1:
        raise InvalidData(f"ema momentum must be in [0, 1), got {opt.ema}")
    optimizer = keras.optimizers.Adam(schedule, use_ema=opt.ema > 0, ema_momentum=opt.ema or 0.99)

    if opt.mode == "batch":
        inp = keras.Input(shape=input_shape)
        emb = with_augmentation(tower, aug)(inp)
        # One output per loss; the proxy head is training-only, the saved tower is unchanged.
        outputs, losses, weights = [emb], [batch_contrastive_loss(opt.margin)], [1.0]
        if opt.proxy_weight > 0:
            _, class_of = np.unique(train_set.labels, return_inverse=True)
            outputs.append(build_proxy_head(int(class_of.max()) + 1)(emb))
            losses.append(cosface_loss())
            weights.append(opt.proxy_weight)
        if teacher is not None:
            outputs.append(keras.layers.Identity(name="distilled")(emb))
            losses.append(distillation_loss())
            weights.append(opt.teacher_weight)
        net = keras.Model(inp, outputs)
        net.compile(optimizer=optimizer, loss=losses, loss_weights=weights)
        batches = _pk_batches(
            train_set.labels,
            opt.identities_per_batch,
            opt.images_per_identity,
            rng,
            train_set.groups if opt.group_batches else None,
        )

        def gen():
            for rows in batches:
                ys = [train_set.labels[rows]]
                if opt.proxy_weight > 0:
                    ys.append(class_of[rows])
                if teacher is not None:
                    ys.append(teacher[rows])
                yield train_set.x[rows].astype(np.float32), tuple(ys)
    elif opt.mode == "pairs":
        net = build_siamese(with_augmentation(tower, aug))
        net.compile(optimizer=optimizer, loss=contrastive_loss(opt.margin))

        def gen():
            epoch_seed = opt.seed + 100
            while True:
                a, b, y = sample_pairs(train_set.labels, opt.pairs_per_epoch, seed=epoch_seed, cap_per_identity=50)
                epoch_seed += 1
                for s in range(0, len(y) - 63, 64):
                    sl = slice(s, s + 64)
                    yield (
                        (train_set.x[a[sl]].astype(np.float32), train_set.x[b[sl]].astype(np.float32)),
                        y[sl].astype(np.float32),
                    )
    else:
        raise InvalidData(f"unknown training mode {opt.mode!r}; choose batch or pairs")

    history: list[dict] = []
    best = {"auc": -1.0, "weights": None, "epoch": 0}

    def val_distances() -> np.ndarray:
        emb = _embed(tower, val_set.x)
        return np.linalg.norm(emb[va] - emb[vb], axis=1)

    class Report(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            from siamese_index.training.metrics import roc_auc

            d = val_distances()
            rep = EpochReport(
                epoch + 1,
                opt.epochs,
                float((logs or {}).get("loss", float("nan"))),
                contrastive_loss_np(d, vy, opt.margin),
                roc_auc(d, vy),
                time.perf_counter() - self.t0,
            )
            history.append(
                {
                    "epoch": rep.epoch,
                    "loss": rep.loss,
                    "val_loss": rep.val_loss,
                    "val_auc": rep.val_auc,
                    "seconds": round(rep.seconds, 2),
                }
            )
            if rep.val_auc >= best["auc"]:  # on a tie, the later epoch: it has learnt more
                best.update(auc=rep.val_auc, weights=tower.get_weights(), epoch=rep.epoch)
            if progress:
                progress(rep)

    started = time.perf_counter()
    # With EMA the averaged weights are swapped in before Report validates and keeps them.
    callbacks = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if opt.ema > 0 else []
    net.fit(gen(), steps_per_epoch=steps, epochs=opt.epochs, verbose=0, callbacks=[*callbacks, Report()])
    train_seconds = time.perf_counter() - started
    if best["weights"] is not None:
        tower.set_weights(best["weights"])  # the epoch that verified unseen people best

    d = val_distances()
    threshold, _ = best_threshold(d, vy)
    val_emb = _embed(tower, val_set.x)
    metrics = {"validation": verification_report(d, vy, threshold)}
    metrics["impostor_far_table"] = impostor_far_table(val_emb, val_set.labels, seed=opt.seed)
    gal, probes = one_shot_split(val_set.labels)
    if len(probes):
        metrics["validation_one_shot"] = {
            "identities": int(len(gal)),
            "probes": int(len(probes)),
            **rank_k(val_emb[gal], val_set.labels[gal], val_emb[probes], val_set.labels[probes]),
        }
    config = ModelConfig(
        arch=opt.arch,
        input_shape=tuple(int(v) for v in input_shape),
        embedding_dim=int(tower.output_shape[-1]),
        preprocessing=preprocessing,
        margin=opt.margin,
        threshold=threshold,
        threshold_method=f"max accuracy on {len(vy)} balanced pairs of {len(val_ids)} validation identities never trained on",
        augmentation=opt.augmentation,
        metrics=metrics,
        history=history,
        training={
            "source": source,
            "mode": opt.mode,
            "epochs": opt.epochs,
            "best_epoch": best["epoch"],
            "seed": opt.seed,
            "learning_rate": opt.learning_rate,
            "steps_per_epoch": steps,
            "group_batches": opt.group_batches,
            "proxy_weight": opt.proxy_weight,
            "ema": opt.ema,
            "detect_faces": opt.detect_faces,
            "init_from": parent_id,
            "train_identities": int(len(train_ids)),
            "teacher": (
                {
                    "name": teacher_name,
                    "weight": opt.teacher_weight,
                    "file": str(opt.teacher_file),
                    "rows": int(teacher[:, -1].sum()),
                }
                if teacher is not None
                else None
            ),
            "train_images": int(len(train_set)),
            "val_identities": int(len(val_ids)),
            "val_images": int(len(val_set)),
            "val_identity_names": [data.names[i] for i in val_ids],
            "seconds": round(train_seconds, 1),
            "skipped_files": len(data.skipped),
        },
        versions=library_versions(),
    )
    write_model_dir(out_dir, config, tower, overwrite=overwrite)
    return config


def _load_init_weights(tower, opt: TrainOptions, data: Dataset, val_ids, source: str) -> str:
    """Load a parent model's weights into tower; returns its model id.

    Refuses a parent that trained on any of this run's validation people (same data source):
    the threshold calibrated on them would then flatter the tower.
    """
    parent = read_config(Path(opt.init_from))
    if (
        parent.arch != opt.arch
        or tuple(parent.input_shape) != tuple(tower.input_shape[1:])
        or int(parent.embedding_dim) != int(tower.output_shape[-1])
    ):
        raise InvalidData(
            f"{opt.init_from}: its tower ({parent.arch}, input {tuple(parent.input_shape)}, "
            f"{parent.embedding_dim}-d) does not match this run's ({opt.arch}, input "
            f"{tuple(tower.input_shape[1:])}, {tower.output_shape[-1]}-d)"
        )
    held = parent.training.get("val_identity_names")
    if held is not None and same_source(parent.training.get("source"), source):
        leaked = sorted(set(data.names[i] for i in val_ids) - set(held))
        if leaked:
            raise InvalidData(
                f"{opt.init_from} trained on {len(leaked)} of this run's validation identities "
                f"(e.g. {leaked[0]}) from the same data ({parent.training.get('source')}); "
                f"use the parent's --seed and --val-fraction"
            )
    tower.load_weights(str(Path(opt.init_from) / WEIGHTS_NAME))
    return parent.model_id


def same_source(a, b) -> bool:
    """Whether two recorded data sources may be the same data.

    A source is recorded as the user typed it, relative or absolute, from wherever they were, so
    the same folder can read differently: the same folder name is taken as the same data (a
    refusal can be answered with the parent's seed; a silent leak could not be noticed at all).
    """
    if not a or not b:
        return False
    pa, pb = Path(str(a)), Path(str(b))
    return pa.resolve() == pb.resolve() or pa.name == pb.name


def _embed(tower, x: np.ndarray, batch_size: int = 128) -> np.ndarray:
    out = [
        np.asarray(tower.predict_on_batch(x[s : s + batch_size].astype(np.float32)))
        for s in range(0, len(x), batch_size)
    ]
    return np.concatenate(out).astype(np.float32)


def evaluate(
    embedder,
    data: Dataset | None,
    *,
    seed: int = 0,
    cap_per_identity: int = 20,
    pair_rows: list | None = None,
    n_way: int | None = None,
    tasks: int = 400,
) -> dict:
    """Verification (sampled or given pairs), closed-set one-shot rank-1/5, optional N-way."""
    report: dict = {"model_id": embedder.model_id, "threshold": embedder.threshold}
    if pair_rows is not None:
        files = sorted({str(p) for r in pair_rows for p in (r.image_a, r.image_b)})
        vecs, ok, failed = embedder.embed_files(files)
        where = {p: i for i, p in enumerate(ok)}
        keep = [r for r in pair_rows if str(r.image_a) in where and str(r.image_b) in where]
        a = np.array([where[str(r.image_a)] for r in keep], dtype=np.int64)
        b = np.array([where[str(r.image_b)] for r in keep], dtype=np.int64)
        y = np.array([r.label for r in keep], dtype=np.int64)
        d = np.linalg.norm(vecs[a] - vecs[b], axis=1)
        report["verification"] = verification_report(d, y, embedder.threshold)
        report["verification"]["source"] = "given pairs"
        report["skipped"] = [{"path": p, "reason": r} for p, r in failed]
        report["_pairs"] = (d, y)
    if data is not None:
        emb = embedder.embed_batch(data.x)
        if pair_rows is None:
            a, b, y = sample_pairs(data.labels, seed=seed, cap_per_identity=cap_per_identity)
            d = np.linalg.norm(emb[a] - emb[b], axis=1)
            report["verification"] = verification_report(d, y, embedder.threshold)
            report["verification"]["source"] = (
                f"sampled pairs (seed {seed}, at most {cap_per_identity} genuine per identity)"
            )
            report["_pairs"] = (d, y)
            report["_pair_index"] = (a, b)
        gal, probes = one_shot_split(data.labels)
        report["one_shot"] = {
            "identities": int(len(gal)),
            "probes": int(len(probes)),
            **rank_k(emb[gal], data.labels[gal], emb[probes], data.labels[probes]),
        }
        if n_way:
            report["n_way"] = n_way_accuracy(emb, data.labels, data.groups, n_way, tasks, seed)
        report["skipped"] = [{"path": p, "reason": r} for p, r in data.skipped] + report.get("skipped", [])
    return report
