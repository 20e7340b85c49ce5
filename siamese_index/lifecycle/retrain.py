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

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import combinations
from pathlib import Path

import numpy as np
from sqlalchemy import select

from siamese_index.errors import InvalidData, InvalidImage, ModelError, SiameseIndexError
from siamese_index.lifecycle.versions import holding_version_lock, insert_version, model_path
from siamese_index.storage.db import feedback, identities, images, model_versions
from siamese_index.training.metrics import accuracy_at, best_threshold, impostor_far_table, roc_auc, verification_report

log = logging.getLogger(__name__)


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
# Pairs and the identity graph
# ---------------------------------------------------------------------------------------------
class _UnionFind:
    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class Pair:
    a: str  # content sha256 of each photo: one graph node per distinct photo
    b: str
    label: int
    origin: str  # "csv line N", "enrolled E1", "feedback 3"


@dataclass
class PairSet:
    """Photos (prepared for the tower), the pairs among them, and the identity graph."""

    embedder: object
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    pairs: list[Pair] = field(default_factory=list)
    graph: _UnionFind = field(default_factory=_UnionFind)
    counts: dict[str, int] = field(default_factory=lambda: {"csv": 0, "enrolled": 0, "feedback": 0})
    warnings: list[str] = field(default_factory=list)

    def add_photo(self, data: bytes, name: str) -> str:
        """Prepare a photo (raises InvalidImage); returns its node key."""
        key = hashlib.sha256(data).hexdigest()
        if key not in self.arrays:
            arr, _ = self.embedder.prepare(data, name=name, strict_face=False)
            self.arrays[key] = arr
            self.names[key] = name
        self.graph.find(key)
        return key

    def add_pair(self, a: str, b: str, label: int, origin: str, kind: str) -> None:
        if a == b:
            return  # the same photo twice says nothing
        self.pairs.append(Pair(a, b, int(label), origin))
        self.counts[kind] += 1
        if label == 1:
            self.graph.union(a, b)


def add_csv_pairs(ps: PairSet, path) -> None:
    """The CSV's pairs; every bad row is reported by line number (InvalidData) before training."""
    from siamese_index.imaging.sources import read_source
    from siamese_index.training.pairs import _read_csv, read_pairs_file

    path = Path(path)
    if not path.is_file():
        raise InvalidData(f"{path}: no such pairs file")
    with path.open(encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
    rows = _read_csv(path) if "," in first else read_pairs_file(path)  # structural errors, all lines
    root = path.parent.resolve()
    errors: list[str] = []
    done: dict[Path, str | InvalidImage] = {}
    keys = []
    for r in rows:
        pair = []
        for col, p in (("image_a", r.image_a), ("image_b", r.image_b)):
            if p not in done:
                try:
                    src = read_source(p)
                    done[p] = ps.add_photo(src.data, str(p))
                except InvalidImage as e:
                    done[p] = e
            got = done[p]
            if isinstance(got, InvalidImage):
                shown = p.relative_to(root) if p.is_relative_to(root) else p
                errors.append(f"{path}: line {r.line}: {col} {str(shown)!r} is not a usable image ({got.reason})")
            pair.append(got)
        keys.append((r, pair))
    if errors:
        raise InvalidData("\n".join(errors))
    for r, (a, b) in keys:
        ps.add_pair(a, b, r.label, f"csv line {r.line}", "csv")


def _stored_photos(idx, ps: PairSet, conn, warn_prefix: str) -> dict[str, list[str]]:
    """The node keys of every enrolled person's stored photos: {external id: [key, ...]}."""
    rows = conn.execute(
        select(images.c.stored_path, images.c.content_sha256, images.c.source_name, identities.c.external_id)
        .join(identities, identities.c.id == images.c.identity_id)
        .where(images.c.stored_path.is_not(None))
        .order_by(images.c.id)
    ).all()
    out: dict[str, list[str]] = {}
    bad = 0
    for r in rows:
        try:
            data = (idx.home / r.stored_path).read_bytes()
            if hashlib.sha256(data).hexdigest() != r.content_sha256:
                raise InvalidImage(r.stored_path, "damaged copy")
            key = ps.add_photo(data, f"{r.external_id}/{r.source_name or r.stored_path}")
        except (OSError, InvalidImage):
            bad += 1
            continue
        out.setdefault(r.external_id, []).append(key)
    if bad:
        ps.warnings.append(
            f"{warn_prefix}: {bad} stored copies were missing, damaged or unreadable and were skipped (check --repair)"
        )
    return out


def add_enrolled_pairs(idx, ps: PairSet, per_identity: int, seed: int) -> None:
    """Genuine pairs among each person's stored photos (up to per_identity), as many impostors."""
    rng = np.random.default_rng(seed)
    with idx.db.read() as conn:
        people = _stored_photos(idx, ps, conn, "--from-enrolled")
    for keys in people.values():  # photos of one enrolled person are one identity
        for k in keys[1:]:
            ps.graph.union(keys[0], k)
    genuine = []
    for who, keys in sorted(people.items()):
        combos = list(combinations(sorted(set(keys)), 2))
        for i in rng.permutation(len(combos))[:per_identity]:
            genuine.append((combos[i], who))
    for (a, b), who in genuine:
        ps.add_pair(a, b, 1, f"enrolled {who}", "enrolled")
    flat = [(who, k) for who, keys in sorted(people.items()) for k in keys]
    if len(people) < 2 or not genuine:
        if not genuine:
            ps.warnings.append("--from-enrolled: no enrolled person has two stored photos: no genuine pairs from them")
        return
    made, tries = 0, 0
    while made < len(genuine) and tries < 50 * len(genuine):
        tries += 1
        (wa, ka), (wb, kb) = (flat[i] for i in rng.integers(0, len(flat), size=2))
        if wa != wb and ps.graph.find(ka) != ps.graph.find(kb):
            ps.add_pair(ka, kb, 0, f"enrolled {wa} vs {wb}", "enrolled")
            made += 1


def add_feedback_pairs(idx, ps: PairSet, per_query: int) -> None:
    """Each correction: the query photo with up to per_query stored photos of the person."""
    with idx.db.read() as conn:
        rows = conn.execute(
            select(
                feedback.c.id, feedback.c.label, feedback.c.query_image, feedback.c.query_name, identities.c.external_id
            )
            .join(identities, identities.c.id == feedback.c.identity_id)
            .order_by(feedback.c.id)
        ).all()
        people = _stored_photos(idx, ps, conn, "--from-feedback") if rows else {}
    if not rows:
        ps.warnings.append("--from-feedback: no feedback has been recorded (see `siamese-index feedback`)")
        return
    for keys in people.values():
        for k in keys[1:]:
            ps.graph.union(keys[0], k)
    skipped = 0
    for r in rows:
        photos = people.get(r.external_id, [])[:per_query]
        try:
            q = ps.add_photo(r.query_image, f"feedback {r.id}: {r.query_name}")
        except InvalidImage:
            skipped += 1
            continue
        if not photos:
            skipped += 1
            continue
        for k in photos:
            ps.add_pair(q, k, int(r.label), f"feedback {r.id}", "feedback")
    if skipped:
        ps.warnings.append(
            f"--from-feedback: {skipped} corrections gave no pair (unreadable query, or the person has no stored photo)"
        )


# ---------------------------------------------------------------------------------------------
# Splitting by identity
# ---------------------------------------------------------------------------------------------
def split_pairs(ps: PairSet, fraction: float, seed: int) -> tuple[list[Pair], list[Pair], int, dict[str, int]]:
    """(train, held_out, crossing, fold_of_component): whole components held out until about
    `fraction` of the genuine pairs are; impostor pairs joining the two sides are dropped."""
    comp = {k: ps.graph.find(k) for k in ps.arrays}
    genuine_of: dict[str, int] = {}
    for p in ps.pairs:
        genuine_of.setdefault(comp[p.a], 0)
        genuine_of.setdefault(comp[p.b], 0)
        if p.label == 1:
            genuine_of[comp[p.a]] += 1
    comps = sorted(genuine_of)
    target = fraction * sum(genuine_of.values())
    held: dict[str, int] = {}  # component -> fold (0/1), for the 2-fold accuracy
    got = 0
    for c in (comps[i] for i in np.random.default_rng(seed).permutation(len(comps))):
        if got >= target or target <= 0:
            break
        held[c] = len(held) % 2
        got += genuine_of[c]
    train, held_out, crossing = [], [], 0
    for p in ps.pairs:
        ha, hb = comp[p.a] in held, comp[p.b] in held
        if ha and hb:
            held_out.append(p)
        elif not ha and not hb:
            train.append(p)
        else:
            crossing += 1
    return train, held_out, crossing, held


def _distances(vecs: dict[str, np.ndarray], pairs: list[Pair]) -> np.ndarray:
    return np.array([float(np.linalg.norm(vecs[p.a] - vecs[p.b])) for p in pairs], dtype=np.float64)


def _embed_keys(embedder, ps: PairSet, keys) -> dict[str, np.ndarray]:
    keys = sorted(set(keys))
    if not keys:
        return {}
    vecs = np.asarray(embedder.embed_batch(np.stack([ps.arrays[k] for k in keys])), dtype=np.float64)
    return dict(zip(keys, vecs))


def _two_fold_accuracy(d: np.ndarray, y: np.ndarray, fold: np.ndarray) -> float | None:
    """Threshold chosen on one fold of identities, accuracy measured on the other, averaged."""
    accs = []
    for f in (0, 1):
        cal, test = fold == f, fold == 1 - f
        for part in (cal, test):
            if not (y[part] == 1).any() or not (y[part] == 0).any():
                return None
        t, _ = best_threshold(d[cal], y[cal])
        accs.append(accuracy_at(d[test], y[test], t))
    return float(np.mean(accs))


# ---------------------------------------------------------------------------------------------
# Fine-tuning
# ---------------------------------------------------------------------------------------------
def fine_tune(
    tower,
    ps: PairSet,
    pairs: list[Pair],
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    margin: float,
    augmentation: str,
    seed: int,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """Continue training `tower` (in place) with the contrastive loss on `pairs` through the
    two-input Siamese network. Returns the per-epoch history."""
    import keras

    from siamese_index.towers.architectures import build_augmenter, build_siamese, contrastive_loss, with_augmentation

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
    bs = max(1, min(int(batch_size), len(y)))
    steps = max(1, -(-len(y) // bs))
    rng = np.random.default_rng(seed)

    def batches():
        while True:  # every pair once per epoch, in a new order; fixed batch size (last one wraps)
            order = rng.permutation(len(y))
            order = np.concatenate([order, order[: steps * bs - len(order)]])
            for s in range(steps):
                sl = order[s * bs : (s + 1) * bs]
                yield (x[a[sl]], x[b[sl]]), y[sl]

    history: list[dict] = []

    class Report(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            entry = {
                "epoch": epoch + 1,
                "loss": float((logs or {}).get("loss", float("nan"))),
                "seconds": round(time.perf_counter() - self.t0, 2),
            }
            history.append(entry)
            if progress:
                progress(f"epoch {entry['epoch']}/{epochs}: loss {entry['loss']:.4f} ({entry['seconds']:.1f}s)")

    net.fit(batches(), steps_per_epoch=steps, epochs=int(epochs), verbose=0, callbacks=[Report()])
    return history


# ---------------------------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------------------------
def _model_scores(d, y, own_threshold, fold) -> dict:
    return {
        "auc": roc_auc(d, y),
        "threshold": own_threshold,
        "accuracy": None if own_threshold is None else accuracy_at(d, y, own_threshold),
        "accuracy_2fold": None if fold is None else _two_fold_accuracy(d, y, fold),
        "mean_genuine_distance": float(d[y == 1].mean()) if (y == 1).any() else None,
        "mean_impostor_distance": float(d[y == 0].mean()) if (y == 0).any() else None,
    }


def retrain(
    idx,
    pairs_file=None,
    *,
    from_enrolled: bool = False,
    from_feedback: bool = False,
    options: RetrainOptions | None = None,
    progress: Callable[[str], None] | None = None,
    _fine_tune: Callable | None = None,
) -> dict:
    """Fine-tune the active tower on new pairs, compare, record a new version, activate it when
    it is not worse (or options.force). See the module notes. Returns the report:
    {"version", "model_id", "model_dir", "parent", "pairs", "comparison", "threshold",
    "threshold_method", "history", "decision", "activated", "activation", "warnings", "seconds"}.
    Raises InvalidData for bad pairs (every bad CSV line listed) before any training."""
    from siamese_index.towers.embedder import KerasEmbedder
    from siamese_index.towers.modeldir import library_versions, model_id_for, write_model_dir

    opts = options or RetrainOptions()
    say = progress or (lambda _m: None)
    if not (pairs_file or from_enrolled or from_feedback):
        raise InvalidData("nothing to learn from: give a pairs CSV, --from-enrolled or --from-feedback")
    if opts.epochs < 1 or opts.learning_rate <= 0 or not 0 < opts.holdout_fraction < 1:
        raise InvalidData("epochs must be >= 1, learning rate > 0 and the held-out share between 0 and 1")
    idx.ensure_open()
    started = time.perf_counter()
    with holding_version_lock(idx.home):
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
        cfg = emb.config
        if cfg.preprocessing is None:
            raise ModelError(f"{parent_dir}: a vector model cannot be retrained from image pairs")

        ps = PairSet(emb)
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

        train_pairs, held, crossing, held_comps = split_pairs(ps, opts.holdout_fraction, opts.seed)
        y_held = np.array([p.label for p in held], dtype=np.int64)
        n_gen, n_imp = int((y_held == 1).sum()), int((y_held == 0).sum())
        judged = n_gen >= opts.min_holdout and n_imp >= opts.min_holdout
        comparison: dict = {
            "judged": judged,
            "held_out_pairs": len(held),
            "held_out_genuine": n_gen,
            "held_out_impostor": n_imp,
            "held_out_identities": len(held_comps),
            "min_held_out_each": opts.min_holdout,
        }
        if not judged:
            comparison["reason"] = (
                f"too few held-out pairs to judge: {n_gen} genuine and {n_imp} impostor pairs of identities not "
                f"trained on (at least {opts.min_holdout} of each needed); trained on all {len(ps.pairs)} pairs, "
                f"and the new version is not activated without --force"
            )
            train_pairs, held, crossing = list(ps.pairs), [], 0
        train_y = np.array([p.label for p in train_pairs])
        if not len(train_pairs) or not (train_y == 1).any() or not (train_y == 0).any():
            raise InvalidData(
                f"training needs genuine and impostor pairs; it has {int((train_y == 1).sum())} "
                f"genuine and {int((train_y == 0).sum())} impostor pairs"
            )
        pairs_info = {
            **ps.counts,
            "total": len(ps.pairs),
            "photos": len(ps.arrays),
            "train": len(train_pairs),
            "held_out": len(held),
            "dropped_crossing": crossing,
            "conflicting": conflicts,
        }
        say(
            f"{len(ps.pairs)} pairs of {len(ps.arrays)} photos: {len(train_pairs)} to train on, {len(held)} held out"
            + (f", {crossing} dropped (they join held-out and training identities)" if crossing else "")
        )

        held_keys = {p.a for p in held} | {p.b for p in held}
        fold = (
            np.array(
                [
                    held_comps[comp[p.a]]
                    if comp[p.a] == comp[p.b] or held_comps[comp[p.a]] == held_comps[comp[p.b]]
                    else -1
                    for p in held
                ],
                dtype=np.int64,
            )
            if held
            else None
        )
        d_old = _distances(_embed_keys(emb, ps, held_keys), held) if judged else None

        augmentation = opts.augmentation or cfg.augmentation or "none"
        say(f"fine-tuning {parent.model_id} (version {parent.id}) for {opts.epochs} epochs")
        tune = _fine_tune or fine_tune
        history = tune(
            emb.tower,
            ps,
            train_pairs,
            epochs=opts.epochs,
            learning_rate=opts.learning_rate,
            batch_size=opts.batch_size,
            margin=cfg.margin,
            augmentation=augmentation,
            seed=opts.seed,
            progress=say,
        )

        if judged:
            new_vecs = _embed_keys(emb, ps, held_keys)
            d_new = _distances(new_vecs, held)
            threshold, _ = best_threshold(d_new, y_held)
            threshold_method = (
                f"max accuracy on {len(held)} held-out pairs of {len(held_comps)} identities not "
                f"trained on, after retraining"
            )
            old_s = _model_scores(d_old, y_held, cfg.threshold, fold)
            new_s = _model_scores(d_new, y_held, threshold, fold)
            worse = []
            if not (new_s["auc"] >= old_s["auc"] - opts.auc_tolerance):
                worse.append(f"held-out AUC {new_s['auc']:.4f} < {old_s['auc']:.4f}")
            if (
                old_s["accuracy_2fold"] is not None
                and new_s["accuracy_2fold"] is not None
                and new_s["accuracy_2fold"] < old_s["accuracy_2fold"] - opts.accuracy_tolerance
            ):
                worse.append(f"held-out 2-fold accuracy {new_s['accuracy_2fold']:.4f} < {old_s['accuracy_2fold']:.4f}")
            comparison.update(
                old=old_s,
                new=new_s,
                worse=worse,
                old_auc=old_s["auc"],
                new_auc=new_s["auc"],
                note="accuracy: each model at its own threshold (the new one is calibrated on these "
                "same pairs, so optimistic); accuracy_2fold: threshold chosen on one half of the "
                "held-out identities, measured on the other (fair to both)",
            )
            far_vecs, far_keys = new_vecs, sorted(held_keys)
        else:
            all_keys = sorted(ps.arrays)
            new_vecs = _embed_keys(emb, ps, all_keys)
            d_train = _distances(new_vecs, train_pairs)
            threshold, _ = best_threshold(d_train, train_y)
            threshold_method = (
                f"max accuracy on the {len(train_pairs)} training pairs (too few held-out pairs): optimistic"
            )
            worse = []
            far_vecs, far_keys = new_vecs, all_keys
        metrics = {"retrain": comparison}
        if judged:
            metrics["validation"] = verification_report(d_new, y_held, threshold)
        if len({comp[k] for k in far_keys}) >= 3:
            metrics["impostor_far_table"] = impostor_far_table(
                np.stack([far_vecs[k] for k in far_keys]).astype(np.float32),
                np.array([comp[k] for k in far_keys]),
                seed=opts.seed,
            )

        # The verdict is what the held-out pairs say (kept with the version); the decision is what
        # this run does about it.
        if not judged:
            verdict = "not judged: too few held-out pairs"
            decision = (
                "activated with --force, unjudged"
                if opts.force
                else "not activated: too few held-out pairs to judge (--force activates it anyway)"
            )
            activate = opts.force
        elif worse:
            verdict = "worse: " + "; ".join(worse)
            decision = (
                f"activated with --force although {verdict}"
                if opts.force
                else f"not activated: the new tower is {verdict} (--force activates it anyway)"
            )
            activate = opts.force
        else:
            verdict = "not worse on the held-out pairs"
            decision, activate = f"activated: {verdict}", True
        if not opts.activate and activate:
            decision, activate = f"recorded, not activated (--no-activate); verdict: {verdict}", False
        comparison["verdict"] = verdict

        model_id = model_id_for(cfg.arch, emb.tower.get_weights())
        if model_id == parent.model_id:
            raise InvalidData("the retrained tower has exactly the active one's weights: nothing was learned")
        new_cfg = replace(
            cfg,
            threshold=float(threshold),
            threshold_method=threshold_method,
            model_id=None,
            metrics=metrics,
            history=history,
            augmentation=augmentation,
            versions=library_versions(),
            training={
                "source": "retrain",
                "parent_model_id": parent.model_id,
                "parent_version": int(parent.id),
                "mode": "pairs (fine-tuning)",
                "epochs": opts.epochs,
                "learning_rate": opts.learning_rate,
                "batch_size": opts.batch_size,
                "seed": opts.seed,
                "pairs": pairs_info,
                "pairs_file": str(pairs_file) if pairs_file else None,
                "from_enrolled": from_enrolled,
                "from_feedback": from_feedback,
            },
        )
        scores = {
            "source": "retrain",
            "comparison": comparison,
            "pairs": pairs_info,
            "threshold_method": threshold_method,
        }
        vid = insert_version(
            idx.db,
            model_id=model_id,
            dim=int(cfg.embedding_dim),
            threshold=float(threshold),
            parent=int(parent.id),
            scores=scores,
        )
        out = idx.home / "models" / str(vid)
        out.parent.mkdir(mode=0o700, exist_ok=True)
        write_model_dir(out, new_cfg, emb.tower)
        if new_cfg.model_id != model_id:  # cannot happen: the same weights hash
            raise ModelError(f"{out}: model id {new_cfg.model_id} != {model_id}")
        say(f"recorded version {vid} ({model_id}): {decision}")

        report = {
            "version": vid,
            "model_id": model_id,
            "model_dir": str(out),
            "parent": {"version": int(parent.id), "model_id": parent.model_id},
            "pairs": pairs_info,
            "comparison": comparison,
            "threshold": float(threshold),
            "threshold_method": threshold_method,
            "history": history,
            "decision": decision,
            "activated": False,
            "activation": None,
            "warnings": ps.warnings,
        }
        if activate:
            from siamese_index.lifecycle.versions import activate as activate_version

            say(f"activating version {vid}: re-embedding the enrolled photos")
            try:
                report["activation"] = activate_version(
                    idx,
                    vid,
                    drop_unstored=opts.drop_unstored,
                    progress=lambda done, total, phase: say(f"{phase} {done}/{total}"),
                )
                report["activated"] = True
            except SiameseIndexError as e:
                report["activation_error"] = str(e)
                report["decision"] = (
                    f"recorded but NOT activated: {e} (version {vid} stays available: `models activate {vid}`)"
                )
        report["seconds"] = round(time.perf_counter() - started, 1)
        return report
