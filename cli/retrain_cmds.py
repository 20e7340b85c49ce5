"""Commands that move a home between towers: retrain, feedback, reembed, models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from .output import emit_json, fmt, handle_errors, progress_line, quiet_tensorflow, warn

if TYPE_CHECKING:
    from siamese_index.types import ActivationReport, RetrainReport

home_option = click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    help="The index's home folder (default: $SIAMESE_INDEX_HOME, else ~/.local/share/siamese-index).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
drop_option = click.option(
    "--drop-unstored",
    is_flag=True,
    help="Photos enrolled without a stored copy cannot be re-embedded by the new tower: remove those photos "
    "(their people stay) instead of refusing.",
)


def _open(home):
    quiet_tensorflow()
    from siamese_index import SiameseIndex

    return SiameseIndex.open(home=home, create=False)


def _progress(done: int, total: int, phase: str) -> None:
    progress_line(f"{phase} {done}/{total}")


def _print_activation(rep: ActivationReport) -> None:
    if not rep.changed:
        click.echo(rep.message or "nothing changed")
        return
    click.echo(
        f"now serving version {rep.to_version} ({rep.model_id}), generation {rep.generation}; "
        f"was version {rep.from_version}"
    )
    last = f" ({rep.caught_up} of them just before the switch, enrollments paused)" if rep.caught_up else ""
    click.echo(
        f"  {rep.images} photos: {rep.reused} already embedded by it, {rep.embedded} re-embedded"
        f"{last}, in {rep.seconds:.1f}s"
    )
    for d in rep.dropped:
        warn(f"dropped image {d.image_id} ({d.source_name}) of {d.identity}: {d.reason}")


def _print_retrain(report: RetrainReport) -> None:
    for w in report.warnings:
        warn(w)
    p = report.pairs
    click.echo(
        f"version {report.version} ({report.model_id}) from version {report.parent.version}: "
        f"{p.total} pairs ({p.csv} from the CSV, {p.enrolled} enrolled, {p.feedback} feedback), "
        f"{p.train} trained on, {p.held_out} held out"
    )
    c = report.comparison
    if c.judged and c.old is not None and c.new is not None:
        click.echo(
            f"held out: {c.held_out_pairs} pairs ({c.held_out_genuine} genuine, "
            f"{c.held_out_impostor} impostor) of {c.held_out_identities} identities not trained on"
        )
        click.echo(f"  {'':4} {'AUC':>7} {'threshold':>10} {'accuracy':>9} {'2-fold acc':>11}")
        for name, s in (("old", c.old), ("new", c.new)):
            click.echo(
                f"  {name:4} {fmt(s.auc, 4):>7} {fmt(s.threshold, 4):>10} {fmt(s.accuracy):>9} "
                f"{fmt(s.accuracy_2fold):>11}"
            )
        click.echo(
            "  (accuracy at each model's own threshold; 2-fold: threshold chosen on half the held-out "
            "identities, measured on the other half)"
        )
    else:
        click.echo(c.reason)
    click.echo(f"new threshold {report.threshold:.4f} ({report.threshold_method})")
    click.echo(report.decision)
    if report.activation is not None:
        _print_activation(report.activation)


@click.command()
@click.option(
    "--pairs",
    "pairs_file",
    type=click.Path(path_type=Path),
    default=None,
    help="CSV with columns image_a,image_b,label (1 = same person, 0 = different); paths relative to the CSV's folder.",
)
@click.option("--from-enrolled", is_flag=True, help="Add pairs sampled from the enrolled people's stored photos.")
@click.option("--from-feedback", is_flag=True, help="Add pairs from the corrections recorded with `feedback`.")
@click.option("--epochs", default=5, show_default=True, type=click.IntRange(1))
@click.option(
    "--lr",
    "learning_rate",
    default=1e-4,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Learning rate (low: this fine-tunes the active tower).",
)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1), help="Pairs per batch.")
@click.option(
    "--holdout",
    "holdout_fraction",
    default=0.3,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Share of the genuine pairs whose identities are held out to judge old against new.",
)
@click.option(
    "--augment",
    default=None,
    type=click.Choice(["faces", "symbols", "none"]),
    help="Training augmentation (default: the model's own).",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--force", is_flag=True, help="Activate the new tower even when it scores worse or cannot be judged.")
@click.option(
    "--no-activate", is_flag=True, help="Record the new version without switching to it (see `models activate`)."
)
@drop_option
@home_option
@json_option
@handle_errors
def retrain(
    pairs_file,
    from_enrolled,
    from_feedback,
    epochs,
    learning_rate,
    batch_size,
    holdout_fraction,
    augment,
    seed,
    force,
    no_activate,
    drop_unstored,
    home,
    as_json,
):
    """Fine-tune the active tower on new pairs; activate it only if it is not worse.

    Old and new are compared on held-out pairs of identities the new tower was not trained on;
    both scores are reported either way. The new version is kept (see `models list`), and the
    home switches to it in one step after re-embedding every enrolled photo.
    """
    from siamese_index import RetrainOptions
    from siamese_index import retrain as run_retrain

    if not (pairs_file or from_enrolled or from_feedback):
        raise click.UsageError("give --pairs CSV, --from-enrolled or --from-feedback (or several)")
    opts = RetrainOptions(
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        seed=seed,
        holdout_fraction=holdout_fraction,
        augmentation=augment,
        force=force,
        activate=not no_activate,
        drop_unstored=drop_unstored,
    )
    with _open(home) as index:
        report = run_retrain(
            index,
            pairs_file,
            from_enrolled=from_enrolled,
            from_feedback=from_feedback,
            options=opts,
            progress=progress_line,
        )
    if as_json:
        emit_json(report.to_dict())
    else:
        _print_retrain(report)
    if report.activation_error:
        raise SystemExit(1)


@click.command()
@click.argument("query_image", required=False, type=click.Path(path_type=Path))
@click.option(
    "--is", "is_id", default=None, metavar="ID", help="The query shows this enrolled person (a missed match)."
)
@click.option(
    "--is-not", "is_not", default=None, metavar="ID", help="The query does not show this person (a false match)."
)
@click.option("--list", "list_all", is_flag=True, help="List the recorded corrections instead.")
@home_option
@json_option
@handle_errors
def feedback(query_image, is_id, is_not, list_all, home, as_json):
    """Record a corrected identify answer for QUERY_IMAGE (used by `retrain --from-feedback`)."""
    from siamese_index import list_feedback, record_feedback

    if list_all:
        with _open(home) as index:
            rows = list_feedback(index)
        if as_json:
            emit_json({"feedback": [r.to_dict() for r in rows]})
            return
        for r in rows:
            click.echo(
                f"{r.feedback_id:>5}  {r.query}  {r.label} {r.identity}  "
                f"distance {fmt(r.distance)}  (version {r.model_version}, {r.created})"
            )
        click.echo(f"{len(rows)} corrections")
        return
    if query_image is None:
        raise click.UsageError("give QUERY_IMAGE with --is ID or --is-not ID (or --list)")
    if (is_id is None) == (is_not is None):
        raise click.UsageError("give exactly one of --is ID or --is-not ID")
    with _open(home) as index:
        out = record_feedback(index, query_image, is_id=is_id, is_not=is_not)
    if as_json:
        emit_json(out.to_dict())
        return
    verb = "is" if out.label == "is" else "is not"
    click.echo(
        f"recorded: {out.query} {verb} {out.identity}" + (" (replacing an earlier correction)" if out.replaced else "")
    )
    if out.distance is not None:
        agree = {True: "the model agrees", False: "the model disagrees", None: "no threshold"}[out.model_agreed]
        click.echo(f"distance to {out.identity}: {out.distance:.4f}, threshold {fmt(out.threshold, 4)} ({agree})")


@click.command()
@click.option(
    "--model", "model_dir", required=True, help="Model directory (or a name under models/) to move this home to."
)
@drop_option
@home_option
@json_option
@handle_errors
def reembed(model_dir, drop_unstored, home, as_json):
    """Move this home to another tower: re-embed every enrolled photo, then switch at once.

    The model directory is copied into the home as a new version (parent: the current one), so
    `models rollback` can go back.
    """
    from siamese_index import reembed as run_reembed
    from siamese_index.config import resolve_model_dir

    with _open(home) as index:
        rep = run_reembed(index, resolve_model_dir(model_dir), drop_unstored=drop_unstored, progress=_progress)
    if as_json:
        emit_json(rep.to_dict())
        return
    _print_activation(rep)


@click.group()
def models():
    """The model versions of a home: list, show, activate, rollback, set-threshold."""


@models.command("list")
@home_option
@json_option
@handle_errors
def models_list(home, as_json):
    """Every version: state (active, kept: served before, candidate: never served), parent, vectors."""
    from siamese_index import list_versions

    with _open(home) as index:
        rows = list_versions(index)
    if as_json:
        emit_json({"versions": [r.to_dict() for r in rows]})
        return
    click.echo(f"{'version':>7}  {'state':9} {'parent':>6} {'threshold':>9} {'vectors':>7}  model")
    for r in rows:
        mark = "*" if r.active else " "
        extra = f"  [{r.held_out.verdict}]" if r.held_out is not None and r.held_out.verdict else ""
        click.echo(
            f"{mark}{r.version:>6}  {r.state:9} {fmt(r.parent):>6} {fmt(r.threshold, 4):>9} "
            f"{r.embeddings:>7}  {r.model_id}{extra}"
        )


@models.command("show")
@click.argument("version", default="active")
@home_option
@json_option
@handle_errors
def models_show(version, home, as_json):
    """One version in full (VERSION: a number, a model id, 'active' or 'parent'; default active)."""
    from siamese_index import show_version

    with _open(home) as index:
        info = show_version(index, version)
    if as_json:
        emit_json(info.to_dict())
        return
    for key in (
        "version",
        "model_id",
        "state",
        "parent",
        "dim",
        "threshold",
        "created",
        "activated",
        "embeddings",
        "missing_embeddings",
        "model_dir",
        "model_dir_ok",
        "source",
    ):
        click.echo(f"{key + ':':20} {fmt(getattr(info, key), 4)}")
    comp = info.scores.get("comparison")  # as recorded with the version (JSON)
    if comp:
        click.echo(f"{'held-out judged:':20} {comp.get('judged')}")
        for name in ("old", "new"):
            if comp.get(name):
                s = comp[name]
                click.echo(
                    f"  {name}: AUC {fmt(s['auc'], 4)}, accuracy {fmt(s['accuracy'])} at {fmt(s['threshold'], 4)}, "
                    f"2-fold accuracy {fmt(s['accuracy_2fold'])}"
                )
        click.echo(f"{'held-out verdict:':20} {comp.get('verdict')}")
        if comp.get("reason"):
            click.echo(f"{'':20} {comp['reason']}")


@models.command("activate")
@click.argument("version")
@drop_option
@home_option
@json_option
@handle_errors
def models_activate(version, drop_unstored, home, as_json):
    """Serve VERSION: re-embed what it lacks, then switch in one step."""
    from siamese_index import activate

    with _open(home) as index:
        rep = activate(index, version, drop_unstored=drop_unstored, progress=_progress)
    if as_json:
        emit_json(rep.to_dict())
        return
    _print_activation(rep)


@models.command("rollback")
@drop_option
@home_option
@json_option
@handle_errors
def models_rollback(drop_unstored, home, as_json):
    """Serve the active version's parent again (its vectors were kept)."""
    from siamese_index import rollback

    with _open(home) as index:
        rep = rollback(index, drop_unstored=drop_unstored, progress=_progress)
    if as_json:
        emit_json(rep.to_dict())
        return
    _print_activation(rep)


@models.command("set-threshold")
@click.argument("version", default="active")
@click.option(
    "--from",
    "model_dir",
    default=None,
    type=click.Path(path_type=Path),
    help="A directory written by `calibrate` from this version's weights: take its threshold and impostor table.",
)
@click.option("--value", "threshold", default=None, type=float, help="A pair threshold (plain L2) chosen by hand.")
@home_option
@json_option
@handle_errors
def models_set_threshold(version, model_dir, threshold, home, as_json):
    """Give VERSION (default: the active one) another threshold, re-embedding nothing.

    Every process serving the home adopts it on its next request. Use --from after
    `calibrate` has chosen a threshold on your own people.
    """
    from siamese_index import set_threshold as set_calibration

    if (model_dir is None) == (threshold is None):
        raise click.UsageError("give --from DIR or --value THRESHOLD")
    with _open(home) as index:
        rep = set_calibration(index, version, model_dir=model_dir, threshold=threshold)
    if as_json:
        emit_json(rep.to_dict())
        return
    click.echo(
        f"version {rep.version} ({rep.model_id}): threshold {fmt(rep.previous_threshold, 4)} -> "
        f"{fmt(rep.threshold, 4)} ({rep.threshold_method or 'method not recorded'})"
    )


COMMANDS = [retrain, feedback, reembed, models]
