"""Commands that make and measure models: train, evaluate, calibrate, ensemble, embed, teacher."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .output import emit_json, fmt, handle_errors, progress_line, quiet_tensorflow, warn


def _parse_size(value: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected HEIGHTxWIDTH, e.g. 48x40") from None
    return h, w


def _parse_crop(value: str | None):
    if not value:
        return None
    try:
        box = tuple(float(v) for v in value.split(","))
    except ValueError:
        box = ()
    if len(box) != 4 or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
        raise click.BadParameter(f"{value!r}: expected left,top,right,bottom fractions in [0, 1]")
    return box


def _load_progress(done: int, total: int) -> None:
    progress_line(f"loading images {done}/{total}")


@click.command()
@click.argument("data_dir", type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Model directory to write.")
@click.option(
    "--arch",
    default="facenet-s",
    show_default=True,
    type=click.Choice(["dense", "seed-conv", "seed-gap", "facenet-s"]),
    help="Tower architecture.",
)
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for the split, pairs and weights.")
@click.option(
    "--margin",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Contrastive loss margin.",
)
@click.option(
    "--mode",
    default="batch",
    show_default=True,
    type=click.Choice(["batch", "pairs"]),
    help="batch: all pairs inside identity batches (hard impostors weigh most); pairs: fixed pairs as the seeds do.",
)
@click.option(
    "--val-fraction",
    default=0.2,
    show_default=True,
    type=click.FloatRange(0, 0.9, min_open=True),
    help="Share of identities held out (never trained on) to calibrate the pair threshold.",
)
@click.option("--size", default="48x40", show_default=True, help="Input HEIGHTxWIDTH for images.")
@click.option("--channels", default=1, show_default=True, type=click.Choice(["1", "3"]), help="1 = grayscale, 3 = RGB.")
@click.option(
    "--crop", default=None, help="Fractional box left,top,right,bottom cut before resizing (e.g. LFW's centre)."
)
@click.option(
    "--face-crop/--no-face-crop",
    default=False,
    show_default=True,
    help="Detect and crop the largest face at enrollment, lookup and evaluation. Training images are still cut with --crop (unless --detect-faces): use it on an aligned set (LFW) whose fixed crop matches the detector's framing.",
)
@click.option(
    "--detect-faces",
    is_flag=True,
    help="Cut training images as enrollment does, around the detected face (needs --face-crop), instead of "
    "with the fixed --crop: for photos that are not aligned, such as ORL's.",
)
@click.option(
    "--augment",
    default=None,
    type=click.Choice(["faces", "symbols", "none"]),
    help="Training augmentation (default: faces for images).",
)
@click.option(
    "--embedding-dim", default=None, type=click.IntRange(2), help="Embedding size (default: the architecture's)."
)
@click.option("--lr", "learning_rate", default=1e-3, show_default=True, type=float)
@click.option(
    "--batch-identities",
    default=16,
    show_default=True,
    type=click.IntRange(2),
    help="Identities per batch (batch mode).",
)
@click.option(
    "--images-per-identity",
    default=4,
    show_default=True,
    type=click.IntRange(2),
    help="Images per identity per batch (batch mode).",
)
@click.option(
    "--pairs-per-epoch", default=4000, show_default=True, type=click.IntRange(64), help="Pairs per epoch (pairs mode)."
)
@click.option(
    "--group-batches/--no-group-batches",
    default=True,
    show_default=True,
    help="When identities have groups (Omniglot's alphabets), fill each batch from one group first: hard impostors.",
)
@click.option(
    "--steps-per-epoch",
    default=None,
    type=click.IntRange(1),
    help="Batches per epoch (default: one pass over the images).",
)
@click.option(
    "--proxy-weight",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Weight of an auxiliary CosFace loss on learned identity proxies (batch mode; 0 = contrastive only).",
)
@click.option(
    "--init",
    "init_from",
    default=None,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Start from this model directory's weights (same architecture and input size).",
)
@click.option(
    "--teacher",
    "teacher_file",
    default=None,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Distil from this teacher file (`siamese-index teacher`): each image's embedding is pulled towards its teacher vector (batch mode).",
)
@click.option(
    "--teacher-weight",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="Weight of the distillation loss.",
)
@click.option(
    "--ema",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1, max_open=True),
    help="Keep an exponential moving average of the weights with this momentum per step (e.g. 0.999; 0 = off): "
    "it is what is validated and saved.",
)
@click.option(
    "--identities", "include", multiple=True, help="Only identities matching this shell pattern (repeatable)."
)
@click.option("--exclude", multiple=True, help="Leave out identities matching this shell pattern (repeatable).")
@click.option("--overwrite", is_flag=True, help="Replace an existing model directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the written config as JSON.")
@handle_errors
def train(
    data_dir,
    out,
    arch,
    epochs,
    seed,
    margin,
    mode,
    val_fraction,
    size,
    channels,
    crop,
    face_crop,
    detect_faces,
    augment,
    embedding_dim,
    learning_rate,
    batch_identities,
    images_per_identity,
    pairs_per_epoch,
    group_batches,
    steps_per_epoch,
    proxy_weight,
    init_from,
    teacher_file,
    teacher_weight,
    ema,
    include,
    exclude,
    overwrite,
    as_json,
):
    """Train a tower on DATA_DIR (a folder of identities, or an .npz with X and y); write a model directory.

    The pair threshold is calibrated on identities held out of training, so it reflects people
    the tower has never seen.

    \f
    Long because click hands over its 30 options as parameters; the body parses, calls, prints.
    """
    quiet_tensorflow()
    from siamese_index import Preprocessing, TrainOptions, load_dataset
    from siamese_index import train as run_train

    h, w = _parse_size(size)
    prep = Preprocessing(h, w, int(channels), _parse_crop(crop), face_crop)
    if detect_faces and not face_crop:
        raise click.UsageError(
            "--detect-faces needs --face-crop: the model must crop faces the same way when it is used"
        )
    data = load_dataset(
        data_dir, prep, progress=_load_progress, include=include, exclude=exclude, detect_faces=detect_faces
    )
    for path, reason in data.skipped:
        warn(f"skipped {path}: {reason}")
    is_images = data.x.ndim == 4
    if not is_images and arch != "dense":
        raise click.UsageError(f"{data_dir} holds vectors; only --arch dense fits them")
    options = TrainOptions(
        arch=arch,
        epochs=epochs,
        seed=seed,
        margin=margin,
        embedding_dim=embedding_dim,
        val_fraction=val_fraction,
        mode=mode,
        identities_per_batch=batch_identities,
        images_per_identity=images_per_identity,
        pairs_per_epoch=pairs_per_epoch,
        learning_rate=learning_rate,
        augmentation=(augment or "faces") if is_images else "none",
        steps_per_epoch=steps_per_epoch,
        group_batches=group_batches,
        proxy_weight=proxy_weight,
        init_from=init_from,
        teacher_file=teacher_file,
        teacher_weight=teacher_weight,
        ema=ema,
        detect_faces=detect_faces,
    )
    progress_line(f"training {arch} on {len(data)} rows of {data.n_identities} identities ({mode} mode)")
    config = run_train(
        data, out, options, prep if is_images else None, progress=_epoch_line, source=str(data_dir), overwrite=overwrite
    )
    _print_trained(config, out, as_json)


def _epoch_line(r) -> None:
    progress_line(
        f"epoch {r.epoch}/{r.epochs}  loss {r.loss:.4f}  val_loss {r.val_loss:.4f}  val_auc {r.val_auc:.4f}  {r.seconds:.0f}s"
    )


def _print_trained(config, out: Path, as_json: bool) -> None:
    if as_json:
        click.echo(config.to_json())
        return
    v = config.metrics["validation"]
    click.echo(f"wrote {out} (model id {config.model_id})")
    click.echo(f"pair threshold {config.threshold:.4f}: {config.threshold_method}")
    click.echo(
        f"validation: accuracy {fmt(v['accuracy'])}  AUC {fmt(v['auc'])}  EER {fmt(v['eer'])}  TAR@FAR1% {fmt(v['tar_at_far_1pct'])}"
    )


@click.command()
@click.argument("data_dir", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--model", default=None, help="Model directory or name under models/ (default: the shipped face tower).")
@click.option(
    "--pairs",
    "pairs_file",
    type=click.Path(exists=True, path_type=Path),
    help="Verify these pairs (CSV image_a,image_b,label or LFW pairs.txt) instead of sampled ones.",
)
@click.option(
    "--pairs-root",
    type=click.Path(exists=True, path_type=Path),
    help="Image folder for an LFW pairs.txt (default: DATA_DIR).",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for sampled pairs and N-way tasks.")
@click.option(
    "--cap", default=20, show_default=True, type=click.IntRange(1), help="At most this many genuine pairs per identity."
)
@click.option("--n-way", default=None, type=click.IntRange(2), help="Also run N-way one-shot tasks within each group.")
@click.option("--tasks", default=400, show_default=True, type=click.IntRange(1), help="Number of N-way tasks.")
@click.option(
    "--identities", "include", multiple=True, help="Only identities matching this shell pattern (repeatable)."
)
@click.option("--exclude", multiple=True, help="Leave out identities matching this shell pattern (repeatable).")
@click.option(
    "--held-out", is_flag=True, help="Only the identities the model held out of its training (recorded in its config)."
)
@click.option("--plot", type=click.Path(path_type=Path), help="Write a PNG with the ROC curve and distance histograms.")
@click.option(
    "--pairs-figure", type=click.Path(path_type=Path), help="Write a PNG grid of sample pairs with their distances."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def evaluate(
    data_dir,
    model,
    pairs_file,
    pairs_root,
    seed,
    cap,
    n_way,
    tasks,
    include,
    exclude,
    held_out,
    plot,
    pairs_figure,
    as_json,
):
    """Measure a model on DATA_DIR: verification at its pair threshold, one-shot rank-1/5, optional N-way."""
    if data_dir is None and pairs_file is None:
        raise click.UsageError("give DATA_DIR, --pairs FILE, or both")
    quiet_tensorflow()
    from siamese_index import KerasEmbedder, load_dataset, read_pairs_file
    from siamese_index import evaluate as run_evaluate
    from siamese_index.config import resolve_model_dir

    embedder = KerasEmbedder(resolve_model_dir(model))
    if held_out:
        include = tuple(include) + _held_out_patterns(embedder)
    data = None
    if data_dir is not None:
        data = load_dataset(data_dir, embedder.preprocessing, progress=_load_progress, include=include, exclude=exclude)
    rows = None
    if pairs_file is not None:
        rows = read_pairs_file(pairs_file, pairs_root or data_dir)
    report = run_evaluate(embedder, data, seed=seed, cap_per_identity=cap, pair_rows=rows, n_way=n_way, tasks=tasks)
    pairs = report.pairs
    if plot and pairs is not None:
        from siamese_index import plot_roc

        plot_roc(pairs.distances, pairs.labels, embedder.threshold, plot)
    if pairs_figure and data is not None and pairs is not None and pairs.rows_a is not None:
        from siamese_index import plot_pairs

        plot_pairs(data.x, pairs.rows_a, pairs.rows_b, pairs.distances, pairs.labels, embedder.threshold, pairs_figure)
    _print_evaluation({**report.to_dict(), "model": str(embedder.model_dir)}, as_json)


def _print_evaluation(report: dict, as_json: bool) -> None:
    if as_json:
        emit_json(report)
        return
    for item in report.get("skipped", []):
        warn(f"skipped {item['path']}: {item['reason']}")
    v = report.get("verification")
    click.echo(f"model {report['model']} ({report['model_id']}), pair threshold {fmt(report['threshold'], 4)}")
    if v:
        click.echo(f"verification on {v['pairs']} {v['source']}:")
        click.echo(f"  accuracy at the model's pair threshold  {fmt(v['accuracy'])}")
        click.echo(
            f"  best accuracy over all thresholds  {fmt(v['best_accuracy'])}  (optimistic: threshold {fmt(v['best_threshold'], 4)} chosen on these pairs)"
        )
        click.echo(f"  ROC AUC {fmt(v['auc'])}   EER {fmt(v['eer'])}   TAR at 1% FAR {fmt(v['tar_at_far_1pct'])}")
    o = report.get("one_shot")
    if o:
        click.echo(f"one-shot identification: {o['identities']} enrolled (first image each), {o['probes']} probes")
        click.echo(f"  rank-1 {fmt(o['rank1'])}   rank-5 {fmt(o['rank5'])}")
    nw = report.get("n_way")
    if nw:
        click.echo(f"{nw['n_way']}-way one-shot over {nw['tasks']} tasks: accuracy {fmt(nw['accuracy'])}")


def _held_out_patterns(embedder) -> tuple[str, ...]:
    from siamese_index import held_out_patterns

    patterns = held_out_patterns(embedder.config)
    if not patterns:
        raise click.UsageError(f"{embedder.model_dir} records no held-out identities")
    return patterns


@click.command()
@click.argument("data_dirs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--model", default=None, help="Model directory or name under models/ (default: the shipped face tower).")
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Model directory to write (same weights, new pair threshold).",
)
@click.option(
    "--identities", "include", multiple=True, help="Only identities matching this shell pattern (repeatable)."
)
@click.option("--exclude", multiple=True, help="Leave out identities matching this shell pattern (repeatable).")
@click.option(
    "--held-out",
    is_flag=True,
    help="From the folder the model trained on, keep only the identities it held out (recorded in its config).",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for the sampled pairs.")
@click.option(
    "--cap", default=20, show_default=True, type=click.IntRange(1), help="At most this many genuine pairs per identity."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing model directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the calibration record as JSON.")
@handle_errors
def calibrate(data_dirs, model, out, include, exclude, held_out, seed, cap, overwrite, as_json):
    """Choose the model's pair threshold again on people from DATA_DIRS it never trained on.

    For a camera unlike the training photos: pairs from each folder weigh the same. With one
    folder the threshold that verifies it best is kept; with several, the one at which the
    folder that loses most accuracy (against its own best threshold) loses least. A new model
    directory is written with the same weights (and model id) and the new pair threshold.
    """
    quiet_tensorflow()
    from siamese_index import KerasEmbedder, load_calibration_sets
    from siamese_index import calibrate as run_calibrate
    from siamese_index.config import resolve_model_dir

    embedder = KerasEmbedder(resolve_model_dir(model))
    sets = load_calibration_sets(
        embedder.config,
        data_dirs,
        embedder.preprocessing,
        model_name=str(embedder.model_dir),
        include=include,
        exclude=exclude,
        held_out=held_out,
        progress=_load_progress,
    )
    for cal in sets:
        for path, reason in cal.data.skipped:
            warn(f"skipped {path}: {reason}")
    config = run_calibrate(embedder, sets, out, seed=seed, cap_per_identity=cap, overwrite=overwrite)
    record = config.training["calibration"]
    if as_json:
        emit_json({"model": str(out), "model_id": config.model_id, "threshold": config.threshold, **record})
        return
    click.echo(
        f"wrote {out} ({config.model_id}): pair threshold {fmt(record['previous_threshold'], 4)} -> {fmt(config.threshold, 4)}"
    )
    for s in record["sets"]:
        click.echo(
            f"  {s['source']}: {s['identities']} identities, {s['pairs']} pairs, accuracy "
            f"{fmt(s['accuracy_before'])} -> {fmt(s['accuracy_after'])} "
            f"({fmt(s['accuracy_lost'])} below its own best, at threshold {fmt(s['best_threshold'], 4)})"
        )


@click.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Model directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing model directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the written config as JSON.")
@handle_errors
def ensemble(models, out, overwrite, as_json):
    """Join trained towers (directories or names under models/) into one model directory.

    Their embeddings are concatenated, so distances average the members'. The ensemble has
    no pair threshold until `calibrate` chooses one on people none of the members trained on.
    """
    quiet_tensorflow()
    from siamese_index import build_ensemble
    from siamese_index.config import resolve_model_dir

    config = build_ensemble([resolve_model_dir(m) for m in models], out, overwrite=overwrite)
    if as_json:
        click.echo(config.to_json())
        return
    click.echo(f"wrote {out} (model id {config.model_id}): {len(models)} towers, {config.embedding_dim}-d")
    click.echo(f"next: siamese-index calibrate DATA_DIR... --model {out} --out DIR  (it has no pair threshold yet)")


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", default=None, help="Model directory or name under models/ (default: the shipped face tower).")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Write an (n, dim) float32 .npy here instead of JSON lines on stdout.",
)
@handle_errors
def embed(files, model, out):
    """Print the embeddings of FILES (JSON lines), or save them as .npy with --out.

    Unreadable files are reported on stderr and skipped; the exit status is then 1.
    """
    quiet_tensorflow()
    import numpy as np

    from siamese_index import KerasEmbedder
    from siamese_index.config import resolve_model_dir

    embedder = KerasEmbedder(resolve_model_dir(model))
    vecs, ok, failed = embedder.embed_files(files)
    for path, reason in failed:
        warn(f"skipped {path}: {reason}")
    if out:
        np.save(out, vecs)
        click.echo(f"wrote {len(ok)} embeddings of size {embedder.dim} to {out}", err=True)
    else:
        for path, v in zip(ok, vecs):
            sys.stdout.write(
                json.dumps({"path": path, "model_id": embedder.model_id, "embedding": [round(float(x), 6) for x in v]})
                + "\n"
            )
    if failed and not ok:
        raise click.ClickException("no file could be embedded")
    if failed:
        raise SystemExit(1)  # like the index commands: exit 1 when any input failed


@click.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Teacher file (.npz) to write."
)
@click.option(
    "--identities", "include", multiple=True, help="Only identities matching this shell pattern (repeatable)."
)
@click.option("--exclude", multiple=True, help="Leave out identities matching this shell pattern (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@handle_errors
def teacher(data_dir, out, include, exclude, as_json):
    """Embed DATA_DIR's faces with dlib's pretrained face model, for `train --teacher`.

    Needs the optional extra: pip install -e ".[teacher]". Only training uses the file; the
    tower it trains runs without dlib.
    """
    from siamese_index import compute_teacher_file

    def progress(done, total):
        progress_line(f"teacher {done}/{total}")

    summary = compute_teacher_file(data_dir, out, progress=progress, include=include, exclude=exclude)
    if as_json:
        emit_json(summary.to_dict())
        return
    for item in summary.skipped:
        warn(f"skipped {item['path']}: {item['reason']}")
    click.echo(
        f"wrote {summary.out}: {summary.images} images, {summary.dim}-d, "
        f"face detected in {summary.faces_detected} (the others framed by default)"
    )


COMMANDS = [train, evaluate, calibrate, ensemble, embed, teacher]
