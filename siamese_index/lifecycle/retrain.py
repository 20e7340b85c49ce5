"""Retrain: fine-tune the active tower on new pairs, judge it on pairs it never saw, keep it only
when it is not worse.

    report = retrain(idx, "new_pairs.csv", from_enrolled=True, options=RetrainOptions(epochs=5))

Where the pairs come from
- A CSV (image_a,image_b,label; paths relative to the CSV's folder). Every bad row (missing
  column, unknown label, a path leaving the folder, a missing or unreadable image) is reported
  with its line number before anything is trained.
- --from-enrolled: pairs among the copies the home keeps of enrolled photos (genuine within a
  person, as many impostors across people).
- --from-feedback: operators' corrections (feedback.py): the query photo with the person's
  stored photos, genuine for "is", impostor for "is not".

How it trains (pairs mode, and why)
The tower is the active version's, weights loaded, and training continues with the contrastive
loss through the two-input Siamese network on the given pairs ("pairs" mode of training.py), not
on identity batches ("batch" mode). Batch mode needs an identity label for every image and
treats every two images of different labels as impostors; a pair file does not say who is who,
only which two photos are or are not the same person, and its most valuable rows (a false match
an operator corrected) are exactly such hand-picked impostor pairs. Pairs mode uses what the
operator said and nothing more. The learning rate defaults low (fine-tuning, not training from
scratch) and the model's own training augmentation is applied.

How it is judged
The images are grouped into identities as far as the pairs tell: the connected components of
the graph whose edges are genuine pairs (and, for enrolled photos and feedback, the identity
they belong to). Whole components are held out (about holdout_fraction of the genuine pairs),
so no identity known to the pairs is on both sides; impostor pairs joining a held-out and a
training component are used by neither. Old and new towers are compared on the held-out pairs:
ROC AUC, accuracy at each model's own threshold (the old one's recorded threshold, the new one's
recalibrated one), and a fair 2-fold accuracy where each model's threshold is chosen on one half
of the held-out identities and measured on the other. The new tower is worse when its AUC drops
by more than auc_tolerance or its 2-fold accuracy by more than accuracy_tolerance. With fewer
than min_holdout genuine or impostor pairs held out, nothing can be judged: it trains on all
pairs, says so plainly, and does not activate without force.

The new threshold is recalibrated on the held-out pairs (maximum accuracy), or, when nothing
could be held out, on the training pairs (optimistic; said in threshold_method).

What it writes
A model directory HOME/models/<version> and a model_versions row (parent: the active version,
scores: the comparison), both kept whatever the decision, so `models activate` can still choose
it. Activation (versions.activate) re-embeds the home and switches atomically. The whole run
holds HOME/version.lock; a crash leaves the previous version serving (see versions.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

from siamese_index.errors import InvalidData, ModelError, SiameseIndexError
from siamese_index.lifecycle.judge import NOTE, Tolerances, decide, judge
from siamese_index.lifecycle.pairsets import (  # noqa: F401 - Pair, split_pairs: the pairs' public names here too
    Pair,
    PairSet,
    add_csv_pairs,
    add_enrolled_pairs,
    add_feedback_pairs,
    split_pairs,
)
from siamese_index.storage.db import model_versions
from siamese_index.storage.registry import MODELS_DIR_NAME, holding_version_lock, insert_version, model_path
from siamese_index.training.metrics import best_threshold, impostor_far_table, verification_report
from siamese_index.types import ActivationReport, Comparison, PairCounts, ParentVersion, RetrainReport

if TYPE_CHECKING:
    from siamese_index.index.facade import SiameseIndex
    from siamese_index.towers.embedder import Embedder, KerasEmbedder
    from siamese_index.towers.modeldir import ModelConfig

log = logging.getLogger(__name__)

Say = Callable[[str], None]


@dataclass
class RetrainOptions:
    epochs: int = 5
    learning_rate: float = 1e-4
    batch_size: int = 32
    seed: int = 0
    holdout_fraction: float = 0.3
    min_holdout: int = 10  # genuine and impostor held-out pairs needed (each) to judge
    augmentation: str | None = None  # None: the model's own training augmentation
    enrolled_pairs_per_identity: int = 10
    feedback_photos_per_query: int = 5
    auc_tolerance: float = 0.005
    accuracy_tolerance: float = 0.01
    force: bool = False
    activate: bool = True
    drop_unstored: bool = False


# ---------------------------------------------------------------------------------------------
# Fine-tuning
# ---------------------------------------------------------------------------------------------
def _pair_batches(
    x: np.ndarray, a: np.ndarray, b: np.ndarray, y: np.ndarray, batch_size: int, seed: int
) -> tuple[Iterator[tuple[tuple[np.ndarray, np.ndarray], np.ndarray]], int]:
    """Endless ((left, right), labels) batches of a fixed size, every pair once per epoch in a
    new order (the last batch wraps around); and the number of steps per epoch."""
    bs = max(1, min(int(batch_size), len(y)))
    steps = max(1, -(-len(y) // bs))
    rng = np.random.default_rng(seed)

    def batches() -> Iterator[tuple[tuple[np.ndarray, np.ndarray], np.ndarray]]:
        while True:
            order = rng.permutation(len(y))
            order = np.concatenate([order, order[: steps * bs - len(order)]])
            for s in range(steps):
                sl = order[s * bs : (s + 1) * bs]
                yield (x[a[sl]], x[b[sl]]), y[sl]

    return batches(), steps


def _epoch_reporter(history: list[dict[str, Any]], epochs: int, progress: Say | None) -> Any:
    """A Keras callback that appends each epoch's loss and time to `history` and says it."""
    import keras

    class Report(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            entry = {
                "epoch": epoch + 1,
                "loss": float((logs or {}).get("loss", float("nan"))),
                "seconds": round(time.perf_counter() - self.t0, 2),
            }
            history.append(entry)
            if progress:
                progress(f"epoch {entry['epoch']}/{epochs}: loss {entry['loss']:.4f} ({entry['seconds']:.1f}s)")

    return Report()


def fine_tune(
    tower: Any,
    ps: PairSet,
    pairs: list[Pair],
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    margin: float,
    augmentation: str,
    seed: int,
    progress: Say | None = None,
) -> list[dict[str, Any]]:
    """Continue training `tower` (in place) with the contrastive loss on `pairs` through the
    two-input Siamese network. Returns the per-epoch history."""
    import keras

    from siamese_index.towers.architectures import build_augmenter, build_siamese, with_augmentation
    from siamese_index.towers.losses import contrastive_loss

    keras.utils.set_random_seed(seed)
    keys = sorted({p.a for p in pairs} | {p.b for p in pairs})
    pos = {k: i for i, k in enumerate(keys)}
    x = np.stack([ps.arrays[k] for k in keys]).astype(np.float32)
    a = np.array([pos[p.a] for p in pairs], dtype=np.int64)
    b = np.array([pos[p.b] for p in pairs], dtype=np.int64)
    y = np.array([p.label for p in pairs], dtype=np.float32)
    aug = build_augmenter(augmentation) if x.ndim == 4 and augmentation != "none" else None
    net = build_siamese(with_augmentation(tower, aug))
    net.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=contrastive_loss(margin))
    batches, steps = _pair_batches(x, a, b, y, batch_size, seed)
    history: list[dict[str, Any]] = []
    # shuffle=False: the batches are shuffled already (Keras would ignore it and warn)
    net.fit(
        batches,
        steps_per_epoch=steps,
        epochs=int(epochs),
        verbose=0,
        shuffle=False,
        callbacks=[_epoch_reporter(history, epochs, progress)],
    )
    return history


# ---------------------------------------------------------------------------------------------
# The run, step by step
# ---------------------------------------------------------------------------------------------
def _check_request(pairs_file: Any, from_enrolled: bool, from_feedback: bool, opts: RetrainOptions) -> None:
    if not (pairs_file or from_enrolled or from_feedback):
        raise InvalidData("nothing to learn from: give a pairs CSV, --from-enrolled or --from-feedback")
    if opts.epochs < 1 or opts.learning_rate <= 0 or not 0 < opts.holdout_fraction < 1:
        raise InvalidData("epochs must be >= 1, learning rate > 0 and the held-out share between 0 and 1")


def _parent_tower(idx: SiameseIndex) -> tuple[Any, KerasEmbedder]:
    """The active version's row and its tower, loaded from its model directory in the home."""
    from siamese_index.towers.embedder import KerasEmbedder

    with idx.db.read() as conn:
        parent = conn.execute(select(model_versions).where(model_versions.c.active == 1)).one()
    parent_dir = model_path(idx.home, parent.model_dir)
    if parent_dir is None or not (parent_dir / "config.json").is_file():
        raise ModelError(
            f"the active model {parent.model_id} has no model directory here "
            f"({parent.model_dir or 'an injected embedder'}): nothing to fine-tune"
        )
    emb = KerasEmbedder(parent_dir)
    if emb.model_id != parent.model_id:
        raise ModelError(f"{parent_dir} holds {emb.model_id}, not the active model {parent.model_id}")
    if emb.config.preprocessing is None:
        raise ModelError(f"{parent_dir}: a vector model cannot be retrained from image pairs")
    return parent, emb


def gather_pairs(
    idx: SiameseIndex,
    embedder: Embedder,
    pairs_file: str | Path | None,
    *,
    from_enrolled: bool,
    from_feedback: bool,
    opts: RetrainOptions,
    say: Say,
) -> tuple[PairSet, int]:
    """Every pair from the sources asked for, and how many impostor pairs contradict the
    identities the genuine pairs make (kept as given, with a warning). InvalidData when no
    pair is usable or the CSV has bad rows."""
    ps = PairSet(embedder)
    if pairs_file:
        say(f"reading {pairs_file}")
        add_csv_pairs(ps, pairs_file)
    if from_enrolled:
        say("sampling pairs from the enrolled photos")
        add_enrolled_pairs(idx, ps, opts.enrolled_pairs_per_identity, opts.seed)
    if from_feedback:
        say("turning feedback into pairs")
        add_feedback_pairs(idx, ps, opts.feedback_photos_per_query)
    if not ps.pairs:
        raise InvalidData("no usable pairs to train on")
    comp = {k: ps.graph.find(k) for k in ps.arrays}
    conflicts = sum(1 for p in ps.pairs if p.label == 0 and comp[p.a] == comp[p.b])
    if conflicts:
        ps.warnings.append(
            f"{conflicts} impostor pairs join photos that other genuine pairs link into one "
            f"identity (contradicting labels); they were kept as given"
        )
    return ps, conflicts


@dataclass(frozen=True)
class Split:
    """The pairs to train on and those held out to judge on (empty when too few to judge)."""

    train: list[Pair]
    held: list[Pair]
    crossing: int  # impostor pairs joining the two sides: used by neither
    judged: bool
    comp: dict[str, str]  # photo -> its identity (component of the graph)
    held_comps: dict[str, int]  # held-out identity -> its fold (0/1) for the 2-fold accuracy
    comparison: Comparison  # the held-out counts; scores and verdict come later

    @property
    def y_held(self) -> np.ndarray:
        return np.array([p.label for p in self.held], dtype=np.int64)

    @property
    def y_train(self) -> np.ndarray:
        return np.array([p.label for p in self.train])

    def folds(self) -> np.ndarray | None:
        """Per held-out pair: the fold of its identities, -1 when it joins the two folds."""
        if not self.held:
            return None
        c, f = self.comp, self.held_comps
        return np.array(
            [f[c[p.a]] if c[p.a] == c[p.b] or f[c[p.a]] == f[c[p.b]] else -1 for p in self.held], dtype=np.int64
        )


def split_for_judging(ps: PairSet, opts: RetrainOptions) -> Split:
    """Hold out whole identities (split_pairs); with fewer than opts.min_holdout genuine or
    impostor pairs held out nothing can be judged, and every pair is trained on. InvalidData
    when the training pairs lack genuine or impostor pairs."""
    train, held, crossing, held_comps = split_pairs(ps, opts.holdout_fraction, opts.seed)
    n_gen, n_imp = sum(p.label == 1 for p in held), sum(p.label == 0 for p in held)
    judged = n_gen >= opts.min_holdout and n_imp >= opts.min_holdout
    comparison = Comparison(
        judged=judged,
        held_out_pairs=len(held),
        held_out_genuine=n_gen,
        held_out_impostor=n_imp,
        held_out_identities=len(held_comps),
        min_held_out_each=opts.min_holdout,
    )
    if not judged:
        comparison = replace(
            comparison,
            reason=f"too few held-out pairs to judge: {n_gen} genuine and {n_imp} impostor pairs of identities not "
            f"trained on (at least {opts.min_holdout} of each needed); trained on all {len(ps.pairs)} pairs, "
            f"and the new version is not activated without --force",
        )
        train, held, crossing = list(ps.pairs), [], 0
    comp = {k: ps.graph.find(k) for k in ps.arrays}
    split = Split(train, held, crossing, judged, comp, held_comps, comparison)
    y = split.y_train
    if not len(train) or not (y == 1).any() or not (y == 0).any():
        raise InvalidData(
            f"training needs genuine and impostor pairs; it has {int((y == 1).sum())} "
            f"genuine and {int((y == 0).sum())} impostor pairs"
        )
    return split


def _pair_counts(ps: PairSet, split: Split, conflicts: int) -> PairCounts:
    return PairCounts(
        csv=ps.counts["csv"],
        enrolled=ps.counts["enrolled"],
        feedback=ps.counts["feedback"],
        total=len(ps.pairs),
        photos=len(ps.arrays),
        train=len(split.train),
        held_out=len(split.held),
        dropped_crossing=split.crossing,
        conflicting=conflicts,
    )


def _distances(vecs: dict[str, np.ndarray], pairs: list[Pair]) -> np.ndarray:
    return np.array([float(np.linalg.norm(vecs[p.a] - vecs[p.b])) for p in pairs], dtype=np.float64)


def _embed_keys(embedder: Embedder, ps: PairSet, keys: Any) -> dict[str, np.ndarray]:
    keys = sorted(set(keys))
    if not keys:
        return {}
    vecs = np.asarray(embedder.embed_batch(np.stack([ps.arrays[k] for k in keys])), dtype=np.float64)
    return dict(zip(keys, vecs))


@dataclass(frozen=True)
class Outcome:
    """After fine-tuning: the new threshold and how it was chosen, old against new (unjudged:
    without scores), the validation report, and the vectors for the impostor table."""

    threshold: float
    threshold_method: str
    comparison: Comparison
    validation: dict[str, Any] | None
    vecs: dict[str, np.ndarray]


def _judged_outcome(
    emb: Embedder, ps: PairSet, split: Split, d_old: np.ndarray, old_threshold: float | None, opts: RetrainOptions
) -> Outcome:
    """Recalibrate on the held-out pairs (maximum accuracy) and judge old against new there."""
    vecs = _embed_keys(emb, ps, {p.a for p in split.held} | {p.b for p in split.held})
    d_new = _distances(vecs, split.held)
    y = split.y_held
    threshold, _ = best_threshold(d_new, y)
    j = judge(
        d_old,
        d_new,
        y,
        old_threshold=old_threshold,
        new_threshold=threshold,
        fold=split.folds(),
        tolerances=Tolerances(opts.auc_tolerance, opts.accuracy_tolerance),
    )
    comparison = replace(
        split.comparison, old=j.old, new=j.new, worse=j.worse, old_auc=j.old.auc, new_auc=j.new.auc, note=NOTE
    )
    method = (
        f"max accuracy on {len(split.held)} held-out pairs of {len(split.held_comps)} identities not "
        f"trained on, after retraining"
    )
    return Outcome(float(threshold), method, comparison, verification_report(d_new, y, threshold), vecs)


def _unjudged_outcome(emb: Embedder, ps: PairSet, split: Split) -> Outcome:
    """Nothing held out: the threshold is calibrated on the training pairs (optimistic)."""
    vecs = _embed_keys(emb, ps, ps.arrays)
    threshold, _ = best_threshold(_distances(vecs, split.train), split.y_train)
    method = f"max accuracy on the {len(split.train)} training pairs (too few held-out pairs): optimistic"
    return Outcome(float(threshold), method, split.comparison, None, vecs)


def _metrics(outcome: Outcome, comparison: Comparison, comp: dict[str, str], seed: int) -> dict[str, Any]:
    """The new model directory's metrics: the comparison, the held-out validation, and the
    impostor table (for the identification threshold) when there are three identities or more."""
    metrics: dict[str, Any] = {"retrain": comparison.to_dict()}
    if outcome.validation is not None:
        metrics["validation"] = outcome.validation
    keys = sorted(outcome.vecs)
    if len({comp[k] for k in keys}) >= 3:
        metrics["impostor_far_table"] = impostor_far_table(
            np.stack([outcome.vecs[k] for k in keys]).astype(np.float32), np.array([comp[k] for k in keys]), seed=seed
        )
    return metrics


def _training_record(
    parent: Any, opts: RetrainOptions, pairs: PairCounts, pairs_file: Any, from_enrolled: bool, from_feedback: bool
) -> dict[str, Any]:
    """config.json's "training": where the new tower came from and how it was fine-tuned."""
    return {
        "source": "retrain",
        "parent_model_id": parent.model_id,
        "parent_version": int(parent.id),
        "mode": "pairs (fine-tuning)",
        "epochs": opts.epochs,
        "learning_rate": opts.learning_rate,
        "batch_size": opts.batch_size,
        "seed": opts.seed,
        "pairs": pairs.to_dict(),
        "pairs_file": str(pairs_file) if pairs_file else None,
        "from_enrolled": from_enrolled,
        "from_feedback": from_feedback,
    }


def _record_version(
    idx: SiameseIndex, emb: KerasEmbedder, parent: Any, new_cfg: ModelConfig, comparison: Comparison, pairs: PairCounts
) -> tuple[int, str, Path]:
    """The new tower as a version of the home (never served yet): its model_versions row and
    HOME/models/<version>. Returns (version, model id, directory). The caller holds the version
    lock; InvalidData when fine-tuning changed no weight."""
    from siamese_index.towers.modeldir import model_id_for, write_model_dir

    model_id = model_id_for(new_cfg.arch, emb.tower.get_weights())
    if model_id == parent.model_id:
        raise InvalidData("the retrained tower has exactly the active one's weights: nothing was learned")
    scores = {
        "source": "retrain",
        "comparison": comparison.to_dict(),
        "pairs": pairs.to_dict(),
        "threshold_method": new_cfg.threshold_method,
    }
    vid = insert_version(
        idx.db,
        model_id=model_id,
        dim=int(new_cfg.embedding_dim),
        threshold=new_cfg.threshold,
        parent=int(parent.id),
        scores=scores,
    )
    out = idx.home / MODELS_DIR_NAME / str(vid)
    out.parent.mkdir(mode=0o700, exist_ok=True)
    write_model_dir(out, new_cfg, emb.tower)
    if new_cfg.model_id != model_id:  # cannot happen: the same weights hash
        raise ModelError(f"{out}: model id {new_cfg.model_id} != {model_id}")
    return vid, model_id, out


def _activate_new(
    idx: SiameseIndex, vid: int, opts: RetrainOptions, say: Say
) -> tuple[ActivationReport | None, str | None]:
    """Activate the recorded version: (its activation report, None), or (None, why it failed)."""
    from siamese_index.lifecycle.versions import activate

    say(f"activating version {vid}: re-embedding the enrolled photos")
    try:
        report = activate(
            idx,
            vid,
            drop_unstored=opts.drop_unstored,
            progress=lambda done, total, phase: say(f"{phase} {done}/{total}"),
        )
    except SiameseIndexError as e:
        return None, str(e)
    return report, None


FineTune = Callable[..., list[dict[str, Any]]]


@dataclass(frozen=True)
class PairSources:
    """Where a retrain's pairs come from (any of the three, at least one)."""

    pairs_file: str | Path | None = None
    from_enrolled: bool = False
    from_feedback: bool = False


def _pairs_step(
    idx: SiameseIndex, emb: Embedder, src: PairSources, opts: RetrainOptions, say: Say
) -> tuple[PairSet, Split, PairCounts]:
    """Gather the pairs, split them for judging, count them (and say so)."""
    ps, conflicts = gather_pairs(
        idx, emb, src.pairs_file, from_enrolled=src.from_enrolled, from_feedback=src.from_feedback, opts=opts, say=say
    )
    split = split_for_judging(ps, opts)
    pairs = _pair_counts(ps, split, conflicts)
    dropped = f", {split.crossing} dropped (they join held-out and training identities)" if split.crossing else ""
    say(f"{pairs.total} pairs of {pairs.photos} photos: {pairs.train} to train on, {pairs.held_out} held out{dropped}")
    return ps, split, pairs


def _tune_and_judge(
    emb: KerasEmbedder, parent: Any, ps: PairSet, split: Split, opts: RetrainOptions, say: Say, tune: FineTune
) -> tuple[list[dict[str, Any]], str, Outcome]:
    """Old distances on the held-out pairs, fine-tuning (the tower in place), then the new
    threshold and old against new. Returns (history, augmentation used, outcome)."""
    cfg = emb.config
    held_keys = {p.a for p in split.held} | {p.b for p in split.held}
    d_old = _distances(_embed_keys(emb, ps, held_keys), split.held) if split.judged else None
    augmentation = opts.augmentation or cfg.augmentation or "none"
    say(f"fine-tuning {parent.model_id} (version {parent.id}) for {opts.epochs} epochs")
    history = tune(
        emb.tower,
        ps,
        split.train,
        epochs=opts.epochs,
        learning_rate=opts.learning_rate,
        batch_size=opts.batch_size,
        margin=cfg.margin,
        augmentation=augmentation,
        seed=opts.seed,
        progress=say,
    )
    if d_old is None:
        return history, augmentation, _unjudged_outcome(emb, ps, split)
    return history, augmentation, _judged_outcome(emb, ps, split, d_old, cfg.threshold, opts)


def _new_config(
    cfg: ModelConfig,
    outcome: Outcome,
    history: list[dict[str, Any]],
    augmentation: str,
    metrics: dict[str, Any],
    training: dict[str, Any],
) -> ModelConfig:
    """The retrained tower's config: the parent's, with the new threshold, metrics and provenance."""
    from siamese_index.towers.modeldir import library_versions

    return replace(
        cfg,
        threshold=outcome.threshold,
        threshold_method=outcome.threshold_method,
        model_id=None,
        metrics=metrics,
        history=history,
        augmentation=augmentation,
        versions=library_versions(),
        training=training,
    )


def retrain(
    idx: SiameseIndex,
    pairs_file: str | Path | None = None,
    *,
    from_enrolled: bool = False,
    from_feedback: bool = False,
    options: RetrainOptions | None = None,
    progress: Say | None = None,
    _fine_tune: FineTune | None = None,
) -> RetrainReport:
    """Fine-tune the active tower on new pairs, compare, record a new version, activate it when
    it is not worse (or options.force). See the module notes; the steps are the functions
    above (gather_pairs, split_for_judging, fine_tune, judge.judge and judge.decide, recording,
    activating). Raises InvalidData for bad pairs (every bad CSV line listed) before any
    training. _fine_tune replaces fine_tune (tests)."""
    opts = options or RetrainOptions()
    say = progress or (lambda _m: None)
    _check_request(pairs_file, from_enrolled, from_feedback, opts)
    idx.ensure_open()
    started = time.perf_counter()
    with holding_version_lock(idx.home):
        parent, emb = _parent_tower(idx)
        ps, split, pairs = _pairs_step(idx, emb, PairSources(pairs_file, from_enrolled, from_feedback), opts, say)
        history, augmentation, outcome = _tune_and_judge(emb, parent, ps, split, opts, say, _fine_tune or fine_tune)
        verdict = decide(split.judged, outcome.comparison.worse or (), force=opts.force, activate=opts.activate)
        comparison = replace(outcome.comparison, verdict=verdict.verdict)
        metrics = _metrics(outcome, comparison, split.comp, opts.seed)
        training = _training_record(parent, opts, pairs, pairs_file, from_enrolled, from_feedback)
        new_cfg = _new_config(emb.config, outcome, history, augmentation, metrics, training)
        vid, model_id, out = _record_version(idx, emb, parent, new_cfg, comparison, pairs)
        say(f"recorded version {vid} ({model_id}): {verdict.decision}")
        activation, error = _activate_new(idx, vid, opts, say) if verdict.activate else (None, None)
    decision = verdict.decision
    if error is not None:
        decision = f"recorded but NOT activated: {error} (version {vid} stays available: `models activate {vid}`)"
    return RetrainReport(
        version=vid,
        model_id=model_id,
        model_dir=str(out),
        parent=ParentVersion(int(parent.id), parent.model_id),
        pairs=pairs,
        comparison=comparison,
        threshold=outcome.threshold,
        threshold_method=outcome.threshold_method,
        history=tuple(history),
        decision=decision,
        activated=activation is not None,
        activation=activation,
        warnings=tuple(ps.warnings),
        activation_error=error,
        seconds=round(time.perf_counter() - started, 1),
    )
